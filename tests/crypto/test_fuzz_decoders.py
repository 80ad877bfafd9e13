"""Fuzzing the client's decoders: whatever bytes arrive, only the documented errors come out.

Everything a peer, the server or a damaged disk can hand the client is decoded here:
``SignalMessage`` and ``PreKeySignalMessage`` (the wire), the session records the store keeps
(``SessionRecord.from_bytes``), and whole envelopes through the receive path of
:class:`client.api.ParleyClient` (decryption, then the ``parley.v1.Content`` inside).

Inputs are random bytes and mutations of valid encodings (truncations, bit flips, inserted,
deleted and overwritten bytes), so that the fuzzer reaches deep into each format instead of
failing at the first byte. The contract:

* the parsers and the session core raise only :class:`client.crypto.CryptoError` subclasses
  (``InvalidMessageError`` family for messages, ``InvalidStateError`` for records) — never
  ``IndexError``, ``struct.error``, ``ValueError``, ``KeyError``...;
* the receive path never raises for a bad envelope: it reports a ``DecryptionFailed``
  event (and acknowledges the envelope), or nothing for a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parley.v1 import content_pb2 as cpb
from parley.v1 import messaging_pb2 as mpb

from client.api import DecryptionFailed, ParleyClient, TextMessage
from client.crypto import (
    CryptoError,
    IdentityKeyPair,
    InvalidMessageError,
    InvalidStateError,
    PreKeySignalMessage,
    SessionRecord,
    SignalMessage,
)
from client.crypto.protobuf import WIRE_LEN, WIRE_VARINT, bytes_field, uint_field
from client.crypto.wire import MAC_LENGTH
from client.errors import Unavailable
from client.store import ClientStore, LocalIdentity
from tests.crypto.support import Party, established_pair, new_party

FUZZ = settings(
    max_examples=int(os.environ.get("PARLEY_FUZZ_EXAMPLES", "400")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
"""Parsing is cheap: many examples (``PARLEY_FUZZ_EXAMPLES=5000`` for a longer hunt; the
default keeps the module to a few seconds). Paths that run X25519/ML-KEM use fewer."""
FUZZ_CRYPTO = settings(FUZZ, max_examples=max(1, FUZZ.max_examples * 2 // 5))


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` damaged the ways transports and attackers damage bytes, or random bytes."""
    kind = draw(
        st.sampled_from(["random", "truncate", "flip", "insert", "delete", "overwrite", "extend"])
    )
    data = bytearray(valid)
    if kind == "random":
        return draw(st.binary(max_size=2 * len(valid)))
    if kind == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "extend":
        return valid + draw(st.binary(min_size=1, max_size=64))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


def _fields(data: bytes) -> list[tuple[int, int | bytes]] | None:
    """The varint and length-delimited fields of a protobuf, in order (repeats kept), or None
    if ``data`` is not cleanly one (the mutation then falls back to raw bytes)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0

    def read_varint() -> int | None:
        nonlocal pos
        value = shift = 0
        while pos < len(data) and shift < 70:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
        return None

    while pos < len(data):
        key = read_varint()
        if key is None or key >> 3 == 0:
            return None
        value = read_varint()
        if value is None or key & 7 not in (WIRE_VARINT, WIRE_LEN):
            return None
        if key & 7 == WIRE_LEN:
            if pos + value > len(data):
                return None
            out.append((key >> 3, data[pos : pos + value]))
            pos += value
        else:
            out.append((key >> 3, value))
    return out


def _encode(fields: list[tuple[int, int | bytes]]) -> bytes:
    return b"".join(
        bytes_field(n, v) if isinstance(v, bytes) else uint_field(n, v) for n, v in fields
    )


INTERESTING_INTS = st.sampled_from([0, 1, 2, 127, 128, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1])
INTERESTING_BYTES = st.one_of(
    st.binary(max_size=80),
    st.binary(min_size=32, max_size=32).map(lambda b: b"\x05" + b),  # a public key's shape
    st.binary(min_size=32, max_size=32),
)


@st.composite
def restructured(draw: st.DrawFn, valid: bytes, depth: int = 3) -> bytes:
    """``valid`` (a protobuf) with one field, at some nesting depth, dropped, repeated, or
    given another value or type: reaches the checks behind a successful parse."""
    fields = _fields(valid)
    if not fields or depth == 0:
        return draw(mutated(valid))
    i = draw(st.integers(0, len(fields) - 1))
    number, value = fields[i]
    actions = ["drop", "repeat", "int", "bytes", "new field"]
    if isinstance(value, bytes) and _fields(value):
        actions += ["nested"] * len(actions)  # go deeper half the time: most checks are there
    action = draw(st.sampled_from(actions))
    if action == "drop":
        del fields[i]
    elif action == "repeat":
        fields.insert(i, (number, value))
    elif action == "int":
        fields[i] = (number, draw(INTERESTING_INTS | st.integers(0, 2**64 - 1)))
    elif action == "bytes":
        fields[i] = (number, draw(INTERESTING_BYTES))
    elif action == "nested":
        assert isinstance(value, bytes)
        fields[i] = (number, draw(restructured(value, depth - 1)))
    else:
        fields.insert(i, (draw(st.integers(1, 20)), draw(INTERESTING_INTS | INTERESTING_BYTES)))
    return _encode(fields)


@st.composite
def damaged_message(draw: st.DrawFn, valid: bytes, mac: bool) -> bytes:
    """A wire message (version byte, protobuf, MAC if ``mac``) damaged as bytes or as fields."""
    if draw(st.booleans()):
        return draw(mutated(valid))
    end = len(valid) - MAC_LENGTH if mac else len(valid)
    return valid[:1] + draw(restructured(valid[1:end])) + valid[end:]


@dataclass
class Samples:
    """Valid encodings of each format, made once: the seeds the mutations start from."""

    alice: Party
    bob: Party
    signal_message: bytes
    """Alice → Bob, established session (content type 2)."""
    bob_record: bytes
    """Bob's record before he decrypts ``signal_message``."""
    prekey_message: bytes
    """Carol → Dave, the session-opening message (content type 3)."""
    carol: Party
    dave: Party
    dave_record: bytes


