"""SPQR as the session uses it: the per-message key chain over the Braid's epochs, and
version negotiation. One call per sent message, one per received message.

Why: the Double Ratchet needs one 32-byte SPQR key per message (the salt of its message keys)
and one ``pq_ratchet`` field per message; the Braid (:mod:`client.crypto.spqr_braid`) only
produces epoch secrets now and then. The *chain* turns those into per-message keys, and
*negotiation* decides, at the start of a session, whether the peer speaks SPQR at all. Both are
specified in ``docs/spqr.md`` ("The SPQR chain", "One message, end to end", "Version
negotiation"), with the reference's file and function for each rule.

Like the rest of the core this is pure: states are frozen values, serialized to bytes for the
session record; a failed :func:`receive` raises and the caller keeps its old state (commit only
after the Double Ratchet MAC verified).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from client.crypto import spqr_braid as braid
from client.crypto.errors import (
    DuplicateMessageError,
    InvalidMessageError,
    InvalidStateError,
    MessageTooFarAheadError,
)
from client.crypto.kdf import hkdf_sha256
from client.crypto.keys import Rng
from client.crypto.protobuf import bytes_field, decode_fields, decode_with_repeated, uint_field

__all__ = [
    "DEFAULT_MAX_JUMP",
    "DEFAULT_MAX_OOO_KEYS",
    "VERSION_0",
    "Chain",
    "Negotiation",
    "SpqrState",
    "from_bytes",
    "initial_state",
    "receive",
    "send",
    "to_bytes",
]

CHAIN_START_INFO: Final = b"Signal PQ Ratchet V1 Chain  Start"
"""Two spaces before "Start", as the reference has it (and ``spqr.py`` already uses)."""
CHAIN_ADD_EPOCH_INFO: Final = b"Signal PQ Ratchet V1 Chain Add Epoch"
CHAIN_NEXT_INFO: Final = b"Signal PQ Ratchet V1 Chain Next"
DEFAULT_MAX_JUMP: Final = 25_000
"""libsignal passes its ``MAX_FORWARD_JUMPS``: how far ahead a received index may be."""
DEFAULT_MAX_OOO_KEYS: Final = 2_000
"""libsignal passes its ``MAX_MESSAGE_KEYS``: how far behind a late message may be."""
EPOCHS_KEPT_BEFORE_SEND_EPOCH: Final = 1
STATE_FORMAT_VERSION: Final = 1


# --- the chain ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class _Half:
    """One direction of one chain epoch: counter of the last key made, next chain key (empty
    once we may no longer send with it), and skipped keys by index, oldest first. The dict
    is never mutated after construction (copy on write), so values stay immutable."""

    ctr: int
    next: bytes
    stored: dict[int, bytes]

    def step(self) -> tuple[_Half, int, bytes]:
        if len(self.next) != 32:
            raise InvalidStateError("SPQR chain: this epoch can no longer send")
        ctr = self.ctr + 1
        out = hkdf_sha256(self.next, None, ctr.to_bytes(4, "big") + CHAIN_NEXT_INFO, 64)
        return _Half(ctr, out[:32], self.stored), ctr, out[32:]

    def key(self, at: int, max_jump: int, max_ooo: int) -> tuple[_Half, bytes]:
        """Key ``at`` of this direction for a received message (docs/spqr.md, receiving a key)."""
        if at < self.ctr:
            if at + max_ooo < self.ctr:
                raise DuplicateMessageError(f"SPQR key {at} is too old (trimmed)")
            if at not in self.stored:
                raise DuplicateMessageError(f"SPQR key {at} was already used")
            stored = dict(self.stored)
            key = stored.pop(at)
            return _Half(self.ctr, self.next, stored), key
        if at == self.ctr:
            raise DuplicateMessageError(f"SPQR key {at} was already used")
        if at - self.ctr > max_jump:
            raise MessageTooFarAheadError(f"SPQR key {at} is more than {max_jump} ahead")
        stored = {} if at > self.ctr + max_ooo else dict(self.stored)
        half = _Half(self.ctr, self.next, stored)
        while at > half.ctr + 1:
            half, index, skipped = half.step()
            if index + max_ooo >= at:
                stored[index] = skipped
        if len(stored) >= max_ooo * 11 // 10 + 1:
            horizon = half.ctr - max_ooo
            for index in [i for i in stored if i < horizon]:
                del stored[index]
        half, _, key = half.step()
        return half, key


@dataclass(frozen=True, repr=False)
class _Link:
    send: _Half
    recv: _Half


def _link(material: bytes, initiator: bool) -> _Link:
    """A chain epoch from 96 bytes ``next_root || A2B seed || B2A seed``."""
    a2b, b2a = material[32:64], material[64:96]
    ours, theirs = (a2b, b2a) if initiator else (b2a, a2b)
    return _Link(_Half(0, ours, {}), _Half(0, theirs, {}))


@dataclass(frozen=True, repr=False)
class Chain:
    """Per-message SPQR keys for every chain epoch still kept (oldest first)."""

    initiator: bool
    current_epoch: int
    send_epoch: int
    links: tuple[_Link, ...]
    next_root: bytes
    max_jump: int = DEFAULT_MAX_JUMP
    max_ooo: int = DEFAULT_MAX_OOO_KEYS

    @classmethod
    def start(
        cls,
        auth_key: bytes,
        initiator: bool,
        max_jump: int = DEFAULT_MAX_JUMP,
        max_ooo: int = DEFAULT_MAX_OOO_KEYS,
    ) -> Chain:
        """Chain epoch 0, from the PQXDH auth key alone."""
        material = hkdf_sha256(auth_key, None, CHAIN_START_INFO, 96)
        link = _link(material, initiator)
        return cls(initiator, 0, 0, (link,), material[:32], max_jump, max_ooo)

    def add_epoch(self, secret: braid.EpochSecret) -> Chain:
        """Chain epoch ``secret.epoch``, which must be the next one."""
        if secret.epoch != self.current_epoch + 1:
            raise InvalidStateError("SPQR epochs must be added in order")
        material = hkdf_sha256(secret.secret, self.next_root, CHAIN_ADD_EPOCH_INFO, 96)
        links = (*self.links, _link(material, self.initiator))
        return replace(self, current_epoch=secret.epoch, links=links, next_root=material[:32])

    def _position(self, epoch: int) -> int:
        back = self.current_epoch - epoch
        if epoch > self.current_epoch or back >= len(self.links):
            raise braid.EpochOutOfRangeError(f"SPQR chain epoch {epoch} is not available")
        return len(self.links) - 1 - back

    def send_key(self, epoch: int) -> tuple[Chain, int, bytes]:
        """``(new chain, index, key)`` for our next message in chain epoch ``epoch``."""
        if epoch < self.send_epoch:
            raise InvalidStateError("SPQR send epoch went backwards")
        position = self._position(epoch)
        links = self.links
        if epoch != self.send_epoch:
            # Keep one older epoch (for late messages), and never send in it again.
            drop = max(position - EPOCHS_KEPT_BEFORE_SEND_EPOCH, 0)
            links, position = links[drop:], position - drop
            links = tuple(
                _Link(_Half(link.send.ctr, b"", link.send.stored), link.recv)
                if i < position
                else link
                for i, link in enumerate(links)
            )
        half, index, key = links[position].send.step()
        links = (*links[:position], _Link(half, links[position].recv), *links[position + 1 :])
        return replace(self, send_epoch=epoch, links=links), index, key

    def recv_key(self, epoch: int, index: int) -> tuple[Chain, bytes]:
        """``(new chain, key)`` for a received message of chain epoch ``epoch``."""
        position = self._position(epoch)
        link = self.links[position]
        half, key = link.recv.key(index, self.max_jump, self.max_ooo)
        links = (*self.links[:position], _Link(link.send, half), *self.links[position + 1 :])
        return replace(self, links=links), key

    def __repr__(self) -> str:
        return f"Chain(epoch={self.current_epoch}, send_epoch={self.send_epoch})"


# --- negotiation and the per-message calls -----------------------------------------------


@dataclass(frozen=True, repr=False)
class Negotiation:
    """What a session remembers until its first SPQR message arrives: enough to start the
    chain, and the lowest version it accepts from the peer."""

    auth_key: bytes
    initiator: bool
    min_version: int
    max_jump: int = DEFAULT_MAX_JUMP
    max_ooo: int = DEFAULT_MAX_OOO_KEYS

    def chain(self) -> Chain:
        return Chain.start(self.auth_key, self.initiator, self.max_jump, self.max_ooo)


@dataclass(frozen=True, repr=False)
class SpqrState:
    """A session's SPQR state. ``braid is None`` means version 0 (no SPQR)."""

    braid: braid.State | None
    chain: Chain | None = None
    negotiation: Negotiation | None = None

    @property
    def version(self) -> int:
        return 0 if self.braid is None else braid.SPQR_V1

    def __repr__(self) -> str:
        return f"SpqrState(version={self.version}, braid={self.braid!r}, chain={self.chain!r})"


