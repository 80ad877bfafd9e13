"""The ``parley`` command: the reference client for people (and scripts) on top of
:mod:`client.api`.

Every command works on one *profile*, a directory holding the device's own SQLite store
(keys, sessions, history); ``--profile`` picks it (default ``~/.parley/default``, or
``$PARLEY_PROFILE``). A profile folder is created only to store something: a command that
leaves nothing in a new profile (a failed registration, a typo) removes the folder again.

Output is for people by default and JSON (one object per line) with ``--json``, given before
or after the command. Errors print what went wrong (the server's message for a refused call)
and exit with status 1, never with a traceback; bad usage exits with 2. With ``--json`` an
error is one JSON object on stderr: ``{"error": MESSAGE, "code": CODE}`` where CODE is the
gRPC status name of a refused call (``NOT_FOUND``...), or ``USAGE``, ``CLIENT``,
``UNTRUSTED_IDENTITY`` or ``CRYPTO`` for what the client itself refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import importlib.metadata
import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO

# gRPC's C core prints its own INFO lines (each failed TLS handshake...) on stderr around our
# one-line errors; it reads this variable once, when grpc is first imported (by client.api).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from client import (
    cli_billing,
    cli_business,
    cli_consent,
    cli_links,
    cli_sending,
    cli_support,
    grpcurl_helpers,
)
from client.api import (
    DecryptionFailed,
    DeliveryUpdate,
    Event,
    IdentityChanged,
    ParleyClient,
    ParleyClientError,
    QueueEmpty,
    ReceiptEvent,
    RejectedTemplateMessage,
    RenderedTemplateMessage,
    SyncedMessage,
    TextMessage,
    TypingEvent,
)
from client.crypto import CryptoError
from client.errors import Aborted, ParleyError, RateLimited, Unavailable
from client.store import StoreError, UntrustedIdentityError

__all__ = ["DEFAULT_PROFILE", "build_parser", "main"]

DEFAULT_PROFILE: Final = Path("~/.parley/default")
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
RECONNECT_MAX_DELAY: Final = 30
"""Seconds between reconnection attempts of ``parley listen`` at most."""
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})


class CliError(Exception):
    """An error to print as-is (the message says what to do)."""


class UsageError(Exception):
    """Bad command-line usage (exit status 2); raised instead of argparse's print-and-exit so
    that ``--json`` can report it as JSON too."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def _version() -> str:
    try:
        return importlib.metadata.version("parley")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="parley",
        description="Parley reference client: end-to-end-encrypted messages over a Parley server.",
    )
    parser.add_argument("--version", action="version", version=f"parley {_version()}")
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
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="connect with TLS, trusting the system's certificate authorities (--no-tls:"
        " plaintext) [env PARLEY_TLS=1|0; default: the profile's, else plaintext]",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=os.environ.get("PARLEY_CA_FILE") or None,
        metavar="PEM",
        help="connect with TLS, trusting this CA (or self-signed) certificate"
        " [env PARLEY_CA_FILE; remembered in the profile]",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    # Also accepted after the command; SUPPRESS keeps a --json given before it.
    json_flag = _Parser(add_help=False)
    json_flag.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "register",
        parents=[json_flag],
        help="register a phone number: sends a code to it (finish with `parley verify CODE`);"
        " with --code, in one step",
    )
    p.add_argument("phone", help="the number in E.164 form, e.g. +14155550123")
    p.add_argument("--business", action="store_true", help="register a business account")
    p.add_argument(
        "--code", help="the code, when known in advance (test numbers): register in one step"
    )
    p.add_argument("--device-name", default="parley", help="name shown in `parley devices`")

    p = sub.add_parser(
        "verify",
        parents=[json_flag],
        help="complete `parley register NUMBER` with the code sent to the number",
    )
    p.add_argument("code", help="the verification code the number received")

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
        "trace",
        parents=[json_flag],
        help="watch PQXDH and the Double Ratchet step by step (offline; no server needed)",
        description="Run a scripted in-memory conversation between Alice and Bob and print every "
        "protocol step with its inputs and outputs, named as in Signal's specifications "
        "(legend at the top). Save it with --json --reveal-secrets and check it anywhere with "
        "--verify-file.",
    )
    p.add_argument("--messages", type=int, default=4, help="messages per burst")
    p.add_argument("--out-of-order", action="store_true", help="deliver bursts out of order")
    p.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="reproducible run: all randomness comes from N (same N, byte-identical output)",
    )
    p.add_argument(
        "--reveal-secrets",
        action="store_true",
        help="research mode: show private keys, DH outputs, chain and message keys, plaintexts",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="print the trace, then recompute every step from the printed values and report "
        "each check (implies --reveal-secrets: the checks need the secrets); exit 1 on failure",
    )
    p.add_argument(
        "--verify-file",
        type=Path,
        metavar="FILE",
        help="verify a trace saved with --json --reveal-secrets ('-' reads stdin) instead of "
        "running one; exit 1 on failure",
    )
    grpcurl_helpers.add_parser(sub, json_flag)
    business_areas = cli_business.add_parsers(sub, json_flag)
    cli_consent.add_parsers(sub, json_flag, business=business_areas)
    cli_sending.add_parsers(business_areas, json_flag)
    cli_support.add_parsers(sub, json_flag, business=business_areas)
    cli_links.add_parsers(sub, json_flag)
    cli_billing.add_parsers(sub, json_flag, business_areas)
    return parser


