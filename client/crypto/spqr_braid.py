"""The ML-KEM Braid: SPQR v1's epoch state machine (a sparse continuous key agreement).

Why this module exists: libsignal >= 0.92 refuses any message without SPQR data, so Parley
must run the post-quantum half of the triple ratchet. This is that half's state machine,
written from ``docs/spqr.md`` (which cites the specifications and the reference for every
byte). It is pure: no I/O, no clock, randomness passed in, states are frozen dataclasses that
serialize to bytes for the session record. The two large parts it drives are behind small
protocols so that they can be built (and tested) separately:

* :class:`IncrementalKem`: ML-KEM-768 with the public key split into a 64-byte header and
  the 1152-byte vector, and encapsulation split into ``encaps1``/``encaps2``;
* :class:`ErasureCode`: cuts a payload into 32-byte chunks, any ``len / 32`` of which
  rebuild it.

What it does not do: the per-message SPQR chain that turns epoch secrets into message keys,
and version negotiation; :mod:`client.crypto.spqr_ratchet` does both on top of this module.
Its outputs are exactly what the chain needs: the epoch of each outgoing message, and each
epoch secret with its epoch number when it becomes known.

Roles: the session's initiator (A) starts as the *EK sender* of epoch 1 in
:class:`KeysUnsampled`, the responder (B) as the *CT sender* in :class:`NoHeaderReceived`;
they swap roles at every epoch.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar, Final, Protocol, TypeAlias

from client.crypto.errors import InvalidMacError, InvalidMessageError, InvalidStateError
from client.crypto.kdf import hkdf_sha256, hmac_sha256
from client.crypto.keys import Rng
from client.crypto.protobuf import (
    bytes_field,
    decode_fields,
    decode_with_repeated,
    uint_field,
    varint,
)

__all__ = [
    "CHUNK_SIZE",
    "CT1_SIZE",
    "CT2_SIZE",
    "EK_SIZE",
    "HEADER_SIZE",
    "MAC_SIZE",
    "SPQR_V1",
    "Authenticator",
    "BraidMessage",
    "Chunk",
    "Ct1Acknowledged",
    "Ct1Received",
    "Ct1Sampled",
    "Ct2Sampled",
    "EkReceivedCt1Sampled",
    "EkSentCt1Received",
    "EpochOutOfRangeError",
    "EpochSecret",
    "ErasureCode",
    "ErroneousDataError",
    "HeaderReceived",
    "HeaderSent",
    "IncrementalKem",
    "KemKeys",
    "KeysSampled",
    "KeysUnsampled",
    "MessageType",
    "NoHeaderReceived",
    "Received",
    "Sent",
    "SpqrError",
    "SpqrMacError",
    "State",
    "decode_message",
    "encode_message",
    "epoch_secret",
    "initial_state",
    "receive",
    "send",
    "state_from_bytes",
    "state_to_bytes",
]

SPQR_V1: Final = 1
"""First byte of every v1 SPQR message (an empty ``pq_ratchet`` field is version 0)."""
HEADER_SIZE: Final = 64
"""``rho || SHA3-256(EK || rho)``: enough for the CT sender to start encapsulating."""
EK_SIZE: Final = 1152
"""The ML-KEM-768 encapsulation-key vector ``ByteEncode12(t_hat)``, without ``rho``."""
CT1_SIZE: Final = 960
CT2_SIZE: Final = 128
MAC_SIZE: Final = 32
"""The authenticator's MACs are untruncated HMAC-SHA256."""
CHUNK_SIZE: Final = 32
SECRET_SIZE: Final = 32
KEYGEN_SEED_SIZE: Final = 64
"""Random bytes for one key pair (``d || z`` of FIPS 203 key generation)."""
ENCAPS_RANDOMNESS_SIZE: Final = 32
"""Random bytes for one encapsulation (``m`` of FIPS 203)."""
MAX_CHUNK_INDEX: Final = 0xFFFF
MAX_EPOCH: Final = (1 << 64) - 1
MAX_INDEX: Final = (1 << 32) - 1

