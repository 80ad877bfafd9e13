"""BillingService: convert, one domain call, convert back.

The interceptor has authenticated every call before it gets here: TopUp and SetPriceTable with
the operator token (`operator()` is the proof; `OPERATOR_METHODS` is the table the app gives the
interceptor), every other RPC with a device token (`caller()`). StreamStatusEvents is a server
stream holding a Lease on its credential, so it ends UNAUTHENTICATED the moment the device is
removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from grpc import aio
from parley.v1 import billing_pb2 as pb
from parley.v1 import billing_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from server.domain.billing import Cashier, PriceBook, PriceDesk, TableVersion
from server.domain.billing_model import Charge, LedgerEntry, StatusEventView, StatusKind
from server.domain.pricing import DEFAULT_COUNTRY, FreeReason, Quote
from server.domain.status_events import StatusEventStreams
from server.domain.usage import UsageReports
from server.domain.usage_model import UsageCounts
from server.rpc.convert import feed_responses, optional_seconds, timestamp
from server.rpc.interceptors import caller, operator

Context = aio.ServicerContext[Any, Any]

SERVICE = pb.DESCRIPTOR.services_by_name["BillingService"].full_name
# The operator's methods: the admin token, never a device's.
OPERATOR_METHODS = frozenset(f"/{SERVICE}/{name}" for name in ("TopUp", "SetPriceTable"))


def table_to_proto(version: TableVersion) -> pb.PriceTable:
    table = version.table
    return pb.PriceTable(
        version=version.version,
        effective_at=timestamp(table.effective_at),
        currency=table.currency,
        rows=[
            pb.PriceRow(
                category=cast(mpb.MessageCategory.ValueType, category),
                country=country,
                amount_micros=amount,
            )
            for category, rows in sorted(table.prices.items())
            # The default row first, then the countries in order.
            for country, amount in sorted(rows.items(), key=lambda r: r[0] != DEFAULT_COUNTRY)
        ],
        json=table.to_json(),
    )


def _reason(reason: int) -> pb.FreeReason.ValueType:
    return cast(pb.FreeReason.ValueType, reason)


def quote_to_proto(quote: Quote, version: int) -> pb.Pricing:
    return pb.Pricing(
        billable=quote.billable,
        free_reason=_reason(quote.reason),
        category=cast(mpb.MessageCategory.ValueType, quote.category),
        country=quote.country,
        amount_micros=quote.amount,
        currency=quote.currency,
        price_table_version=version,
        explanation=quote.explanation,
    )


def charge_to_proto(charge: Charge, currency: str, ledger_entry_id: int) -> pb.Pricing:
    return pb.Pricing(
        billable=charge.reason == FreeReason.BILLABLE,
        free_reason=_reason(charge.reason),
        category=cast(mpb.MessageCategory.ValueType, charge.category),
        country=charge.country,
        amount_micros=charge.amount,
        currency=currency,
        price_table_version=charge.table_version,
        explanation=charge.explanation,
        ledger_entry_id=ledger_entry_id,
    )


def entry_to_proto(entry: LedgerEntry) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        entry_id=entry.entry_id,
        kind=cast(pb.LedgerEntryKind.ValueType, entry.kind),
        amount_micros=entry.amount,
        available_after_micros=entry.available_after,
        reserved_after_micros=entry.reserved_after,
        message_id=entry.message_id or 0,
        reference=entry.reference or "",
        at=timestamp(entry.at),
        note=entry.note,
        # A reservation written per message (before schema 14) held one message's price.
        message_count=entry.message_count or (1 if entry.message_id else 0),
    )


def usage_to_proto(row: UsageCounts) -> pb.UsageRow:
    return pb.UsageRow(
        key=row.key,
        sent=row.sent,
        delivered=row.delivered,
        billable=row.billable,
        free_service_window=row.free_service_window,
        free_entry_window=row.free_entry_window,
        free_allowance=row.free_allowance,
        not_delivered=row.not_delivered,
        pending=row.pending,
        charged_micros=row.charged,
        reserved_micros=row.reserved,
    )


def event_to_proto(view: StatusEventView, currency: str) -> pb.StatusEvent:
    event, charge = view
    if event.kind == StatusKind.DELIVERED:
        entry = event.ledger_entry_id  # the CAPTURE that charged it
    elif event.kind == StatusKind.SENT:
        entry = charge.reserve_entry or 0  # the RESERVE that holds its price
    else:
        entry = 0  # released: in the ledger, but nothing charged
    return pb.StatusEvent(
        sequence=event.sequence,
        kind=cast(pb.StatusEventKind.ValueType, event.kind),
        message_id=event.message_id,
        recipient_account_id=charge.recipient_account_id,
        at=timestamp(event.at),
        pricing=charge_to_proto(charge, currency, entry),
        reason=event.detail,
    )


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(
        self,
        *,
        prices: PriceDesk,
        cashier: Cashier,
        usage: UsageReports,
        events: StatusEventStreams,
    ) -> None:
        self._prices = prices
        self._book: PriceBook = prices.book
        self._cashier = cashier
        self._usage = usage
        self._events = events

    async def GetPriceList(
        self, request: pb.GetPriceListRequest, context: Context
    ) -> pb.GetPriceListResponse:
        current, upcoming = self._book.listing(optional_seconds(request, "at"))
        return pb.GetPriceListResponse(
            current=table_to_proto(current),
            next=table_to_proto(upcoming) if upcoming is not None else None,
        )

    async def QuotePrice(
        self, request: pb.QuotePriceRequest, context: Context
    ) -> pb.QuotePriceResponse:
        quote, version = await self._prices.quote(
            caller(), request.recipient_account_id, request.category
        )
        return pb.QuotePriceResponse(pricing=quote_to_proto(quote, version))

    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: Context
    ) -> pb.GetBalanceResponse:
        balance = await self._cashier.balance(caller().account_id)
        return pb.GetBalanceResponse(
            available_micros=balance.available,
            reserved_micros=balance.reserved,
            currency=self._cashier.currency(),
        )

    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Context
    ) -> pb.ListLedgerEntriesResponse:
        entries, token = await self._cashier.ledger(
            caller().account_id, request.page_size, request.page_token
        )
        return pb.ListLedgerEntriesResponse(
            entries=[entry_to_proto(e) for e in entries], next_page_token=token
        )

    async def TopUp(self, request: pb.TopUpRequest, context: Context) -> pb.TopUpResponse:
        entry, applied = await self._cashier.top_up(
            operator(), request.business_account_id, request.amount_micros, request.reference,
            request.note,
        )  # fmt: skip
        return pb.TopUpResponse(entry=entry_to_proto(entry), applied=applied)

    async def SetPriceTable(
        self, request: pb.SetPriceTableRequest, context: Context
    ) -> pb.SetPriceTableResponse:
        version = await self._book.set_table(
            operator(), request.toml, optional_seconds(request, "effective_at")
        )
        return pb.SetPriceTableResponse(table=table_to_proto(version))

    async def GetUsageReport(
        self, request: pb.GetUsageReportRequest, context: Context
    ) -> pb.GetUsageReportResponse:
        report = await self._usage.report(
            caller(), request.month, optional_seconds(request, "start"),
            optional_seconds(request, "end"), request.group_by,
        )  # fmt: skip
        return pb.GetUsageReportResponse(
            start=timestamp(report.start),
            end=timestamp(report.end),
            currency=report.currency,
            rows=[usage_to_proto(r) for r in report.rows],
            total=usage_to_proto(report.total),
            ledger_captured_micros=report.ledger_captured,
            reconciled=report.reconciled,
        )

    async def StreamStatusEvents(
        self, request: pb.StreamStatusEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamStatusEventsResponse]:
        def event(view: StatusEventView) -> pb.StreamStatusEventsResponse:
            currency = self._book.version(view.charge.table_version).table.currency
            return pb.StreamStatusEventsResponse(event=event_to_proto(view, currency))

        async for response in feed_responses(
            self._events.stream(caller(), request.cursor),
            event,
            lambda cursor: pb.StreamStatusEventsResponse(
                caught_up=pb.StatusEventsCaughtUp(cursor=cursor)
            ),
            lambda: pb.StreamStatusEventsResponse(keep_alive=pb.StatusEventsKeepAlive()),
        ):
            yield response
