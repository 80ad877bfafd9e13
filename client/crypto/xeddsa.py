"""XEdDSA signatures on Curve25519 keys: one implementation for client and server.

Spec: "The XEdDSA and VXEdDSA Signature Schemes" (Signal, rev. 1, 2016), §2.3
"calculate_key_pair", §2.4 "xeddsa_sign / xeddsa_verify".

Two dialects exist and both must interoperate:

* **Spec way** (what we *sign*): the Edwards public key ``A`` always has sign bit 0 (the
  private scalar is negated when needed), so the signature is ``R || s`` with ``s < 2^253``
  and bit 7 of byte 63 clear. libsignal accepts these.
* **libsignal way** (what we *verify*): libsignal does not negate; it puts the Edwards sign
  bit of ``A`` into bit 7 of signature byte 63. A verifier that assumes sign bit 0 rejects
  about half of libsignal's signatures, so :func:`verify` takes the sign bit from byte 63,
  clears it, and checks an ordinary Ed25519 signature (RFC 8032 §5.1.7) against the
  Edwards point with that sign.

Both paths are backed by libsodium (through the ``xeddsa`` wheel): the u→Edwards conversion
and Ed25519 verification are native code, which keeps verification cheap on the server's
key-upload path and in every session setup. libsodium's Ed25519 verify is about twice as
fast here as OpenSSL's (``cryptography``'s ``Ed25519PublicKey.verify``, measured Nov 2026),
so it stays. The u→Edwards conversion (a field inversion, a third of a verification) does not
depend on the signature: :func:`edwards_public_key` does it once per key and
:func:`verify_edwards` checks each signature (``PublicKey`` keeps the converted key).
"""

from __future__ import annotations

import os
from typing import Final

import xeddsa as _xeddsa

__all__ = [
    "SIGNATURE_LENGTH",
    "edwards_public_key",
    "sign",
    "verify",
    "verify_edwards",
    "verify_strict",
]

SIGNATURE_LENGTH: Final = 64
NONCE_LENGTH: Final = 64
"""XEdDSA §2.4: ``Z`` is 64 bytes of fresh randomness mixed into the nonce hash."""
_PRIVATE_KEY_LENGTH: Final = 32
_FIELD_PRIME: Final = 2**255 - 19
_SIGN_BIT: Final = 0x80
_S_HIGH_BITS: Final = 0xE0
"""After clearing the sign bit, ``s`` must be below ``2^253`` (libsignal's check)."""
_S_HIGH_BITS_BELOW_SIGN: Final = _S_HIGH_BITS & ~_SIGN_BIT & 0xFF
"""Bits 5 and 6 of byte 63: set means ``s >= 2^253`` whatever the sign bit."""


def _clamp(scalar: bytes) -> bytes:
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def sign(private_key: bytes, message: bytes, random: bytes | None = None) -> bytes:
    """Sign ``message`` the spec way (XEdDSA §2.4), Edwards sign bit 0.

    Args:
        private_key: 32-byte Curve25519 private key (clamped here if it is not yet).
        message: the bytes to sign, e.g. a serialized prekey (33 or 1569 bytes).
        random: 64 bytes of randomness ``Z``; fresh from the OS when ``None``. Pass fixed
            bytes only for reproducible tests.

    Returns:
        The 64-byte signature ``R || s``.

    Raises:
        ValueError: a wrong-length key or nonce (a caller bug).
    """
    if len(private_key) != _PRIVATE_KEY_LENGTH:
        raise ValueError("an XEdDSA private key is 32 bytes")
    if random is None:
        random = os.urandom(NONCE_LENGTH)
    if len(random) != NONCE_LENGTH:
        raise ValueError("XEdDSA randomness is 64 bytes")
    # XEdDSA §2.3 calculate_key_pair: negate a when needed so that A has sign bit 0, then
    # sign with that scalar (the nonce hash also uses the adjusted a, as the spec says).
    adjusted = _xeddsa.priv_force_sign(_clamp(private_key), False)
    return _xeddsa.ed25519_priv_sign(adjusted, message, random)


