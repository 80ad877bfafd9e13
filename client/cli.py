"""The ``parley`` command: the reference client for people (and scripts) on top of
:mod:`client.api`.

Every command works on one *profile*, a directory holding the device's own SQLite store
(keys, sessions, history); ``--profile`` picks it (default ``~/.parley/default``, or
``$PARLEY_PROFILE``). Output is for people by default and JSON (one object per line) with
``--json``. Errors print what went wrong (the server's message for a refused call) and exit
with status 1, never with a traceback; bad usage exits with 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import importlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

import grpc
from grpc import aio

from client import grpcurl_helpers
from client.api import (
    DecryptionFailed,
    DeliveryUpdate,
    Event,
    IdentityChanged,
    ParleyClient,
    ParleyClientError,
    QueueEmpty,
    ReceiptEvent,
    SyncedMessage,
    TextMessage,
    TypingEvent,
    format_safety_number,
)
from client.crypto import CryptoError
from client.store import StoreError, UntrustedIdentityError

__all__ = ["DEFAULT_PROFILE", "build_parser", "main"]

DEFAULT_PROFILE: Final = Path("~/.parley/default")
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
RECONNECT_MAX_DELAY: Final = 30
"""Seconds between reconnection attempts of ``parley listen`` at most."""


class CliError(Exception):
    """An error to print as-is (the message says what to do)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parley",
        description="Parley reference client: end-to-end-encrypted messages over a Parley server.",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=Path(os.environ.get("PARLEY_PROFILE", str(DEFAULT_PROFILE))),
        help="profile directory with this device's keys, sessions and history "
        "[env PARLEY_PROFILE; default ~/.parley/default]",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("PARLEY_SERVER"),
        metavar="HOST:PORT",
        help="server address [env PARLEY_SERVER; default: the profile's, else localhost:50051]",
    )
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("register", parents=[json_flag], help="register a phone number")
    p.add_argument("phone", help="the number in E.164 form, e.g. +14155550123")
    p.add_argument("--business", action="store_true", help="register a business account")
    p.add_argument("--code", help="the verification code (prompted for when omitted)")
    p.add_argument("--device-name", default="parley", help="name shown in `parley devices`")

    p = sub.add_parser(
        "link",
        parents=[json_flag],
        help="without --code: print a linking code (primary device); "
        "with --code: join that account (new profile)",
    )
    p.add_argument("--code", help="a linking code from the primary device")
    p.add_argument("--device-name", default="parley", help="name of the new device")

    p = sub.add_parser("send", parents=[json_flag], help="send a text message")
    p.add_argument("to", help="phone number (+...) or account id")
    p.add_argument("text", help="the message")

    p = sub.add_parser("listen", parents=[json_flag], help="show messages as they arrive")
    p.add_argument(
        "--once", action="store_true", help="exit once the stored messages have been shown"
    )

    sub.add_parser("devices", parents=[json_flag], help="list this account's devices")

    p = sub.add_parser(
        "safety-number", parents=[json_flag], help="the number to compare with a contact"
    )
    p.add_argument("who", help="phone number (+...) or account id")

    p = sub.add_parser(
        "trust",
        parents=[json_flag],
        help="accept a contact's changed identity key (after comparing safety numbers)",
    )
    p.add_argument("who", help="phone number (+...) or account id")

    p = sub.add_parser("history", parents=[json_flag], help="show saved messages")
    p.add_argument("who", nargs="?", help="only this conversation")
    p.add_argument("--limit", type=int, default=50, help="at most this many messages")

    p = sub.add_parser(
        "trace", parents=[json_flag], help="watch PQXDH and the Double Ratchet step by step"
    )
    p.add_argument("--messages", type=int, default=4, help="messages per burst")
    p.add_argument("--out-of-order", action="store_true", help="deliver bursts out of order")
    p.add_argument(
        "--reveal-secrets", action="store_true", help="research mode: show keys and DH outputs"
    )
    grpcurl_helpers.add_parser(sub, json_flag)
    return parser


