"""A business's monthly statement, made from what BillingService returns: no network here.

:func:`build_statement` takes the month's usage report three times (grouped by day, by
category and by country) and the business's ledger, and makes a :class:`Statement`: the
balance at the start of the month, what came in (top-ups, the operator's adjustments), what was
charged for delivered messages, what was held for sends and released for the ones never
delivered, the balance at the end; then the month's messages by category and by country (how
many, billable or free and why, the amount) and the spend of each day. Everything is summed in
integer micro-units and checked: the closing balance must equal the opening balance plus
top-ups and adjustments minus charges, or the statement says the books do not add up.

Two clocks meet in a statement, and it says which is which. The balance section follows the
ledger: a charge belongs to the month it was *captured* in. The usage sections follow the
report: a message belongs to the month it was *sent* in (the server reconciles each report
with the ledger's captures of those messages). A message sent on the 30th and delivered on the
1st is in November's usage and December's charges.

Outputs: :func:`render_text` for the terminal, :func:`write_csv` (one row per group and the
totals, then the balance lines), :func:`chart_png` (a bar per day with spend) and
:func:`write_pdf` (the statement, then the chart). The chart and the PDF need matplotlib, an
optional extra (``pip install 'parley[invoice]'``) kept out of the runtime installation;
without it they raise :class:`ChartUnavailable`, whose message says so.
"""

from __future__ import annotations

import calendar
import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from parley.v1 import billing_pb2 as bpb