# --- output ---------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, human: str, data: dict[str, Any], out: TextIO) -> None:
    if args.json:
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
    else:
        out.write(human + "\n")
    out.flush()


def _warn(json_output: bool, text: str) -> None:
    """A warning on stderr: ``parley: TEXT`` or ``{"warning": TEXT}`` with --json."""
    line = json.dumps({"warning": text}, ensure_ascii=False) if json_output else f"parley: {text}"
    print(line, file=sys.stderr, flush=True)


class _WarningHandler(logging.Handler):
    """Shows the client library's warnings (an exposed profile, a failed sync copy) the way
    the CLI shows its own."""

    def __init__(self, json_output: bool) -> None:
        super().__init__(logging.WARNING)
        self.json_output = json_output

    def emit(self, record: logging.LogRecord) -> None:
        _warn(self.json_output, f"warning: {record.getMessage()}")


def _command(args: argparse.Namespace, rest: str) -> str:
    """A ``parley`` command line to suggest, with this run's --profile unless it is the
    default one."""
    profile = (
        "" if args.profile == DEFAULT_PROFILE else f" --profile {shlex.quote(str(args.profile))}"
    )
    return f"parley{profile} {rest}"


def _held_text(args: argparse.Namespace, who: str) -> str:
    """What to do about a changed identity key, as commands to run."""
    quoted = shlex.quote(who)
    return (
        f"compare safety numbers with them in person or on a call"
        f" (`{_command(args, f'safety-number {quoted}')}`); if they match, accept the new key"
        f" with `{_command(args, f'trust {quoted}')}`"
    )


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _event_data(client: ParleyClient, event: Event) -> dict[str, Any]:
    data = dataclasses.asdict(event)
    for key in ("sender_account_id", "destination_account_id", "recipient_account_id"):
        if key in data:
            data[key.replace("_account_id", "")] = client.display_name(data[key])
    return data


def _event_text(client: ParleyClient, args: argparse.Namespace, event: Event) -> str | None:
    name = client.display_name
    if isinstance(event, TextMessage):
        when = _time(event.server_time or event.timestamp_ms / 1000)
        category = f" [{event.category}]" if event.category else ""
        return (
            f"[{when}] {name(event.sender_account_id)} (device {event.sender_device_id})"
            f"{category}: {event.text}"
        )
    if isinstance(event, RenderedTemplateMessage | RejectedTemplateMessage):
        return cli_business.template_event_text(client, event, _time)
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
        who = event.sender_phone_number or event.sender_account_id
        return (
            f"a message from {who} (device {event.sender_device_id}) is held: their identity key"
            f" changed. {_held_text(args, who).capitalize()}; held messages then arrive with the"
            " next `parley listen`"
        )
    return None  # QueueEmpty: nothing to say to a person


# --- commands -------------------------------------------------------------------------------


def _registered(args: argparse.Namespace, phone: str, account_id: str, device_id: int) -> str:
    return f"registered {phone}: account {account_id}, device {device_id}"


