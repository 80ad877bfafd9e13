"""``parley business window NUMBER`` and ``parley business status``: the sending rules as a
business sees them (its 24-hour customer-service window with a user; its messaging limit,
usage, quality rating and promotion).

Areas of the ``parley business`` group (:mod:`client.cli_business` dispatches them through
``BUSINESS_COMMANDS``); output follows :mod:`client.cli` (human text, or one JSON object per
line with ``--json``).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, Final, TextIO

from google.protobuf.json_format import MessageToDict
from parley.v1 import business_pb2 as bpb
from parley.v1 import chat_links_pb2 as lpb

from client.api import ParleyClient

Handler = Callable[[ParleyClient, argparse.Namespace, TextIO], Awaitable[None]]
QUALITY: Final = {
    bpb.QUALITY_RATING_GREEN: "GREEN",
    bpb.QUALITY_RATING_YELLOW: "YELLOW",
    bpb.QUALITY_RATING_RED: "RED",
}


def add_parsers(business: Any, json_flag: argparse.ArgumentParser) -> None:
    """Add ``window`` and ``status`` to ``business``, the ``parley business`` sub-parsers."""
    p = business.add_parser(
        "window",
        parents=[json_flag],
        help="when your 24-hour customer-service window with a user closes",
    )
    p.add_argument("user", help="the user's number (+...) or account id")
    business.add_parser(
        "status",
        parents=[json_flag],
        help="your messaging limit, usage in the last 24 h, quality rating and promotion",
    )


def _when(seconds: float) -> str:
    from client import cli  # client.cli imports this module

    return cli._time(seconds)


async def _window(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    from client import cli

    w = await client.sending.window(args.user)
    cli._emit(
        args, _window_text(args.user, w), MessageToDict(w, preserving_proto_field_name=True), out
    )


def _window_text(user: str, w: bpb.GetConversationWindowResponse) -> str:
    """Which window lets the business write free-form now, and until when; the 72-hour entry
    window of a chat link outlives the 24-hour one, so "closed" needs both closed."""
    entry = w.entry if w.HasField("entry") else None
    if w.open_window == lpb.WINDOW_KIND_ENTRY and entry is not None:
        closes = _when(entry.closes_at.ToMicroseconds() / 1e6)
        return (
            f"{user}: open until {closes} (the 72-hour entry window of a chat link they started)"
            " — free-form replies and templates allowed"
        )
    if w.open:
        closes = _when(w.closes_at.ToMicroseconds() / 1e6)
        return f"{user}: open until {closes} — free-form replies and templates allowed"
    if not w.HasField("closes_at"):
        return f"{user}: no window — they never wrote to you; send an approved template"
    last = w.closes_at.ToMicroseconds()
    if entry is not None:
        last = max(last, entry.closes_at.ToMicroseconds())
    closed = _when(last / 1e6)
    return f"{user}: closed at {closed} — only approved templates until they write again"


def _status_text(s: bpb.GetBusinessStatusResponse) -> str:
    limit = "unlimited" if s.limit == 0 else str(s.limit)
    lines = [
        f"tier {s.tier}: {limit} unique users per 24 h; {s.used_24h} started in the last 24 h,"
        f" {s.used_7d} in 7 days",
        f"quality {QUALITY.get(s.quality, '?')}: {s.quality_reason}",
        f"promotion: {s.promotion}",
        f"marketing: at most {s.marketing_per_user} per user per 24 h; sending: at most"
        f" {s.send_rate_per_second:g} messages/s",
    ]
    if s.HasField("next_slot_at"):
        lines.insert(
            1, f"limit reached: the next start is allowed at {s.next_slot_at.ToJsonString()}"
        )
    return "\n".join(lines)


async def _status(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    from client import cli

    s = await client.sending.status()
    cli._emit(args, _status_text(s), MessageToDict(s, preserving_proto_field_name=True), out)


BUSINESS_COMMANDS: Final[dict[str, Handler]] = {"window": _window, "status": _status}