from client.money import MICROS, format_micros

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT: Final = "pip install 'parley[invoice]'"
A4_INCHES: Final = (8.27, 11.69)
PDF_LINES_PER_PAGE: Final = 70
BAR_WIDTH: Final = 40
"""Characters of the longest bar of the text chart."""


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed: the PNG chart and the PDF cannot be drawn."""


class StatementError(ValueError):
    """The reports given do not describe one period of one business."""


@dataclass(frozen=True)
class Group:
    """One row of the usage report (a day, a category, a country, or the total); amounts in
    micro-units."""

    key: str
    sent: int
    delivered: int
    billable: int
    free_service_window: int
    free_entry_window: int
    free_allowance: int
    not_delivered: int
    pending: int
    charged_micros: int
    reserved_micros: int

    @classmethod
    def of(cls, row: bpb.UsageRow, key: str | None = None) -> Group:
        return cls(
            key=row.key if key is None else key,
            sent=row.sent,
            delivered=row.delivered,
            billable=row.billable,
            free_service_window=row.free_service_window,
            free_entry_window=row.free_entry_window,
            free_allowance=row.free_allowance,
            not_delivered=row.not_delivered,
            pending=row.pending,
            charged_micros=row.charged_micros,
            reserved_micros=row.reserved_micros,
        )

    @property
    def free(self) -> int:
        return self.free_service_window + self.free_entry_window + self.free_allowance


@dataclass(frozen=True)
class Movement:
    """The ledger entries of one kind in the month: how many, and their amounts summed."""

    count: int = 0
    micros: int = 0

    def plus(self, micros: int) -> Movement:
        return Movement(self.count + 1, self.micros + micros)


@dataclass(frozen=True)
class Statement:
    """One month of one business (see the module docstring); amounts in micro-units."""

    business_name: str
    business_account_id: str
    start: datetime
    end: datetime
    currency: str
    opening_available: int
    opening_reserved: int
    top_ups: Movement
    adjustments: Movement
    reserves: Movement
    charges: Movement
    releases: Movement
    closing_available: int
    closing_reserved: int
    by_day: tuple[Group, ...]
    by_category: tuple[Group, ...]
    by_country: tuple[Group, ...]
    total: Group
    reconciled: bool
    """The server found each report's charges equal to the ledger's captures."""

    @property
    def month(self) -> str:
        return f"{self.start.year:04d}-{self.start.month:02d}"

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).date()

    @property
    def opening(self) -> int:
        return self.opening_available + self.opening_reserved

    @property
    def closing(self) -> int:
        return self.closing_available + self.closing_reserved

    @property
    def expected_closing(self) -> int:
        """What the closing balance must be: money held for a send is still the business's,
        so only top-ups, adjustments and charges change the balance."""
        return self.opening + self.top_ups.micros + self.adjustments.micros - self.charges.micros

    @property
    def balanced(self) -> bool:
        return self.expected_closing == self.closing

    def daily_spend(self) -> list[tuple[date, int]]:
        """(day, micro-units charged for the messages sent that day), for the days with spend."""
        return [
            (date.fromisoformat(g.key), g.charged_micros) for g in self.by_day if g.charged_micros
        ]


def _when(stamp: bpb.LedgerEntry | bpb.GetUsageReportResponse, field: str) -> datetime:
    value = getattr(stamp, field)
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=value.ToMicroseconds())


def build_statement(
    *,
    business_name: str,
    business_account_id: str,
    by_day: bpb.GetUsageReportResponse,
    by_category: bpb.GetUsageReportResponse,
    by_country: bpb.GetUsageReportResponse,
    ledger: Iterable[bpb.LedgerEntry],
) -> Statement:
    """The statement of the reports' period from the three usage reports of that period and
    the ledger (all of it, or at least everything up to the period's end: the opening balance
    is the balance after the last entry before the period)."""
    reports = (by_day, by_category, by_country)
    periods = {(r.start.ToMicroseconds(), r.end.ToMicroseconds(), r.currency) for r in reports}
    if len(periods) != 1:
        raise StatementError(
            "the three usage reports cover different periods or currencies: ask for the same"
            " month each time"
        )
    start, end = _when(by_day, "start"), _when(by_day, "end")
    before: bpb.LedgerEntry | None = None
    last: bpb.LedgerEntry | None = None
    moved: dict[int, Movement] = {kind: Movement() for kind in bpb.LedgerEntryKind.values()}
    for entry in sorted(ledger, key=lambda e: e.entry_id):
        at = _when(entry, "at")
        if at < start:
            before = last = entry
        elif at < end:
            last = entry
            # RESERVE amounts are negative (taken from available), CAPTURE positive (charged
            # from reserved): the statement sums each kind as a positive amount. Only an
            # adjustment's sign says which way it went.
            amount = entry.amount_micros
            if entry.kind != bpb.LEDGER_ENTRY_KIND_ADJUSTMENT:
                amount = abs(amount)
            moved[entry.kind] = moved[entry.kind].plus(amount)
    return Statement(
        business_name=business_name,
        business_account_id=business_account_id,
        start=start,
        end=end,
        currency=by_day.currency,
        opening_available=before.available_after_micros if before else 0,
        opening_reserved=before.reserved_after_micros if before else 0,
        top_ups=moved[bpb.LEDGER_ENTRY_KIND_TOP_UP],
        adjustments=moved[bpb.LEDGER_ENTRY_KIND_ADJUSTMENT],
        reserves=moved[bpb.LEDGER_ENTRY_KIND_RESERVE],
        charges=moved[bpb.LEDGER_ENTRY_KIND_CAPTURE],
        releases=moved[bpb.LEDGER_ENTRY_KIND_RELEASE],
        closing_available=last.available_after_micros if last else 0,
        closing_reserved=last.reserved_after_micros if last else 0,
        by_day=tuple(Group.of(r) for r in by_day.rows),
        by_category=tuple(Group.of(r) for r in by_category.rows),
        by_country=tuple(Group.of(r) for r in by_country.rows),
        total=Group.of(by_day.total, "TOTAL"),
        reconciled=all(r.reconciled for r in reports),
    )


# --- text -------------------------------------------------------------------------------------


def _money(micros: int) -> str:
    """Grouped, padded on the right so that a column's decimal points line up."""
    text = format_micros(micros, grouped=True)
    return text + " " * (6 - len(text.partition(".")[2]))


def _plain(micros: int) -> str:
    return format_micros(micros, grouped=True)


def _day(d: date) -> str:
    return f"{d.day} {calendar.month_abbr[d.month]} {d.year}"


