"""The billing commands of the ``parley`` CLI (client.cli_billing).

Argument parsing (exact amounts, months, times with a zone), the operator's missing token and
the missing chart extra run everywhere. The rendering functions are checked on constructed
replies. The story over a live server — top-up (idempotent by reference), balance, prices,
quote, a free service reply delivered and seen in events, usage and the invoice with its CSV,
PNG and PDF, a new price table — skips while the server does not serve BillingService.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from parley.v1 import billing_pb2 as bpb
from parley.v1 import messaging_pb2 as mpb

from client import cli, cli_billing
from client.api import ParleyClient
from client.billing_api import CATEGORIES
from tests.client_helpers import closing, drain, registered
from tests.conftest import LiveServer, ServerFactory
from tests.test_client_cli import failed, lines, ok, parley

SHOP = "+15550003333"
PERSON = "+15550001111"
PROBE = "+15550004444"
CODES = {SHOP: "333333", PERSON: "123456", PROBE: "444444"}
TOKEN = "operator-secret-token-0123456789"


def stamp(text: str) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(datetime.fromisoformat(text))
    return t


# --- arguments --------------------------------------------------------------------------------


def parse(*argv: str) -> dict[str, Any]:
    return vars(cli.build_parser().parse_args(list(argv)))


def has(parsed: dict[str, Any], **expected: Any) -> bool:
    return parsed.items() >= expected.items()


def test_the_commands_parse_into_what_the_calls_need() -> None:
    args = parse("admin", "top-up", "acct", "25.00", "--reference", "pay-1", "--note", "Nov")
    assert has(args, action="top-up", business="acct", amount=25_000_000, reference="pay-1")
    assert has(args, note="Nov")
    assert parse("admin", "top-up", "a", "0.000001", "--reference", "r")["amount"] == 1
    assert parse("admin", "top-up", "a", "12", "--reference", "r")["amount"] == 12_000_000
    args = parse("admin", "prices", "set", "t.toml", "--at", "2026-12-01T00:00:00Z")
    assert has(args, action="prices", prices_action="set", file=Path("t.toml"))
    assert args["at"] == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse("admin", "prices", "set", "t.toml")["at"] is None
    args = parse("business", "usage", "--month", "2026-11", "--by", "country")
    assert has(args, area="usage", month="2026-11", by="country")
    assert has(parse("business", "usage"), month="", by="day")
    args = parse("business", "invoice", "--month", "2026-02", "--csv", "a.csv", "--pdf", "a.pdf")
    assert has(args, area="invoice", csv=Path("a.csv"), pdf=Path("a.pdf"), png=None)
    assert has(parse("business", "events", "--follow", "--cursor", "7"), follow=True, cursor=7)
    args = parse("business", "quote", PERSON, "--category", "service")
    assert has(args, area="quote", user=PERSON)
    assert CATEGORIES[args["category"]] == mpb.MESSAGE_CATEGORY_SERVICE
    assert has(parse("prices", "--json"), command="prices", json=True)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["admin", "top-up", "a", "1.0000001", "--reference", "r"], "at most 6"),
        (["admin", "top-up", "a", "-5", "--reference", "r"], "not an amount"),
        (["admin", "top-up", "a", "0", "--reference", "r"], "above 0"),
        (["admin", "top-up", "a", "2.5e3", "--reference", "r"], "not an amount"),
        (["admin", "top-up", "a", "25.00"], "--reference"),
        (["admin", "prices", "set", "t.toml", "--at", "2026-12-01T00:00"], "no time zone"),
        (["admin", "prices", "set", "t.toml", "--at", "tomorrow"], "not an ISO 8601 time"),
        (["business", "usage", "--month", "2026-13"], "write it like 2026-11"),
        (["business", "invoice", "--month", "Nov"], "write it like 2026-11"),
        (["business", "quote", PERSON, "--category", "promo"], "invalid choice"),
    ],
)
def test_bad_arguments_are_usage_errors_that_say_why(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--json", *argv]) == cli.EXIT_USAGE
    error = json.loads(capsys.readouterr().err)
    assert error["code"] == "USAGE" and why in error["error"], error


def test_operator_commands_need_the_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PARLEY_ADMIN_TOKEN", raising=False)
    argv = ["--profile", str(tmp_path / "op"), "--server", "localhost:1"]
    assert cli.main([*argv, "admin", "top-up", "a", "1", "--reference", "r"]) == 1
    assert "pass --admin-token TOKEN or set PARLEY_ADMIN_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "op").exists(), "nothing stored, no profile left behind"


def test_without_matplotlib_the_pdf_names_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    argv = ["--profile", str(tmp_path / "p"), "--server", "localhost:1", "business", "invoice"]
    assert cli.main([*argv, "--pdf", str(tmp_path / "s.pdf")]) == 1
    err = capsys.readouterr().err
    assert err == "parley: the chart and the PDF need matplotlib: pip install 'parley[invoice]'\n"
    assert not (tmp_path / "s.pdf").exists()


# --- rendering --------------------------------------------------------------------------------


def test_the_price_list_reads_by_category_with_the_default_row_first() -> None:
    rows = [
        bpb.PriceRow(category=mpb.MESSAGE_CATEGORY_MARKETING, country=c, amount_micros=a)
        for c, a in (("DE", 89_000), ("*", 25_000), ("BR", 62_500))
    ]
    rows.append(
        bpb.PriceRow(category=mpb.MESSAGE_CATEGORY_SERVICE, country="*", amount_micros=5000)
    )
    current = bpb.PriceTable(
        version=3, effective_at=stamp("2026-11-01T00:00:00+00:00"), currency="USD", rows=rows
    )
    text = cli_billing.prices_text(bpb.GetPriceListResponse(current=current))
    assert text.splitlines()[:3] == [
        "price table v3 (USD), in force since 2026-11-01 00:00:00 UTC:",
        "  MARKETING      * 0.025 · BR 0.0625 · DE 0.089",
        "  SERVICE        * 0.005",
    ]
    later = bpb.PriceTable(version=4, effective_at=stamp("2026-12-01T00:00:00+00:00"))
    text = cli_billing.prices_text(bpb.GetPriceListResponse(current=current, next=later))
    assert "price table v4 (), takes over at 2026-12-01 00:00:00 UTC:" in text


def test_balances_prices_and_events_read_as_amounts_not_micros() -> None:
    balance = bpb.GetBalanceResponse(
        available_micros=24_911_000, reserved_micros=89_000, currency="USD"
    )
    assert cli_billing.balance_text(balance) == (
        "available 24.911 USD, reserved 0.089 USD for messages on their way"
    )
    charged = bpb.Pricing(
        billable=True, category=mpb.MESSAGE_CATEGORY_MARKETING, country="DE",
        amount_micros=89_000, currency="USD", price_table_version=2, ledger_entry_id=41,
    )  # fmt: skip
    free = bpb.Pricing(
        billable=False, free_reason=bpb.FREE_REASON_SERVICE_WINDOW,
        category=mpb.MESSAGE_CATEGORY_SERVICE, country="US", currency="USD",
        price_table_version=2,
    )  # fmt: skip
    at = stamp("2026-11-28T10:00:00+00:00")

    def event(kind: bpb.StatusEventKind.ValueType, pricing: bpb.Pricing, reason: str = "") -> str:
        e = bpb.StatusEvent(
            sequence=9, kind=kind, message_id=77, at=at, pricing=pricing, reason=reason
        )
        return cli_billing.event_text(e, PERSON)

    head = f"#9 %s message 77 to {PERSON} at 2026-11-28 10:00:00 UTC: "
    assert event(bpb.STATUS_EVENT_KIND_DELIVERED, charged) == head % "DELIVERED" + (
        "charged 0.089 USD: MARKETING to DE, price table v2, ledger entry 41"
    )
    assert event(bpb.STATUS_EVENT_KIND_SENT, charged) == head % "SENT" + (
        "0.089 USD: MARKETING to DE, price table v2 (reserved, ledger entry 41)"
    )
    assert event(bpb.STATUS_EVENT_KIND_DELIVERED, free) == head % "DELIVERED" + (
        "free (inside the 24-hour customer-service window): SERVICE to US, price table v2"
    )
    assert event(bpb.STATUS_EVENT_KIND_EXPIRED, charged, "no device took it") == (
        head % "EXPIRED" + "no device took it: nothing charged; 0.089 USD released"
    )
    assert event(bpb.STATUS_EVENT_KIND_FAILED, free, "blocked") == (
        head % "FAILED" + "blocked: nothing charged"
    )


def test_the_usage_report_is_a_table_with_its_reconciliation() -> None:
    report = bpb.GetUsageReportResponse(
        start=stamp("2026-11-01T00:00:00+00:00"),
        end=stamp("2026-12-01T00:00:00+00:00"),
        currency="USD",
        rows=[
            bpb.UsageRow(key="DE", sent=2, delivered=2, billable=2, charged_micros=178_000),
            bpb.UsageRow(key="US", sent=1, pending=1, reserved_micros=25_000),
        ],
        total=bpb.UsageRow(sent=3, delivered=2, billable=2, pending=1, charged_micros=178_000),
        ledger_captured_micros=178_000,
        reconciled=True,
    )
    text = cli_billing.usage_text(report, "country")
    assert text.startswith(
        "usage from 2026-11-01 00:00 to 2026-12-01 00:00 UTC (messages by send time), by country:"
    )
    assert re.search(r"\n  DE +2 +2 +2 +0 +0 +0 +0 +0 +0\.178\n", text)
    assert re.search(r"\n  US +1 +0 +0 +0 +0 +0 +0 +1 +0\.00\n", text)
    assert re.search(r"\n  TOTAL +3 +2 +2 +0 +0 +0 +0 +1 +0\.178\n", text)
    assert text.endswith("the ledger captured 0.178 USD for these messages: reconciled")
    report.reconciled = False
    assert "NOT reconciled" in cli_billing.usage_text(report, "country")


# --- over a live server -----------------------------------------------------------------------


@pytest.fixture
def billing_server(make_server: ServerFactory) -> LiveServer:
    """A server with an admin token and metered delivery on."""
    return make_server(test_numbers=CODES, admin_token=TOKEN, billing=True)


def test_a_business_month_with_the_cli(billing_server: LiveServer, tmp_path: Path) -> None:
    server = billing_server
    shop, person = tmp_path / "shop", tmp_path / "person"
    (me,) = lines(
        ok(parley(server, shop, "register", SHOP, "--code", CODES[SHOP], "--business", "--json"))
    )
    ok(parley(server, person, "register", PERSON, "--code", CODES[PERSON]))
    admin = ("--admin-token", TOKEN)

    assert ok(parley(server, person, "prices")).startswith("price table v1 (USD), in force since")
    added = ok(parley(server, shop, "admin", "top-up", SHOP, "25.00", "--reference", "p1", *admin))
    assert added.startswith(f"added 25.00 to {SHOP} (ledger entry ")
    again = ok(parley(server, shop, "admin", "top-up", SHOP, "30", "--reference", "p1", *admin))
    assert "'p1' was used before" in again and "nothing added now" in again
    balance = ok(parley(server, shop, "business", "balance"))
    assert balance == "available 25.00 USD, reserved 0.00 USD for messages on their way\n"
    quote = ok(parley(server, shop, "business", "quote", PERSON, "--category", "marketing"))
    assert quote.startswith(f"{PERSON}: 0.025 USD: MARKETING to ")

    # The person writes first: the business's reply is free inside the service window.
    ok(parley(server, person, "send", SHOP, "is my order on its way?"))
    ok(parley(server, shop, "listen", "--once"))
    ok(parley(server, shop, "send", PERSON, "yes, it left this morning"))
    ok(parley(server, person, "listen", "--once"))  # the ack delivers it

    events = lines(ok(parley(server, shop, "business", "events", "--json")))
    assert [e["kind"] for e in events] == ["STATUS_EVENT_KIND_SENT", "STATUS_EVENT_KIND_DELIVERED"]
    assert events[1]["pricing"]["free_reason"] == "FREE_REASON_SERVICE_WINDOW"
    shown = ok(parley(server, shop, "business", "events", "--cursor", events[0]["sequence"]))
    assert "DELIVERED" in shown and "free (inside the 24-hour customer-service window)" in shown
    last = events[1]["sequence"]
    assert ok(parley(server, shop, "business", "events", "--cursor", last)).startswith(
        f"no status events after #{last}"
    )

    usage = ok(parley(server, shop, "business", "usage", "--by", "category"))
    assert re.search(r"\n  SERVICE +1 +1 +0 +1 ", usage) and usage.rstrip().endswith("reconciled")

    files = {kind: tmp_path / f"statement.{kind}" for kind in ("csv", "pdf", "png")}
    flags = [arg for kind, path in files.items() for arg in (f"--{kind}", str(path))]
    statement = ok(parley(server, shop, "business", "invoice", *flags))
    assert statement.startswith("Statement ") and f"(account {me['account_id']})" in statement
    assert re.search(r"\+ Top-ups \(1\) +25\.00", statement)
    assert re.search(r"Closing balance on .* +25\.00", statement)
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    (total,) = (r for r in rows if r["section"] == "category" and r["key"] == "TOTAL")
    assert (total["sent"], total["free_service_window"], total["charged"]) == (
        "1",
        "1",
        "0.00",
    )
    assert files["pdf"].read_bytes().startswith(b"%PDF-")
    assert files["png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    table = tmp_path / "prices.toml"
    shipped = Path(__file__).parents[1] / "server" / "domain" / "default_prices.toml"
    table.write_text(shipped.read_text().replace('"*" = "0.0250"', '"*" = "0.0300"', 1))
    tomorrow = datetime.fromtimestamp(server.clock.now(), UTC) + timedelta(days=1)
    at = tomorrow.strftime("%Y-%m-%dT%H:%M:%SZ")
    stored = ok(parley(server, shop, "admin", "prices", "set", str(table), "--at", at, *admin))
    assert stored.startswith("price table v2 (USD, ")
    assert "takes over at" in ok(parley(server, person, "prices"))
    refused = failed(parley(server, person, "business", "balance"))
    assert refused.startswith("parley: ")


def test_the_client_library_pages_the_ledger_and_resumes_events(
    billing_server: LiveServer, tmp_path: Path
) -> None:
    """client.billing: the ledger iterator follows page tokens to the end; the event stream
    resumed from a cursor gives exactly the events after it."""

    async def body() -> None:
        shop = await registered(billing_server, tmp_path / "shop", SHOP, business=True)
        person = await registered(billing_server, tmp_path / "person", PERSON)
        await closing([shop, person], lambda: story(shop, person))

    async def story(shop: ParleyClient, person: ParleyClient) -> None:
        operator = shop.billing.operator(TOKEN)
        for n, amount in enumerate((1_000_000, 2_500_000, 500_001)):
            assert (await operator.top_up(shop.account_id, amount, f"ref-{n}")).applied
        repeated = await operator.top_up(shop.account_id, 9_000_000, "ref-1")
        assert not repeated.applied and repeated.entry.amount_micros == 2_500_000
        entries = [e async for e in shop.billing.ledger(page_size=2)]
        assert [e.amount_micros for e in entries] == [1_000_000, 2_500_000, 500_001]
        assert [e.available_after_micros for e in entries] == [1_000_000, 3_500_000, 4_000_001]
        first = await shop.billing.ledger_page(page_size=2)
        assert len(first.entries) == 2 and first.next_page_token
        assert (await shop.billing.balance()).available_micros == 4_000_001

        seen: list[bpb.StatusEvent] = []

        async def watch() -> None:
            async for event in shop.billing.events(0, follow=True):
                seen.append(event)

        watcher = asyncio.create_task(watch())
        try:
            await person.send(SHOP, "hello?")
            await drain(shop)
            await shop.send(PERSON, "hello, how can we help?")
            await drain(person)  # acknowledged: delivered
            for _ in range(500):
                if len(seen) >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        kinds = [bpb.StatusEventKind.Name(e.kind) for e in seen]
        assert kinds == ["STATUS_EVENT_KIND_SENT", "STATUS_EVENT_KIND_DELIVERED"]
        assert seen[1].sequence > seen[0].sequence
        resumed = [e async for e in shop.billing.events(seen[0].sequence)]
        assert resumed == seen[1:]
        assert [e async for e in shop.billing.events(seen[1].sequence)] == []

    asyncio.run(body())
