"""Metered delivery for :class:`client.api.ParleyClient`: prices, balance, ledger, usage and the
priced status events of a business's messages.

``client.billing`` (a :class:`BillingCalls`) acts as the registered device: anyone reads the
price list (``prices``); a BUSINESS account asks what a send would cost (``quote``), reads its
balance, pages through its whole ledger (``ledger`` follows the page tokens itself), its usage
report, and the stream of status events (``events``), which resumes from a cursor the caller
keeps: the last ``sequence`` it has handled. ``client.billing.operator(token)`` (a
:class:`BillingOperatorCalls`) is the operator's side with the server's ``--admin-token``: top
up a balance, schedule a price table.

Replies are the ``parley.v1`` messages (``GetBalanceResponse``, ``LedgerEntry``,
``StatusEvent``..., documented in docs/api-reference.md); amounts are integer micro-units
(:mod:`client.money` formats them). Refusals raise :class:`client.errors.ParleyError`
subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from parley.v1 import billing_pb2 as bpb
from parley.v1 import billing_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from client.api import _rpc
from client.feeds import follow_feed

Metadata = tuple[tuple[str, str], ...]

CATEGORIES: Final = {
    name.removeprefix("MESSAGE_CATEGORY_").lower(): number
    for name, number in mpb.MessageCategory.items()
    if number
}
"""Every category a message is priced by, as the CLI spells it (``marketing``...)."""
GROUPINGS: Final = {
    "day": bpb.USAGE_GROUPING_DAY,
    "category": bpb.USAGE_GROUPING_CATEGORY,
    "country": bpb.USAGE_GROUPING_COUNTRY,
}
LEDGER_PAGE_SIZE: Final = 1000
"""The largest page the server gives: the fewest round trips for a whole ledger."""


def timestamp(when: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime (a naive one would mean the caller's local
    time to one reader and UTC to another, so it is refused)."""
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no time zone: give one, e.g. ...T00:00:00Z")
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


class BillingCalls:
    """BillingService as one device (see the module docstring)."""

    def __init__(
        self,
        channel: aio.Channel,
        metadata: Callable[[], Metadata],
        resolve: Callable[[str], Awaitable[str]],
    ) -> None:
        self._channel = channel
        self._stub = billing_pb2_grpc.BillingServiceStub(channel)
        self._metadata = metadata
        self._resolve = resolve

    def operator(self, admin_token: str) -> BillingOperatorCalls:
        """The operator's calls over this connection, with the server's admin token instead of
        this device's."""
        return BillingOperatorCalls(self._channel, admin_token)

    async def prices(self, at: datetime | None = None) -> bpb.GetPriceListResponse:
        """The price table in force now (or at `at`) and the next one when one is scheduled."""
        request = bpb.GetPriceListRequest(at=timestamp(at) if at is not None else None)
        return await _rpc(self._stub.GetPriceList(request, metadata=self._metadata()))

    async def quote(self, recipient: str, category: mpb.MessageCategory.ValueType) -> bpb.Pricing:
        """What a message of `category` to `recipient` (a phone number or an account id) would
        cost if we sent it now, and why."""
        request = bpb.QuotePriceRequest(
            recipient_account_id=await self._resolve(recipient), category=category
        )
        reply = await _rpc(self._stub.QuotePrice(request, metadata=self._metadata()))
        return reply.pricing

    async def balance(self) -> bpb.GetBalanceResponse:
        """Available and reserved amounts of this business."""
        return await _rpc(self._stub.GetBalance(bpb.GetBalanceRequest(), metadata=self._metadata()))

    async def ledger_page(
        self, page_token: str = "", page_size: int = 0
    ) -> bpb.ListLedgerEntriesResponse:
        """One page of the ledger, oldest first; pass the reply's ``next_page_token`` on."""
        request = bpb.ListLedgerEntriesRequest(page_size=page_size, page_token=page_token)
        return await _rpc(self._stub.ListLedgerEntries(request, metadata=self._metadata()))

    async def ledger(
        self, page_size: int = LEDGER_PAGE_SIZE
    ) -> AsyncGenerator[bpb.LedgerEntry, None]:
        """Every entry of the ledger, oldest first, page after page until the server says the
        end is reached (an empty ``next_page_token``)."""
        token = ""
        while True:
            page = await self.ledger_page(token, page_size)
            for entry in page.entries:
                yield entry
            token = page.next_page_token
            if not token:
                return

    async def usage(
        self,
        month: str = "",
        group_by: bpb.UsageGrouping.ValueType = bpb.USAGE_GROUPING_DAY,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> bpb.GetUsageReportResponse:
        """The usage report of a calendar month ("2026-11"; empty: this month), or of the
        period [start, end), grouped by day, category or country."""
        request = bpb.GetUsageReportRequest(
            month=month,
            start=timestamp(start) if start is not None else None,
            end=timestamp(end) if end is not None else None,
            group_by=group_by,
        )
        return await _rpc(self._stub.GetUsageReport(request, metadata=self._metadata()))

    def events(
        self, cursor: int = 0, *, follow: bool = False
    ) -> AsyncGenerator[bpb.StatusEvent, None]:
        """The status events after `cursor`, in sequence order. Without `follow` it stops once
        the backlog is read; with it, it goes on with live events until the caller stops
        reading (keep-alives are not passed on). The caller keeps the last ``sequence`` it
        handled and resumes from it after a disconnection: the server sends each event after
        the cursor exactly once."""
        request = bpb.StreamStatusEventsRequest(cursor=cursor)
        return follow_feed(
            lambda: self._stub.StreamStatusEvents(request, metadata=self._metadata()),
            bpb.StatusEvent,
            follow=follow,
        )


class BillingOperatorCalls:
    """BillingService's operator calls, with the server's admin token."""

    def __init__(self, channel: aio.Channel, admin_token: str) -> None:
        self._stub = billing_pb2_grpc.BillingServiceStub(channel)
        self._metadata: Metadata = (("authorization", f"Bearer {admin_token}"),)

    async def top_up(
        self, business_account_id: str, amount_micros: int, reference: str, note: str = ""
    ) -> bpb.TopUpResponse:
        """Add `amount_micros` to a business's balance, once per `reference`: a retry with the
        same reference adds nothing and returns the first entry (``applied`` is false)."""
        request = bpb.TopUpRequest(
            business_account_id=business_account_id,
            amount_micros=amount_micros,
            reference=reference,
            note=note,
        )
        return await _rpc(self._stub.TopUp(request, metadata=self._metadata))

    async def set_prices(self, toml: str, effective_at: datetime | None = None) -> bpb.PriceTable:
        """Add a version of the price table (the operator's TOML file), in force from
        `effective_at` (now when None; never in the past)."""
        request = bpb.SetPriceTableRequest(
            toml=toml,
            effective_at=timestamp(effective_at) if effective_at is not None else None,
        )
        reply = await _rpc(self._stub.SetPriceTable(request, metadata=self._metadata))
        return reply.table