def usage_table(title: str, currency: str, groups: Sequence[Group], total: Group) -> list[str]:
    """A usage report as aligned columns, one line per group and the total (also what
    ``parley business usage`` prints)."""
    head = (
        f"  {title:<14} {'sent':>7} {'deliv.':>7} {'billable':>8} {'free:svc':>8} {'entry':>6}"
        f" {'allow.':>6} {'undeliv.':>8} {'pending':>7} {'amount ' + currency:>14}"
    )
    lines = [head]
    for g in (*groups, total):
        lines.append(
            f"  {g.key:<14} {g.sent:>7} {g.delivered:>7} {g.billable:>8}"
            f" {g.free_service_window:>8} {g.free_entry_window:>6} {g.free_allowance:>6}"
            f" {g.not_delivered:>8} {g.pending:>7} {_money(g.charged_micros):>14}".rstrip()
        )
    return lines


def render_text(s: Statement, *, chart: bool = True) -> str:
    """The statement for a terminal (and the PDF's text pages, without the text `chart`)."""
    width = 46

    def line(label: str, micros: int) -> str:
        return f"  {label:<{width}} {_money(micros):>16}"

    name = s.business_name or s.business_account_id
    out = [
        f"Statement {s.month} — {name} (account {s.business_account_id})",
        f"Period: {_day(s.start.date())} to {_day(s.last_day)} (UTC), amounts in {s.currency}",
        "",
        "Balance (by ledger time: a charge counts in the month the message was delivered)",
        line(f"Opening balance on {_day(s.start.date())}", s.opening),
        line(f"+ Top-ups ({s.top_ups.count})", s.top_ups.micros),
    ]
    if s.adjustments.count:
        out.append(line(f"+ Adjustments ({s.adjustments.count})", s.adjustments.micros))
    out += [
        line(f"- Charges for delivered messages ({s.charges.count})", -s.charges.micros),
        line(f"Closing balance on {_day(s.last_day)}", s.closing),
        line("    available for new sends", s.closing_available),
        line("    reserved for messages on their way", s.closing_reserved),
        f"  Held for billable sends: {s.reserves.count} ({_plain(s.reserves.micros)});"
        f" released for undelivered ones: {s.releases.count}"
        f" ({_plain(s.releases.micros)})",
    ]
    if not s.balanced:
        out.append(
            f"  WARNING: the ledger does not add up: the closing balance should be"
            f" {_money(s.expected_closing)}; report this statement to the operator"
        )
    out += ["", "Messages sent in the period, by category"]
    out += usage_table("category", s.currency, s.by_category, s.total)
    out += ["", "By the recipient's country"]
    out += usage_table("country", s.currency, s.by_country, s.total)
    out.append("")
    if s.reconciled:
        out.append("Usage reconciled with the ledger's captures by the server.")
    else:
        out.append("WARNING: the server found usage and ledger captures apart; ask the operator.")
    if chart:
        out += ["", *_text_chart(s)]
    return "\n".join(line.rstrip() for line in out)


