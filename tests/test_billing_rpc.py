"""BillingService over a live server: each RPC's answers and refusals, the operator's RPCs,
page tokens, a scheduled price change, the usage report and the status event stream.

The money path (reserve on send, capture on the first ack, release) is tested where it is
built; here the rows a report or a stream reads are written with the storage methods
themselves, on the server's own database, so each RPC is tested against exactly the rows it
will meet.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import grpc
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc, billing_pb2_grpc, business_pb2_grpc
from parley.v1 import billing_pb2 as pb
from parley.v1 import messaging_pb2 as mpb
from parley.v1 import support_pb2 as spb

from server.app import ParleyServer
from server.config import load
from server.domain.billing_model import (
    Charge,
    ChargeState,
    EntryKind,
    StatusEventRow,
    StatusKind,
)
from server.domain.model import MessageCategory
from server.domain.ports import Transaction
from server.domain.pricing import FreeReason
from server.domain.usage_model import UsageGroup
from server.storage.database import connect
from server.storage.migrations import migrate
from server.storage.sql import StorageTransaction
from server.storage.transaction import SqliteTransaction
from tests.conftest import Device, LiveServer, ServerFactory, link, register
from tests.tools import REPO

ADMIN_TOKEN = "billing-operator-token"
OPERATOR = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
SHIPPED_TOML = resources.files("server.domain").joinpath("default_prices.toml").read_text()
USD = 1_000_000
GERMAN = "+4915112345678"
MARKETING = MessageCategory.MARKETING


def _billing(server: LiveServer) -> billing_pb2_grpc.BillingServiceStub:
    return billing_pb2_grpc.BillingServiceStub(server.channel())


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.Call)
    return error.code(), str(error.details())


@pytest.fixture
def billing_server(make_server: ServerFactory) -> LiveServer:
    # Billing on explicitly: the quotes need it, whatever other tests' servers default to.
    return make_server(admin_token=ADMIN_TOKEN, billing=True)


@pytest.fixture
def shop(billing_server: LiveServer) -> Device:
    return register(billing_server, "+12125550101", apb.ACCOUNT_KIND_BUSINESS)


@pytest.fixture
def person(billing_server: LiveServer) -> Device:
    return register(billing_server, GERMAN)


def write(server: LiveServer, job: Any) -> Any:
    """Run `job(tx)` in a write transaction of the server's own database."""

    async def run(parts: ParleyServer) -> Any:
        return await parts.db.write(job)

    return server.run(run)


def wake(server: LiveServer, business: str) -> None:
    """What the money path does after a commit that appended status events."""

    async def run(parts: ParleyServer) -> None:
        parts.status_feed.wake([business])

    server.run(run)


# -- the price list and the operator's price changes ------------------------------------------


def test_price_list_shows_the_table_in_force_and_a_scheduled_change_takes_over(
    billing_server: LiveServer, person: Device
) -> None:
    stub = _billing(billing_server)
    first = stub.GetPriceList(pb.GetPriceListRequest(), metadata=person.metadata)
    assert first.current.version == 1 and first.current.currency == "USD"
    assert not first.HasField("next")
    rows = {(r.category, r.country): r.amount_micros for r in first.current.rows}
    assert rows[(mpb.MESSAGE_CATEGORY_MARKETING, "DE")] == 89_000
    assert rows[(mpb.MESSAGE_CATEGORY_SERVICE, "*")] == 5_000
    body = json.loads(first.current.json)
    assert body["prices"]["MARKETING"]["DE"] == "0.089" and body["allowances"] == {"SERVICE": 1000}

    cheaper = SHIPPED_TOML.replace('DE = "0.0890"', 'DE = "0.0700"')
    in_an_hour = int(billing_server.clock.now()) + 3600
    request = pb.SetPriceTableRequest(toml=cheaper)
    request.effective_at.FromSeconds(in_an_hour)
    made = stub.SetPriceTable(request, metadata=OPERATOR).table
    assert made.version == 2 and made.effective_at.seconds == in_an_hour

    scheduled = stub.GetPriceList(pb.GetPriceListRequest(), metadata=person.metadata)
    assert (scheduled.current.version, scheduled.next.version) == (1, 2)
    billing_server.clock.advance(3600)
    now = stub.GetPriceList(pb.GetPriceListRequest(), metadata=person.metadata)
    assert now.current.version == 2 and not now.HasField("next")
    assert json.loads(now.current.json)["prices"]["MARKETING"]["DE"] == "0.07"
    # The table of any moment stays readable: a message is priced by the one of its send time.
    before = pb.GetPriceListRequest()
    before.at.FromSeconds(in_an_hour - 1)
    assert stub.GetPriceList(before, metadata=person.metadata).current.version == 1