HEADER_PAYLOAD_SIZE: Final = HEADER_SIZE + MAC_SIZE
CT2_PAYLOAD_SIZE: Final = CT2_SIZE + MAC_SIZE

AUTH_UPDATE_INFO: Final = b"Signal_PQCKA_V1_MLKEM768:Authenticator Update"
EPOCH_SECRET_INFO: Final = b"Signal_PQCKA_V1_MLKEM768:SCKA Key"
HEADER_MAC_INFO: Final = b"Signal_PQCKA_V1_MLKEM768:ekheader"
CIPHERTEXT_MAC_INFO: Final = b"Signal_PQCKA_V1_MLKEM768:ciphertext"

STATE_FORMAT_VERSION: Final = 1
"""Version of :func:`state_to_bytes`; bump on any incompatible change."""


# --- errors ------------------------------------------------------------------------------


class SpqrError(InvalidMessageError):
    """The peer's SPQR data cannot be accepted; libsignal reports these as "post-quantum
    ratchet error" and refuses the whole message, so the session must not change."""


class EpochOutOfRangeError(SpqrError):
    """An SPQR message from an epoch the peer cannot have reached yet."""


class SpqrMacError(SpqrError, InvalidMacError):
    """The header or ciphertext MAC of an epoch did not verify."""


class ErroneousDataError(SpqrError):
    """The decoded encapsulation key does not match the header it was announced with."""


# --- the two parts built elsewhere -------------------------------------------------------


@dataclass(frozen=True, repr=False)
class KemKeys:
    """A fresh ML-KEM-768 key pair, split as the Braid sends it."""

    header: bytes
    ek: bytes
    dk: bytes

    def __repr__(self) -> str:
        return "KemKeys(<secret>)"


class IncrementalKem(Protocol):
    """Incremental ML-KEM-768 (``docs/spqr.md``, "Interface: incremental ML-KEM-768").

    ``dk`` and the encapsulation state are opaque to the Braid and never leave the device;
    everything else must be byte-identical to libsignal's (libcrux) values.
    """

    def generate(self, seed: bytes) -> KemKeys:
        """A key pair from 64 random bytes."""
        ...

    def encaps1(self, header: bytes, randomness: bytes) -> tuple[bytes, bytes, bytes]:
        """``(ct1, encapsulation state, shared secret)`` from the header and 32 random bytes."""
        ...

    def encaps2(self, state: bytes, ek: bytes) -> bytes:
        """``ct2`` from the encapsulation state and the full encapsulation-key vector."""
        ...

    def decaps(self, dk: bytes, ct1: bytes, ct2: bytes) -> bytes:
        """The 32-byte shared secret (ML-KEM decapsulation, implicit rejection included)."""
        ...

    def ek_matches_header(self, header: bytes, ek: bytes) -> bool:
        """Whether ``ek`` is the vector the header's hash commits to (and is well formed)."""
        ...


class ErasureCode(Protocol):
    """The chunking code (``docs/spqr.md``, "Interface: erasure code").

    Both calls are pure so that the Braid's state (payload and next index; chunks received)
    serializes as plain bytes.
    """

    def chunk(self, payload: bytes, index: int) -> bytes:
        """The 32 data bytes of chunk ``index`` (0..65535) of ``payload``."""
        ...

    def decode(self, length: int, chunks: Mapping[int, bytes]) -> bytes:
        """The payload of ``length`` bytes from exactly ``length / 32`` distinct chunks."""
        ...


# --- wire messages -----------------------------------------------------------------------


class MessageType(enum.IntEnum):
    """The type byte of an SPQR message, and what it carries."""

    NONE = 0
    HDR = 1
    EK = 2
    EK_CT1_ACK = 3
    CT1_ACK = 4
    CT1 = 5
    CT2 = 6

    @property
    def has_chunk(self) -> bool:
        """Whether a chunk index and 32 data bytes follow the type byte."""
        return self not in (MessageType.NONE, MessageType.CT1_ACK)


