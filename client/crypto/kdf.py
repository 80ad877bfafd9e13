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
    "message_key_material",
    "ratchet_step",
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
_KEY_PADDING: Final = tuple(bytes(BLOCK_LENGTH - n) for n in range(BLOCK_LENGTH + 1))
"""``_KEY_PADDING[len(key)]`` pads a key of at most 64 bytes to the block (no slicing)."""
_sha256 = hashlib.sha256


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """The padded inner and outer HMAC keys, for several HMACs under one key."""
    if len(key) > BLOCK_LENGTH:
        key = _sha256(key).digest()
    block = key + _KEY_PADDING[len(key)]
    return block.translate(_IPAD), block.translate(_OPAD)


_ZERO_SALT_IPAD, _ZERO_SALT_OPAD = hmac_pads(_ZERO_SALT)


def hmac_sha256_pair(key: bytes, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """``(HMAC(key, first), HMAC(key, second))`` with one key schedule (KDF_CK's two
    outputs)."""
    if len(key) > BLOCK_LENGTH:
        key = _sha256(key).digest()
    block = key + _KEY_PADDING[len(key)]
    ipad, opad = block.translate(_IPAD), block.translate(_OPAD)
    return (
        _sha256(opad + _sha256(ipad + first).digest()).digest(),
        _sha256(opad + _sha256(ipad + second).digest()).digest(),
    )


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of ``data`` under ``key``."""
    if len(key) > BLOCK_LENGTH:
        key = _sha256(key).digest()
    block = key + _KEY_PADDING[len(key)]
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
    prk = _extract(ikm, salt)
    block = prk + _KEY_PADDING[HASH_LENGTH]
    ipad, opad = block.translate(_IPAD), block.translate(_OPAD)
    sha256 = _sha256
    # T(1) and T(2) written out: every caller in the protocol wants 64 or 96 bytes.
    block = sha256(opad + sha256(ipad + info + b"\x01").digest()).digest()
    if length <= HASH_LENGTH:
        return block[:length]
    out = [block]
    block = sha256(opad + sha256(ipad + block + info + b"\x02").digest()).digest()
    out.append(block)
    for counter in range(3, (length + HASH_LENGTH - 1) // HASH_LENGTH + 1):
        block = sha256(opad + sha256(ipad + block + info + bytes((counter,))).digest()).digest()
        out.append(block)
    return b"".join(out)[:length]


def _extract(ikm: bytes, salt: bytes | None) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2); the absent salt's pads are precomputed."""
    if not salt:
        return _sha256(_ZERO_SALT_OPAD + _sha256(_ZERO_SALT_IPAD + ikm).digest()).digest()
    return hmac_sha256(salt, ikm)


def hkdf_sha256_96(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    """``hkdf_sha256(ikm, salt, info, 96)`` unrolled (message keys take 80 of it)."""
    prk = _extract(ikm, salt)
    block = prk + _KEY_PADDING[HASH_LENGTH]
    ipad, opad = block.translate(_IPAD), block.translate(_OPAD)
    t1 = _sha256(opad + _sha256(ipad + info + b"\x01").digest()).digest()
    t2 = _sha256(opad + _sha256(ipad + t1 + info + b"\x02").digest()).digest()
    t3 = _sha256(opad + _sha256(ipad + t2 + info + b"\x03").digest()).digest()
    return t1 + t2 + t3


_MESSAGE_KEYS_INFO_1: Final = b"WhisperMessageKeys\x01"
_MESSAGE_KEYS_INFO_2: Final = b"WhisperMessageKeys\x02"
_MESSAGE_KEYS_INFO_3: Final = b"WhisperMessageKeys\x03"


def message_key_material(seed: bytes, salt: bytes | None) -> tuple[bytes, bytes, bytes]:
    """libsignal's message keys ``HKDF(salt, seed, "WhisperMessageKeys", 80)`` split as
    ``(AES key 32, MAC key 32, IV 16)``: the per-message hot path, so the three expand
    blocks are the three outputs (no joining and re-slicing) and the info strings with
    their counter bytes are constants."""
    if salt:
        prk = hmac_sha256(salt, seed)
    else:
        prk = _sha256(_ZERO_SALT_OPAD + _sha256(_ZERO_SALT_IPAD + seed).digest()).digest()
    block = prk + _KEY_PADDING[HASH_LENGTH]
    ipad, opad = block.translate(_IPAD), block.translate(_OPAD)
    t1 = _sha256(opad + _sha256(ipad + _MESSAGE_KEYS_INFO_1).digest()).digest()
    t2 = _sha256(opad + _sha256(ipad + t1 + _MESSAGE_KEYS_INFO_2).digest()).digest()
    t3 = _sha256(opad + _sha256(ipad + t2 + _MESSAGE_KEYS_INFO_3).digest()).digest()
    return t1, t2, t3[:16]


_CHAIN_PAD: Final = _KEY_PADDING[HASH_LENGTH]
_MESSAGE_KEY_SEED: Final = b"\x01"
_CHAIN_KEY_SEED: Final = b"\x02"


def ratchet_step(chain_key: bytes, salt: bytes | None) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """One symmetric ratchet step, fused for the per-message hot path: ``KDF_CK`` then the
    message keys of :func:`message_key_material`.

    Returns:
        ``(message key seed, next chain key, AES key, MAC key, IV)``.
    """
    sha256 = _sha256
    if len(chain_key) == HASH_LENGTH:
        block = chain_key + _CHAIN_PAD
    else:  # only a corrupt stored state has another length; keep HMAC's general rule
        if len(chain_key) > BLOCK_LENGTH:
            chain_key = sha256(chain_key).digest()
        block = chain_key + _KEY_PADDING[len(chain_key)]
    ipad, opad = block.translate(_IPAD), block.translate(_OPAD)
    seed = sha256(opad + sha256(ipad + _MESSAGE_KEY_SEED).digest()).digest()
    next_key = sha256(opad + sha256(ipad + _CHAIN_KEY_SEED).digest()).digest()
    if salt:
        prk = hmac_sha256(salt, seed)
    else:
        prk = sha256(_ZERO_SALT_OPAD + sha256(_ZERO_SALT_IPAD + seed).digest()).digest()
    block = prk + _CHAIN_PAD
    ipad, opad = block.translate(_IPAD), block.translate(_OPAD)
    t1 = sha256(opad + sha256(ipad + _MESSAGE_KEYS_INFO_1).digest()).digest()
    t2 = sha256(opad + sha256(ipad + t1 + _MESSAGE_KEYS_INFO_2).digest()).digest()
    t3 = sha256(opad + sha256(ipad + t2 + _MESSAGE_KEYS_INFO_3).digest()).digest()
    return seed, next_key, t1, t2, t3[:16]
