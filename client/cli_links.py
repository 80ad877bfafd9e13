"""The ``parley chat-link`` commands: click-to-chat links and their QR codes.

``create`` (the URL and the QR code in the terminal, ``--png``/``--svg`` to save it),
``list`` (with each link's open and chat-started counters), ``delete``, ``open`` (what a user
sees: whom the chat is with and its first message; ``--send`` starts the chat, carrying the
link's code so a business's 72-hour entry window opens) and ``settings`` (whether
``/p/<your number>`` links open a chat with you). Kept out of :mod:`client.cli`, which calls
:func:`add_parsers` and dispatches through ``COMMANDS``; output follows its conventions (human
text, or one JSON object per line with ``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TextIO

import segno

from client import cli
from client.api import ParleyClient
from client.chat_link_api import ChatLink, ChatLinkUsageError, LinkSettings, OpenedLink

Handler = Callable[[ParleyClient, argparse.Namespace, TextIO], Awaitable[None]]


def add_parsers(sub: Any, json_flag: argparse.ArgumentParser) -> None:
    """Add ``parley chat-link ACTION`` to the CLI's sub-command parsers."""
    group = sub.add_parser(
        "chat-link",
        help="click-to-chat links: a URL and QR code that open a chat with you",
        description="Links that open a chat with you without saving your number. Opening one "
        "is counted, never who opened it.",
    )
    actions = group.add_subparsers(dest="link_action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "create", parents=[json_flag], help="make a link; prints its URL and QR code"
    )
    p.add_argument("--text", default="", help="the chat's first message, at most 140 characters")
    p.add_argument("--label", default="", help="your own name for it (never shown to others)")
    p.add_argument("--png", type=Path, help="also save the QR code as a PNG image here")
    p.add_argument("--svg", type=Path, help="also save the QR code as an SVG image here")
    p.add_argument("--no-qr", action="store_true", help="do not draw the QR code in the terminal")
    actions.add_parser("list", parents=[json_flag], help="your links with their counters")
    p = actions.add_parser("delete", parents=[json_flag], help="delete one of your links")
    p.add_argument("link", help="the link's URL or code")
    p = actions.add_parser(
        "open",
        parents=[json_flag],
        help="show whom a link opens a chat with; --send starts the chat",
    )
    p.add_argument("link", help="https://.../c/CODE, https://.../p/NUMBER?text=..., or a code")
    p.add_argument("--send", action="store_true", help="send the first message now")
    p.add_argument("--text", help="send this instead of the link's prefilled text")
    p = actions.add_parser(
        "settings",
        parents=[json_flag],
        help="whether /p/<your number> links open a chat with you (--number-links on|off)",
    )
    p.add_argument("--number-links", choices=("on", "off"), help="turn number links on or off")


# --- output -----------------------------------------------------------------------------------


def qr_text(url: str) -> str:
    """The QR code of ``url`` drawn with half blocks, for a terminal."""
    out = io.StringIO()
    segno.make(url, error="m", micro=False).terminal(out=out, compact=True)
    return out.getvalue().rstrip("\n")


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _chats(n: int) -> str:
    return "1 chat" if n == 1 else f"{n} chats"


def _link_text(link: ChatLink) -> str:
    label = f" [{link.label}]" if link.label else ""
    text = f'\n  first message: "{link.prefilled_text}"' if link.prefilled_text else ""
    return (
        f"{link.url}{label}\n  opened {_times(link.opens)}, {_chats(link.chats_started)} started"
        f" (created {cli._time(link.created_at)}){text}"
    )


def _opened_text(o: OpenedLink) -> str:
    if o.business and o.verified_name:
        who = f"{o.verified_name} (verified business)"
    elif o.business:
        who = "a business whose name is not verified yet"
    else:
        who = "a person on Parley"
    lines = [f"chat with {who}, account {o.account_id}"]
    if o.about:
        lines.append(f"  {o.about}")
    lines.append(f'  first message: "{o.prefilled_text}"' if o.prefilled_text else "  (no text)")
    return "\n".join(lines)


def _settings_text(s: LinkSettings) -> str:
    state = "on" if s.number_links else "off"
    return (
        f"number links {state}: {s.number_link_url} "
        + ("opens a chat with you" if s.number_links else "does not open anything")
        + f" (opened {_times(s.number_link_opens)})"
    )


# --- commands ---------------------------------------------------------------------------------


async def _create(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    made = await client.create_chat_link(args.text, args.label)
    saved: dict[str, str] = {}
    for path, data, kind in ((args.png, made.qr_png, "png"), (args.svg, made.qr_svg, "svg")):
        if path is not None:
            try:
                path.write_bytes(data)
            except OSError as exc:
                raise cli.CliError(f"cannot write {path} ({exc.strerror}); fix the path") from None
            saved[kind] = str(path)
    human = _link_text(made.link)
    if not args.no_qr:
        human += "\n" + qr_text(made.link.url)
    if saved:
        human += "\nQR code saved to " + ", ".join(saved.values())
    cli._emit(args, human, {**dataclasses.asdict(made.link), "saved": saved}, out)


async def _list(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    links = await client.chat_links()
    if not links and not args.json:
        cli._emit(args, f"no chat links; `{cli._command(args, 'chat-link create')}`", {}, out)
    for link in links:
        cli._emit(args, _link_text(link), dataclasses.asdict(link), out)


async def _delete(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    await client.delete_chat_link(args.link)
    cli._emit(args, f"deleted {args.link}: it no longer opens a chat", {"deleted": args.link}, out)


async def _open(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    opened = await client.open_chat_link(args.link)
    data: dict[str, Any] = dataclasses.asdict(opened)
    human = _opened_text(opened)
    if args.send:
        text = opened.prefilled_text if args.text is None else args.text
        sent = await client.start_chat(opened, text)
        data["sent"] = {"message_id": sent.message_id, "text": text}
        human += f"\nsent: {text}"
    else:
        human += f"\n`{cli._command(args, 'chat-link open ' + args.link + ' --send')}` starts it"
    cli._emit(args, human, data, out)


async def _settings(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.number_links is None:
        settings = await client.chat_link_settings()
    else:
        settings = await client.set_number_links(args.number_links == "on")
    cli._emit(args, _settings_text(settings), dataclasses.asdict(settings), out)


ACTIONS: Final[dict[str, Handler]] = {
    "create": _create,
    "list": _list,
    "delete": _delete,
    "open": _open,
    "settings": _settings,
}


async def _chat_link(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    try:
        await ACTIONS[args.link_action](client, args, out)
    except ChatLinkUsageError as exc:
        raise cli.CliError(str(exc)) from None


COMMANDS: Final[dict[str, Handler]] = {"chat-link": _chat_link}
