"""Key types: Curve25519 keys, identity keys and Kyber-1024 KEM keys.

Encodings follow libsignal, so keys and bundles travel between the two unchanged:

* an EC public key is ``0x05 || u`` (33 bytes), ``u`` the X25519 u-coordinate;
* a private key is 32 clamped bytes (RFC 7748 §5 "decodeScalar25519");
* a KEM public key is ``0x08 || 1568 bytes`` and a KEM ciphertext ``0x08 || 1568 bytes``.

Our keys and the peer's keys are different types (vodozemac's ``RatchetKey`` /
``RemoteRatchetKey``): :class:`PublicKey` is all we ever hold of a peer, a :class:`KeyPair`
(or :class:`IdentityKeyPair`) is ours. Secret-bearing types never print their bytes.

X25519 (key generation and Diffie-Hellman) runs in libsodium, bundled by the ``xeddsa``
wheel, on raw bytes; it rejects exactly the inputs OpenSSL rejects (an all-zero output,
i.e. a low-order peer key), which tests check against ``cryptography``'s X25519.

libsignal's type ``0x08`` is *round-3 Kyber-1024*, not FIPS 203 ML-KEM. The two share key
and ciphertext encodings and the inner shared key ``K``; round-3 Kyber then hashes it once
more: ``SS = SHAKE256(K || SHA3-256(c))[:32]`` over the raw 1568-byte ciphertext ``c``
(Kyber round-3 spec, Algorithm 8/9, "KDF(K̄ || H(c))"). We get ``K`` from ``cryptography``'s
ML-KEM-1024 and apply that final step ourselves. For a ciphertext that fails the FO
re-encryption check the two schemes' implicit-rejection values differ, but either is a
pseudo-random key, so the session's MAC then fails, as it would with libsignal.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from typing import Final

import xeddsa as _xeddsa
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mlkem

from client.crypto import mlkem_encaps, xeddsa
from client.crypto.errors import InvalidKeyError, InvalidMessageError

__all__ = [
    "DJB_TYPE",
    "EC_PUBLIC_KEY_LENGTH",
    "KYBER_1024_TYPE",
    "IdentityKeyPair",
    "KeyPair",
    "KyberKeyPair",
    "KyberPublicKey",
    "PrivateKey",
    "PublicKey",
    "Rng",
    "default_rng",
    "deterministic_rng",
]

Rng = Callable[[int], bytes]
"""A source of random bytes: ``rng(n)`` returns ``n`` bytes. A parameter, like libsignal's
``csprng``, so tests can make runs reproducible."""

default_rng: Final[Rng] = os.urandom


def deterministic_rng(label: bytes) -> Rng:
    """A reproducible byte stream, ``SHAKE256(label || counter)`` per call: for seeded
    research traces and golden transcripts, never for real keys."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(label + counter.to_bytes(8, "big")).digest(n)

    return rng


DJB_TYPE: Final = 0x05
"""Type byte of a Curve25519 public key (libsignal ``KeyType::Djb``)."""
KYBER_1024_TYPE: Final = 0x08
"""Type byte of a Kyber-1024 public key or ciphertext (libsignal ``kem::KeyType::Kyber1024``)."""

CURVE25519_KEY_LENGTH: Final = 32
EC_PUBLIC_KEY_LENGTH: Final = 1 + CURVE25519_KEY_LENGTH
KYBER_1024_RAW_LENGTH: Final = 1568
"""Length of a raw Kyber-1024 / ML-KEM-1024 public key and of its ciphertext."""
KYBER_SHARED_SECRET_LENGTH: Final = 32
ML_KEM_SEED_LENGTH: Final = 64
"""``cryptography`` stores ML-KEM private keys as the 64-byte (d, z) seed of FIPS 203."""

_FIELD_PRIME: Final = 2**255 - 19


class _X25519Error(Exception):
    """libsodium refused a Diffie-Hellman input (low-order point, all-zero output)."""


def _x25519_public(secret: bytes) -> bytes:
    """``X25519(secret, 9)`` through libsodium (the ``xeddsa`` wheel's public API)."""
    return _xeddsa.priv_to_curve25519_pub(secret)


def _x25519(secret: bytes, u: bytes) -> bytes:
    """``X25519(secret, u)`` through libsodium; raises :class:`_X25519Error` on rejection."""
    try:
        return _xeddsa.x25519(secret, u)
    except (ValueError, _xeddsa.XEdDSAException) as exc:
        raise _X25519Error from exc


