"""The ``parley`` commands for live support.

For users: ``parley support open BUSINESS [--topic TEXT]``, ``parley support status BUSINESS``
and ``parley support close BUSINESS``. For a business's devices: ``parley business agents``
(list; ``--set DEVICE --name NAME`` or ``--remove DEVICE`` from the primary device),
``parley business queue [--cursor N] [--follow]``, ``parley business claim CONVERSATION``,
``parley business transfer CONVERSATION DEVICE`` and ``parley business close CONVERSATION``.

The messages themselves are ordinary ``parley send`` / ``parley listen`` messages: while a
conversation is open the client sends the user's messages to the business's primary device
and the assigned agent only, as the server requires. Kept out of :mod:`client.cli`, which calls
:func:`add_parsers` and dispatches through ``COMMANDS`` (and :mod:`client.cli_business` through
``BUSINESS_COMMANDS``); output follows its conventions (human text, or one JSON object per line
with ``--json``).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, Final, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from parley.v1 import support_pb2 as spb

from client.api import ParleyClient

Handler = Callable[[ParleyClient, argparse.Namespace, TextIO], Awaitable[None]]


def add_parsers(sub: Any, json_flag: argparse.ArgumentParser, business: Any) -> None:
    """Add ``support`` to the CLI's sub-command parsers, and the agents' commands to
    ``business``, the ``parley business`` group's sub-parsers."""
    support = sub.add_parser(
        "support", help="live support with a business: open a conversation, see who helps you"
    )
    actions = support.add_subparsers(dest="support_action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "open",
        parents=[json_flag],
        help="ask a business for live support (or show the conversation already open)",
    )
    p.add_argument("business", help="the business's number (+...) or account id")
    p.add_argument(
        "--topic",
        default="",
        help="what it is about, at most 200 characters; the server sees it (messages are end"
        " to end, the topic is not)",
    )
    for name, text in (
        ("status", "your latest support conversation with a business: state and agent"),
        ("close", "close your open support conversation with a business"),
    ):
        p = actions.add_parser(name, parents=[json_flag], help=text)
        p.add_argument("business", help="the business's number (+...) or account id")

    p = business.add_parser(
        "agents",
        parents=[json_flag],
        help="your support agents; the primary device sets them (--set, --remove)",
    )
    change = p.add_mutually_exclusive_group()
    change.add_argument("--set", type=int, metavar="DEVICE", help="make this device an agent")
    change.add_argument("--remove", type=int, metavar="DEVICE", help="stop this device")
    p.add_argument("--name", default="", help="with --set: the name users see (1-64 characters)")
    p = business.add_parser(
        "queue",
        parents=[json_flag],
        help="the support queue's events (agents and the primary device); --follow stays open",
    )
    p.add_argument(
        "--cursor",
        type=int,
        default=0,
        help="show events after this sequence number (the last one you saw); default: all",
    )
    p.add_argument("--follow", action="store_true", help="keep showing new events (Ctrl-C ends)")
    p = business.add_parser("claim", parents=[json_flag], help="take a waiting conversation")
    p.add_argument("conversation", help="its id (from `parley business queue`)")
    p = business.add_parser(
        "transfer", parents=[json_flag], help="hand an assigned conversation to another agent"
    )
    p.add_argument("conversation", help="its id")
    p.add_argument("device", type=int, help="the agent device taking it over")
    p = business.add_parser("close", parents=[json_flag], help="close a support conversation")
    p.add_argument("conversation", help="its id")


# --- output -----------------------------------------------------------------------------------