VERSION_0: Final = SpqrState(None)
"""No SPQR: what sessions from before SPQR have, and what a downgrade leaves."""


def initial_state(
    auth_key: bytes,
    initiator: bool,
    *,
    min_version: int = braid.SPQR_V1,
    max_jump: int = DEFAULT_MAX_JUMP,
    max_ooo: int = DEFAULT_MAX_OOO_KEYS,
) -> SpqrState:
    """A new session's SPQR (version 1). ``min_version=1`` is libsignal >= 0.92's choice and
    Parley's: a peer that sends no SPQR is refused."""
    negotiation = Negotiation(auth_key, initiator, min_version, max_jump, max_ooo)
    return SpqrState(braid.initial_state(auth_key, initiator), None, negotiation)


def send(
    state: SpqrState, *, kem: braid.IncrementalKem, code: braid.ErasureCode, rng: Rng
) -> tuple[SpqrState, bytes, bytes | None]:
    """``(new state, pq_ratchet field, SPQR key or None)`` for the next message we send."""
    if state.braid is None:
        return state, b"", None
    sent = braid.send(state.braid, kem=kem, code=code, rng=rng)
    chain = state.chain
    if chain is None:
        if state.negotiation is None:
            raise InvalidStateError("SPQR state without chain or negotiation")
        if state.negotiation.min_version > 0:
            chain = state.negotiation.chain()
    if chain is None:
        # libsignal 0.90's rule (minimum version 0): no key until the peer has spoken.
        if sent.secret is not None:
            raise InvalidStateError("SPQR epoch secret before any chain")
        return replace(state, braid=sent.state), braid.encode_message(sent.message, 0), None
    if sent.secret is not None:
        chain = chain.add_epoch(sent.secret)
    chain, index, key = chain.send_key(sent.message.epoch - 1)
    new = SpqrState(sent.state, chain, state.negotiation)
    return new, braid.encode_message(sent.message, index), key