# X25519 runs 14 times in a session setup. libsodium (bundled by the ``xeddsa`` wheel) is as
# fast as OpenSSL here and takes raw bytes, where ``cryptography`` needs a key object per
# peer key (an OpenSSL key import costs a sixth of a Diffie-Hellman). The wheel's wrappers
# copy every argument into fresh buffers first; when its cffi module is where 1.x keeps it,
# call the C functions directly with our (always 32-byte) bytes. Tests compare both paths
# with OpenSSL's X25519.
try:  # pragma: no branch
    from xeddsa.bindings import ffi as _ffi  # type: ignore[attr-defined]
    from xeddsa.bindings import lib as _lib  # type: ignore[attr-defined]

    _new_point = functools.partial(_ffi.new, "uint8_t[32]")
    _buffer = _ffi.buffer
    _sodium_x25519 = _lib.x25519
    _sodium_x25519_base = _lib.priv_to_curve25519_pub

    def _x25519_public_direct(secret: bytes) -> bytes:
        if len(secret) != CURVE25519_KEY_LENGTH:  # C reads 32 bytes
            raise ValueError("X25519 private keys are 32 bytes")
        out = _new_point()
        _sodium_x25519_base(out, secret)
        result: bytes = _buffer(out)[:]
        return result

    def _x25519_direct(secret: bytes, u: bytes) -> bytes:
        if len(secret) != CURVE25519_KEY_LENGTH or len(u) != CURVE25519_KEY_LENGTH:
            raise _X25519Error("X25519 keys are 32 bytes")
        out = _new_point()
        if _sodium_x25519(out, secret, u) != 0:
            raise _X25519Error
        result: bytes = _buffer(out)[:]
        return result

    _x25519_public_fast: Callable[[bytes], bytes] = _x25519_public_direct
    _x25519_fast: Callable[[bytes, bytes], bytes] = _x25519_direct
except (ImportError, AttributeError):  # pragma: no cover - depends on the xeddsa version
    _x25519_public_fast = _x25519_public
    _x25519_fast = _x25519


def _clamp(scalar: bytes) -> bytes:
    """Clamp a Curve25519 scalar (RFC 7748 §5): clear bits 0-2 and 255, set bit 254."""
    b = bytearray(scalar)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


_NOT_CONVERTED: Final = b""
"""``PublicKey._edwards`` before the first signature check (a converted key is 32 bytes)."""


class PublicKey:
    """A Curve25519 public key: ours or the peer's (``0x05 || u`` on the wire).

    Derived forms are computed on first use and kept with the key (they are public): the
    ``cryptography`` object for Diffie-Hellman and the Edwards form for XEdDSA checks.
    """

    __slots__ = ("_edwards", "_serialized")

    def __init__(self, u: bytes) -> None:
        if len(u) != CURVE25519_KEY_LENGTH:
            raise InvalidKeyError(f"a Curve25519 public key is 32 bytes, got {len(u)}")
        self._serialized = bytes((DJB_TYPE,)) + u
        self._edwards: bytes | None = _NOT_CONVERTED

    @classmethod
    def deserialize(cls, data: bytes) -> PublicKey:
        """Parse a serialized key ``0x05 || u``.

        Raises:
            InvalidKeyError: wrong length or type byte.
        """
        if len(data) != EC_PUBLIC_KEY_LENGTH:
            raise InvalidKeyError(f"a serialized EC public key is 33 bytes, got {len(data)}")
        if data[0] != DJB_TYPE:
            raise InvalidKeyError(f"unknown EC key type 0x{data[0]:02x}, expected 0x05")
        key = cls.__new__(cls)
        key._serialized = bytes(data)
        key._edwards = _NOT_CONVERTED
        return key

    def serialize(self) -> bytes:
        """Return ``0x05 || u`` (33 bytes), the form that is signed, MACed and sent."""
        return self._serialized

    @property
    def u(self) -> bytes:
        """The raw 32-byte X25519 u-coordinate."""
        return self._serialized[1:]

    def is_canonical(self) -> bool:
        """True if ``u`` is the canonical encoding (``u < 2^255 - 19``, top bit clear).

        libsignal's responder refuses a non-canonical base key: two encodings of one point
        would let a replayed PreKeySignalMessage look like a different session.
        """
        return int.from_bytes(self._serialized[1:], "little") < _FIELD_PRIME

    def verify_signature(self, message: bytes, signature: bytes) -> bool:
        """Verify an XEdDSA signature made with the matching private key (libsignal way)."""
        edwards = self._edwards
        if edwards == _NOT_CONVERTED:
            edwards = xeddsa.edwards_public_key(self._serialized)
            self._edwards = edwards
        if edwards is None:
            return False
        return xeddsa.verify_edwards(edwards, message, signature)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._serialized == self._serialized

    def __hash__(self) -> int:
        return hash(self._serialized)

    def __repr__(self) -> str:
        # Public keys are not secret; a short prefix is enough to tell them apart.
        return f"PublicKey({self._serialized[1:9].hex()}…)"