@dataclass(frozen=True)
class Chunk:
    """One 32-byte piece of an erasure-coded payload and its index."""

    index: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.index <= MAX_CHUNK_INDEX or len(self.data) != CHUNK_SIZE:
            raise ValueError("a chunk is an index 0..65535 and 32 bytes")


@dataclass(frozen=True)
class BraidMessage:
    """What the Braid sends with one Signal message: its epoch, a type and maybe a chunk.

    The chain's ``index`` is not part of it: it is added by :func:`encode_message`.
    """

    epoch: int
    type: MessageType
    chunk: Chunk | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.epoch <= MAX_EPOCH:
            raise ValueError("an SPQR epoch is 1..2^64-1")
        if self.type.has_chunk != (self.chunk is not None):
            raise ValueError(f"SPQR message type {self.type.name} and chunk disagree")


def encode_message(message: BraidMessage, index: int) -> bytes:
    """The ``pq_ratchet`` bytes: ``0x01 || epoch || index || type [|| chunk index || data]``
    (varints as protobuf's)."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError("an SPQR chain index is 0..2^32-1")
    out = bytes((SPQR_V1,)) + varint(message.epoch) + varint(index) + bytes((message.type,))
    if message.chunk is not None:
        out += varint(message.chunk.index) + message.chunk.data
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(10):
        if pos + i >= len(data):
            break
        b = data[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if value > MAX_EPOCH:
                break
            return value, pos + i + 1
    raise SpqrError("malformed varint in SPQR message")


def decode_message(data: bytes) -> tuple[BraidMessage, int]:
    """Parse a v1 ``pq_ratchet`` field into ``(message, chain index)``.

    Trailing bytes are ignored: the reference allows them so that a later version can extend
    the message.

    Raises:
        SpqrError: not a well-formed v1 message.
    """
    if not data or data[0] != SPQR_V1:
        raise SpqrError("not an SPQR v1 message")
    epoch, pos = _read_varint(data, 1)
    if epoch == 0:
        raise SpqrError("SPQR epoch 0")
    index, pos = _read_varint(data, pos)
    if index > MAX_INDEX:
        raise SpqrError("SPQR chain index does not fit in 32 bits")
    if pos >= len(data):
        raise SpqrError("SPQR message without a type")
    try:
        kind = MessageType(data[pos])
    except ValueError:
        raise SpqrError(f"unknown SPQR message type {data[pos]}") from None
    pos += 1
    chunk = None
    if kind.has_chunk:
        chunk_index, pos = _read_varint(data, pos)
        if chunk_index > MAX_CHUNK_INDEX or pos + CHUNK_SIZE > len(data):
            raise SpqrError("malformed SPQR chunk")
        chunk = Chunk(chunk_index, data[pos : pos + CHUNK_SIZE])
    return BraidMessage(epoch, kind, chunk), index


# --- the authenticator and the epoch secret ----------------------------------------------


def _be64(epoch: int) -> bytes:
    return epoch.to_bytes(8, "big")


@dataclass(frozen=True, repr=False)
class Authenticator:
    """Keys that MAC each epoch's header and ciphertext, chained through every epoch secret,
    so that a header or ciphertext can only come from the party holding all of them."""

    root: bytes
    mac_key: bytes

    @classmethod
    def start(cls, auth_key: bytes) -> Authenticator:
        """Both parties' first authenticator: zero keys updated with the PQXDH auth key."""
        return cls(bytes(32), bytes(32)).update(1, auth_key)

    def update(self, epoch: int, key: bytes) -> Authenticator:
        """Mix ``key`` (the auth key, or epoch ``epoch``'s secret) into both keys."""
        out = hkdf_sha256(self.root + key, None, AUTH_UPDATE_INFO + _be64(epoch), 64)
        return Authenticator(out[:32], out[32:])

    def header_mac(self, epoch: int, header: bytes) -> bytes:
        return hmac_sha256(self.mac_key, HEADER_MAC_INFO + _be64(epoch) + header)

    def ciphertext_mac(self, epoch: int, ciphertext: bytes) -> bytes:
        return hmac_sha256(self.mac_key, CIPHERTEXT_MAC_INFO + _be64(epoch) + ciphertext)

    def __repr__(self) -> str:
        return "Authenticator(<secret>)"


