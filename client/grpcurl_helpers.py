"""``parley grpcurl ...``: the cryptography a grpcurl tester cannot do by hand.

grpcurl can make every Parley call, but three steps of a conversation need keys: uploading
prekeys (each is XEdDSA-signed by the device's identity key), encrypting a message (PQXDH and
the Double Ratchet) and reading one. These commands do exactly those steps, offline, and leave
every RPC to grpcurl:

``keys``
    gives a profile a fresh identity for a device registered with grpcurl and prints a validly
    signed ``UploadPreKeys`` request (grpcurl JSON, for ``-d @``);
``encrypt``
    turns a text into a ``SendMessage`` request for a recipient, from the ``GetPreKeyBundles``
    answer grpcurl printed (or by fetching the bundles itself);
``decrypt``
    reads ``ReceiveMessages`` output as grpcurl printed it and shows the texts, and can write
    the ``AcknowledgeMessages`` request for everything in it.

The profile is an ordinary ``parley`` profile: the private keys, sessions and history live in
the same store, through the same :class:`~client.api.ParleyClient` code that ``parley send``
and ``parley listen`` use (so ``parley --profile P listen`` works on it too); nothing here
touches a key or a ratchet itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from parley.v1 import account_pb2 as apb
from parley.v1 import content_pb2 as cpb
from parley.v1 import key_pb2 as kpb
from parley.v1 import messaging_pb2 as mpb

from client.api import DeliveryUpdate, Event, ParleyClient, ParleyClientError
from client.request_ids import time_ordered_request_id

__all__ = ["DEFAULT_ONE_TIME_KEYS", "add_parser", "run"]

DEFAULT_ONE_TIME_KEYS: Final = 3
"""One-time EC and Kyber prekeys in a printed upload: enough for a few first contacts, small
enough to read (each signed Kyber key is about 2 KB of base64; the reference client uploads
100 of each)."""

M = TypeVar("M", bound=Message)
TextOf = Callable[[ParleyClient, argparse.Namespace, Event], "str | None"]
DataOf = Callable[[ParleyClient, Event], dict[str, Any]]


class HelperError(ParleyClientError):
    """A helper could not do what was asked; the message says what to do instead."""


def add_parser(sub: Any, json_flag: argparse.ArgumentParser) -> None:
    """Add ``parley grpcurl {keys,encrypt,decrypt}`` to the CLI's sub-command parsers."""
    group = sub.add_parser(
        "grpcurl",
        help="keys, encryption and decryption for a conversation driven with grpcurl",
        description="Offline helpers for grpcurl testers: each prints a request body for "
        "grpcurl's `-d @` or reads what grpcurl printed. See docs/grpcurl.md.",
    )
    helpers = group.add_subparsers(dest="helper", required=True, metavar="HELPER")

    p = helpers.add_parser(
        "keys",
        help="new identity + a signed UploadPreKeys request for a device registered by grpcurl",
    )
    p.add_argument(
        "--registration",
        metavar="FILE",
        help="the CompleteVerification or LinkDevice answer as grpcurl printed it ('-' for "
        "stdin): account, device and token in one go",
    )
    p.add_argument("--account-id", help="or: accountId from that answer")
    p.add_argument("--device-id", type=int, default=1, help="deviceId from that answer")
    p.add_argument(
        "--token",
        default="",
        help="authToken, saved so that `encrypt --to` can fetch bundles (write --token=TOKEN: "
        "a token may start with '-')",
    )
    p.add_argument("--phone", default="", help="the device's number, for display only")
    p.add_argument(
        "--one-time-keys",
        type=int,
        default=DEFAULT_ONE_TIME_KEYS,
        help=f"one-time EC and Kyber prekeys to include [default {DEFAULT_ONE_TIME_KEYS}]",
    )

    p = helpers.add_parser(
        "encrypt", help="encrypt a text into a SendMessage request for every recipient device"
    )
    p.add_argument("text", help="the message")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--bundles",
        metavar="FILE",
        help="the recipient's GetPreKeyBundles answer as grpcurl printed it ('-' for stdin)",
    )
    source.add_argument(
        "--to",
        metavar="ACCOUNT",
        help="account id or +number: reuse this profile's sessions, else fetch the bundles "
        "(needs the --token given to `keys`; consumes one-time prekeys)",
    )

    p = helpers.add_parser(
        "decrypt",
        parents=[json_flag],
        help="show the messages in ReceiveMessages output as grpcurl printed it",
    )
    p.add_argument(
        "file", nargs="?", default="-", help="grpcurl's ReceiveMessages output [default: stdin]"
    )
    p.add_argument(
        "--ack",
        metavar="FILE",
        help="also write the AcknowledgeMessages request for every envelope and status read "
        "(except messages held back because a sender's identity key changed)",
    )