@pytest.fixture(scope="module")
def samples() -> Samples:
    alice, bob = established_pair()
    message = alice.record.encrypt(b"fuzz me")
    carol, dave = new_party(3003), new_party(4004)
    carol.record.process_prekey_bundle(
        dave.bundle(), our_identity=carol.identity, our_registration_id=carol.registration_id
    )
    first = carol.record.encrypt(b"first contact")
    assert first.type == 3
    return Samples(
        alice=alice,
        bob=bob,
        signal_message=message.serialized,
        bob_record=bob.record.to_bytes(),
        prekey_message=first.serialized,
        carol=carol,
        dave=dave,
        dave_record=dave.record.to_bytes(),
    )


def only_documented(call: Callable[[], object], *allowed: type[CryptoError]) -> None:
    """Run ``call``; success or one of ``allowed`` is fine, any other exception fails."""
    with contextlib.suppress(*allowed):
        call()


def test_signal_message_parsing(samples: Samples) -> None:
    @FUZZ
    @given(data=damaged_message(samples.signal_message, mac=True))
    def check(data: bytes) -> None:
        only_documented(lambda: SignalMessage.parse(data), InvalidMessageError)

    check()


def test_prekey_signal_message_parsing(samples: Samples) -> None:
    @FUZZ
    @given(data=damaged_message(samples.prekey_message, mac=False))
    def check(data: bytes) -> None:
        only_documented(lambda: PreKeySignalMessage.parse(data), InvalidMessageError)

    check()


def test_decrypting_a_damaged_signal_message(samples: Samples) -> None:
    @FUZZ_CRYPTO
    @given(data=damaged_message(samples.signal_message, mac=True))
    def check(data: bytes) -> None:
        record = SessionRecord.from_bytes(samples.bob_record)
        only_documented(lambda: record.decrypt(data), CryptoError)

    check()


def test_decrypting_a_damaged_prekey_message(samples: Samples) -> None:
    dave = samples.dave

    @FUZZ_CRYPTO
    @given(data=damaged_message(samples.prekey_message, mac=False))
    def check(data: bytes) -> None:
        record = SessionRecord.from_bytes(samples.dave_record)
        only_documented(
            lambda: record.decrypt_prekey_message(
                data,
                our_identity=dave.identity,
                our_registration_id=dave.registration_id,
                prekeys=dave.prekeys,
            ),
            CryptoError,
        )

    check()


def test_session_records(samples: Samples) -> None:
    """A damaged record is refused with InvalidStateError, or it loads and then every use of
    it fails (if at all) with a CryptoError: corrupt state never escapes as a crash."""

    @FUZZ_CRYPTO
    @given(data=mutated(samples.bob_record) | restructured(samples.bob_record))
    def check(data: bytes) -> None:
        try:
            record = SessionRecord.from_bytes(data)
        except InvalidStateError:
            return
        only_documented(lambda: record.decrypt(samples.signal_message), CryptoError)
        only_documented(lambda: record.encrypt(b"reply"), CryptoError)
        SessionRecord.from_bytes(record.to_bytes())  # what loaded can be saved and reloaded

    check()


