"""Incremental ML-KEM encapsulation: SPQR's "ML-KEM Braid" sends the key, and the ciphertext,
in two parts.

Why: SPQR v1 (libsignal's sparse post-quantum ratchet) spreads an ML-KEM-768 exchange over
many small messages. The key owner first sends a 64-byte *header*, then the 1152-byte *key
vector*; the other side answers the header at once with the first ciphertext part ``ct1``
(960 bytes) and already knows the shared secret, and sends ``ct2`` (128 bytes) once the key
vector has arrived. This works because in K-PKE.Encrypt (FIPS 203 Algorithm 14) the vector
``u`` of the ciphertext depends on the key only through the matrix seed ``rho``, and the
shared secret only through ``H(ek)``; only ``v`` needs ``t_hat``. ``ct1 ‖ ct2`` is an
ordinary ML-KEM-768 ciphertext that any FIPS 203 decapsulation accepts, with the same secret.

Layouts (as libcrux's ``mlkem768::incremental`` API, which SPQR uses, lays them out):

* encapsulation key ``ek = t ‖ rho`` (FIPS 203: ``ByteEncode12(t_hat) ‖ rho``), 1184 bytes;
* **header** ``= rho ‖ H(ek)`` (32 + 32 bytes, ``H = SHA3-256`` of the whole ``ek``);
* **key vector** ``= t`` (the first 1152 bytes of ``ek``);
* **ct1** ``= c1 = ByteEncode10(Compress10(u))`` (960 bytes) and **ct2** ``= c2 =
  ByteEncode4(Compress4(v))`` (128 bytes); the standard ciphertext is ``c1 ‖ c2``.

The encapsulating side keeps an :class:`EncapsulationState` between the two steps; it is
Parley's own format (never sent), see :meth:`EncapsulationState.serialize`.

Key generation and decapsulation stay in OpenSSL through ``cryptography``::

    key = MLKEM768PrivateKey.generate()        # or .from_seed_bytes(rng(64)), seed d ‖ z
    ek = key.public_key().public_bytes_raw()   # 1184 bytes
    header, key_vector = split_encapsulation_key(ek)
    # ... the peer, with header and its own 32 random bytes m:
    ct1, secret, state = encapsulate1(header, m)
    # ... later, once key_vector has arrived (possibly after a restart: state.serialize()):
    ct2 = encapsulate2(state, key_vector)
    # ... back at the key owner:
    assert decapsulate(key, ct1, ct2) == secret   # key.decapsulate(ct1 + ct2)

It is plain Python (:mod:`client.crypto.mlkem_encaps` does the arithmetic): about 2.5 ms for
``encapsulate1`` (mostly sampling the matrix ``A``) and 1.3 ms for ``encapsulate2`` on one core
(OpenSSL decapsulates in about 0.03 ms).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric import mlkem

from client.crypto.errors import InvalidKeyError, InvalidMessageError, InvalidStateError
from client.crypto.mlkem_encaps import (
    MESSAGE_LENGTH,
    ML_KEM_512,
    ML_KEM_768,
    ML_KEM_1024,
    SEED_LENGTH,
    ParameterSet,
    derive_key_and_randomness,
    encrypt_u,
    encrypt_v,
    key_vector_in_range,
)

__all__ = [
    "HEADER_LENGTH",
    "MESSAGE_LENGTH",
    "STATE_LENGTH",
    "EncapsulationState",
    "check_key_vector",
    "decapsulate",
    "encapsulate1",
    "encapsulate2",
    "split_encapsulation_key",
]

HASH_LENGTH: Final = 32
HEADER_LENGTH: Final = SEED_LENGTH + HASH_LENGTH
"""64: ``rho ‖ H(ek)``, libcrux's ``pk1`` and SPQR's ``HEADER_SIZE``."""
STATE_FORMAT_VERSION: Final = 1
STATE_LENGTH: Final = 2 + HEADER_LENGTH + MESSAGE_LENGTH
"""98: format version, rank ``k``, header, ``m`` (see :meth:`EncapsulationState.serialize`)."""
_BY_RANK: Final = {p.k: p for p in (ML_KEM_512, ML_KEM_768, ML_KEM_1024)}


def split_encapsulation_key(
    ek: bytes, params: ParameterSet = ML_KEM_768, *, from_keygen: bool = False
) -> tuple[bytes, bytes]:
    """Cut our own encapsulation key into the header and the key vector that SPQR sends.

    Args:
        ek: the raw encapsulation key (``public_key().public_bytes_raw()``), 1184 bytes for
            ML-KEM-768.
        params: the parameter set (SPQR v1: ML-KEM-768).
        from_keygen: ``ek`` comes straight from OpenSSL's key generation, whose keys are in
            range by construction (FIPS 203 §7.1), so the modulus check is skipped: it is a
            tenth of SPQR's key generation (~27 us of a session setup's ~1 ms) and could
            only fail for bytes that did not come from there.

    Returns:
        ``(header, key_vector)``: ``rho ‖ SHA3-256(ek)`` (64 bytes) and ``t`` (1152 bytes).

    Raises:
        InvalidKeyError: wrong length, or (unless ``from_keygen``) ``t`` fails FIPS 203's
            modulus check (a key that OpenSSL would refuse: it did not come from key
            generation).
    """
    if len(ek) != params.encapsulation_key_length:
        raise InvalidKeyError(
            f"an {params.name} encapsulation key is {params.encapsulation_key_length} bytes,"
            f" got {len(ek)}"
        )
    key_vector, rho = ek[: params.key_vector_length], ek[params.key_vector_length :]
    if not from_keygen and not key_vector_in_range(params, key_vector):
        raise InvalidKeyError(
            f"not an {params.name} encapsulation key: a coefficient of t is not below q"
        )
    return rho + hashlib.sha3_256(ek).digest(), key_vector


def check_key_vector(header: bytes, key_vector: bytes, params: ParameterSet = ML_KEM_768) -> None:
    """Check that a received key vector belongs to the header received before it.

    This is SPQR's ``ek_matches_header`` (libcrux ``validate_pk_bytes``): the hash of
    ``key_vector ‖ rho`` must be the ``H(ek)`` of the header, and every coefficient of ``t``
    must be below q (FIPS 203 §7.2). SPQR authenticates the header with a MAC, so the hash
    pins the key vector to the key its owner meant; the ciphertext would otherwise be made
    for a key the shared secret (derived from the header's hash) does not belong to.
    :func:`encapsulate2` calls it, so a caller needs it only to refuse a key vector early.

    Raises:
        InvalidKeyError: wrong lengths, a hash mismatch (another key's vector, or corrupted in
            transit: do not send ``ct2``), or a coefficient out of range.
    """
    if len(header) != HEADER_LENGTH:
        raise InvalidKeyError(f"an ML-KEM header is {HEADER_LENGTH} bytes, got {len(header)}")
    if len(key_vector) != params.key_vector_length:
        raise InvalidKeyError(
            f"an {params.name} key vector is {params.key_vector_length} bytes,"
            f" got {len(key_vector)}"
        )
    rho, ek_hash = header[:SEED_LENGTH], header[SEED_LENGTH:]
    if hashlib.sha3_256(key_vector + rho).digest() != ek_hash:
        raise InvalidKeyError(
            "the ML-KEM key vector does not hash to the H(ek) of the header received before it:"
            " it belongs to another key or was corrupted; do not send ct2"
        )
    if not key_vector_in_range(params, key_vector):
        raise InvalidKeyError(
            f"not an {params.name} encapsulation key: a coefficient of t is not below q"
        )


@dataclass(frozen=True, slots=True, repr=False)
class EncapsulationState:
    """What the encapsulating side keeps between :func:`encapsulate1` and :func:`encapsulate2`.

    It holds the header and ``m``, not libcrux's precomputed noise: ``r = G(m ‖ H(ek))[32:]``
    re-derives the noise vector ``y`` and ``e2`` in :func:`encapsulate2` (under 1 ms), so the
    stored state is 98 bytes instead of libcrux's 2080, has no implementation-specific
    polynomial encoding (libcrux's had an endianness bug that SPQR still repairs on load), and
    keeps the header that :func:`encapsulate2` checks the key vector against.

    **Secret**: ``m`` and the header's hash give the shared secret (``G(m ‖ H(ek))[:32]``), as
    libcrux's state (which holds ``m`` too) does. Store it like a session's other secret keys
    and delete it once ``ct2`` is sent.
    """

    params: ParameterSet
    header: bytes
    m: bytes

    def __post_init__(self) -> None:
        if len(self.header) != HEADER_LENGTH or len(self.m) != MESSAGE_LENGTH:
            raise InvalidStateError(
                "an ML-KEM encapsulation state has a 64-byte header and 32-byte m"
            )
        if _BY_RANK.get(self.params.k) != self.params:
            raise InvalidStateError(f"unknown ML-KEM parameter set {self.params.name}")

    def serialize(self) -> bytes:
        """``0x01 (format) ‖ k (rank: 3 for ML-KEM-768) ‖ rho (32) ‖ H(ek) (32) ‖ m (32)``.

        98 bytes; for the caller's encrypted session store only (it is never sent).
        """
        return bytes((STATE_FORMAT_VERSION, self.params.k)) + self.header + self.m

    @classmethod
    def deserialize(cls, data: bytes) -> EncapsulationState:
        """Parse :meth:`serialize`'s format.

        Raises:
            InvalidStateError: wrong length, an unknown format version or rank.
        """
        if len(data) != STATE_LENGTH:
            raise InvalidStateError(
                f"an ML-KEM encapsulation state is {STATE_LENGTH} bytes, got {len(data)}"
            )
        if data[0] != STATE_FORMAT_VERSION:
            raise InvalidStateError(
                f"unsupported ML-KEM encapsulation state format {data[0]}"
                f" (this version reads {STATE_FORMAT_VERSION})"
            )
        params = _BY_RANK.get(data[1])
        if params is None:
            raise InvalidStateError(f"unknown ML-KEM rank {data[1]} in an encapsulation state")
        return cls(params, bytes(data[2 : 2 + HEADER_LENGTH]), bytes(data[2 + HEADER_LENGTH :]))

    def __repr__(self) -> str:
        return f"EncapsulationState({self.params.name}, rho {self.header[:4].hex()}…)"


def encapsulate1(
    header: bytes, m: bytes, params: ParameterSet = ML_KEM_768
) -> tuple[bytes, bytes, EncapsulationState]:
    """First half of ``ML-KEM.Encaps_internal``: ``ct1`` and the shared secret from the header.

    Nothing in the header can be checked here (``rho`` and ``H(ek)`` are any 32 bytes each);
    SPQR authenticates it with a MAC first, and :func:`encapsulate2` checks the key vector
    against it.

    Args:
        header: the peer's ``rho ‖ H(ek)`` (64 bytes).
        m: 32 fresh random bytes (FIPS 203 Algorithm 20's ``m``); never reuse them: the same
            header and ``m`` give the same secret.
        params: the parameter set (SPQR v1: ML-KEM-768).

    Returns:
        ``(ct1, shared_secret, state)``: the 960-byte ``c1`` (ML-KEM-768), the 32-byte ML-KEM
        shared key ``K`` and the state for :func:`encapsulate2`.

    Raises:
        InvalidKeyError: the header is not 64 bytes.
        ValueError: ``m`` is not 32 bytes (a caller bug).
    """
    if len(header) != HEADER_LENGTH:
        raise InvalidKeyError(f"an ML-KEM header is {HEADER_LENGTH} bytes, got {len(header)}")
    if len(m) != MESSAGE_LENGTH:
        raise ValueError(f"ML-KEM encapsulation randomness is 32 bytes, got {len(m)}")
    header, m = bytes(header), bytes(m)
    shared, r = derive_key_and_randomness(m, header[SEED_LENGTH:])
    ct1 = encrypt_u(params, header[:SEED_LENGTH], r)
    return ct1, shared, EncapsulationState(params, header, m)


def encapsulate2(state: EncapsulationState, key_vector: bytes) -> bytes:
    """Second half: ``ct2`` once the key vector has arrived, after :func:`check_key_vector`.

    Args:
        state: from :func:`encapsulate1` (or :meth:`EncapsulationState.deserialize`).
        key_vector: the peer's ``t`` (1152 bytes for ML-KEM-768).

    Returns:
        ``ct2``, the 128-byte ``c2`` (ML-KEM-768); ``ct1 ‖ ct2`` is the standard ciphertext.

    Raises:
        InvalidKeyError: the key vector does not belong to the state's header (see
            :func:`check_key_vector`).
    """
    check_key_vector(state.header, key_vector, state.params)
    _, r = derive_key_and_randomness(state.m, state.header[SEED_LENGTH:])
    return encrypt_v(state.params, bytes(key_vector), state.m, r)


def decapsulate(
    private_key: mlkem.MLKEM768PrivateKey | mlkem.MLKEM1024PrivateKey, ct1: bytes, ct2: bytes
) -> bytes:
    """``private_key.decapsulate(ct1 + ct2)`` in OpenSSL, with the parts' lengths checked.

    A modified ciphertext is not an error in ML-KEM: decapsulation then returns an unrelated
    pseudo-random key (implicit rejection), which is why SPQR MACs ``ct1 ‖ ct2``.

    Raises:
        InvalidMessageError: a part has the wrong length for the key's parameter set.
    """
    params = ML_KEM_768 if isinstance(private_key, mlkem.MLKEM768PrivateKey) else ML_KEM_1024
    if len(ct1) != params.u_length or len(ct2) != params.v_length:
        raise InvalidMessageError(
            f"an {params.name} ciphertext is {params.u_length} + {params.v_length} bytes,"
            f" got {len(ct1)} + {len(ct2)}"
        )
    return private_key.decapsulate(bytes(ct1) + bytes(ct2))