def test_set_price_table_refusals_name_what_to_fix(
    billing_server: LiveServer, shop: Device
) -> None:
    stub = _billing(billing_server)
    bad = SHIPPED_TOML.replace('DE = "0.0890"', 'DE = "0.089x"')
    code, message = _code(
        lambda: stub.SetPriceTable(pb.SetPriceTableRequest(toml=bad), metadata=OPERATOR)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "prices.MARKETING.DE" in message
    past = pb.SetPriceTableRequest(toml=SHIPPED_TOML)
    past.effective_at.FromSeconds(int(billing_server.clock.now()) - 60)
    code, message = _code(lambda: stub.SetPriceTable(past, metadata=OPERATOR))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "in the past" in message
    later = pb.SetPriceTableRequest(toml=SHIPPED_TOML)
    later.effective_at.FromSeconds(int(billing_server.clock.now()) + 60)
    stub.SetPriceTable(later, metadata=OPERATOR)
    code, message = _code(lambda: stub.SetPriceTable(later, metadata=OPERATOR))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "effective_at" in message
    # A device's token never opens an operator RPC.
    code, message = _code(
        lambda: stub.SetPriceTable(
            pb.SetPriceTableRequest(toml=SHIPPED_TOML), metadata=shop.metadata
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and "admin token" in message


# -- top-ups, the balance and the ledger -------------------------------------------------------


def test_top_up_is_idempotent_by_reference_and_shows_in_balance_and_ledger(
    billing_server: LiveServer, shop: Device
) -> None:
    stub = _billing(billing_server)
    first = stub.TopUp(
        pb.TopUpRequest(
            business_account_id=shop.account_id, amount_micros=5 * USD, reference="wire-1",
            note="November",
        ),
        metadata=OPERATOR,
    )  # fmt: skip
    assert first.applied and first.entry.kind == pb.LEDGER_ENTRY_KIND_TOP_UP
    assert (first.entry.amount_micros, first.entry.available_after_micros) == (5 * USD, 5 * USD)
    again = stub.TopUp(
        pb.TopUpRequest(
            business_account_id=shop.account_id, amount_micros=9 * USD, reference="wire-1"
        ),
        metadata=OPERATOR,
    )
    assert not again.applied and again.entry == first.entry
    balance = stub.GetBalance(pb.GetBalanceRequest(), metadata=shop.metadata)
    assert (balance.available_micros, balance.reserved_micros, balance.currency) == (
        5 * USD, 0, "USD",
    )  # fmt: skip
    ledger = stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(), metadata=shop.metadata)
    assert [(e.reference, e.note) for e in ledger.entries] == [("wire-1", "November")]
    assert not ledger.next_page_token


def test_top_up_refusals(billing_server: LiveServer, shop: Device, person: Device) -> None:
    stub = _billing(billing_server)

    def top_up(
        business: str, amount: int = USD, reference: str = "r", metadata: Any = OPERATOR
    ) -> Callable[[], pb.TopUpResponse]:
        request = pb.TopUpRequest(
            business_account_id=business, amount_micros=amount, reference=reference
        )
        return lambda: stub.TopUp(request, metadata=metadata)

    cases = [
        (top_up(person.account_id), grpc.StatusCode.FAILED_PRECONDITION, "only business"),
        (
            top_up("3f2c1a9e-8b4d-4c1e-9f7a-2b6d5e4c3a10"),
            grpc.StatusCode.NOT_FOUND,
            "no account",
        ),
        (top_up("shop"), grpc.StatusCode.INVALID_ARGUMENT, "not a UUID"),
        (top_up(shop.account_id, 0), grpc.StatusCode.INVALID_ARGUMENT, "more than 0"),
        (top_up(shop.account_id, 10**16), grpc.StatusCode.INVALID_ARGUMENT, "largest top-up"),
        (top_up(shop.account_id, reference=""), grpc.StatusCode.INVALID_ARGUMENT, "reference"),
        (
            top_up(shop.account_id, metadata=shop.metadata),
            grpc.StatusCode.UNAUTHENTICATED,
            "admin token",
        ),
    ]
    for call, want, text in cases:
        code, message = _code(call)
        assert code == want and text in message, (want, code, message)
    # Nothing was added by any refusal.
    balance = stub.GetBalance(pb.GetBalanceRequest(), metadata=shop.metadata)
    assert balance.available_micros == 0
    # A person has no balance, and the operator token opens no device RPC.
    code, message = _code(lambda: stub.GetBalance(pb.GetBalanceRequest(), metadata=person.metadata))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "business" in message
    code, _ = _code(lambda: stub.GetBalance(pb.GetBalanceRequest(), metadata=OPERATOR))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_operator_rpcs_refused_when_no_admin_token_is_set(make_server: ServerFactory) -> None:
    server = make_server()
    shop = register(server, "+12125550102", apb.ACCOUNT_KIND_BUSINESS)
    request = pb.TopUpRequest(business_account_id=shop.account_id, amount_micros=1, reference="r")
    code, message = _code(lambda: _billing(server).TopUp(request, metadata=OPERATOR))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--admin-token" in message


def test_ledger_pages_follow_their_tokens_and_refuse_anothers(
    billing_server: LiveServer, shop: Device
) -> None:
    stub = _billing(billing_server)
    for i in range(5):
        stub.TopUp(
            pb.TopUpRequest(
                business_account_id=shop.account_id, amount_micros=USD, reference=f"r{i}"
            ),
            metadata=OPERATOR,
        )
    seen, token, pages = [], "", 0
    while True:
        page = stub.ListLedgerEntries(
            pb.ListLedgerEntriesRequest(page_size=2, page_token=token), metadata=shop.metadata
        )
        seen += [e.reference for e in page.entries]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"r{i}" for i in range(5)] and pages == 3
    balances = stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(), metadata=shop.metadata)
    assert [e.available_after_micros for e in balances.entries] == [(i + 1) * USD for i in range(5)]
    first = stub.ListLedgerEntries(
        pb.ListLedgerEntriesRequest(page_size=2), metadata=shop.metadata
    ).next_page_token
    other = register(billing_server, "+12125550103", apb.ACCOUNT_KIND_BUSINESS)
    for bad in (first, "not-a-token", "bGVkZ2VyMTo"):
        code, message = _code(
            lambda bad=bad: stub.ListLedgerEntries(
                pb.ListLedgerEntriesRequest(page_token=bad), metadata=other.metadata
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in message


# -- quotes -------------------------------------------------------------------------------------


def _quote(server: LiveServer, caller: Device, recipient: str, category: int) -> pb.Pricing:
    request = pb.QuotePriceRequest(recipient_account_id=recipient, category=category)  # type: ignore[arg-type]
    return _billing(server).QuotePrice(request, metadata=caller.metadata).pricing


def test_quote_prices_by_country_and_window_and_says_why(
    billing_server: LiveServer, shop: Device, person: Device
) -> None:
    marketing = _quote(billing_server, shop, person.account_id, mpb.MESSAGE_CATEGORY_MARKETING)
    assert marketing.billable and marketing.amount_micros == 89_000
    assert (marketing.country, marketing.currency, marketing.price_table_version) == (
        "DE", "USD", 1,
    )  # fmt: skip
    assert marketing.explanation == "MARKETING to DE: 0.089 USD"
    utility = _quote(billing_server, shop, person.account_id, mpb.MESSAGE_CATEGORY_UTILITY)
    assert utility.billable and utility.amount_micros == 55_000
    # The person writes to the business (opening a support conversation counts): the 24-hour
    # customer-service window opens, and UTILITY and SERVICE are free inside it.
    business_pb2_grpc.BusinessServiceStub(billing_server.channel()).OpenSupportConversation(
        spb.OpenSupportConversationRequest(business_account_id=shop.account_id),
        metadata=person.metadata,
    )
    inside = _quote(billing_server, shop, person.account_id, mpb.MESSAGE_CATEGORY_UTILITY)
    assert not inside.billable and inside.amount_micros == 0
    assert inside.free_reason == pb.FREE_REASON_SERVICE_WINDOW
    assert "24-hour customer-service window" in inside.explanation
    still = _quote(billing_server, shop, person.account_id, mpb.MESSAGE_CATEGORY_MARKETING)
    assert still.billable and still.amount_micros == 89_000
    billing_server.clock.advance(86_400)
    # Outside the window SERVICE is still free: the first 1,000 of the month are.
    service = _quote(billing_server, shop, person.account_id, mpb.MESSAGE_CATEGORY_SERVICE)
    assert service.free_reason == pb.FREE_REASON_ALLOWANCE
    assert "1 of the 1,000" in service.explanation
    # A click-to-chat entry window makes everything free for 72 hours.
    now = billing_server.clock.now()
    write(
        billing_server,
        lambda tx: tx.open_entry_window(shop.account_id, person.account_id, now, now + 72 * 3600),
    )
    entry = _quote(billing_server, shop, person.account_id, mpb.MESSAGE_CATEGORY_MARKETING)
    assert entry.free_reason == pb.FREE_REASON_ENTRY_WINDOW and entry.amount_micros == 0


def test_quote_refusals(billing_server: LiveServer, shop: Device, person: Device) -> None:
    other_shop = register(billing_server, "+12125550104", apb.ACCOUNT_KIND_BUSINESS)
    cases = [
        (shop, "3f2c1a9e-8b4d-4c1e-9f7a-2b6d5e4c3a10", 1, grpc.StatusCode.NOT_FOUND, "no account"),
        (shop, "nobody", 1, grpc.StatusCode.INVALID_ARGUMENT, "not a UUID"),
        (shop, person.account_id, 0, grpc.StatusCode.INVALID_ARGUMENT, "category is required"),
        (shop, person.account_id, 42, grpc.StatusCode.INVALID_ARGUMENT, "category is required"),
        (shop, shop.account_id, 1, grpc.StatusCode.INVALID_ARGUMENT, "your own account"),
        (shop, other_shop.account_id, 1, grpc.StatusCode.FAILED_PRECONDITION, "is a business"),
        (person, shop.account_id, 1, grpc.StatusCode.FAILED_PRECONDITION, "only business"),
    ]
    for caller, recipient, category, want, text in cases:
        code, message = _code(
            lambda c=caller, r=recipient, k=category: _quote(billing_server, c, r, k)
        )
        assert code == want and text in message, (recipient, category, code, message)


def test_billing_off_has_nothing_to_quote(make_server: ServerFactory) -> None:
    server = make_server(billing=False)
    shop = register(server, "+12125550105", apb.ACCOUNT_KIND_BUSINESS)
    person = register(server, GERMAN)
    code, message = _code(
        lambda: _quote(server, shop, person.account_id, mpb.MESSAGE_CATEGORY_MARKETING)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--billing off" in message


# -- settings: --billing, --price-file ---------------------------------------------------------


def test_billing_and_price_file_settings_parse(tmp_path: Any) -> None:
    assert load([], {}).billing is True and load([], {}).price_file is None
    assert load(["--billing", "off"], {}).billing is False
    assert load([], {"PARLEY_BILLING": "OFF"}).billing is False
    with pytest.raises(SystemExit, match="--billing"):
        load(["--billing", "maybe"], {})


def test_a_price_file_sets_the_table_and_a_bad_one_stops_the_start(
    make_server: ServerFactory, tmp_path: Any
) -> None:
    good = tmp_path / "prices.toml"
    good.write_text(SHIPPED_TOML.replace('US = "0.0250"', 'US = "0.0300"'))
    server = make_server(price_file=good)
    person = register(server, "+12125550106")
    listed = _billing(server).GetPriceList(pb.GetPriceListRequest(), metadata=person.metadata)
    assert json.loads(listed.current.json)["prices"]["MARKETING"]["US"] == "0.03"
    bad = tmp_path / "bad.toml"
    bad.write_text(SHIPPED_TOML.replace("[prices.SERVICE]", "[prices.SERVCE]"))
    for price_file, expected in (
        (bad, r"--price-file .*bad.toml is not a valid price table: .*'SERVCE'"),
        (tmp_path / "missing.toml", r"cannot read --price-file .*missing.toml"),
    ):
        stderr = _start_fails(tmp_path, "--price-file", str(price_file))
        assert re.fullmatch(f"parley-server: {expected}.*\n", stderr), stderr


def _start_fails(tmp_path: Any, *args: str) -> str:
    """The real command with these flags: it must exit 1 before serving; its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--database", str(tmp_path / "s.db"),
         *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    return proc.stderr


# -- the usage report ---------------------------------------------------------------------------


def _at(day: int, hour: int = 12, month: int = 1, year: int = 2027) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


def _charge(
    message_id: int,
    business: str,
    recipient: str,
    category: MessageCategory,
    country: str,
    amount: int,
    reason: FreeReason,
    sent_at: float,
) -> Charge:
    return Charge(
        message_id, business, recipient, int(category), country, amount, int(reason), 1,
        int(ChargeState.RESERVED), sent_at, None, None, None, "test",
    )  # fmt: skip


# (message, category, country, amount, reason, sent at, outcome)
USAGE = [
    (1, MARKETING, "DE", 89_000, FreeReason.BILLABLE, _at(2), ChargeState.CAPTURED),
    (2, MARKETING, "DE", 89_000, FreeReason.BILLABLE, _at(2, 13), ChargeState.RELEASED),
    (3, MessageCategory.UTILITY, "US", 5_000, FreeReason.BILLABLE, _at(3), ChargeState.RESERVED),
    (4, MessageCategory.SERVICE, "ZZ", 0, FreeReason.SERVICE_WINDOW, _at(3), ChargeState.CAPTURED),
    (5, MARKETING, "US", 25_000, FreeReason.BILLABLE, _at(3, 23), ChargeState.CAPTURED),
    (6, MessageCategory.UTILITY, "US", 0, FreeReason.ENTRY_WINDOW, _at(3), ChargeState.CAPTURED),
    (7, MessageCategory.SERVICE, "US", 0, FreeReason.ALLOWANCE, _at(31, 23), ChargeState.CAPTURED),
    # Sent the month before, delivered in January: December's.
    (8, MARKETING, "DE", 89_000, FreeReason.BILLABLE, _at(31, 23, 12, 2026), ChargeState.CAPTURED),
]


def _books(shop: str, person: str, other: str) -> Any:
    def job(tx: Transaction) -> None:
        tx.top_up(shop, 10 * USD, "wire", _at(1), "")
        tx.top_up(other, 10 * USD, "wire", _at(1), "")
        for message, category, country, amount, reason, sent_at, _ in USAGE:
            charge = _charge(message, shop, person, category, country, amount, reason, sent_at)
            assert tx.reserve(charge, sent_at).accepted
        # Another business's message in the same month is not the shop's.
        theirs = _charge(9, other, person, MARKETING, "DE", 89_000, FreeReason.BILLABLE, _at(2))
        assert tx.reserve(theirs, _at(2)).accepted
        for state in (ChargeState.CAPTURED, ChargeState.RELEASED):
            ids = [u[0] for u in USAGE if u[6] == state] + (
                [9] if state == ChargeState.CAPTURED else []
            )
            tx.settle_charges(ids, state, _at(4))

    return job


def _report(server: LiveServer, shop: Device, **fields: Any) -> pb.GetUsageReportResponse:
    return _billing(server).GetUsageReport(
        pb.GetUsageReportRequest(**fields), metadata=shop.metadata
    )


def _counts(row: pb.UsageRow) -> tuple[int, ...]:
    return (
        row.sent, row.delivered, row.billable, row.free_service_window, row.free_entry_window,
        row.free_allowance, row.not_delivered, row.pending, row.charged_micros,
        row.reserved_micros,
    )  # fmt: skip


def test_usage_report_groups_counts_and_reconciles_with_the_ledger(
    billing_server: LiveServer, shop: Device, person: Device
) -> None:
    other = register(billing_server, "+12125550107", apb.ACCOUNT_KIND_BUSINESS)
    write(billing_server, _books(shop.account_id, person.account_id, other.account_id))
    by_day = _report(billing_server, shop, month="2027-01")
    assert by_day.start.seconds == _at(1, 0) and by_day.end.seconds == _at(1, 0, 2)
    assert by_day.currency == "USD"
    assert {r.key: _counts(r) for r in by_day.rows} == {
        "2027-01-02": (2, 1, 1, 0, 0, 0, 1, 0, 89_000, 0),
        "2027-01-03": (4, 3, 1, 1, 1, 0, 0, 1, 25_000, 5_000),
        "2027-01-31": (1, 1, 0, 0, 0, 1, 0, 0, 0, 0),
    }
    assert _counts(by_day.total) == (7, 5, 2, 1, 1, 1, 1, 1, 114_000, 5_000)
    assert by_day.ledger_captured_micros == 114_000 and by_day.reconciled
    by_category = _report(
        billing_server, shop, month="2027-01", group_by=pb.USAGE_GROUPING_CATEGORY
    )
    assert [(r.key, r.sent, r.charged_micros) for r in by_category.rows] == [
        ("MARKETING", 3, 114_000), ("SERVICE", 2, 0), ("UTILITY", 2, 0),
    ]  # fmt: skip
    by_country = _report(billing_server, shop, month="2027-01", group_by=pb.USAGE_GROUPING_COUNTRY)
    assert [(r.key, r.sent) for r in by_country.rows] == [("DE", 2), ("US", 4), ("ZZ", 1)]
    assert _counts(by_country.total) == _counts(by_day.total)
    december = _report(billing_server, shop, month="2026-12")
    assert _counts(december.total)[:2] == (1, 1) and december.ledger_captured_micros == 89_000
    # The default period is the current month (the test clock's: January 2027).
    assert _counts(_report(billing_server, shop).total) == _counts(by_day.total)
    # A start/end period: the 3rd only.
    period = pb.GetUsageReportRequest()
    period.start.FromSeconds(int(_at(3, 0)))
    period.end.FromSeconds(int(_at(4, 0)))
    third = _billing(billing_server).GetUsageReport(period, metadata=shop.metadata)
    assert [r.key for r in third.rows] == ["2027-01-03"] and third.reconciled

    # Damaged books are reported, not hidden: a charge that says more than the ledger took.
    def damage(tx: StorageTransaction) -> None:
        tx.connection.execute("UPDATE charges SET amount = amount + 1 WHERE message_id = 5")

    write(billing_server, damage)
    damaged = _report(billing_server, shop, month="2027-01")
    assert damaged.total.charged_micros == 114_001 and damaged.ledger_captured_micros == 114_000
    assert not damaged.reconciled


def test_usage_report_refusals(billing_server: LiveServer, shop: Device, person: Device) -> None:
    start_only = pb.GetUsageReportRequest()
    start_only.start.FromSeconds(1)
    reversed_ = pb.GetUsageReportRequest()
    reversed_.start.FromSeconds(100)
    reversed_.end.FromSeconds(100)
    both = pb.GetUsageReportRequest(month="2027-01")
    both.start.FromSeconds(1)
    too_long = pb.GetUsageReportRequest()
    too_long.end.FromSeconds(400 * 86_400)
    too_long.start.FromSeconds(0)
    cases = [
        (pb.GetUsageReportRequest(month="2027-13"), "not a month"),
        (pb.GetUsageReportRequest(month="January"), "not a month"),
        (pb.GetUsageReportRequest(month="9999-12"), "not a month"),
        (pb.GetUsageReportRequest(group_by=9), "group_by"),  # type: ignore[arg-type]
        (start_only, "go together"),
        (reversed_, "empty or reversed"),
        (both, "not both"),
        (too_long, "366 days"),
    ]
    stub = _billing(billing_server)
    for request, text in cases:
        code, message = _code(lambda r=request: stub.GetUsageReport(r, metadata=shop.metadata))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and text in message, (request, message)
    code, _ = _code(
        lambda: stub.GetUsageReport(pb.GetUsageReportRequest(), metadata=person.metadata)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_usage_statements_use_indexes(tmp_path: Any) -> None:
    """Both statements read ranges of the business's own charges by index, never a scan: its
    charges with a SENT sequence between the first and last marked on the period's days, and
    those of before schema 15 by send time; the ledger by its unique key."""

    conn = connect(tmp_path / "plans.db")
    migrate(conn)
    tx = SqliteTransaction(conn)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    for group in UsageGroup:
        tx.usage_by("shop", 0.0, 1.0, group)
    tx.captured_in("shop", 0.0, 1.0)
    conn.set_trace_callback(None)
    assert len(statements) == 4
    for sql in statements:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SCAN charges" not in plan and "SCAN ledger" not in plan, (sql, plan)
        assert "SCAN charge_days" not in plan, (sql, plan)
        for index in ("charges_by_sent_sequence", "charges_before_sequences"):
            assert f"SEARCH charges USING INDEX {index} (business_account_id=?" in plan, plan
    conn.close()


# -- the status event stream --------------------------------------------------------------------


class Follower:
    """Reads a StreamStatusEvents call on a thread, so a test can wait for the next message
    with a timeout."""

    def __init__(self, server: LiveServer, device: Device, cursor: int = 0) -> None:
        self.call: Any = _billing(server).StreamStatusEvents(
            pb.StreamStatusEventsRequest(cursor=cursor), metadata=device.metadata, timeout=60
        )
        self.items: queue.Queue[pb.StreamStatusEventsResponse | grpc.RpcError] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self.call:
                self.items.put(item)
        except grpc.RpcError as exc:
            self.items.put(exc)

    def next(self, timeout: float = 10) -> pb.StreamStatusEventsResponse:
        item = self.items.get(timeout=timeout)
        if isinstance(item, grpc.RpcError):
            raise item
        return item

    def events_until_caught_up(self) -> tuple[list[pb.StatusEvent], int]:
        events: list[pb.StatusEvent] = []
        while True:
            item = self.next()
            if item.HasField("caught_up"):
                return events, item.caught_up.cursor
            assert item.HasField("event"), item
            events.append(item.event)

    def error(self, timeout: float = 10) -> grpc.RpcError:
        while True:
            item = self.items.get(timeout=timeout)
            if isinstance(item, grpc.RpcError):
                return item

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(10)


@pytest.fixture
def follow(billing_server: LiveServer) -> Iterator[Any]:
    followers: list[Follower] = []

    def make(device: Device, cursor: int = 0, server: LiveServer | None = None) -> Follower:
        follower = Follower(server or billing_server, device, cursor)
        followers.append(follower)
        return follower

    yield make
    for follower in followers:
        follower.close()


def _sent_and_delivered(shop: str, person: str, first: int, count: int) -> Any:
    """`count` messages from `first` on: each SENT, the even ones DELIVERED (and captured)."""

    def job(tx: Transaction) -> list[StatusEventRow]:
        tx.top_up(shop, 100 * USD, f"wire-{first}", 1.0, "")
        earlier = tx.status_events_after(shop, 0, 1_000_000)
        after = earlier[-1].event.sequence if earlier else 0
        for message in range(first, first + count):
            charge = _charge(
                message, shop, person, MARKETING, "DE", 89_000, FreeReason.BILLABLE, 2.0
            )
            assert tx.reserve(charge, 2.0).accepted  # the charge is its SENT event
            if message % 2 == 0:
                assert tx.settle_charges([message], ChargeState.CAPTURED, 3.0)
                tx.append_status_events(shop, StatusKind.DELIVERED, [message], 3.0)
        return [v.event for v in tx.status_events_after(shop, after, 1_000_000)]

    return job


def test_status_events_backlog_live_wake_up_and_resume_without_gap_or_duplicate(
    make_server: ServerFactory, follow: Any
) -> None:
    # Keep-alives far apart: a live event that arrives within seconds came by the wake-up.
    server = make_server(admin_token=ADMIN_TOKEN, keepalive_interval=120.0)
    shop = register(server, "+12125550108", apb.ACCOUNT_KIND_BUSINESS)
    person = register(server, GERMAN)
    # A backlog of more than two pages (a stream holds one page at a time).
    backlog = write(server, _sent_and_delivered(shop.account_id, person.account_id, 1, 160))
    assert [r.sequence for r in backlog] == list(range(1, 241))
    follower = follow(shop, 0, server)
    events, cursor = follower.events_until_caught_up()
    assert [e.sequence for e in events] == list(range(1, 241)) and cursor == 240
    sent, delivered = events[0], events[2]
    assert (sent.kind, sent.message_id, sent.recipient_account_id) == (
        pb.STATUS_EVENT_KIND_SENT, 1, person.account_id,
    )  # fmt: skip
    # A SENT event names the RESERVE entry holding its price (here one per message: a send
    # of one), which says how many messages' prices it holds.
    reserve = write(
        server,
        lambda tx: tx.connection.execute(
            "SELECT entry_id, kind, amount, message_id, message_count FROM ledger"
            " WHERE entry_id = (SELECT reserve_entry FROM charges WHERE message_id = 1)"
        ).fetchone(),
    )
    assert sent.pricing.billable and sent.pricing.ledger_entry_id == reserve[0] != 0
    assert tuple(reserve[1:]) == (int(EntryKind.RESERVE), -89_000, None, 1)
    assert (delivered.kind, delivered.message_id) == (pb.STATUS_EVENT_KIND_DELIVERED, 2)
    pricing = delivered.pricing
    assert (pricing.amount_micros, pricing.currency, pricing.country, pricing.category) == (
        89_000, "USD", "DE", mpb.MESSAGE_CATEGORY_MARKETING,
    )  # fmt: skip
    capture = write(  # the message's CAPTURE entry, by the ledger's unique key
        server,
        lambda tx: tx.connection.execute(
            "SELECT entry_id FROM ledger WHERE message_id = 2 AND kind = 3"
        ).fetchone()[0],
    )
    assert pricing.ledger_entry_id == capture != 0
    assert pricing.explanation == "test" and pricing.price_table_version == 1

    live = write(server, _sent_and_delivered(shop.account_id, person.account_id, 161, 2))
    started = time.monotonic()
    wake(server, shop.account_id)
    got = [follower.next(timeout=10).event for _ in live]
    assert time.monotonic() - started < 10
    assert [e.sequence for e in got] == [241, 242, 243]

    # A client that saw up to 241 resumes: 242 and 243, nothing before, nothing twice.
    follower.close()
    resumed = follow(shop, 241, server)
    events, cursor = resumed.events_until_caught_up()
    assert [e.sequence for e in events] == [242, 243] and cursor == 243


def test_a_lost_wake_up_costs_one_keep_alive_interval(
    make_server: ServerFactory, follow: Any
) -> None:
    server = make_server(keepalive_interval=0.5)
    shop = register(server, "+12125550109", apb.ACCOUNT_KIND_BUSINESS)
    person = register(server, GERMAN)
    follower = follow(shop, 0, server)
    assert follower.events_until_caught_up() == ([], 0)
    write(server, _sent_and_delivered(shop.account_id, person.account_id, 1, 1))  # no wake
    kinds: list[str | None] = []
    while not kinds or kinds[-1] != "event":
        kinds.append(follower.next(timeout=10).WhichOneof("kind"))
    assert kinds[0] == "keep_alive"


def test_status_stream_refusals_and_revocation(
    billing_server: LiveServer, shop: Device, person: Device, follow: Any
) -> None:
    code = follow(person).error().code()
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    agent = link(billing_server, shop, "events-desk")
    follower = follow(agent)
    assert follower.events_until_caught_up() == ([], 0)
    account_pb2_grpc.AccountServiceStub(billing_server.channel()).RemoveDevice(
        apb.RemoveDeviceRequest(device_id=agent.device_id), metadata=shop.metadata
    )
    error = follower.error()
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_status_stream_ends_unavailable_at_shutdown(
    billing_server: LiveServer, shop: Device, follow: Any
) -> None:
    follower = follow(shop)
    assert follower.events_until_caught_up() == ([], 0)

    async def close(parts: ParleyServer) -> None:
        parts.status_feed.close()  # what ParleyServer.stop does first

    billing_server.run(close)
    error = follower.error()
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE
