"""HMAC-SHA256 and HKDF-SHA256, the only key-derivation primitives the protocol uses.

Both sit on the per-message hot path (seven HMACs per message per side), so they are built
directly on :func:`hashlib.sha256` with the RFC 2104 construction
``H((K ^ opad) || H((K ^ ipad) || m))``: here that is about twice as fast as
:func:`hmac.digest`, whose per-call key setup dominates for 32-byte inputs. HKDF (RFC 5869)
reuses one padded PRK for all its expand blocks. Known-answer tests pin both to RFC 4231 /
RFC 5869 vectors.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = [
    "HASH_LENGTH",
    "hkdf_sha256",
    "hkdf_sha256_96",
    "hmac_pads",
    "hmac_sha256",
    "hmac_sha256_pair",
]

HASH_LENGTH: Final = 32
BLOCK_LENGTH: Final = 64
"""SHA-256 block size: HMAC pads (or first hashes) the key to this length."""
_ZERO_SALT: Final = bytes(HASH_LENGTH)
"""RFC 5869 §2.2: an absent salt is HashLen zero bytes (libsignal passes ``None``)."""
_MAX_OUTPUT: Final = 255 * HASH_LENGTH
_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))
_ZEROS: Final = bytes(BLOCK_LENGTH)
_sha256 = hashlib.sha256


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """The padded inner and outer HMAC keys, for several HMACs under one key."""
    if len(key) > BLOCK_LENGTH:
        key = _sha256(key).digest()
    block = key + _ZEROS[len(key) :]
    return block.translate(_IPAD), block.translate(_OPAD)


def hmac_sha256_pair(key: bytes, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """``(HMAC(key, first), HMAC(key, second))`` with one key schedule (KDF_CK's two
    outputs)."""
    if len(key) > BLOCK_LENGTH:
        key = _sha256(key).digest()
    block = key + _ZEROS[len(key) :]
    ipad, opad = block.translate(_IPAD), block.translate(_OPAD)
    return (
        _sha256(opad + _sha256(ipad + first).digest()).digest(),
        _sha256(opad + _sha256(ipad + second).digest()).digest(),
    )


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of ``data`` under ``key``."""
    if len(key) > BLOCK_LENGTH:
        key = _sha256(key).digest()
    block = key + _ZEROS[len(key) :]
    inner = _sha256(block.translate(_IPAD) + data).digest()
    return _sha256(block.translate(_OPAD) + inner).digest()


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869 §2.2-2.3).

    Args:
        ikm: input keying material.
        salt: the extract salt; ``None`` (or empty) means 32 zero bytes.
        info: context string, e.g. ``b"WhisperRatchet"``.
        length: output length in bytes, at most 8160.
    """
    if not 0 < length <= _MAX_OUTPUT:
        raise ValueError("HKDF-SHA256 output length must be 1..8160 bytes")
    prk = hmac_sha256(salt if salt else _ZERO_SALT, ikm)
    ipad, opad = hmac_pads(prk)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        inner = _sha256(ipad + block + info + bytes((counter,))).digest()
        block = _sha256(opad + inner).digest()
        out += block
        counter += 1
    return out[:length]


_MESSAGE_KEY_BLOCKS: Final = 3


def hkdf_sha256_96(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    """``hkdf_sha256(ikm, salt, info, 96)`` unrolled (message keys take 80 of it)."""
    prk = hmac_sha256(salt if salt else _ZERO_SALT, ikm)
    ipad, opad = hmac_pads(prk)
    t1 = _sha256(opad + _sha256(ipad + info + b"\x01").digest()).digest()
    t2 = _sha256(opad + _sha256(ipad + t1 + info + b"\x02").digest()).digest()
    t3 = _sha256(opad + _sha256(ipad + t2 + info + b"\x03").digest()).digest()
    return t1 + t2 + t3