def _data(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def conversation_text(client: ParleyClient, c: spb.SupportConversation, *, user: bool) -> str:
    """One conversation as a person reads it (`user`: the user's side)."""
    peer = c.business_account_id if user else c.user_account_id
    topic = f" about {c.topic!r}" if c.topic else ""
    head = f"support {c.conversation_id} with {client.display_name(peer)}{topic}:"
    if c.state == spb.SUPPORT_STATE_WAITING:
        body = "WAITING for an agent"
    elif c.state == spb.SUPPORT_STATE_ASSIGNED:
        body = f"ASSIGNED to {c.agent_display_name or 'an agent'} (device {c.agent_device_id})"
    else:
        body = "CLOSED"
    if c.device_ids:
        whose = "your" if user else "the user's"
        devices = ", ".join(str(d) for d in c.device_ids)
        body += f"; {whose} messages go to the business's devices {devices} only"
    return f"{head} {body}"


def event_text(client: ParleyClient, e: spb.SupportQueueEvent) -> str:
    kind = spb.SupportEventKind.Name(e.kind).removeprefix("SUPPORT_EVENT_KIND_")
    topic = f" {e.topic!r}" if e.topic else ""
    line = f"#{e.sequence} {kind} {e.conversation_id} {client.display_name(e.user_account_id)}"
    line += topic
    if e.kind == spb.SUPPORT_EVENT_KIND_TRANSFERRED:
        line += f" from device {e.from_agent_device_id}"
    if e.kind in (spb.SUPPORT_EVENT_KIND_CLAIMED, spb.SUPPORT_EVENT_KIND_TRANSFERRED):
        line += f" to {e.agent_display_name} (device {e.agent_device_id})"
    if e.kind == spb.SUPPORT_EVENT_KIND_CLOSED:
        line += f" by the {e.closed_by}"
    return line


def _emit_conversation(
    client: ParleyClient, args: argparse.Namespace, c: spb.SupportConversation, out: TextIO
) -> None:
    from client import cli  # client.cli imports this module

    user = args.command == "support"
    cli._emit(args, conversation_text(client, c, user=user), _data(c), out)


# --- commands ---------------------------------------------------------------------------------


async def _support(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    from client import cli

    if args.support_action == "open":
        opened = await client.support.open(args.business, args.topic)
        _emit_conversation(client, args, opened.conversation, out)
        if not args.json:
            hint = "opened" if opened.created else "already open"
            cli._emit(
                args,
                f"({hint}; write with `{cli._command(args, 'send ' + args.business + ' TEXT')}`)",
                {},
                out,
            )
        return
    status = await client.support.status(args.business)
    if args.support_action == "close":
        if status.state == spb.SUPPORT_STATE_CLOSED:
            cli._emit(args, "no support conversation is open with that business", {}, out)
            return
        status = await client.support.close(status.conversation_id)
    _emit_conversation(client, args, status, out)


async def _agents(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    from client import cli

    if args.set is not None:
        agents = await client.support.set_agent(args.set, True, args.name)
    elif args.remove is not None:
        agents = await client.support.set_agent(args.remove, False)
    else:
        agents = await client.support.agents()
    if not agents and not args.json:
        cli._emit(args, "no agents yet (the primary device adds one with --set)", {}, out)
    for agent in agents:
        cli._emit(args, f"device {agent.device_id}: {agent.display_name}", _data(agent), out)


async def _queue(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    from client import cli

    shown = 0
    async for event in client.support.queue(args.cursor, follow=args.follow):
        cli._emit(args, event_text(client, event), _data(event), out)
        shown += 1
    if not shown and not args.json:
        cli._emit(args, f"no queue events after #{args.cursor}", {}, out)


async def _claim(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    _emit_conversation(client, args, await client.support.claim(args.conversation), out)


async def _transfer(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    moved = await client.support.transfer(args.conversation, args.device)
    _emit_conversation(client, args, moved, out)


async def _close(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    _emit_conversation(client, args, await client.support.close(args.conversation), out)


COMMANDS: Final[dict[str, Handler]] = {"support": _support}
BUSINESS_COMMANDS: Final[dict[str, Handler]] = {
    "agents": _agents,
    "queue": _queue,
    "claim": _claim,
    "transfer": _transfer,
    "close": _close,
}