def epoch_secret(shared_secret: bytes, epoch: int) -> bytes:
    """The 32-byte secret of ``epoch`` from the ML-KEM shared secret, bound to its number."""
    return hkdf_sha256(shared_secret, None, EPOCH_SECRET_INFO + _be64(epoch), SECRET_SIZE)


@dataclass(frozen=True, repr=False)
class EpochSecret:
    """An epoch's secret as the Braid outputs it, for the chain's "add epoch"."""

    epoch: int
    secret: bytes

    def __repr__(self) -> str:
        return f"EpochSecret(epoch={self.epoch}, secret=<secret>)"


# --- encoders and decoders of payloads ---------------------------------------------------


@dataclass(frozen=True, repr=False)
class Outgoing:
    """A payload being sent in chunks: the payload and the next chunk's index."""

    payload: bytes
    next_index: int = 0

    def take(self, code: ErasureCode) -> tuple[Outgoing, Chunk]:
        index = self.next_index & MAX_CHUNK_INDEX  # the reference's encoder wraps
        chunk = Chunk(index, code.chunk(self.payload, index))
        return Outgoing(self.payload, self.next_index + 1), chunk


@dataclass(frozen=True, repr=False)
class Incoming:
    """Chunks of a payload of known length received so far, in arrival order.

    At most ``length / 32`` are kept: for an MDS code any that many rebuild the payload, so a
    later chunk (or a duplicate index) adds nothing, and memory stays bounded whatever the
    peer sends.
    """

    length: int
    chunks: tuple[Chunk, ...] = ()

    @property
    def needed(self) -> int:
        return self.length // CHUNK_SIZE

    def add(self, chunk: Chunk) -> Incoming:
        if len(self.chunks) >= self.needed or any(c.index == chunk.index for c in self.chunks):
            return self
        return Incoming(self.length, (*self.chunks, chunk))

    def decode(self, code: ErasureCode) -> bytes | None:
        """The payload once enough chunks arrived, else ``None``."""
        if len(self.chunks) < self.needed:
            return None
        payload = code.decode(self.length, {c.index: c.data for c in self.chunks})
        if len(payload) != self.length:
            raise SpqrError("erasure code returned a payload of the wrong length")
        return payload


# --- the eleven states -------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class _State:
    """Every state knows its epoch and the authenticator."""

    KIND: ClassVar[int] = 0
    epoch: int
    auth: Authenticator

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epoch={self.epoch})"


@dataclass(frozen=True, repr=False)
class KeysUnsampled(_State):
    """EK sender before its key pair exists (the pair is drawn on the first send)."""

    KIND: ClassVar[int] = 1


@dataclass(frozen=True, repr=False)
class KeysSampled(_State):
    """EK sender sending header chunks until the first ``ct1`` chunk shows they arrived."""

    KIND: ClassVar[int] = 2
    dk: bytes
    ek: bytes
    sending: Outgoing


@dataclass(frozen=True, repr=False)
class HeaderSent(_State):
    """EK sender sending ``ek`` chunks while it collects ``ct1``."""

    KIND: ClassVar[int] = 3
    dk: bytes
    sending: Outgoing
    receiving: Incoming


@dataclass(frozen=True, repr=False)
class Ct1Received(_State):
    """EK sender with all of ``ct1``: keeps sending ``ek`` chunks, now marked as an ack."""

    KIND: ClassVar[int] = 4
    dk: bytes
    ct1: bytes
    sending: Outgoing


@dataclass(frozen=True, repr=False)
class EkSentCt1Received(_State):
    """EK sender collecting ``ct2``; the peer has ``ek``, so it only acks ``ct1``."""

    KIND: ClassVar[int] = 5
    dk: bytes
    ct1: bytes
    receiving: Incoming


