"""Per-message keys and the body cipher (libsignal ``ratchet/keys.rs`` ``MessageKeys``).

``HKDF-SHA256(salt = None | SPQR key, ikm = seed, info = "WhisperMessageKeys", 80)`` →
AES-256 key (32) | HMAC key (32) | CBC IV (16). The body is AES-256-CBC with PKCS#7
padding, as libsignal does.

SPQR seam: libsignal's post-quantum "triple ratchet" mixes its own message key in as the
HKDF *salt*. :meth:`MessageKeys.derive` takes that salt already; until SPQR exists it is
always ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from client.crypto.errors import InvalidMessageError
from client.crypto.kdf import message_key_material

__all__ = ["MessageKeys", "aes_cbc_decrypt", "aes_cbc_encrypt"]

MESSAGE_KEYS_INFO: Final = b"WhisperMessageKeys"
MESSAGE_KEYS_LENGTH: Final = 80
AES_BLOCK: Final = 16
_PADDING: Final = tuple(bytes((n,)) * n for n in range(AES_BLOCK + 1))
"""``_PADDING[n]`` is ``n`` bytes of value ``n`` (PKCS#7)."""
_AES256: Final = algorithms.AES256
_KEY_LENGTH: Final = 32
_CBC: Final = modes.CBC


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


def _unchecked_aes256(key: bytes) -> algorithms.AES256:
    algorithm: algorithms.AES256 = object.__new__(_AES256)
    algorithm.key = key
    return algorithm


def _unchecked_cbc(iv: bytes) -> modes.CBC:
    mode: modes.CBC = object.__new__(_CBC)
    mode._initialization_vector = iv
    return mode


def _unchecked_works() -> bool:
    """The unchecked constructors skip the argument checks of ``AES256(key)`` and
    ``CBC(iv)`` (a sixth of the cipher's cost for a short message) by setting the attributes
    that those constructors set; the callers check the two lengths themselves (OpenSSL reads
    32 key and 16 IV bytes whatever it is given). Used only if they give the public path's
    bytes on this ``cryptography``."""
    key, iv, data = bytes(range(32)), bytes(range(16)), bytes(range(48))
    try:
        fast = _new_encryptor(_unchecked_aes256(key), _unchecked_cbc(iv))
        slow = _public_encryptor(_AES256(key), _CBC(iv))
        ciphertext: bytes = slow.update(data) + slow.finalize()
        if fast.update(data) + fast.finalize() != ciphertext:  # pragma: no cover
            return False
        fast = _new_decryptor(_unchecked_aes256(key), _unchecked_cbc(iv))
        return bool(fast.update(ciphertext) + fast.finalize() == data)
    except Exception:  # pragma: no cover - depends on cryptography version
        return False


_UNCHECKED: Final = _unchecked_works()
_object_new = object.__new__


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
        cipher_key, mac_key, iv = message_key_material(seed, pq_salt)
        return cls(cipher_key, mac_key, iv, counter)

    def __repr__(self) -> str:
        return f"MessageKeys(counter={self.counter}, keys=<secret>)"


def aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """AES-256-CBC with PKCS#7 padding (always 1..16 bytes of padding)."""
    if len(key) != _KEY_LENGTH or len(iv) != AES_BLOCK:
        enc = _public_encryptor(_AES256(key), _CBC(iv))  # raises ValueError
    elif _UNCHECKED:  # _unchecked_aes256 and _unchecked_cbc inlined
        algorithm = _object_new(_AES256)
        algorithm.key = key
        mode = _object_new(_CBC)
        mode._initialization_vector = iv
        enc = _new_encryptor(algorithm, mode)
    else:  # pragma: no cover - depends on cryptography version
        enc = _new_encryptor(_AES256(key), _CBC(iv))
    out: bytes = (
        enc.update(plaintext + _PADDING[AES_BLOCK - len(plaintext) % AES_BLOCK]) + enc.finalize()
    )
    return out


def aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Inverse of :func:`aes_cbc_encrypt`.

    Raises:
        InvalidMessageError: length not a positive multiple of 16, or bad padding. (Only
            reached after the MAC verified, so this is not a padding oracle.)
    """
    if not ciphertext or len(ciphertext) % AES_BLOCK:
        raise InvalidMessageError("ciphertext length is not a multiple of the AES block")
    if len(key) != _KEY_LENGTH or len(iv) != AES_BLOCK:
        dec = _public_decryptor(_AES256(key), _CBC(iv))  # raises ValueError
    elif _UNCHECKED:  # _unchecked_aes256 and _unchecked_cbc inlined
        algorithm = _object_new(_AES256)
        algorithm.key = key
        mode = _object_new(_CBC)
        mode._initialization_vector = iv
        dec = _new_decryptor(algorithm, mode)
    else:  # pragma: no cover - depends on cryptography version
        dec = _new_decryptor(_AES256(key), _CBC(iv))
    padded: bytes = dec.update(ciphertext) + dec.finalize()
    pad = padded[-1]
    if not 1 <= pad <= AES_BLOCK or padded[-pad:] != _PADDING[pad]:
        raise InvalidMessageError("bad PKCS#7 padding in the decrypted body")
    return padded[:-pad]
