"""Per-message keys and the body cipher (libsignal ``ratchet/keys.rs`` ``MessageKeys``).

``HKDF-SHA256(salt = None | SPQR key, ikm = seed, info = "WhisperMessageKeys", 80)`` →
AES-256 key (32) | HMAC key (32) | CBC IV (16). The body is AES-256-CBC with PKCS#7
padding (DESIGN.md §6).

SPQR seam: libsignal's post-quantum "triple ratchet" mixes its own message key in as the
HKDF *salt*. :meth:`MessageKeys.derive` takes that salt already; until SPQR exists it is
always ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from client.crypto.errors import InvalidMessageError
from client.crypto.kdf import hkdf_sha256_96

__all__ = ["MessageKeys", "aes_cbc_decrypt", "aes_cbc_encrypt"]

MESSAGE_KEYS_INFO: Final = b"WhisperMessageKeys"
MESSAGE_KEYS_LENGTH: Final = 80
AES_BLOCK: Final = 16


def _public_encryptor(algorithm: algorithms.AES256, mode: modes.CBC) -> Any:
    return Cipher(algorithm, mode).encryptor()


def _public_decryptor(algorithm: algorithms.AES256, mode: modes.CBC) -> Any:
    return Cipher(algorithm, mode).decryptor()


# ``Cipher(...)`` re-validates its arguments through ABC isinstance checks on every call, a
# third of the cost of encrypting a short message. The keys change with every message, so
# nothing can be cached; instead, when this ``cryptography`` exposes its context constructors
# (45-50 do), call them directly on the already-valid AES256/CBC objects. Otherwise, or if
# that API moves, the public path is used; tests check both give the same bytes.
_new_encryptor: Callable[[algorithms.AES256, modes.CBC], Any] = _public_encryptor
_new_decryptor: Callable[[algorithms.AES256, modes.CBC], Any] = _public_decryptor
try:  # pragma: no branch
    from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

    _new_encryptor = _rust_openssl.ciphers.create_encryption_ctx
    _new_decryptor = _rust_openssl.ciphers.create_decryption_ctx
except (ImportError, AttributeError):  # pragma: no cover - depends on cryptography version
    pass


class MessageKeys:
    """The keys for exactly one message. Never printed."""

    __slots__ = ("cipher_key", "counter", "iv", "mac_key")

    def __init__(self, cipher_key: bytes, mac_key: bytes, iv: bytes, counter: int) -> None:
        self.cipher_key = cipher_key
        self.mac_key = mac_key
        self.iv = iv
        self.counter = counter

    @classmethod
    def derive(cls, seed: bytes, counter: int, pq_salt: bytes | None = None) -> MessageKeys:
        """Expand a chain's message-key seed; ``pq_salt`` is the (future) SPQR key."""
        okm = hkdf_sha256_96(seed, pq_salt, MESSAGE_KEYS_INFO)  # first 80 bytes used
        return cls(okm[:32], okm[32:64], okm[64:80], counter)

    def __repr__(self) -> str:
        return f"MessageKeys(counter={self.counter}, keys=<secret>)"


def aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """AES-256-CBC with PKCS#7 padding (always 1..16 bytes of padding)."""
    pad = AES_BLOCK - len(plaintext) % AES_BLOCK
    enc = _new_encryptor(algorithms.AES256(key), modes.CBC(iv))
    out: bytes = enc.update(plaintext + bytes((pad,)) * pad) + enc.finalize()
    return out


def aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Inverse of :func:`aes_cbc_encrypt`.

    Raises:
        InvalidMessageError: length not a positive multiple of 16, or bad padding. (Only
            reached after the MAC verified, so this is not a padding oracle.)
    """
    if not ciphertext or len(ciphertext) % AES_BLOCK:
        raise InvalidMessageError("ciphertext length is not a multiple of the AES block")
    dec = _new_decryptor(algorithms.AES256(key), modes.CBC(iv))
    padded: bytes = dec.update(ciphertext) + dec.finalize()
    pad = padded[-1]
    if not 1 <= pad <= AES_BLOCK or padded[-pad:] != bytes((pad,)) * pad:
        raise InvalidMessageError("bad PKCS#7 padding in the decrypted body")
    return padded[:-pad]