async def run(
    client: ParleyClient, args: argparse.Namespace, out: TextIO, *, text: TextOf, data: DataOf
) -> None:
    """Run the helper named by ``args.helper``. ``text`` and ``data`` render an event for
    people and for ``--json`` (the CLI passes the ones ``parley listen`` uses)."""
    commands: dict[str, Callable[[], Awaitable[None]]] = {
        "keys": lambda: _keys(client, args, out),
        "encrypt": lambda: _encrypt(client, args, out),
        "decrypt": lambda: _decrypt(client, args, out, text, data),
    }
    await commands[args.helper]()


def request_json(message: Message) -> str:
    """A request body as grpcurl's ``-d`` takes it (the .proto field names, base64 bytes)."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True) + "\n"


def _note(text: str) -> None:
    """Guidance for the person goes to stderr, so stdout stays a clean request body."""
    print(f"parley: {text}", file=sys.stderr)


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text()
    except OSError as exc:
        raise HelperError(f"cannot read {name}: {exc.strerror}") from None


def _write(name: str, text: str) -> None:
    try:
        Path(name).write_text(text)
    except OSError as exc:
        raise HelperError(f"cannot write {name}: {exc.strerror}") from None


# --- keys -------------------------------------------------------------------------------------


async def _keys(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    if not 0 <= args.one_time_keys <= 100:
        raise HelperError("--one-time-keys must be between 0 and 100 (the server's batch limit)")
    if args.registration is not None:
        if args.account_id:
            raise HelperError("give --registration or --account-id, not both")
        registration = _parse(
            _read(args.registration), apb.CompleteVerificationResponse(), args.registration
        )
        args.account_id = registration.account_id
        args.device_id = registration.device_id
        args.token = registration.auth_token
    identity = client.store.local_identity()
    if identity is None:
        if not args.account_id:
            raise HelperError(
                "say which device the keys are for: --registration FILE with the answer of "
                "CompleteVerification or LinkDevice, or --account-id (and --device-id, --token)"
            )
        identity = client.create_identity(args.account_id, args.device_id, args.token, args.phone)
    elif args.account_id and (args.account_id, args.device_id) != (
        identity.account_id,
        identity.device_id,
    ):
        raise HelperError(
            f"profile {client.store.path.parent} already belongs to device "
            f"{identity.device_id} of account {identity.account_id}; use a new --profile"
        )
    request = client.first_upload_request(args.one_time_keys)
    out.write(request_json(request))
    out.flush()
    _note(
        f"the private halves are saved in profile {client.store.path.parent}; send this body "
        f"as device {identity.device_id}: grpcurl -plaintext -H 'authorization: Bearer TOKEN' "
        "-d @ HOST:PORT parley.v1.KeyService/UploadPreKeys < FILE"
    )


# --- encrypt ----------------------------------------------------------------------------------


def _parse(text: str, message: M, what: str) -> M:
    """grpcurl's JSON (lowerCamelCase or .proto names) into ``message``."""
    try:
        return json_format.Parse(text, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise HelperError(f"{what} is not {message.DESCRIPTOR.name} JSON: {exc}") from None


async def _encrypt(client: ParleyClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.bundles is not None:
        reply = _parse(_read(args.bundles), kpb.GetPreKeyBundlesResponse(), args.bundles)
        if not reply.account_id or not reply.bundles:
            raise HelperError(
                f"{args.bundles} holds no bundle: the recipient has no device with uploaded "
                "keys yet (KeyService/UploadPreKeys)"
            )
        account_id = reply.account_id
        devices = sorted(client.sessions_from_bundles(reply))
    else:
        if not client.identity.auth_token:
            raise HelperError(
                "this profile has no auth token to fetch bundles with: pass --bundles, or "
                "--token to `parley grpcurl keys`"
            )
        account_id = await client.resolve(args.to)
        devices = client.store.session_devices(account_id)
        if not devices:
            devices = await client.start_sessions(account_id)
    timestamp_ms = int(client.clock.now() * 1000)
    content = cpb.Content(data=cpb.DataMessage(text=args.text, timestamp_ms=timestamp_ms))
    # The same encryption as `parley send`, which also saves each advanced session first.
    messages = client._encrypt(account_id, devices, content.SerializeToString())
    if not messages:
        raise HelperError(f"no session with any device of {account_id}: pass fresh --bundles")
    request = mpb.SendMessageRequest(
        request_id=time_ordered_request_id(timestamp_ms, os.urandom(10)),
        recipient_account_id=account_id,
        messages=[messages[d] for d in sorted(messages)],
        client_timestamp_ms=timestamp_ms,
    )
    await client.record_sent(account_id, timestamp_ms, args.text)  # on disk before it leaves
    out.write(request_json(request))
    out.flush()


# --- decrypt ----------------------------------------------------------------------------------


def responses(text: str) -> Iterator[mpb.ReceiveMessagesResponse]:
    """The ReceiveMessagesResponse objects of grpcurl's output (JSON objects one after the
    other, as grpcurl prints a stream)."""
    decoder = json.JSONDecoder()
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise HelperError(
                f"not grpcurl JSON output at character {exc.pos}: {exc.msg}"
            ) from None
        response = mpb.ReceiveMessagesResponse()
        try:
            json_format.ParseDict(value, response, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise HelperError(f"not a ReceiveMessagesResponse: {exc}") from None
        yield response


async def _decrypt(
    client: ParleyClient, args: argparse.Namespace, out: TextIO, text: TextOf, data: DataOf
) -> None:
    envelope_ids: list[int] = []
    status_ids: list[int] = []
    held: set[tuple[str, int]] = set()
    for response in responses(_read(args.file)):
        if response.HasField("envelopes"):
            for envelope in response.envelopes.envelopes:
                earlier = client.store.is_processed(envelope.envelope_id)
                # `parley listen`'s own step: decrypt, then commit session and message. It
                # says not to acknowledge a message it holds back (a changed identity key).
                event, ack = await client._process(envelope, held)
                if ack:
                    envelope_ids.append(envelope.envelope_id)
                if earlier:
                    _show_earlier(client, args, out, envelope)
                elif event is not None:
                    _show(client, args, out, event, text, data)
        elif response.HasField("statuses"):
            for status in response.statuses.statuses:
                status_ids.append(status.status_id)
                update = DeliveryUpdate.from_proto(
                    status, client.phone_number_of(status.recipient_account_id)
                )
                _show(client, args, out, update, text, data)
    if args.ack:
        body = mpb.AcknowledgeMessagesRequest(envelope_ids=envelope_ids, status_ids=status_ids)
        _write(args.ack, request_json(body))
    if not envelope_ids and not status_ids:
        _note("no envelope and no status in the input (was the stream empty?)")


def _show(
    client: ParleyClient,
    args: argparse.Namespace,
    out: TextIO,
    event: Event,
    text: TextOf,
    data: DataOf,
) -> None:
    line = (
        json.dumps(data(client, event), ensure_ascii=False)
        if args.json
        else text(client, args, event)
    )
    if line is not None:
        out.write(line + "\n")


def _show_earlier(
    client: ParleyClient, args: argparse.Namespace, out: TextIO, envelope: mpb.Envelope
) -> None:
    """An envelope decrypted before (its message key is used up): what it said, from the
    history, since a second run over the same grpcurl output is an easy mistake to make."""
    said: str | None = None
    for row in client.store.messages(envelope.sender_account_id, limit=1000):
        if row.envelope_id == envelope.envelope_id:
            said = row.text
    if args.json:
        record = {"kind": "decrypted_before", "envelope_id": envelope.envelope_id, "text": said}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        what = f": {said}" if said is not None else " (it held no text)"
        out.write(f"envelope {envelope.envelope_id} was decrypted before{what}\n")
