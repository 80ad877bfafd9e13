"""Root key and ``KDF_RK`` (Double Ratchet spec §5.2; libsignal ``ratchet/keys.rs``).

``KDF_RK(rk, dh_out) = HKDF-SHA256(salt = rk, ikm = dh_out, info = "WhisperRatchet", 64)``,
split into the next root key (32) and a new chain key (32, index 0).
"""

from __future__ import annotations

from typing import Final

from client.crypto.kdf import hkdf_sha256
from client.crypto.keys import PrivateKey, PublicKey
from client.crypto.ratchet.chain_key import ChainKey

__all__ = ["ROOT_KEY_LENGTH", "RootKey"]

ROOT_KEY_LENGTH: Final = 32
RATCHET_INFO: Final = b"WhisperRatchet"


class RootKey:
    """The 32-byte root key. Immutable; never printed."""

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != ROOT_KEY_LENGTH:
            raise ValueError("a root key is 32 bytes")
        self.key = key

    def create_chain(
        self, their_ratchet_key: PublicKey, our_ratchet_key: PrivateKey
    ) -> tuple[RootKey, ChainKey, bytes]:
        """One DH ratchet half-step: ``KDF_RK(rk, DH(our, their))``.

        Returns:
            ``(next root key, new chain key at index 0, the DH output)``; the DH output is
            handed back only so that a tracer can show it.
        """
        shared = our_ratchet_key.agree(their_ratchet_key)
        derived = hkdf_sha256(shared, self.key, RATCHET_INFO, 64)
        return RootKey(derived[:32]), ChainKey(derived[32:], 0), shared

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RootKey) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return "RootKey(<secret>)"