# --- output ---------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, human: str, data: dict[str, Any], out: TextIO) -> None:
    if args.json:
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
    else:
        out.write(human + "\n")
    out.flush()


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _event_data(client: ParleyClient, event: Event) -> dict[str, Any]:
    data = dataclasses.asdict(event)
    for key in ("sender_account_id", "destination_account_id", "recipient_account_id"):
        if key in data:
            data[key.replace("_account_id", "")] = client.display_name(data[key])
    return data


def _event_text(client: ParleyClient, event: Event) -> str | None:
    name = client.display_name
    if isinstance(event, TextMessage):
        when = _time(event.server_time or event.timestamp_ms / 1000)
        return (
            f"[{when}] {name(event.sender_account_id)} (device {event.sender_device_id}):"
            f" {event.text}"
        )
    if isinstance(event, SyncedMessage):
        when = _time(event.server_time or event.timestamp_ms / 1000)
        return (
            f"[{when}] you → {name(event.destination_account_id)}"
            f" (from your device {event.sender_device_id}): {event.text}"
        )
    if isinstance(event, ReceiptEvent):
        what = "read" if event.read else "received"
        return f"{name(event.sender_account_id)} {what} {len(event.timestamps_ms)} message(s)"
    if isinstance(event, TypingEvent):
        verb = "is typing…" if event.started else "stopped typing"
        return f"{name(event.sender_account_id)} {verb}"
    if isinstance(event, DeliveryUpdate):
        state = "delivered to" if event.delivered else f"NOT delivered ({event.reason}) to"
        return f"message {event.message_id} {state} {name(event.recipient_account_id)}"
    if isinstance(event, DecryptionFailed):
        return (
            f"a message from {name(event.sender_account_id)} (device {event.sender_device_id})"
            f" could not be decrypted: {event.reason}"
        )
    if isinstance(event, IdentityChanged):
        return f"message held: {event.reason}"
    return None  # QueueEmpty: nothing to say to a person


# --- commands -------------------------------------------------------------------------------