def receive(
    state: SpqrState,
    pq_ratchet: bytes,
    *,
    kem: braid.IncrementalKem,
    code: braid.ErasureCode,
) -> tuple[SpqrState, bytes | None]:
    """``(new state, SPQR key or None)`` for a received message's ``pq_ratchet`` field.

    Raises:
        SpqrError: version refused, malformed field, epoch out of range, MAC failures.
        MessageTooFarAheadError: the SPQR index jumps too far.
        DuplicateMessageError: the SPQR key was already used, or is too old.
    """
    theirs = pq_ratchet[0] if pq_ratchet else 0  # a leading 0x00 also says "version 0"
    if theirs > braid.SPQR_V1:
        return state, None  # a version we do not know: ignore it, as the reference does
    if theirs < state.version:
        negotiation = state.negotiation
        if negotiation is None:
            raise braid.SpqrError("post-quantum ratchet error: version mismatch")
        if theirs < negotiation.min_version:
            raise braid.SpqrError("post-quantum ratchet error: Minimum version")
        return VERSION_0, None  # downgrade to no SPQR, once and for all
    if state.braid is None:
        return VERSION_0, None
    message, index = braid.decode_message(pq_ratchet)
    received = braid.receive(state.braid, message, kem=kem, code=code)
    chain = state.chain
    if chain is None:
        if state.negotiation is None:
            raise InvalidStateError("SPQR state without chain or negotiation")
        chain = state.negotiation.chain()
    if received.secret is not None:
        chain = chain.add_epoch(received.secret)
    key: bytes | None = None
    if message.epoch > 1 or index != 0:
        chain, key = chain.recv_key(message.epoch - 1, index)
    return SpqrState(received.state, chain, None), key