async def _register(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.code is not None:  # one step: a test number, or a code known in advance
        verification_id = await client.request_code(args.phone)
        identity = await client.register(
            args.phone,
            verification_id,
            args.code,
            business=args.business,
            device_name=args.device_name,
        )
        _emit(
            args,
            _registered(args, args.phone, identity.account_id, identity.device_id),
            {"account_id": identity.account_id, "device_id": identity.device_id},
            out,
        )
        return
    # Two steps, like signal-cli: a script cannot wait at a prompt for an SMS.
    pending = await client.start_registration(
        args.phone, business=args.business, device_name=args.device_name
    )
    next_step = _command(args, "verify CODE")
    _emit(
        args,
        f"a verification code was sent to {pending.phone_number}; finish with: {next_step}",
        {
            "phone_number": pending.phone_number,
            "verification_id": pending.verification_id,
            "next": next_step,
        },
        out,
    )


async def _verify(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    registered = client.store.local_identity()
    if registered is not None:
        raise CliError(
            f"this profile is already registered ({registered.phone_number or 'linked device'});"
            " use another --profile to register another number"
        )
    if client.pending_registration() is None:
        raise CliError(
            "no registration is waiting for a code in this profile: run"
            f" `{_command(args, 'register NUMBER')}` first"
        )
    identity = await client.complete_registration(args.code)
    _emit(
        args,
        _registered(args, identity.phone_number, identity.account_id, identity.device_id),
        {
            "account_id": identity.account_id,
            "device_id": identity.device_id,
            "phone_number": identity.phone_number,
        },
        out,
    )


async def _link(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.code is None:
        code = await client.create_linking_code()
        _emit(
            args,
            # `--code=`: a code may begin with "-", which argparse would take for an option.
            f"linking code: {code}\non the new device run: parley --profile NEW_DIR link"
            f" --code={code}",
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
    """Listen until interrupted, riding out a server that is down at start or restarts
    (backoff 1, 2, 4... up to RECONNECT_MAX_DELAY seconds, each wait said on stderr).
    ``--once`` is for scripts: it fails at once instead of waiting."""
    failures = 0
    while True:
        connected = [False]
        try:
            await client.maintain_keys()
            await _listen_once(client, args, out, connected)
            return
        except Unavailable as exc:
            if args.once:
                raise
            failures = 1 if connected[0] else failures + 1
            delay = min(RECONNECT_MAX_DELAY, 2 ** min(failures - 1, 5))
            what = "connection lost" if connected[0] else f"cannot reach {client.server}"
            _warn(args.json, f"{what} ({exc.message}); reconnecting in {delay}s")
            await asyncio.sleep(delay)


async def _listen_once(
    client: ParleyClient, args: argparse.Namespace, out: TextIO, connected: list[bool]
) -> None:
    async with contextlib.aclosing(client.receive(until_empty=args.once)) as events:
        async for event in events:
            connected[0] = True
            if args.json:
                out.write(json.dumps(_event_data(client, event), ensure_ascii=False) + "\n")
                out.flush()
            else:
                text = _event_text(client, args, event)
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
        f"safety number with {args.who}:\n{number.formatted}\n"
        "compare it with theirs in person or on a call; if they match, nobody is in between",
        {"safety_number": str(number), "digits": number.digits},
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
    if args.verify_file is not None:
        if args.verify:
            raise CliError("use either --verify (a new trace) or --verify-file FILE, not both")
        path: Path = args.verify_file
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
            report = research.verify(research.parse_jsonl(text))
        except OSError as exc:
            raise CliError(f"cannot read the trace {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CliError(
                f"{path} is not a trace saved with `parley trace --json`: {exc}"
            ) from None
        if report.secrets_hidden:
            raise CliError(
                f"{path} was saved without its secrets, so its steps cannot be recomputed: "
                "save it with `parley trace --json --reveal-secrets` (or `--json --verify`)"
            )
        _verify_report(args, report, out)
        return
    if args.messages < 1:
        raise CliError("--messages must be at least 1")
    events = research.run_demo_conversation(
        messages=args.messages, out_of_order=args.out_of_order, seed=args.seed
    )
    reveal = args.reveal_secrets or args.verify
    render = research.render_jsonl if args.json else research.render_text
    printed = render(events, reveal_secrets=reveal)
    out.write(printed)
    if args.verify:
        # Check what was printed, read back from its JSON form, not the objects behind it.
        rendered = printed if args.json else research.render_jsonl(events, reveal_secrets=True)
        if not args.json:
            out.write("\nverification (every step recomputed from the values above):\n")
        _verify_report(args, research.verify(rendered), out)


def _verify_report(args: argparse.Namespace, report: Any, out: TextIO) -> None:
    """Print a :class:`client.research.VerifyReport`; any failed check is a failed command."""
    out.write(report.jsonl() if args.json else report.render())
    out.flush()
    if not report.ok:
        if not report.checks:
            raise CliError("nothing to verify: the file holds no protocol steps")
        raise CliError(
            f"verification failed: {len(report.failed)} of {len(report.checks)} checks FAILED"
        )


async def _grpcurl(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    await grpcurl_helpers.run(client, args, out, text=_event_text, data=_event_data)


COMMANDS: Final = {
    "register": _register,
    "verify": _verify,
    "link": _link,
    "send": _send,
    "listen": _listen,
    "devices": _devices,
    "safety-number": _safety_number,
    "trust": _trust,
    "history": _history,
    "grpcurl": _grpcurl,
    **cli_business.COMMANDS,
    **cli_consent.COMMANDS,
    **cli_support.COMMANDS,
    **cli_links.COMMANDS,
    **cli_billing.COMMANDS,
}


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (what opening the profile
    will create), or None when ``path`` exists."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


async def _run(args: argparse.Namespace, out: TextIO) -> None:
    profile: Path = args.profile.expanduser()
    created = _first_missing(profile)
    keep = False
    try:
        client = ParleyClient.open(
            profile,
            server=args.server,
            tls=args.tls,
            ca_file=None if args.tls is False else args.ca_file,
        )
        try:
            await COMMANDS[args.command](client, args, out)
        finally:
            keep = client.store.holds_state()
            await client.close()
    finally:
        if created is not None and not keep:
            # Nothing was stored (a failed registration, a command on a mistyped profile):
            # leave no empty profile behind to be mistaken for a real one.
            shutil.rmtree(created, ignore_errors=True)


def _error_text(error: ParleyError, args: argparse.Namespace) -> str:
    if isinstance(error, Aborted):
        return f"{error} (is another `parley listen` using this profile?)"
    if isinstance(error, Unavailable):
        where = f" at {args.server}" if args.server else ""
        hint = ""
        if args.tls is None and args.ca_file is None:
            hint = " (if the server uses TLS, add --tls or --ca-file PEM)"
        return f"cannot reach the Parley server{where}: {error.message}{hint}"
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return f"{error} (retry in {error.retry_after:g} s)"
    return str(error)


def _env_flag(name: str) -> bool | None:
    word = os.environ.get(name, "").strip().lower()
    if not word:
        return None
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise CliError(f"{name}={word!r} is not a yes/no value: use 1 or 0")


def _fail(json_output: bool, code: str, message: str, status: int = EXIT_ERROR) -> int:
    if json_output:
        print(json.dumps({"error": message, "code": code}, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"parley: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``parley`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    json_output = "--json" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        if json_output:
            return _fail(True, "USAGE", f"{exc} (see `parley --help`)", EXIT_USAGE)
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    json_output = args.json
    handler = _WarningHandler(json_output)
    library_log = logging.getLogger("parley.client")
    library_log.addHandler(handler)
    out = sys.stdout
    try:
        if args.tls is None:
            args.tls = _env_flag("PARLEY_TLS")
        if args.command == "trace":
            _trace(args, out)
        else:
            asyncio.run(_run(args, out))
    except ParleyError as exc:
        return _fail(json_output, exc.code.name, _error_text(exc, args))
    except UntrustedIdentityError as exc:
        message = (
            f"the identity key of {exc.who} (device {exc.device_id}) changed since you first"
            f" talked to them; nothing was sent. {_held_text(args, exc.who).capitalize()}"
        )
        return _fail(json_output, "UNTRUSTED_IDENTITY", message)
    except (CliError, StoreError, ParleyClientError) as exc:
        return _fail(json_output, "CLIENT", str(exc))
    except CryptoError as exc:
        return _fail(json_output, "CRYPTO", f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return 0 if args.command == "listen" else 130
    except BrokenPipeError:
        return 0
    finally:
        library_log.removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