def _u_coordinate(public_key: bytes) -> bytes | None:
    """Accept a 33-byte serialized key (``0x05 || u``) or a bare 32-byte ``u``."""
    if len(public_key) == 33:
        if public_key[0] != 0x05:
            return None
        public_key = public_key[1:]
    elif len(public_key) != 32:
        return None
    # Like curve25519-dalek's FieldElement::from_bytes, ignore bit 255 of u.
    u = bytearray(public_key)
    u[31] &= 0x7F
    # u = -1 has no Edwards equivalent (division by u + 1 = 0): libsignal rejects it too.
    if int.from_bytes(u, "little") % _FIELD_PRIME == _FIELD_PRIME - 1:
        return None
    return bytes(u)


def edwards_public_key(public_key: bytes) -> bytes | None:
    """The Edwards form of a Curve25519 public key with sign bit 0, for
    :func:`verify_edwards`; ``None`` if the key has none (malformed, ``u = -1``).

    The conversion ``y = (u - 1) / (u + 1)`` costs a field inversion, about a third of a
    verification, and does not depend on the signature: a caller that checks several
    signatures by one key (a bundle's two prekey signatures) converts once.

    Args:
        public_key: a 33-byte serialized key ``0x05 || u`` or the 32-byte ``u``.
    """
    u = _u_coordinate(public_key)
    if u is None:
        return None
    try:
        return bytes(_xeddsa.curve25519_pub_to_ed25519_pub(u, False))
    except (ValueError, _xeddsa.XEdDSAException):  # pragma: no cover - u is 32 bytes here
        return None


def verify_edwards(edwards: bytes, message: bytes, signature: bytes) -> bool:
    """:func:`verify` with the key already converted by :func:`edwards_public_key`.

    The Edwards sign bit comes from bit 7 of ``signature[63]``; it goes into bit 7 of the
    key's last byte (where ``curve25519_pub_to_ed25519_pub(u, True)`` puts it) and is cleared
    in the signature, whose ``s`` must then be below ``2^253``.
    """
    if len(signature) != SIGNATURE_LENGTH or len(edwards) != _PRIVATE_KEY_LENGTH:
        return False
    last = signature[63]
    if last & _S_HIGH_BITS_BELOW_SIGN:
        return False
    if last & _SIGN_BIT:
        edwards = edwards[:31] + bytes((edwards[31] | _SIGN_BIT,))
        signature = signature[:63] + bytes((last & ~_SIGN_BIT,))
    try:
        return bool(_xeddsa.ed25519_verify(signature, edwards, message))
    except (ValueError, _xeddsa.XEdDSAException):
        return False


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Verify an XEdDSA signature the way libsignal does.

    The Edwards sign bit comes from bit 7 of ``signature[63]``; it is cleared before the
    Ed25519 check, and ``s`` must then be below ``2^253``. Spec-made signatures (sign bit 0)
    verify as well, so this accepts both dialects.

    Args:
        public_key: the signer's 33-byte serialized key ``0x05 || u`` (or the 32-byte ``u``).
        message: the signed bytes.
        signature: the 64-byte signature.

    Returns:
        ``True`` if the signature is valid; ``False`` for any malformed input.
    """
    if len(signature) != SIGNATURE_LENGTH:
        return False
    edwards = edwards_public_key(public_key)
    if edwards is None:
        return False
    return verify_edwards(edwards, message, signature)


def verify_strict(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Verify exactly as XEdDSA §2.4 ``xeddsa_verify``: Edwards sign bit always 0.

    Only for tests and diagnostics: it rejects the ~50% of libsignal signatures whose
    sign bit is 1. Production code calls :func:`verify`.
    """
    if len(signature) != SIGNATURE_LENGTH:
        return False
    u = _u_coordinate(public_key)
    if u is None:
        return False
    if signature[63] & _S_HIGH_BITS:
        return False
    try:
        edwards = _xeddsa.curve25519_pub_to_ed25519_pub(u, False)
        return bool(_xeddsa.ed25519_verify(signature, edwards, message))
    except (ValueError, _xeddsa.XEdDSAException):
        return False