def _text_chart(s: Statement) -> list[str]:
    spend = s.daily_spend()
    if not spend:
        return ["Daily spend: nothing was charged for this month's messages."]
    top = max(micros for _, micros in spend)
    lines = [f"Daily spend ({s.currency}, by send day)"]
    for day, micros in spend:
        bar = "█" * max(1, micros * BAR_WIDTH // top)
        lines.append(f"  {day.isoformat()} {_money(micros):>12} {bar}")
    return lines


def statement_data(s: Statement) -> dict[str, Any]:
    """The statement for ``--json``: every field, amounts in micro-units, times in ISO 8601."""
    data = asdict(s)
    data.update(
        start=s.start.isoformat(),
        end=s.end.isoformat(),
        month=s.month,
        opening_micros=s.opening,
        closing_micros=s.closing,
        balanced=s.balanced,
    )
    return data


# --- CSV --------------------------------------------------------------------------------------

CSV_COLUMNS: Final = (
    "section",
    "key",
    *(f.name.removesuffix("_micros") for f in fields(Group) if f.name != "key"),
    "amount",
    "currency",
)
"""Counts, then amounts as decimals of the currency (``charged``, ``reserved``, ``amount``)."""


def write_csv(s: Statement, out: TextIO) -> None:
    """One row per day, category and country group, then each section's total, then the
    balance lines (in ``amount``); amounts as exact decimals of the currency."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for section, groups in (
        ("day", s.by_day),
        ("category", s.by_category),
        ("country", s.by_country),
    ):
        for g in (*groups, s.total):
            writer.writerow(
                [
                    section,
                    g.key,
                    g.sent,
                    g.delivered,
                    g.billable,
                    g.free_service_window,
                    g.free_entry_window,
                    g.free_allowance,
                    g.not_delivered,
                    g.pending,
                    format_micros(g.charged_micros),
                    format_micros(g.reserved_micros),
                    "",
                    s.currency,
                ]
            )
    blank = [""] * (len(CSV_COLUMNS) - 4)
    for key, micros in (
        ("opening_balance", s.opening),
        ("top_ups", s.top_ups.micros),
        ("adjustments", s.adjustments.micros),
        ("charges", -s.charges.micros),
        ("reserved_for_sends", s.reserves.micros),
        ("released", s.releases.micros),
        ("closing_balance", s.closing),
        ("closing_available", s.closing_available),
        ("closing_reserved", s.closing_reserved),
    ):
        writer.writerow(["balance", key, *blank, format_micros(micros), s.currency])


# --- chart and PDF ----------------------------------------------------------------------------


def check_charts() -> None:
    """Raise :class:`ChartUnavailable` now, before any work, when charts cannot be drawn."""
    _figure_class()


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ChartUnavailable(f"the chart and the PDF need matplotlib: {INSTALL_HINT}") from None
    return Figure


def chart_figure(s: Statement) -> Figure:
    """The daily spend as a bar chart: one bar per day with spend, over the whole month.

    Heights are floats of the currency unit for drawing only; the amounts written on the chart
    come from the exact micro-units."""
    figure = _figure_class()(figsize=(8.27, 4.2), dpi=100)
    axes = figure.add_subplot()
    spend = s.daily_spend()
    days = s.last_day.day
    axes.bar(
        [d.day for d, _ in spend],
        [micros / MICROS for _, micros in spend],
        width=0.8,
        color="#2b7bb9",
    )
    axes.set_xlim(0.5, days + 0.5)
    axes.set_xticks(range(1, days + 1, 2 if days > 16 else 1))
    axes.set_xlabel(f"day of {calendar.month_name[s.start.month]} {s.start.year} (UTC)")
    axes.set_ylabel(f"spend ({s.currency})")
    charged = sum(micros for _, micros in spend)
    name = s.business_name or s.business_account_id
    axes.set_title(
        f"{name}: daily spend {s.month}, total {format_micros(charged, s.currency, grouped=True)}"
    )
    if not spend:
        axes.text(0.5, 0.5, "nothing charged", transform=axes.transAxes, ha="center")
        axes.set_ylim(0, 1)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def chart_png(s: Statement) -> bytes:
    buffer = io.BytesIO()
    chart_figure(s).savefig(buffer, format="png")
    return buffer.getvalue()


def write_pdf(s: Statement, path: Path) -> int:
    """The statement's text on A4 pages (one, unless it has many countries), then the chart;
    returns the number of pages."""
    figure_class = _figure_class()
    from matplotlib.backends.backend_pdf import PdfPages

    lines = render_text(s, chart=False).splitlines()
    pages = [lines[i : i + PDF_LINES_PER_PAGE] for i in range(0, len(lines), PDF_LINES_PER_PAGE)]
    metadata = {"Title": f"Parley statement {s.month}", "Creator": "parley", "CreationDate": None}
    with PdfPages(path, metadata=metadata) as pdf:
        for page in pages:
            figure = figure_class(figsize=A4_INCHES)
            figure.text(
                0.06,
                0.95,
                "\n".join(page),
                family="DejaVu Sans Mono",
                fontsize=7.5,
                va="top",
                linespacing=1.35,
            )
            pdf.savefig(figure)
        pdf.savefig(chart_figure(s))
    return len(pages) + 1