async def _register(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    verification_id = await client.request_code(args.phone)
    code = args.code
    if code is None:
        if not sys.stdin.isatty():
            raise CliError("no --code given and no terminal to ask for it")
        code = getpass.getpass(f"verification code sent to {args.phone}: ").strip()
    identity = await client.register(
        args.phone, verification_id, code, business=args.business, device_name=args.device_name
    )
    _emit(
        args,
        f"registered {args.phone}: account {identity.account_id}, device {identity.device_id}",
        {"account_id": identity.account_id, "device_id": identity.device_id},
        out,
    )


async def _link(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.code is None:
        code = await client.create_linking_code()
        _emit(
            args,
            f"linking code: {code}\non the new device run: parley --profile NEW_DIR link"
            f" --code {code}",
            {"linking_code": code},
            out,
        )
        return
    identity = await client.link(args.code, device_name=args.device_name)
    _emit(
        args,
        f"linked: account {identity.account_id}, device {identity.device_id}",
        {"account_id": identity.account_id, "device_id": identity.device_id},
        out,
    )


async def _send(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    sent = await client.send(args.to, args.text)
    devices = ", ".join(str(d) for d in sent.device_ids)
    _emit(
        args,
        f"sent to {client.display_name(sent.recipient_account_id)} (devices {devices})",
        dataclasses.asdict(sent),
        out,
    )


async def _listen(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    await client.maintain_keys()
    retry = 0
    while True:
        try:
            await _listen_once(client, args, out)
            return
        except aio.AioRpcError as exc:
            # A long-running listener rides out server restarts; scripts (--once) do not.
            if args.once or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            retry += 1
            delay = min(RECONNECT_MAX_DELAY, 2 ** min(retry, 5))
            print(f"parley: connection lost, reconnecting in {delay}s", file=sys.stderr)
            await asyncio.sleep(delay)


async def _listen_once(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    async with contextlib.aclosing(client.receive(until_empty=args.once)) as events:
        async for event in events:
            if args.json:
                out.write(json.dumps(_event_data(client, event), ensure_ascii=False) + "\n")
                out.flush()
            else:
                text = _event_text(client, event)
                if text is not None:
                    out.write(text + "\n")
                    out.flush()
            if isinstance(event, QueueEmpty) and args.once:
                return


async def _devices(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    for d in await client.devices():
        mark = " (this device)" if d.this_device else ""
        _emit(
            args,
            f"{d.device_id:3d}  {d.name}{mark}  linked {_time(d.created_at)}"
            f"  last seen {_time(d.last_seen_at)}",
            dataclasses.asdict(d),
            out,
        )


async def _safety_number(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    number = await client.safety_number(args.who)
    _emit(
        args,
        f"safety number with {args.who}:\n{format_safety_number(number)}\n"
        "compare it with theirs in person or on a call; if they match, nobody is in between",
        {"safety_number": number},
        out,
    )


async def _trust(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    account_id = await client.resolve(args.who)
    devices = client.trust_identity(account_id)
    if devices:
        human = f"now trusting the new identity key of {args.who} (devices {devices})"
    else:
        human = f"no changed identity key of {args.who} to accept"
    _emit(args, human, {"account_id": account_id, "devices": devices}, out)


async def _history(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    peer = await client.resolve(args.who) if args.who else None
    for m in client.store.messages(peer, limit=args.limit):
        arrow = "←" if m.incoming else "→"
        _emit(
            args,
            f"[{_time(m.timestamp_ms / 1000)}] {arrow} {client.display_name(m.peer_account_id)}:"
            f" {m.text}",
            dataclasses.asdict(m),
            out,
        )


def _trace(args: argparse.Namespace, out: TextIO) -> None:
    try:
        research: Any = importlib.import_module("client.research")
    except ImportError as exc:
        raise CliError(f"protocol tracing is not available in this build ({exc})") from None
    if args.messages < 1:
        raise CliError("--messages must be at least 1")
    events = research.run_demo_conversation(messages=args.messages, out_of_order=args.out_of_order)
    render = research.render_jsonl if args.json else research.render_text
    out.write(render(events, reveal_secrets=args.reveal_secrets))


async def _grpcurl(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    await grpcurl_helpers.run(client, args, out, text=_event_text, data=_event_data)


COMMANDS: Final = {
    "register": _register,
    "link": _link,
    "send": _send,
    "listen": _listen,
    "devices": _devices,
    "safety-number": _safety_number,
    "trust": _trust,
    "history": _history,
    "grpcurl": _grpcurl,
}


async def _run(args: argparse.Namespace, out: TextIO) -> None:
    client = ParleyClient.open(args.profile, server=args.server)
    try:
        await COMMANDS[args.command](client, args, out)
    finally:
        await client.close()


def _rpc_message(error: aio.AioRpcError, server: str | None) -> str:
    code = error.code()
    if code == grpc.StatusCode.ABORTED:
        return f"aborted: {error.details()} (is another `parley listen` using this profile?)"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the Parley server{f' at {server}' if server else ''}: " + (
            error.details() or "unavailable"
        )
    name = code.name.replace("_", " ").lower() if code is not None else "error"
    return f"{name}: {error.details()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``parley`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "trace":
            _trace(args, out)
        else:
            asyncio.run(_run(args, out))
    except aio.AioRpcError as exc:
        print(f"parley: {_rpc_message(exc, args.server)}", file=sys.stderr)
        return EXIT_ERROR
    except (CliError, StoreError, ParleyClientError, UntrustedIdentityError) as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except CryptoError as exc:
        print(f"parley: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 0 if args.command == "listen" else 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
