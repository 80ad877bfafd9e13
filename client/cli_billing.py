"""The ``parley`` commands for metered delivery: prices, balances, usage, invoices, events.

For anyone: ``parley prices`` (the price list in force and the next one). For a business:
``parley business balance``, ``parley business usage [--month M] [--by day|category|country]``,
``parley business invoice [--month M] [--csv FILE] [--pdf FILE] [--png FILE]`` (the monthly
statement of :mod:`client.invoice`), ``parley business events [--cursor N] [--follow]`` and
``parley business quote NUMBER --category C``. For the operator, with ``--admin-token``:
``parley admin top-up BUSINESS AMOUNT --reference REF [--note N]`` and ``parley admin prices set
FILE [--at TIME]``.

Kept out of :mod:`client.cli`, which calls :func:`add_parsers` and dispatches through
``COMMANDS``; :mod:`client.cli_business` dispatches ``BUSINESS_COMMANDS`` and
``ADMIN_COMMANDS``. Output follows :mod:`client.cli`: human text, or one JSON object per line
with ``--json`` (amounts in micro-units there, as the API gives them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from parley.v1 import billing_pb2 as bpb
from parley.v1 import messaging_pb2 as mpb

from client import invoice
from client.api import ParleyClient
from client.billing_api import CATEGORIES, GROUPINGS
from client.errors import NotFound
from client.money import AmountError, format_micros, parse_amount

Handler = Callable[[ParleyClient, argparse.Namespace, TextIO], Awaitable[None]]
MONTH: Final = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
FREE_REASONS: Final = {
    bpb.FREE_REASON_SERVICE_WINDOW: "inside the 24-hour customer-service window",
    bpb.FREE_REASON_ENTRY_WINDOW: "inside a click-to-chat entry window",
    bpb.FREE_REASON_ALLOWANCE: "within the monthly free allowance",
}


# --- arguments --------------------------------------------------------------------------------


def month(text: str) -> str:
    """A calendar month as the server takes it ("2026-11"; empty: the server's current one)."""
    if text and not MONTH.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a month: write it like 2026-11")
    return text


def amount(text: str) -> int:
    """Micro-units of the operator's decimal amount, exactly."""
    try:
        return parse_amount(text)
    except AmountError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def moment(text: str) -> datetime:
    """An ISO 8601 time with its time zone (2026-12-01T00:00:00Z)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time: write it like 2026-12-01T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add one, e.g. {text}Z for UTC"
        )
    return when


def add_parsers(sub: Any, json_flag: argparse.ArgumentParser, business: Any) -> None:
    """Add ``prices`` to the CLI's sub-command parsers and the billing commands to
    ``business``, the ``parley business`` group's sub-parsers."""
    sub.add_parser(
        "prices",
        parents=[json_flag],
        help="the price per delivered business message, by category and country",
    )
    business.add_parser(
        "balance",
        parents=[json_flag],
        help="your prepaid balance: available for new sends, and reserved for messages on"
        " their way",
    )
    p = business.add_parser(
        "usage",
        parents=[json_flag],
        help="messages sent in a month: delivered, billable or free (and why), the amount",
    )
    p.add_argument("--month", type=month, default="", help="e.g. 2026-11 [default: this month]")
    p.add_argument("--by", choices=list(GROUPINGS), default="day", help="grouping [day]")
    p = business.add_parser(
        "invoice",
        parents=[json_flag],
        help="the monthly statement: balances, totals by category and country, daily spend",
    )
    p.add_argument("--month", type=month, default="", help="e.g. 2026-11 [default: this month]")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write it as CSV")
    p.add_argument(
        "--pdf",
        type=Path,
        metavar="FILE",
        help="also write it as PDF, with the chart (needs pip install 'parley[invoice]')",
    )
    p.add_argument(
        "--png",
        type=Path,
        metavar="FILE",
        help="also draw the daily spend as a PNG chart (needs pip install 'parley[invoice]')",
    )
    p = business.add_parser(
        "events",
        parents=[json_flag],
        help="the priced status events of your messages (SENT, DELIVERED, FAILED, EXPIRED)",
    )
    p.add_argument(
        "--cursor",
        type=int,
        default=0,
        help="show events after this sequence number (the last one you handled); default: all",
    )
    p.add_argument("--follow", action="store_true", help="keep showing new events (Ctrl-C ends)")
    p = business.add_parser(
        "quote", parents=[json_flag], help="what a message to a user would cost now, and why"
    )
    p.add_argument("user", metavar="NUMBER", help="the recipient's number (+...) or account id")
    p.add_argument("--category", required=True, choices=list(CATEGORIES))


def add_admin_parsers(
    actions: Any, json_flag: argparse.ArgumentParser, token: argparse.ArgumentParser
) -> None:
    """Add ``top-up`` and ``prices set`` to ``actions``, the ``parley admin`` sub-parsers;
    `token` is the parent parser of ``--admin-token``."""
    p = actions.add_parser(
        "top-up",
        parents=[json_flag, token],
        help="add money to a business's balance (once per --reference)",
    )
    p.add_argument("business", help="the business's account id (or number, +...)")
    p.add_argument(
        "amount",
        type=amount,
        help="in the currency's units, e.g. 25.00 (at most 6 decimals)",
    )
    p.add_argument(
        "--reference",
        required=True,
        help="your unique reference for this payment (1-128 characters): a retry with the same"
        " one adds nothing",
    )
    p.add_argument("--note", default="", help="a note kept in the ledger")
    prices = actions.add_parser("prices", help="change the price table")
    verbs = prices.add_subparsers(dest="prices_action", required=True, metavar="ACTION")
    p = verbs.add_parser(
        "set",
        parents=[json_flag, token],
        help="add a price table version from a TOML file (as the shipped default_prices.toml)",
    )
    p.add_argument("file", type=Path, help="the TOML file")
    p.add_argument(
        "--at",
        type=moment,
        help="when it takes effect, ISO 8601 with a time zone, e.g. 2026-12-01T00:00:00Z"
        " [default: now]",
    )


# --- output -----------------------------------------------------------------------------------


def _data(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _emit(args: argparse.Namespace, human: str, data: dict[str, Any], out: TextIO) -> None:
    from client import cli  # client.cli imports this module

    cli._emit(args, human, data, out)


def _utc(stamp: Any) -> str:
    return str(stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"))


def _category(number: int) -> str:
    return mpb.MessageCategory.Name(number).removeprefix("MESSAGE_CATEGORY_")  # type: ignore[arg-type]


def prices_text(reply: bpb.GetPriceListResponse) -> str:
    """The table in force, one line per category (the default row first), and the next one."""

    def table(t: bpb.PriceTable, when: str) -> list[str]:
        lines = [f"price table v{t.version} ({t.currency}), {when} {_utc(t.effective_at)}:"]
        rows: dict[str, list[bpb.PriceRow]] = {}
        for row in t.rows:
            rows.setdefault(_category(row.category), []).append(row)
        for category, items in rows.items():
            items.sort(key=lambda r: (r.country != "*", r.country))
            cells = [f"{r.country} {format_micros(r.amount_micros)}" for r in items]
            lines.append(f"  {category:<14} " + " · ".join(cells))
        return lines

    lines = table(reply.current, "in force since")
    if reply.HasField("next"):
        lines += table(reply.next, "takes over at")
    lines.append("(* = every other country; free rules, allowances and tiers: add --json)")
    return "\n".join(lines)


def balance_text(b: bpb.GetBalanceResponse) -> str:
    return (
        f"available {format_micros(b.available_micros, b.currency)}, reserved"
        f" {format_micros(b.reserved_micros, b.currency)} for messages on their way"
    )


def pricing_text(p: bpb.Pricing) -> str:
    """A price as a business reads it: free and why, or the amount, with what priced it."""
    where = f"{_category(p.category)} to {p.country}"
    if not p.billable:
        why = FREE_REASONS.get(p.free_reason, "free")
        return f"free ({why}): {where}, price table v{p.price_table_version}"
    money = format_micros(p.amount_micros, p.currency)
    return f"{money}: {where}, price table v{p.price_table_version}"


def event_text(e: bpb.StatusEvent, recipient: str) -> str:
    """One status event on one line: what happened to which message (sent to `recipient`, a
    name for its account id), and what it cost."""
    kind = bpb.StatusEventKind.Name(e.kind).removeprefix("STATUS_EVENT_KIND_")
    head = f"#{e.sequence} {kind} message {e.message_id} to {recipient} at {_utc(e.at)}"
    p = e.pricing
    if e.kind == bpb.STATUS_EVENT_KIND_SENT:
        cost = pricing_text(p)
        if p.billable:  # held by its send's reservation, named when the server says which
            entry = f", ledger entry {p.ledger_entry_id}" if p.ledger_entry_id else ""
            cost += f" (reserved{entry})"
    elif e.kind == bpb.STATUS_EVENT_KIND_DELIVERED:
        cost = "charged " + pricing_text(p) if p.billable else pricing_text(p)
        if p.ledger_entry_id:
            cost += f", ledger entry {p.ledger_entry_id}"
    else:
        released = f"; {format_micros(p.amount_micros, p.currency)} released" if p.billable else ""
        cost = f"{e.reason or 'not delivered'}: nothing charged{released}"
    return f"{head}: {cost}"


def usage_text(r: bpb.GetUsageReportResponse, by: str) -> str:
    start = r.start.ToDatetime()
    end = r.end.ToDatetime()
    lines = [
        f"usage from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC (messages by send time),"
        f" by {by}:"
    ]
    rows = [invoice.Group.of(row) for row in r.rows]
    lines += invoice.usage_table(by, r.currency, rows, invoice.Group.of(r.total, "TOTAL"))
    captured = format_micros(r.ledger_captured_micros, r.currency)
    check = "reconciled" if r.reconciled else "NOT reconciled: report it to the operator"
    lines.append(f"the ledger captured {captured} for these messages: {check}")
    return "\n".join(lines)


# --- commands ---------------------------------------------------------------------------------


async def _prices(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    reply = await client.billing.prices()
    _emit(args, prices_text(reply), _data(reply), out)


async def _balance(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    reply = await client.billing.balance()
    _emit(args, balance_text(reply), _data(reply), out)


async def _usage(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    reply = await client.billing.usage(args.month, GROUPINGS[args.by])
    _emit(args, usage_text(reply, args.by), _data(reply), out)


async def _quote(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    pricing = await client.billing.quote(args.user, CATEGORIES[args.category])
    human = f"{args.user}: {pricing_text(pricing)}"
    if pricing.explanation:
        human += f" — {pricing.explanation}"
    _emit(args, human, _data(pricing), out)


async def _events(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    last = args.cursor
    async for event in client.billing.events(args.cursor, follow=args.follow):
        recipient = client.display_name(event.recipient_account_id)
        _emit(args, event_text(event, recipient), _data(event), out)
        last = event.sequence
    if not args.json:
        from client import cli

        hint = f"business events --cursor {last}"
        if last == args.cursor:
            _emit(args, f"no status events after #{args.cursor}", {}, out)
        else:
            _emit(args, f"(next time: `{cli._command(args, hint)}`)", {}, out)


async def _business_name(client: ParleyClient) -> str:
    try:
        profile = await client.business.profile(client.account_id)
    except NotFound:  # no profile yet: the number says who it is
        return client.phone_number_of(client.account_id) or ""
    return profile.fields.display_name


async def statement(client: ParleyClient, month: str) -> invoice.Statement:
    """The month's statement of this business, from three usage reports and its ledger."""
    reports = await asyncio.gather(
        *(client.billing.usage(month, GROUPINGS[by]) for by in ("day", "category", "country"))
    )
    end = reports[0].end.ToMicroseconds()
    ledger: list[bpb.LedgerEntry] = []
    async with contextlib.aclosing(client.billing.ledger()) as entries:
        async for entry in entries:
            if entry.at.ToMicroseconds() >= end:
                break  # oldest first: the rest is after the month
            ledger.append(entry)
    return invoice.build_statement(
        business_name=await _business_name(client),
        business_account_id=client.account_id,
        by_day=reports[0],
        by_category=reports[1],
        by_country=reports[2],
        ledger=ledger,
    )


async def _invoice(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    from client.cli import CliError  # client.cli imports this module

    try:
        if args.pdf or args.png:
            invoice.check_charts()  # before any call: say what to install first
        s = await statement(client, args.month)
        _emit(args, invoice.render_text(s), invoice.statement_data(s), out)
        written: list[tuple[Path, str]] = []
        if args.csv:
            with args.csv.open("w", newline="", encoding="utf-8") as f:
                invoice.write_csv(s, f)
            written.append((args.csv, "csv"))
        if args.png:
            args.png.write_bytes(invoice.chart_png(s))
            written.append((args.png, "png"))
        if args.pdf:
            pages = invoice.write_pdf(s, args.pdf)
            written.append((args.pdf, f"pdf, {pages} pages"))
    except invoice.ChartUnavailable as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename}: {exc.strerror}") from None
    for path, what in written:
        _emit(args, f"wrote {path} ({what})", {"wrote": str(path), "format": what}, out)


# --- the operator -----------------------------------------------------------------------------


def _token(client: ParleyClient, args: argparse.Namespace) -> str:
    from client.cli_business import _admin  # its message says how to pass the token

    _admin(client, args)
    token: str = args.admin_token
    return token


async def _top_up(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    operator = client.billing.operator(_token(client, args))
    business = await client.resolve(args.business)
    reply = await operator.top_up(business, args.amount, args.reference, args.note)
    e = reply.entry
    added = format_micros(e.amount_micros)
    after = format_micros(e.available_after_micros)
    if reply.applied:
        human = f"added {added} to {args.business} (ledger entry {e.entry_id}); available {after}"
    else:
        human = (
            f"reference {args.reference!r} was used before: ledger entry {e.entry_id} added"
            f" {added}; nothing added now"
        )
    _emit(args, human, _data(reply), out)


async def _set_prices(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    from client.cli import CliError

    operator = client.billing.operator(_token(client, args))
    try:
        toml = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the price table {args.file}: {exc}") from None
    table = await operator.set_prices(toml, args.at)
    human = (
        f"price table v{table.version} ({table.currency}, {len(table.rows)} rows) in force from"
        f" {_utc(table.effective_at)}"
    )
    _emit(args, human, _data(table), out)


COMMANDS: Final[dict[str, Handler]] = {"prices": _prices}
BUSINESS_COMMANDS: Final[dict[str, Handler]] = {
    "balance": _balance,
    "usage": _usage,
    "invoice": _invoice,
    "events": _events,
    "quote": _quote,
}
ADMIN_COMMANDS: Final[dict[str, Handler]] = {"top-up": _top_up, "prices": _set_prices}
