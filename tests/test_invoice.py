"""The monthly statement (client.invoice) from constructed BillingService replies: exact sums
of a month with top-ups, captures, releases and a message still pending, the CSV read back, the
chart (one bar per day with spend) as PNG and the statement as PDF, and the one-line hint when
matplotlib is missing. Amount text and parsing (client.money) are checked here too."""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from parley.v1 import billing_pb2 as bpb

from client import invoice
from client.money import AmountError, format_micros, parse_amount

TOP_UP, RESERVE, CAPTURE, RELEASE = (
    bpb.LEDGER_ENTRY_KIND_TOP_UP,
    bpb.LEDGER_ENTRY_KIND_RESERVE,
    bpb.LEDGER_ENTRY_KIND_CAPTURE,
    bpb.LEDGER_ENTRY_KIND_RELEASE,
)


def ts(text: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return stamp


def entry(
    entry_id: int, kind: int, amount: int, available: int, reserved: int, at: str
) -> bpb.LedgerEntry:
    return bpb.LedgerEntry(
        entry_id=entry_id,
        kind=kind,  # type: ignore[arg-type]
        amount_micros=amount,
        available_after_micros=available,
        reserved_after_micros=reserved,
        at=ts(at),
    )


# A business's ledger, written out by hand, balances after each entry included: October's
# top-up and one send, November's month, and December's capture of November's last send.
LEDGER = [
    entry(1, TOP_UP, 10_000_000, 10_000_000, 0, "2026-10-20T09:00:00"),
    entry(2, RESERVE, -25_000, 9_975_000, 25_000, "2026-10-31T23:00:00"),
    entry(3, CAPTURE, 25_000, 9_975_000, 0, "2026-11-01T08:00:00"),  # October's message
    entry(4, TOP_UP, 50_000_000, 59_975_000, 0, "2026-11-03T09:00:00"),
    entry(5, RESERVE, -89_000, 59_886_000, 89_000, "2026-11-03T10:00:00"),  # DE marketing
    entry(6, RESERVE, -5_000, 59_881_000, 94_000, "2026-11-03T10:05:00"),  # US utility
    entry(7, CAPTURE, 89_000, 59_881_000, 5_000, "2026-11-03T10:06:00"),
    entry(8, RELEASE, 5_000, 59_886_000, 0, "2026-11-04T10:05:00"),  # the utility one expired
    entry(9, RESERVE, -52_900, 59_833_100, 52_900, "2026-11-10T12:00:00"),  # GB marketing
    entry(10, CAPTURE, 52_900, 59_833_100, 0, "2026-11-10T12:01:00"),
    entry(11, RESERVE, -25_000, 59_808_100, 25_000, "2026-11-30T23:00:00"),  # US, pending
    entry(12, CAPTURE, 25_000, 59_808_100, 0, "2026-12-01T01:00:00"),  # not November's
]


def row(key: str, **counts: int) -> bpb.UsageRow:
    return bpb.UsageRow(key=key, **counts)


TOTAL = row(
    "",
    sent=6, delivered=4, billable=2, free_service_window=1, free_entry_window=1,
    not_delivered=1, pending=1, charged_micros=141_900, reserved_micros=25_000,
)  # fmt: skip
DAYS = [
    row(
        "2026-11-03",
        sent=3,
        delivered=2,
        billable=1,
        free_service_window=1,
        not_delivered=1,
        charged_micros=89_000,
    ),
    row("2026-11-10", sent=2, delivered=2, billable=1, free_entry_window=1, charged_micros=52_900),
    row("2026-11-30", sent=1, pending=1, reserved_micros=25_000),
]
CATEGORIES = [
    row(
        "MARKETING",
        sent=4,
        delivered=3,
        billable=2,
        free_entry_window=1,
        pending=1,
        charged_micros=141_900,
        reserved_micros=25_000,
    ),
    row("SERVICE", sent=1, delivered=1, free_service_window=1),
    row("UTILITY", sent=1, not_delivered=1),
]
COUNTRIES = [
    row("BR", sent=1, delivered=1, free_entry_window=1),
    row("DE", sent=1, delivered=1, billable=1, charged_micros=89_000),
    row("GB", sent=1, delivered=1, billable=1, charged_micros=52_900),
    row(
        "US",
        sent=3,
        delivered=1,
        free_service_window=1,
        not_delivered=1,
        pending=1,
        reserved_micros=25_000,
    ),
]


def report(rows: list[bpb.UsageRow], month: str = "11") -> bpb.GetUsageReportResponse:
    return bpb.GetUsageReportResponse(
        start=ts(f"2026-{month}-01T00:00:00"),
        end=ts("2026-12-01T00:00:00"),
        currency="USD",
        rows=rows,
        total=TOTAL,
        ledger_captured_micros=141_900,
        reconciled=True,
    )


def statement(ledger: list[bpb.LedgerEntry] = LEDGER) -> invoice.Statement:
    return invoice.build_statement(
        business_name="Acme Shoes",
        business_account_id="acct-acme",
        by_day=report(DAYS),
        by_category=report(CATEGORIES),
        by_country=report(COUNTRIES),
        ledger=reversed(ledger),  # any order: the entry ids order it
    )


def test_the_statement_sums_the_months_ledger_exactly() -> None:
    s = statement()
    assert s.month == "2026-11" and s.last_day.isoformat() == "2026-11-30"
    assert (s.opening_available, s.opening_reserved) == (9_975_000, 25_000)
    assert s.opening == 10_000_000
    assert s.top_ups == invoice.Movement(1, 50_000_000)
    assert s.charges == invoice.Movement(3, 25_000 + 89_000 + 52_900)
    assert s.releases == invoice.Movement(1, 5_000)
    assert s.reserves == invoice.Movement(4, 89_000 + 5_000 + 52_900 + 25_000)
    assert s.adjustments == invoice.Movement()
    assert (s.closing_available, s.closing_reserved) == (59_808_100, 25_000)
    assert s.closing == s.expected_closing == 59_833_100 and s.balanced
    # Usage counts messages by send day: October's message charged on 1 November is not in it.
    assert s.total.charged_micros == 141_900 and s.total.free == 2
    assert [(d.isoformat(), m) for d, m in s.daily_spend()] == [
        ("2026-11-03", 89_000),
        ("2026-11-10", 52_900),
    ]


def test_a_month_without_entries_keeps_the_opening_balance() -> None:
    s = statement(LEDGER[:2])
    assert s.opening == s.closing == 10_000_000 and s.balanced
    assert s.charges == invoice.Movement() and (s.closing_reserved == 25_000)


def test_the_text_statement_shows_balances_totals_and_the_daily_spend() -> None:
    text = invoice.render_text(statement())
    assert text.startswith("Statement 2026-11 — Acme Shoes (account acct-acme)\n")
    assert "Period: 1 Nov 2026 to 30 Nov 2026 (UTC), amounts in USD" in text
    assert re.search(r"Opening balance on 1 Nov 2026 +10\.00 *\n", text)
    assert re.search(r"\+ Top-ups \(1\) +50\.00 *\n", text)
    assert re.search(r"- Charges for delivered messages \(3\) +-0\.1669 *\n", text)
    assert re.search(r"Closing balance on 30 Nov 2026 +59\.8331 *\n", text)
    assert re.search(r"reserved for messages on their way +0\.025 *\n", text)
    assert "released for undelivered ones: 1 (0.005)" in text
    assert re.search(r"\n  MARKETING +4 +3 +2 +0 +1 +0 +0 +1 +0\.1419 *\n", text)
    assert re.search(r"\n  US +3 +1 +0 +1 +0 +0 +1 +1 +0\.00 *\n", text)
    assert re.search(r"\n  TOTAL +6 +4 +2 +1 +1 +0 +1 +1 +0\.1419 *\n", text)
    assert "WARNING" not in text
    bars = re.findall(r"\n  (2026-11-\d\d) +([\d.]+) +(█+)", text)
    assert [(day, amount, len(bar)) for day, amount, bar in bars] == [
        ("2026-11-03", "0.089", invoice.BAR_WIDTH),
        ("2026-11-10", "0.0529", 52_900 * invoice.BAR_WIDTH // 89_000),
    ]


def test_a_ledger_that_does_not_add_up_is_flagged() -> None:
    damaged = [*LEDGER[:10], entry(11, RESERVE, -25_000, 59_808_000, 25_000, "2026-11-30T23:00")]
    s = statement(damaged)
    assert not s.balanced
    assert "the closing balance should be 59.8331" in invoice.render_text(s)


def test_reports_of_different_months_make_no_statement() -> None:
    with pytest.raises(invoice.StatementError, match="same month"):
        invoice.build_statement(
            business_name="",
            business_account_id="a",
            by_day=report(DAYS),
            by_category=report(CATEGORIES, month="10"),
            by_country=report(COUNTRIES),
            ledger=LEDGER,
        )


def test_the_csv_reads_back_to_the_same_numbers() -> None:
    buffer = io.StringIO()
    invoice.write_csv(statement(), buffer)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert list(rows[0]) == list(invoice.CSV_COLUMNS)
    for section, groups in (("day", DAYS), ("category", CATEGORIES), ("country", COUNTRIES)):
        part = [r for r in rows if r["section"] == section]
        assert [r["key"] for r in part] == [g.key for g in groups] + ["TOTAL"]
        charged = sum(Decimal(r["charged"]) for r in part[:-1])
        assert charged == Decimal(part[-1]["charged"]) == Decimal("0.1419")
        assert sum(int(r["sent"]) for r in part[:-1]) == int(part[-1]["sent"]) == 6
    balance = {r["key"]: Decimal(r["amount"]) for r in rows if r["section"] == "balance"}
    assert balance["opening_balance"] + balance["top_ups"] + balance["charges"] == Decimal(
        "59.8331"
    )
    assert balance["closing_balance"] == Decimal("59.8331")
    assert balance["released"] == Decimal("0.005")
    assert {r["currency"] for r in rows} == {"USD"}
    assert "charged_micros" not in rows[0], "decimal amounts are not named micros"


def test_the_json_statement_keeps_micros_and_iso_times() -> None:
    data = json.loads(json.dumps(invoice.statement_data(statement())))
    assert data["start"] == "2026-11-01T00:00:00+00:00" and data["month"] == "2026-11"
    assert data["charges"] == {"count": 3, "micros": 166_900}
    assert (data["opening_micros"], data["closing_micros"], data["balanced"]) == (
        10_000_000,
        59_833_100,
        True,
    )
    assert data["by_country"][1].items() >= {"key": "DE", "charged_micros": 89_000}.items()


matplotlib = pytest.importorskip("matplotlib", reason="pip install 'parley[invoice]'")


def test_the_chart_has_one_bar_per_day_with_spend() -> None:
    figure = invoice.chart_figure(statement())
    (axes,) = figure.axes
    from matplotlib.patches import Rectangle

    bars = [p for p in axes.patches if isinstance(p, Rectangle)]
    assert len(bars) == len(axes.patches) == 2
    assert [round(b.get_x() + b.get_width() / 2) for b in bars] == [3, 10]
    assert [b.get_height() for b in bars] == [0.089, 0.0529]
    assert axes.get_xlim() == (0.5, 30.5)
    assert "total 0.1419 USD" in axes.get_title()


def test_the_png_decodes_at_its_size() -> None:
    from PIL import Image

    png = invoice.chart_png(statement())
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (827, 420)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.size == (827, 420)
        assert len(image.getcolors(1 << 16) or []) > 10, "a chart, not a blank image"


def test_the_pdf_has_the_statement_and_the_chart(tmp_path: Path) -> None:
    path = tmp_path / "statement.pdf"
    pages = invoice.write_pdf(statement(), path)
    data = path.read_bytes()
    assert data.startswith(b"%PDF-")
    assert pages == 2 == len(re.findall(rb"/Type /Page\b", data))


def test_without_matplotlib_the_chart_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(invoice.ChartUnavailable, match=re.escape("pip install 'parley[invoice]'")):
        invoice.chart_png(statement())
    with pytest.raises(invoice.ChartUnavailable):
        invoice.write_pdf(statement(), tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()


# --- client.money -----------------------------------------------------------------------------


def test_amounts_read_and_written_exactly() -> None:
    assert parse_amount("25.00") == 25_000_000
    assert parse_amount("0.000001") == 1
    assert parse_amount(" 7 ") == 7_000_000
    assert format_micros(25_000_000, "USD") == "25.00 USD"
    assert format_micros(5_000) == "0.005"
    assert format_micros(-1_234_567_890, grouped=True) == "-1,234.56789"
    for bad, why in (
        ("0.0000001", "7 decimals"),
        ("-5", "not an amount"),
        ("1e3", "not an amount"),
        ("0.000", "zero"),
        ("1,000", "not an amount"),
        ("", "not an amount"),
        ("١٢", "not an amount"),
    ):
        with pytest.raises(AmountError, match=why):
            parse_amount(bad)


@given(st.integers(min_value=1, max_value=10**15))
def test_formatted_amounts_parse_back(micros: int) -> None:
    assert parse_amount(format_micros(micros)) == micros


def test_the_readme_shows_what_the_statement_prints() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    marker = "checks that this is what client/invoice.py prints. -->\n```text\n"
    shown = readme.split(marker, 1)[1].split("\n```\n", 1)[0]
    assert shown == invoice.render_text(statement())