# --- the receive path: envelopes and parley.v1.Content ------------------------------------

PEER_ACCOUNT = "7d3f1a52-0c4e-4b8f-9d61-5e2a8c9b0f13"
OWN_ACCOUNT = "2a9c4e61-8b0d-4f3a-b7e5-1c6d9f8a2e40"


@dataclass
class Receiver:
    """A real ParleyClient (its store, its receive path) with a session to a peer device.

    No server is involved: envelopes are handed to the client's envelope processing exactly
    as the ReceiveMessages stream hands them over."""

    client: ParleyClient
    peer: Party
    loop: asyncio.AbstractEventLoop


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    async def build() -> Receiver:
        store = ClientStore.open_profile(tmp_path / "profile", clock=lambda: 1.7e9)
        identity = IdentityKeyPair.generate()
        store.save_identity(
            LocalIdentity(
                identity_private=identity.private_key.serialize(),
                registration_id=555,
                account_id=OWN_ACCOUNT,
                device_id=1,
                auth_token="unused",
                server="localhost:1",
                phone_number="+15550001111",
                created_at=1.7e9,
            )
        )
        peer = new_party(6006)
        record = SessionRecord()
        record.process_prekey_bundle(peer.bundle(), our_identity=identity, our_registration_id=555)
        first = record.encrypt(b"")
        peer.receive(first.type, first.serialized)  # the peer's side is established too
        store.store_session(PEER_ACCOUNT, 1, record.to_bytes())
        store.check_identity(PEER_ACCOUNT, 1, peer.identity.public_key.serialize())
        return Receiver(ParleyClient(store, server="localhost:1"), peer, asyncio.get_running_loop())

    loop = asyncio.new_event_loop()
    try:
        built = loop.run_until_complete(build())
        yield built
        loop.run_until_complete(built.client.close())
    finally:
        loop.close()


def valid_content() -> bytes:
    return cpb.Content(data=cpb.DataMessage(text="hello", timestamp_ms=1)).SerializeToString()


envelope_ids = iter(range(1, 10**9))


def deliver(receiver: Receiver, content_type: int, content: bytes, sender: str) -> object:
    envelope = mpb.Envelope(
        envelope_id=next(envelope_ids),
        sender_account_id=sender,
        sender_device_id=1,
        content_type=content_type,  # type: ignore[arg-type]
        content=content,
    )
    try:
        event, ack = receiver.loop.run_until_complete(receiver.client._process(envelope, set()))
    except Unavailable:
        # A mutated plaintext that decodes as a template message names a template, which the
        # client fetches before judging it; this receiver has no server. Not a decoder's fault:
        # the envelope stays unacknowledged and is judged once the server answers.
        return None
    assert ack, "a bad envelope must be acknowledged, or it would block the queue forever"
    return event


def test_envelopes_with_damaged_ciphertexts(receiver: Receiver) -> None:
    """Any content type and bytes from a known peer: decrypted, or reported undecryptable."""
    signal = receiver.peer.record.encrypt(b"seed").serialized

    @FUZZ_CRYPTO
    @given(
        content_type=st.sampled_from([0, 1, 2, 3, 7, 8, 99, 2**31 - 1]),
        content=damaged_message(signal, mac=True),
    )
    def check(content_type: int, content: bytes) -> None:
        event = deliver(receiver, content_type, content, PEER_ACCOUNT)
        assert event is None or isinstance(event, DecryptionFailed | TextMessage)

    check()


def test_envelopes_with_damaged_content(receiver: Receiver) -> None:
    """A correctly encrypted plaintext that is not a valid parley.v1.Content (or one that
    claims to be a sync message from another account) is reported, never raised."""

    @FUZZ_CRYPTO
    @given(plaintext=mutated(valid_content()) | st.just(sync_from_a_stranger()))
    def check(plaintext: bytes) -> None:
        message = receiver.peer.record.encrypt(plaintext)
        event = deliver(receiver, message.type, message.serialized, PEER_ACCOUNT)
        assert event is None or not isinstance(event, DecryptionFailed) or event.reason

    check()


def sync_from_a_stranger() -> bytes:
    sync = cpb.SyncMessage(destination_account_id=OWN_ACCOUNT, message=cpb.DataMessage(text="x"))
    return cpb.Content(sync=sync).SerializeToString()
