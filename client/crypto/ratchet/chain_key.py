"""Chain key and ``KDF_CK`` (Double Ratchet spec §5.2; libsignal ``ratchet/keys.rs``).

* message-key seed: ``HMAC-SHA256(CK, 0x01)``
* next chain key:   ``HMAC-SHA256(CK, 0x02)``
"""

from __future__ import annotations

from typing import Final

from client.crypto.kdf import hmac_sha256, hmac_sha256_pair

__all__ = ["ChainKey"]

MESSAGE_KEY_SEED: Final = b"\x01"
CHAIN_KEY_SEED: Final = b"\x02"


class ChainKey:
    """A sending or receiving chain key with its index (the next message's counter)."""

    __slots__ = ("index", "key")

    def __init__(self, key: bytes, index: int) -> None:
        self.key = key
        self.index = index

    def message_key_seed(self) -> bytes:
        """The 32-byte seed that :class:`MessageKeys` expands for message ``index``."""
        return hmac_sha256(self.key, MESSAGE_KEY_SEED)

    def step(self) -> tuple[bytes, ChainKey]:
        """``(message_key_seed(), next())`` with the HMAC key schedule computed once (the
        per-message hot path)."""
        seed, next_key = hmac_sha256_pair(self.key, MESSAGE_KEY_SEED, CHAIN_KEY_SEED)
        return seed, ChainKey(next_key, self.index + 1)

    def next(self) -> ChainKey:
        """The chain key for ``index + 1``. Returns a new object: chain keys are immutable so
        that a failed decryption cannot move the chain."""
        return ChainKey(hmac_sha256(self.key, CHAIN_KEY_SEED), self.index + 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChainKey) and (other.key, other.index) == (self.key, self.index)

    def __hash__(self) -> int:
        return hash((self.key, self.index))

    def __repr__(self) -> str:
        return f"ChainKey(index={self.index}, key=<secret>)"