@dataclass(frozen=True, repr=False)
class NoHeaderReceived(_State):
    """CT sender collecting the header of its epoch."""

    KIND: ClassVar[int] = 6
    receiving: Incoming


@dataclass(frozen=True, repr=False)
class HeaderReceived(_State):
    """CT sender with a verified header; it encapsulates on its next send."""

    KIND: ClassVar[int] = 7
    header: bytes
    receiving: Incoming


@dataclass(frozen=True, repr=False)
class Ct1Sampled(_State):
    """CT sender sending ``ct1`` chunks while it collects ``ek``."""

    KIND: ClassVar[int] = 8
    header: bytes
    encaps: bytes
    ct1: bytes
    sending: Outgoing
    receiving: Incoming


@dataclass(frozen=True, repr=False)
class EkReceivedCt1Sampled(_State):
    """CT sender with all of ``ek``, sending ``ct1`` until the peer acks it."""

    KIND: ClassVar[int] = 9
    encaps: bytes
    ek: bytes
    ct1: bytes
    sending: Outgoing


@dataclass(frozen=True, repr=False)
class Ct1Acknowledged(_State):
    """CT sender whose ``ct1`` arrived, still collecting ``ek``."""

    KIND: ClassVar[int] = 10
    header: bytes
    encaps: bytes
    ct1: bytes
    receiving: Incoming


@dataclass(frozen=True, repr=False)
class Ct2Sampled(_State):
    """CT sender sending ``ct2 || MAC`` chunks until a message of the next epoch arrives."""

    KIND: ClassVar[int] = 11
    sending: Outgoing


State: TypeAlias = (
    KeysUnsampled
    | KeysSampled
    | HeaderSent
    | Ct1Received
    | EkSentCt1Received
    | NoHeaderReceived
    | HeaderReceived
    | Ct1Sampled
    | EkReceivedCt1Sampled
    | Ct1Acknowledged
    | Ct2Sampled
)

_STATE_CLASSES: Final[tuple[type[State], ...]] = (
    KeysUnsampled,
    KeysSampled,
    HeaderSent,
    Ct1Received,
    EkSentCt1Received,
    NoHeaderReceived,
    HeaderReceived,
    Ct1Sampled,
    EkReceivedCt1Sampled,
    Ct1Acknowledged,
    Ct2Sampled,
)


def initial_state(auth_key: bytes, initiator: bool) -> State:
    """Epoch 1: the initiator (A, direction A2B) sends the first key, the responder (B)
    waits for its header."""
    auth = Authenticator.start(auth_key)
    if initiator:
        return KeysUnsampled(1, auth)
    return NoHeaderReceived(1, auth, Incoming(HEADER_PAYLOAD_SIZE))


