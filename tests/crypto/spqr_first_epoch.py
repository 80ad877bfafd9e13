"""The receive side of SPQR's first epoch, written separately from `client.crypto.spqr_ratchet`:
the tests' independent check of that module's first keys. (It was the protocol core's seam
before SPQR was implemented: just enough post-quantum ratchet ("triple ratchet") to read the
first messages of a libsignal sender that runs SPQR v1.)

No longer used by the session: :mod:`client.crypto.spqr_ratchet` (with
:mod:`client.crypto.spqr_braid`) now runs the whole of SPQR in every session. It stays as an
independent, minimal computation of the first epoch's keys, which the tests compare
``spqr_ratchet`` against. The paragraph below describes the time before that.

This is a seam for SPQR, not SPQR. libsignal >= 0.92 runs SPQR v1 in every
session and, from its first message on, salts each message key with an SPQR key
(``HKDF(salt = SPQR key, seed, "WhisperMessageKeys")``). Before any post-quantum KEM
exchange has finished (SPQR epoch 1), that key comes from a symmetric chain seeded by the
PQXDH "SPQR auth key" alone, so a peer without SPQR can still derive it. We never *send*
SPQR data, which makes libsignal either downgrade the session to no SPQR (0.90) or reject
our messages ("post-quantum ratchet error: Minimum version", >= 0.92).

Derivation (SparsePostQuantumRatchet ``chain.rs``, read for byte-compatibility):

* ``gen = HKDF-SHA256(salt = 32 zero bytes, ikm = auth_key,
  info = "Signal PQ Ratchet V1 Chain  Start", 96)`` → next root | A→B chain | B→A chain;
* step ``n`` (n = 1, 2, ...) of a direction's chain:
  ``HKDF-SHA256(salt = zeros, ikm = next, info = BE32(n) || "Signal PQ Ratchet V1 Chain
  Next", 64)`` → new ``next`` | key ``n``.

The ``pq_ratchet`` field (wire field 5) of a v1 message starts with ``version (0x01) ||
epoch (varint) || index (varint) || type``; index 0 means "no SPQR key" (what libsignal 0.90
sends before its SPQR epoch starts).
"""

from __future__ import annotations

from typing import Final

from client.crypto.errors import InvalidMessageError
from client.crypto.kdf import hkdf_sha256

__all__ = ["SPQR_V1", "message_key_salt", "parse_header"]

SPQR_V1: Final = 1
CHAIN_START_INFO: Final = b"Signal PQ Ratchet V1 Chain  Start"
"""Two spaces before "Start", exactly as in SPQR's ``chain.rs``."""
CHAIN_NEXT_INFO: Final = b"Signal PQ Ratchet V1 Chain Next"
FIRST_EPOCH: Final = 1
MAX_SPQR_INDEX: Final = 25_000
"""Same bound as the Double Ratchet's forward jumps (SPQR ``MAX_JUMP``)."""


def parse_header(pq_ratchet: bytes) -> tuple[int, int, int]:
    """Return ``(version, epoch, index)`` of a non-empty v1 ``pq_ratchet`` field.

    Raises:
        InvalidMessageError: truncated varints.
    """
    pos = 1
    values: list[int] = []
    for _ in range(2):
        value = 0
        shift = 0
        while True:
            if pos >= len(pq_ratchet) or shift > 63:
                raise InvalidMessageError("truncated SPQR header in pq_ratchet")
            b = pq_ratchet[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        values.append(value)
    return pq_ratchet[0], values[0], values[1]


def _chain_key(auth_key: bytes, sender_is_initiator: bool, index: int) -> bytes:
    gen = hkdf_sha256(auth_key, None, CHAIN_START_INFO, 96)
    next_key = gen[32:64] if sender_is_initiator else gen[64:96]
    key = b""
    for n in range(1, index + 1):
        out = hkdf_sha256(next_key, None, n.to_bytes(4, "big") + CHAIN_NEXT_INFO, 64)
        next_key, key = out[:32], out[32:]
    return key


def message_key_salt(pq_ratchet: bytes, auth_key: bytes, sender_is_initiator: bool) -> bytes | None:
    """The salt for a received message's keys: ``None`` without SPQR, else SPQR's key.

    Args:
        pq_ratchet: the message's field 5 (empty when the sender runs no SPQR).
        auth_key: the session's PQXDH SPQR auth key.
        sender_is_initiator: True when the peer who sent this message started the session.

    Raises:
        InvalidMessageError: the message needs an SPQR epoch beyond the first (which needs
            the post-quantum KEM exchange that Parley does not implement yet).
    """
    if not pq_ratchet:
        return None
    version, epoch, index = parse_header(pq_ratchet)
    if version != SPQR_V1 or index == 0:
        # A newer SPQR version is ignored (as SPQR itself does); index 0 carries no key.
        return None
    if epoch != FIRST_EPOCH:
        raise InvalidMessageError(
            f"message uses SPQR epoch {epoch}; only epoch 1 can be read without SPQR"
        )
    if index > MAX_SPQR_INDEX:
        raise InvalidMessageError(f"SPQR chain index {index} is too far ahead")
    return _chain_key(auth_key, sender_is_initiator, index)