# --- serialization -----------------------------------------------------------------------


def _half_bytes(half: _Half) -> bytes:
    body = uint_field(1, half.ctr) + bytes_field(2, half.next)
    for index, key in half.stored.items():
        body += bytes_field(3, index.to_bytes(4, "big") + key)
    return body


def _half_from(raw: bytes) -> _Half:
    f, items = decode_with_repeated(raw, 3)
    ctr, nxt = f.get(1, 0), f.get(2, b"")
    if not isinstance(ctr, int) or not isinstance(nxt, bytes) or len(nxt) not in (0, 32):
        raise InvalidStateError("corrupt SPQR chain direction")
    stored = {}
    for item in items:
        if len(item) != 36:
            raise InvalidStateError("corrupt SPQR stored key")
        stored[int.from_bytes(item[:4], "big")] = item[4:]
    return _Half(ctr, nxt, stored)


def to_bytes(state: SpqrState) -> bytes:
    """Serialize for the session record. Version 0 is the empty string, as in libsignal."""
    if state.braid is None:
        return b""
    out = uint_field(1, STATE_FORMAT_VERSION) + bytes_field(2, braid.state_to_bytes(state.braid))
    chain = state.chain
    if chain is not None:
        body = (
            uint_field(1, int(chain.initiator))
            + uint_field(2, chain.current_epoch)
            + uint_field(3, chain.send_epoch)
            + bytes_field(4, chain.next_root)
            + uint_field(5, chain.max_jump)
            + uint_field(6, chain.max_ooo)
        )
        for link in chain.links:
            body += bytes_field(
                7, bytes_field(1, _half_bytes(link.send)) + bytes_field(2, _half_bytes(link.recv))
            )
        out += bytes_field(3, body)
    n = state.negotiation
    if n is not None:
        out += bytes_field(
            4,
            bytes_field(1, n.auth_key)
            + uint_field(2, int(n.initiator))
            + uint_field(3, n.min_version)
            + uint_field(4, n.max_jump)
            + uint_field(5, n.max_ooo),
        )
    return out


def _int(f: dict[int, int | bytes], n: int) -> int:
    value = f.get(n)
    if not isinstance(value, int):
        raise InvalidStateError(f"SPQR state field {n} missing")
    return value


def _bytes(f: dict[int, int | bytes], n: int) -> bytes:
    value = f.get(n)
    if not isinstance(value, bytes):
        raise InvalidStateError(f"SPQR state field {n} missing")
    return value


def from_bytes(data: bytes) -> SpqrState:
    """Inverse of :func:`to_bytes`.

    Raises:
        InvalidStateError: corrupt data or an unknown format version.
    """
    if not data:
        return VERSION_0
    try:
        f = decode_fields(data)
        if f.get(1) != STATE_FORMAT_VERSION:
            raise InvalidStateError(f"unsupported SPQR state format {f.get(1)!r}")
        state = braid.state_from_bytes(_bytes(f, 2))
        chain = None
        if 3 in f:
            raw = _bytes(f, 3)
            c, items = decode_with_repeated(raw, 7)
            links = []
            for item in items:
                parts = decode_fields(item)
                links.append(_Link(_half_from(_bytes(parts, 1)), _half_from(_bytes(parts, 2))))
            chain = Chain(
                bool(_int(c, 1)),
                _int(c, 2),
                _int(c, 3),
                tuple(links),
                _bytes(c, 4),
                _int(c, 5),
                _int(c, 6),
            )
        negotiation = None
        if 4 in f:
            n = decode_fields(_bytes(f, 4))
            negotiation = Negotiation(
                _bytes(n, 1), bool(_int(n, 2)), _int(n, 3), _int(n, 4), _int(n, 5)
            )
    except InvalidMessageError as exc:
        raise InvalidStateError(f"corrupt SPQR state: {exc}") from exc
    if chain is None and negotiation is None:
        raise InvalidStateError("SPQR state without chain or negotiation")
    return SpqrState(state, chain, negotiation)