# --- sending -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """Outcome of :func:`send`: the new state, the message, and the epoch secret that this
    send produced (only the CT sender's first ``ct1`` chunk produces one)."""

    state: State
    message: BraidMessage
    secret: EpochSecret | None = None


def _check_randomness(data: bytes, size: int) -> bytes:
    if len(data) != size:
        raise ValueError(f"rng returned {len(data)} bytes instead of {size}")
    return data


def send(state: State, *, kem: IncrementalKem, code: ErasureCode, rng: Rng) -> Sent:
    """The SPQR message for the next outgoing Signal message (every message carries one).

    Never fails on a valid state: sending cannot be refused by the peer.
    """
    e, auth = state.epoch, state.auth
    match state:
        case KeysUnsampled():
            keys = kem.generate(_check_randomness(rng(KEYGEN_SEED_SIZE), KEYGEN_SEED_SIZE))
            payload = keys.header + auth.header_mac(e, keys.header)
            sending, chunk = Outgoing(payload).take(code)
            new: State = KeysSampled(e, auth, keys.dk, keys.ek, sending)
            return Sent(new, BraidMessage(e, MessageType.HDR, chunk))
        case KeysSampled():
            sending, chunk = state.sending.take(code)
            new = KeysSampled(e, auth, state.dk, state.ek, sending)
            return Sent(new, BraidMessage(e, MessageType.HDR, chunk))
        case HeaderSent():
            sending, chunk = state.sending.take(code)
            new = HeaderSent(e, auth, state.dk, sending, state.receiving)
            return Sent(new, BraidMessage(e, MessageType.EK, chunk))
        case Ct1Received():
            sending, chunk = state.sending.take(code)
            new = Ct1Received(e, auth, state.dk, state.ct1, sending)
            return Sent(new, BraidMessage(e, MessageType.EK_CT1_ACK, chunk))
        case EkSentCt1Received():
            return Sent(state, BraidMessage(e, MessageType.CT1_ACK))
        case NoHeaderReceived() | Ct1Acknowledged():
            return Sent(state, BraidMessage(e, MessageType.NONE))
        case HeaderReceived():
            m = _check_randomness(rng(ENCAPS_RANDOMNESS_SIZE), ENCAPS_RANDOMNESS_SIZE)
            ct1, encaps, shared = kem.encaps1(state.header, m)
            secret = epoch_secret(shared, e)
            auth = auth.update(e, secret)
            sending, chunk = Outgoing(ct1).take(code)
            new = Ct1Sampled(e, auth, state.header, encaps, ct1, sending, state.receiving)
            return Sent(new, BraidMessage(e, MessageType.CT1, chunk), EpochSecret(e, secret))
        case Ct1Sampled():
            sending, chunk = state.sending.take(code)
            new = Ct1Sampled(
                e, auth, state.header, state.encaps, state.ct1, sending, state.receiving
            )
            return Sent(new, BraidMessage(e, MessageType.CT1, chunk))
        case EkReceivedCt1Sampled():
            sending, chunk = state.sending.take(code)
            new = EkReceivedCt1Sampled(e, auth, state.encaps, state.ek, state.ct1, sending)
            return Sent(new, BraidMessage(e, MessageType.CT1, chunk))
        case Ct2Sampled():
            sending, chunk = state.sending.take(code)
            return Sent(Ct2Sampled(e, auth, sending), BraidMessage(e, MessageType.CT2, chunk))


# --- receiving ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """Outcome of :func:`receive`: the new state and the epoch secret this message completed
    (only the EK sender's last needed ``ct2`` chunk completes one)."""

    state: State
    secret: EpochSecret | None = None


def _ct2_step(
    e: int, auth: Authenticator, kem: IncrementalKem, encaps: bytes, ek: bytes, ct1: bytes
) -> Ct2Sampled:
    """Finish the encapsulation and MAC the whole ciphertext with this epoch's key."""
    ct2 = kem.encaps2(encaps, ek)
    mac = auth.ciphertext_mac(e, ct1 + ct2)
    return Ct2Sampled(e, auth, Outgoing(ct2 + mac))


def _verified_ek(kem: IncrementalKem, header: bytes, ek: bytes) -> bytes:
    if not kem.ek_matches_header(header, ek):
        raise ErroneousDataError("SPQR encapsulation key does not match its header")
    return ek


def receive(
    state: State, message: BraidMessage, *, kem: IncrementalKem, code: ErasureCode
) -> Received:
    """Take in the SPQR message of a received Signal message.

    Run it on the state of a *copy* of the session and keep the result only if the Signal
    message then decrypts: chunks are trusted only because the Double Ratchet MAC, which
    covers them, verified.

    Raises:
        EpochOutOfRangeError: the message's epoch is ahead of ours.
        SpqrMacError: a header or ciphertext MAC failed.
        ErroneousDataError: the encapsulation key does not match its header.
    """
    e, auth = state.epoch, state.auth
    m, kind, chunk = message.epoch, message.type, message.chunk
    if m > e:
        if isinstance(state, Ct2Sampled) and m == e + 1:
            # The peer finished our ciphertext's epoch: we send the next key.
            return Received(KeysUnsampled(m, auth))
        raise EpochOutOfRangeError(f"SPQR message of epoch {m} while we are in epoch {e}")
    if m < e:
        return Received(state)  # late: the chain may still key it; the Braid has moved on
    match state:
        case KeysSampled() if kind is MessageType.CT1 and chunk is not None:
            receiving = Incoming(CT1_SIZE).add(chunk)
            return Received(HeaderSent(e, auth, state.dk, Outgoing(state.ek), receiving))
        case HeaderSent() if kind is MessageType.CT1 and chunk is not None:
            receiving = state.receiving.add(chunk)
            ct1 = receiving.decode(code)
            if ct1 is None:
                return Received(HeaderSent(e, auth, state.dk, state.sending, receiving))
            return Received(Ct1Received(e, auth, state.dk, ct1, state.sending))
        case Ct1Received() if kind is MessageType.CT2 and chunk is not None:
            receiving = Incoming(CT2_PAYLOAD_SIZE).add(chunk)
            return Received(EkSentCt1Received(e, auth, state.dk, state.ct1, receiving))
        case EkSentCt1Received() if kind is MessageType.CT2 and chunk is not None:
            receiving = state.receiving.add(chunk)
            payload = receiving.decode(code)
            if payload is None:
                return Received(EkSentCt1Received(e, auth, state.dk, state.ct1, receiving))
            ct2, mac = payload[:CT2_SIZE], payload[CT2_SIZE:]
            secret = epoch_secret(kem.decaps(state.dk, state.ct1, ct2), e)
            auth = auth.update(e, secret)
            if not hmac.compare_digest(auth.ciphertext_mac(e, state.ct1 + ct2), mac):
                raise SpqrMacError(f"SPQR ciphertext MAC of epoch {e} does not verify")
            new: State = NoHeaderReceived(e + 1, auth, Incoming(HEADER_PAYLOAD_SIZE))
            return Received(new, EpochSecret(e, secret))
        case NoHeaderReceived() if kind is MessageType.HDR and chunk is not None:
            receiving = state.receiving.add(chunk)
            payload = receiving.decode(code)
            if payload is None:
                return Received(NoHeaderReceived(e, auth, receiving))
            header, mac = payload[:HEADER_SIZE], payload[HEADER_SIZE:]
            if not hmac.compare_digest(auth.header_mac(e, header), mac):
                raise SpqrMacError(f"SPQR header MAC of epoch {e} does not verify")
            return Received(HeaderReceived(e, auth, header, Incoming(EK_SIZE)))
        case Ct1Sampled() if kind in (MessageType.EK, MessageType.EK_CT1_ACK) and chunk is not None:
            acked = kind is MessageType.EK_CT1_ACK
            receiving = state.receiving.add(chunk)
            ek = receiving.decode(code)
            if ek is not None:
                ek = _verified_ek(kem, state.header, ek)
                if acked:
                    return Received(_ct2_step(e, auth, kem, state.encaps, ek, state.ct1))
                return Received(
                    EkReceivedCt1Sampled(e, auth, state.encaps, ek, state.ct1, state.sending)
                )
            if acked:
                return Received(
                    Ct1Acknowledged(e, auth, state.header, state.encaps, state.ct1, receiving)
                )
            return Received(
                Ct1Sampled(e, auth, state.header, state.encaps, state.ct1, state.sending, receiving)
            )
        case EkReceivedCt1Sampled() if kind in (MessageType.CT1_ACK, MessageType.EK_CT1_ACK):
            return Received(_ct2_step(e, auth, kem, state.encaps, state.ek, state.ct1))
        case Ct1Acknowledged() if (
            kind in (MessageType.EK, MessageType.EK_CT1_ACK) and chunk is not None
        ):
            receiving = state.receiving.add(chunk)
            ek = receiving.decode(code)
            if ek is None:
                return Received(
                    Ct1Acknowledged(e, auth, state.header, state.encaps, state.ct1, receiving)
                )
            ek = _verified_ek(kem, state.header, ek)
            return Received(_ct2_step(e, auth, kem, state.encaps, ek, state.ct1))
        case _:
            return Received(state)


# --- serialization -----------------------------------------------------------------------

_FIELD_NUMBERS: Final = {
    "epoch": 3,
    "dk": 6,
    "ek": 7,
    "header": 8,
    "ct1": 9,
    "encaps": 10,
    "sending": 11,
    "receiving": 12,
}
"""Our own schema for the session record (not libsignal's, which is never exchanged).
1 format version, 2 state kind, 4/5 authenticator; the rest by attribute name."""


def state_to_bytes(state: State) -> bytes:
    """Serialize for the session record (format :data:`STATE_FORMAT_VERSION`)."""
    out = uint_field(1, STATE_FORMAT_VERSION) + uint_field(2, state.KIND)
    out += bytes_field(4, state.auth.root) + bytes_field(5, state.auth.mac_key)
    for f in fields(state):
        value = getattr(state, f.name)
        if f.name == "auth":
            continue
        number = _FIELD_NUMBERS[f.name]
        if isinstance(value, int):
            out += uint_field(number, value)
        elif isinstance(value, Outgoing):
            out += bytes_field(
                number, bytes_field(1, value.payload) + uint_field(2, value.next_index)
            )
        elif isinstance(value, Incoming):
            body = uint_field(1, value.length)
            for c in value.chunks:
                body += bytes_field(2, c.index.to_bytes(2, "big") + c.data)
            out += bytes_field(number, body)
        else:
            out += bytes_field(number, value)
    return out


def _bytes(values: Mapping[int, int | bytes], number: int) -> bytes:
    value = values.get(number)
    if not isinstance(value, bytes):
        raise InvalidStateError(f"SPQR state field {number} missing or not bytes")
    return value


def _int(values: Mapping[int, int | bytes], number: int) -> int:
    value = values.get(number)
    if not isinstance(value, int):
        raise InvalidStateError(f"SPQR state field {number} missing or not an integer")
    return value


def state_from_bytes(data: bytes) -> State:
    """Inverse of :func:`state_to_bytes`.

    Raises:
        InvalidStateError: corrupt data or an unknown format version.
    """
    try:
        top = decode_fields(data)
        if top.get(1) != STATE_FORMAT_VERSION:
            raise InvalidStateError(f"unsupported SPQR state format {top.get(1)!r}")
        kind = top.get(2)
        classes = {cls.KIND: cls for cls in _STATE_CLASSES}
        if not isinstance(kind, int) or kind not in classes:
            raise InvalidStateError(f"unknown SPQR state kind {kind!r}")
        cls = classes[kind]
        root, mac_key = _bytes(top, 4), _bytes(top, 5)
        if len(root) != 32 or len(mac_key) != 32:
            raise InvalidStateError("SPQR authenticator keys must be 32 bytes")
        kwargs: dict[str, object] = {"auth": Authenticator(root, mac_key)}
        for f in fields(cls):
            if f.name == "auth":
                continue
            number = _FIELD_NUMBERS[f.name]
            if f.name == "epoch":
                kwargs[f.name] = _int(top, number)
            elif f.name == "sending":
                body = decode_fields(_bytes(top, number))
                kwargs[f.name] = Outgoing(_bytes(body, 1), _int(body, 2))
            elif f.name == "receiving":
                raw = _bytes(top, number)
                body, items = decode_with_repeated(raw, 2)
                chunks = []
                for item in items:
                    if len(item) != 2 + CHUNK_SIZE:
                        raise InvalidStateError("corrupt SPQR chunk in state")
                    chunks.append(Chunk(int.from_bytes(item[:2], "big"), item[2:]))
                kwargs[f.name] = Incoming(_int(body, 1), tuple(chunks))
            else:
                kwargs[f.name] = _bytes(top, number)
        state: State = cls(**kwargs)  # type: ignore[arg-type]
    except (InvalidMessageError, ValueError) as exc:
        raise InvalidStateError(f"corrupt SPQR state: {exc}") from exc
    if not 1 <= state.epoch <= MAX_EPOCH:
        raise InvalidStateError("SPQR state epoch out of range")
    return state
