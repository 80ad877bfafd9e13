"""The ``parley`` commands for consent: who may message us, and who may not at all.

``parley businesses``, ``parley opt-in``, ``parley opt-out``, ``parley block``, ``parley
unblock`` for everyone, and ``parley business record-opt-in`` for a business account. Kept out
of :mod:`client.cli`, which calls :func:`add_parsers` and dispatches through ``COMMANDS`` and
``BUSINESS_COMMANDS``; output follows its conventions (human text, or one JSON object per line
with ``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Final, TextIO

from client import cli
from client.api import ParleyClient
from client.consent_api import CATEGORIES, SOURCES, BusinessConsent, CategoryConsent

Handler = Callable[[ParleyClient, argparse.Namespace, TextIO], Awaitable[None]]

_KIND_TEXT: Final = {
    "user_verified": "you opted in",
    "business_asserted": "the business says you opted in",
}


def add_parsers(sub: Any, json_flag: argparse.ArgumentParser, business: Any) -> None:
    """Add the consent commands to the CLI's sub-command parsers; ``record-opt-in`` goes into
    ``business``, the sub-parsers of the ``parley business`` group (:mod:`client.cli_business`
    dispatches it through ``BUSINESS_COMMANDS``)."""
    sub.add_parser(
        "businesses",
        parents=[json_flag],
        help="the businesses you opted in to or out of, or blocked: who may message you and why",
    )
    p = sub.add_parser(
        "opt-in",
        parents=[json_flag],
        help="accept a business's messages (all categories, or those given with --category)",
    )
    p.add_argument("business", help="the business's number (+...) or account id")
    _category_flag(p, "accept only these categories (repeat the flag); default: all")

    p = sub.add_parser(
        "opt-out",
        parents=[json_flag],
        help="stop a business's messages of some categories (--category) or all (--all)",
    )
    p.add_argument("business", help="the business's number (+...) or account id")
    which = p.add_mutually_exclusive_group(required=True)
    _category_flag(which, "stop these categories (repeat the flag)")
    which.add_argument("--all", action="store_true", help="stop every category")

    for name, text in (
        ("block", "refuse every later message of an account (person or business)"),
        ("unblock", "accept messages of a blocked account again"),
    ):
        p = sub.add_parser(name, parents=[json_flag], help=text)
        p.add_argument("who", help="phone number (+...) or account id")

    p = business.add_parser(
        "record-opt-in",
        parents=[json_flag],
        help="record that a person gave you their number to get your messages on Parley",
    )
    p.add_argument("phone", help="the person's number in E.164 form")
    p.add_argument("--source", required=True, choices=SOURCES, help="where they gave it")
    p.add_argument(
        "--evidence",
        required=True,
        help="what shows it, at most 512 characters (e.g. the form's URL and the time)",
    )
    _category_flag(p, "the categories they agreed to (repeat the flag)", required=True)


def _category_flag(parser: Any, text: str, *, required: bool = False) -> None:
    parser.add_argument(
        "--category",
        dest="categories",
        action="append",
        choices=CATEGORIES,
        required=required,
        default=None,
        help=text,
    )


# --- output -----------------------------------------------------------------------------------


def _category_text(c: CategoryConsent) -> str:
    if c.opted_out:
        when = f" on {cli._time(c.opted_out_at)}" if c.opted_out_at is not None else ""
        return f"{c.category}: opted out{when}"
    why = _KIND_TEXT.get(c.kind, c.kind)
    if c.kind == "business_asserted":
        why += f" ({c.source}: {c.evidence})"
    when = f" on {cli._time(c.opted_in_at)}" if c.opted_in_at is not None else ""
    return f"{c.category}: opted in — {why}{when}"


def _consent_text(b: BusinessConsent) -> str:
    lines = [f"{b.phone_number} ({b.business_account_id})"]
    if b.blocked:
        since = f" since {cli._time(b.blocked_at)}" if b.blocked_at is not None else ""
        lines.append(f"  blocked{since}: none of its messages reach you")
    lines.extend(f"  {_category_text(c)}" for c in b.categories)
    return "\n".join(lines)


def _emit_consent(args: argparse.Namespace, b: BusinessConsent, out: TextIO) -> None:
    cli._emit(args, _consent_text(b), dataclasses.asdict(b), out)


# --- commands ---------------------------------------------------------------------------------


async def _businesses(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    businesses = await client.my_businesses()
    if not businesses and not args.json:
        cli._emit(args, "no business has an opt-in, an opt-out or a block of yours", {}, out)
    for b in businesses:
        _emit_consent(args, b, out)


async def _opt_in(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    _emit_consent(args, await client.opt_in(args.business, args.categories or CATEGORIES), out)


async def _opt_out(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    consent = await client.opt_out(args.business, args.categories or (), everything=args.all)
    _emit_consent(args, consent, out)


async def _block(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    account_id = await client.resolve(args.who)
    blocked_at = await client.block(account_id)
    cli._emit(
        args,
        f"blocked {client.display_name(account_id)}: their messages no longer reach you"
        f" (since {cli._time(blocked_at)};"
        f" `{cli._command(args, 'unblock ' + args.who)}` undoes it)",
        {"account_id": account_id, "blocked_at": blocked_at},
        out,
    )


async def _unblock(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    account_id = await client.resolve(args.who)
    was_blocked = await client.unblock(account_id)
    name = client.display_name(account_id)
    cli._emit(
        args,
        f"unblocked {name}" if was_blocked else f"{name} was not blocked",
        {"account_id": account_id, "was_blocked": was_blocked},
        out,
    )


async def _record_opt_in(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    await client.record_opt_in(args.phone, args.source, args.evidence, args.categories)
    cli._emit(
        args,
        f"recorded the opt-in of {args.phone} ({', '.join(args.categories)}; {args.source});"
        " they see it in `parley businesses` and can opt out",
        {"phone_number": args.phone, "categories": args.categories, "source": args.source},
        out,
    )


COMMANDS: Final[dict[str, Handler]] = {
    "businesses": _businesses,
    "opt-in": _opt_in,
    "opt-out": _opt_out,
    "block": _block,
    "unblock": _unblock,
}
BUSINESS_COMMANDS: Final[dict[str, Handler]] = {"record-opt-in": _record_opt_in}