class PrivateKey:
    """A clamped Curve25519 private key. Never printed."""

    __slots__ = ("_public", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != CURVE25519_KEY_LENGTH:
            raise InvalidKeyError(f"a Curve25519 private key is 32 bytes, got {len(secret)}")
        self._secret = _clamp(secret)
        self._public: PublicKey | None = None

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> PrivateKey:
        """A fresh private key from ``rng`` (32 bytes, then clamped)."""
        return cls(rng(CURVE25519_KEY_LENGTH))

    def serialize(self) -> bytes:
        """The 32 clamped secret bytes, for the caller's encrypted storage only."""
        return self._secret

    def public_key(self) -> PublicKey:
        """The matching public key ``0x05 || X25519(k, 9)``."""
        pub = self._public
        if pub is None:
            pub = PublicKey(_x25519_public_fast(self._secret))
            self._public = pub
        return pub

    def agree(self, their_public: PublicKey) -> bytes:
        """X25519 Diffie-Hellman (RFC 7748 §6.1) with the peer's public key.

        Raises:
            InvalidKeyError: the peer's key is a small-order point (all-zero output).
        """
        try:
            return _x25519_fast(self._secret, their_public._serialized[1:])
        except _X25519Error as exc:
            raise InvalidKeyError("Diffie-Hellman with a low-order public key") from exc

    def sign(self, message: bytes, random: bytes | None = None) -> bytes:
        """XEdDSA-sign ``message`` (64 bytes, sign bit 0, see :mod:`client.crypto.xeddsa`)."""
        return xeddsa.sign(self._secret, message, random)

    def __repr__(self) -> str:
        return "PrivateKey(<secret>)"


class KeyPair:
    """Our Curve25519 key pair (ratchet key, base key, signed or one-time prekey)."""

    __slots__ = ("private_key", "public_key")

    def __init__(self, private_key: PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> KeyPair:
        return cls(PrivateKey.generate(rng))

    @classmethod
    def from_private_bytes(cls, secret: bytes) -> KeyPair:
        return cls(PrivateKey(secret))

    @classmethod
    def from_saved(cls, secret: bytes, public: bytes) -> KeyPair:
        """A pair read back from our own saved session state, which holds both halves: the
        public half is taken as saved instead of recomputed (an X25519 base-point
        multiplication, about 30 us, on every load of a session, that is every message)."""
        private = PrivateKey(secret)
        private._public = PublicKey.deserialize(public)
        return cls(private)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(public={self.public_key!r}, private=<secret>)"


class IdentityKeyPair(KeyPair):
    """Our long-term identity key pair; its public half is the peer's view of who we are."""

    __slots__ = ()

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> IdentityKeyPair:
        return cls(PrivateKey.generate(rng))

    @classmethod
    def from_private_bytes(cls, secret: bytes) -> IdentityKeyPair:
        return cls(PrivateKey(secret))

    def sign(self, message: bytes, random: bytes | None = None) -> bytes:
        """Sign a serialized prekey (or anything else) with XEdDSA."""
        return self.private_key.sign(message, random)


def kyber_shared_secret(mlkem_key: bytes, raw_ciphertext: bytes) -> bytes:
    """Round-3 Kyber's final KDF over ML-KEM's ``K``: ``SHAKE256(K || SHA3-256(c))[:32]``."""
    h = hashlib.sha3_256(raw_ciphertext).digest()
    return hashlib.shake_256(mlkem_key + h).digest(KYBER_SHARED_SECRET_LENGTH)


class KyberPublicKey:
    """A Kyber-1024 public key (``0x08 || 1568 bytes``): ours or the peer's."""

    __slots__ = ("_obj", "_serialized")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KYBER_1024_RAW_LENGTH:
            raise InvalidKeyError(f"a Kyber-1024 public key is 1568 bytes, got {len(raw)}")
        self._serialized = bytes((KYBER_1024_TYPE,)) + raw
        self._obj: mlkem.MLKEM1024PublicKey | None = None

    @classmethod
    def deserialize(cls, data: bytes) -> KyberPublicKey:
        """Parse ``0x08 || 1568 bytes``.

        Raises:
            InvalidKeyError: wrong length or type byte.
        """
        if len(data) != 1 + KYBER_1024_RAW_LENGTH:
            raise InvalidKeyError(f"a serialized Kyber-1024 key is 1569 bytes, got {len(data)}")
        if data[0] != KYBER_1024_TYPE:
            raise InvalidKeyError(f"unknown KEM key type 0x{data[0]:02x}, expected 0x08")
        return cls(bytes(data[1:]))

    def serialize(self) -> bytes:
        """``0x08 || raw``: the form that is signed and published in a bundle."""
        return self._serialized

    def _mlkem(self) -> mlkem.MLKEM1024PublicKey:
        obj = self._obj
        if obj is None:
            try:
                obj = mlkem.MLKEM1024PublicKey.from_public_bytes(self._serialized[1:])
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise InvalidKeyError("not a valid Kyber-1024 public key") from exc
            self._obj = obj
        return obj

    def encapsulate(self, rng: Rng | None = None) -> tuple[bytes, bytes]:
        """Encapsulate a fresh secret to this key.

        Args:
            rng: where the 32 bytes of encapsulation randomness come from. ``None`` (the
                default) lets OpenSSL draw them; a caller's ``rng`` (a seeded research run,
                a reproducible test) takes the slower deterministic path of
                :mod:`client.crypto.mlkem_encaps`, so the same ``rng`` gives the same bytes.

        Returns:
            ``(shared_secret (32 bytes), serialized ciphertext 0x08 || 1568 bytes)``.
        """
        if rng is None:
            k, ct = self._mlkem().encapsulate()
        else:
            self._mlkem()  # the same key validation as the OpenSSL path
            k, ct = mlkem_encaps.encapsulate_internal(
                self._serialized[1:], rng(mlkem_encaps.MESSAGE_LENGTH)
            )
        return kyber_shared_secret(k, ct), bytes((KYBER_1024_TYPE,)) + ct

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KyberPublicKey) and other._serialized == self._serialized

    def __hash__(self) -> int:
        return hash(self._serialized)

    def __repr__(self) -> str:
        return f"KyberPublicKey({self._serialized[1:9].hex()}…)"


class KyberKeyPair:
    """Our Kyber-1024 key pair (one-time or last-resort Kyber prekey). Never printed."""

    __slots__ = ("_obj", "_seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != ML_KEM_SEED_LENGTH:
            raise InvalidKeyError(f"an ML-KEM-1024 seed is 64 bytes, got {len(seed)}")
        self._seed = bytes(seed)
        self._obj = mlkem.MLKEM1024PrivateKey.from_seed_bytes(self._seed)
        self.public_key = KyberPublicKey(self._obj.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> KyberKeyPair:
        return cls(rng(ML_KEM_SEED_LENGTH))

    def serialize_secret(self) -> bytes:
        """The 64-byte seed, for the caller's encrypted storage only."""
        return self._seed

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Recover the 32-byte shared secret from a serialized ciphertext.

        Raises:
            InvalidMessageError: wrong length or type byte.
        """
        if len(ciphertext) != 1 + KYBER_1024_RAW_LENGTH or ciphertext[0] != KYBER_1024_TYPE:
            raise InvalidMessageError("Kyber ciphertext must be 0x08 followed by 1568 bytes")
        raw = ciphertext[1:]
        try:
            k = self._obj.decapsulate(raw)
        except ValueError as exc:
            raise InvalidMessageError("Kyber decapsulation failed") from exc
        return kyber_shared_secret(k, raw)

    def __repr__(self) -> str:
        return f"KyberKeyPair(public={self.public_key!r}, secret=<secret>)"
