"""ML-KEM encapsulation with caller-supplied randomness (FIPS 203 §6.2 / §5.2).

Why this exists: ``cryptography``'s ``MLKEM1024PublicKey.encapsulate()`` draws its 32 random
bytes ``m`` from OpenSSL's generator and takes no randomness from the caller. Everything else
in :mod:`client.crypto` takes an ``rng`` parameter, so a seeded run (``parley trace --seed``,
golden transcripts) would still differ in the KEM ciphertext and hence in every key after it.
This module is the deterministic ``ML-KEM.Encaps_internal(ek, m)`` of FIPS 203 (Algorithm 17,
with K-PKE.Encrypt, Algorithm 14), written from the standard in plain Python. It is slow
(milliseconds: about 3 ms for ML-KEM-768, 4.5 ms for ML-KEM-1024 on one core) and used only
when a caller passes its own ``rng``; the default path stays OpenSSL's. Tests check it
against the NIST ML-KEM-512, -768 and -1024 known-answer vectors (``msg`` → ``ct``/``ss``)
and against OpenSSL's decapsulation.

The three parameter sets of FIPS 203 (Table 2) share one implementation: a
:class:`ParameterSet` says which. PQXDH uses ML-KEM-1024 (the default here); SPQR's braid uses
ML-KEM-768 through :mod:`client.crypto.mlkem_incremental`, which needs K-PKE.Encrypt in two
halves: :func:`encrypt_u` (the ``c1`` part, from the matrix seed ``rho`` alone) and
:func:`encrypt_v` (the ``c2`` part, from the encoded ``t_hat``). :func:`encapsulate_internal`
runs both on one sampled noise vector.

Only encapsulation is here: decapsulation always runs in OpenSSL (through ``cryptography``),
which also means every ciphertext made here is checked by an independent implementation
whenever the peer decapsulates it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MESSAGE_LENGTH",
    "ML_KEM_512",
    "ML_KEM_768",
    "ML_KEM_1024",
    "SEED_LENGTH",
    "ParameterSet",
    "derive_key_and_randomness",
    "encapsulate_internal",
    "encrypt_u",
    "encrypt_v",
    "key_vector_in_range",
]

Q: Final = 3329
N: Final = 256
MESSAGE_LENGTH: Final = 32
"""Length of the encapsulation randomness ``m`` (FIPS 203 Algorithm 20 draws 32 bytes)."""
SEED_LENGTH: Final = 32
"""Length of the matrix seed ``rho`` at the end of an encapsulation key."""


@dataclass(frozen=True, slots=True)
class ParameterSet:
    """One row of FIPS 203 Table 2: the module rank ``k``, the noise widths and compression.

    Every length follows from these (§8): an encapsulation key is ``384·k + 32`` bytes
    (``ByteEncode12(t_hat) ‖ rho``), a ciphertext ``32·(du·k + dv)`` bytes (``c1 ‖ c2``).
    """

    name: str
    k: int
    eta1: int
    eta2: int
    du: int
    dv: int

    @property
    def key_vector_length(self) -> int:
        """Bytes of ``ByteEncode12(t_hat)``, the part of ``ek`` before ``rho``."""
        return 384 * self.k

    @property
    def encapsulation_key_length(self) -> int:
        return self.key_vector_length + SEED_LENGTH

    @property
    def u_length(self) -> int:
        """Bytes of ``c1``, the compressed vector ``u`` (``du`` bits per coefficient)."""
        return 32 * self.du * self.k

    @property
    def v_length(self) -> int:
        """Bytes of ``c2``, the compressed polynomial ``v`` (``dv`` bits per coefficient)."""
        return 32 * self.dv

    @property
    def ciphertext_length(self) -> int:
        return self.u_length + self.v_length


ML_KEM_512: Final = ParameterSet("ML-KEM-512", k=2, eta1=3, eta2=2, du=10, dv=4)
ML_KEM_768: Final = ParameterSet("ML-KEM-768", k=3, eta1=2, eta2=2, du=10, dv=4)
ML_KEM_1024: Final = ParameterSet("ML-KEM-1024", k=4, eta1=2, eta2=2, du=11, dv=5)
ENCAPSULATION_KEY_LENGTH: Final = ML_KEM_1024.encapsulation_key_length
"""1568: the ML-KEM-1024 key PQXDH uses (kept for callers of the one-parameter-set module)."""


def _bit_reverse7(i: int) -> int:
    return int(f"{i:07b}"[::-1], 2)


_ZETAS: Final = tuple(pow(17, _bit_reverse7(i), Q) for i in range(128))
"""``17^BitRev7(i) mod q``: the NTT's twiddle factors (FIPS 203 §4.3, Appendix A)."""
_GAMMAS: Final = tuple(pow(17, 2 * _bit_reverse7(i) + 1, Q) for i in range(128))
"""``17^(2·BitRev7(i)+1) mod q``: the base-case multiplication constants (Algorithm 12)."""
_N_INVERSE: Final = 3303
"""``128^-1 mod q``, the final scaling of the inverse NTT (Algorithm 10)."""

Poly = list[int]


def _ntt(f: Poly) -> Poly:
    """Algorithm 9: the number-theoretic transform of a polynomial."""
    a = list(f)
    i = 1
    length = 128
    while length >= 2:
        for start in range(0, N, 2 * length):
            zeta = _ZETAS[i]
            i += 1
            for j in range(start, start + length):
                t = zeta * a[j + length] % Q
                a[j + length] = (a[j] - t) % Q
                a[j] = (a[j] + t) % Q
        length //= 2
    return a


def _ntt_inverse(f: Poly) -> Poly:
    """Algorithm 10: the inverse transform."""
    a = list(f)
    i = 127
    length = 2
    while length <= 128:
        for start in range(0, N, 2 * length):
            zeta = _ZETAS[i]
            i -= 1
            for j in range(start, start + length):
                t = a[j]
                a[j] = (t + a[j + length]) % Q
                a[j + length] = zeta * (a[j + length] - t) % Q
        length *= 2
    return [x * _N_INVERSE % Q for x in a]


def _multiply_ntts(f: Poly, g: Poly) -> Poly:
    """Algorithms 11-12: product of two polynomials in the NTT domain."""
    h = [0] * N
    for i in range(128):
        a0, a1, b0, b1 = f[2 * i], f[2 * i + 1], g[2 * i], g[2 * i + 1]
        h[2 * i] = (a0 * b0 + a1 * b1 * _GAMMAS[i]) % Q
        h[2 * i + 1] = (a0 * b1 + a1 * b0) % Q
    return h


def _add(f: Poly, g: Poly) -> Poly:
    return [(x + y) % Q for x, y in zip(f, g, strict=True)]


def _sample_ntt(seed: bytes) -> Poly:
    """Algorithm 7: rejection-sample a uniform polynomial (in NTT form) from SHAKE128."""
    want = 840  # 280 triples: enough for 256 coefficients nearly always; grown if not
    while True:
        stream = hashlib.shake_128(seed).digest(want)
        out: Poly = []
        for pos in range(0, want - 2, 3):
            b0, b1, b2 = stream[pos], stream[pos + 1], stream[pos + 2]
            for d in (b0 + 256 * (b1 & 0x0F), (b1 >> 4) + 16 * b2):
                if d < Q and len(out) < N:
                    out.append(d)
            if len(out) == N:
                return out
        want *= 2


def _sample_cbd(data: bytes, eta: int) -> Poly:
    """Algorithm 8: the centred binomial distribution from ``64·eta`` bytes.

    Coefficient ``i`` reads the ``2·eta`` bits from bit ``2·eta·i`` on (least significant
    first, as the standard's ``BytesToBits``): the first ``eta`` are summed into ``x``, the
    next ``eta`` into ``y``. Counting set bits of the little-endian integer does exactly that
    without building the bit array.
    """
    acc = int.from_bytes(data, "little")
    low = (1 << eta) - 1
    out: Poly = []
    for _ in range(N):
        x = (acc & low).bit_count()
        y = ((acc >> eta) & low).bit_count()
        out.append((x - y) % Q)
        acc >>= 2 * eta
    return out


def _prf(eta: int, seed: bytes, counter: int) -> bytes:
    """``PRF_eta(s, b) = SHAKE256(s || b, 64·eta)`` (§4.1)."""
    return hashlib.shake_256(seed + bytes((counter,))).digest(64 * eta)


def _compress(x: int, d: int) -> int:
    """``round(2^d / q · x) mod 2^d``, ties rounded up (§4.2.1)."""
    return ((x << (d + 1)) + Q) // (2 * Q) % (1 << d)


def _byte_encode(values: Poly, d: int) -> bytes:
    """Algorithm 5: pack 256 ``d``-bit integers, least significant bit first."""
    acc = 0
    for i, value in enumerate(values):
        acc |= value << (i * d)
    return acc.to_bytes(32 * d, "little")


def _byte_decode12(data: bytes) -> Poly:
    """Algorithm 6 for ``d = 12``, without the reduction mod q.

    Every use of the coefficients reduces mod q afterwards, so a key with a coefficient
    ``>= q`` (one that fails the §7.2 modulus check, :func:`key_vector_in_range`) still gives
    the result of the standard's reduced decoding.
    """
    acc = int.from_bytes(data, "little")
    return [(acc >> (12 * i)) & 0xFFF for i in range(N)]


def _decode_key_vector(params: ParameterSet, key_vector: bytes) -> list[Poly]:
    return [_byte_decode12(key_vector[384 * i : 384 * (i + 1)]) for i in range(params.k)]


def _byte_class(keep: Callable[[int], bool]) -> bytes:
    return b"[" + b"".join(re.escape(bytes((b,))) for b in range(256) if keep(b)) + b"]"


# Three bytes b0 b1 b2 hold two 12-bit coefficients, least significant first:
# c0 = b0 | (b1 & 0x0F) << 8 and c1 = b1 >> 4 | b2 << 4. With q = 3329 = 0xD01:
#   c0 < q  iff  low(b1) < 0xD, or low(b1) == 0xD and b0 == 0;
#   c1 < q  iff  b2 < 0xD0, or b2 == 0xD0 and high(b1) == 0.
# So a triple is in range iff it matches one of four byte patterns, and a key vector iff it is
# a run of such triples: one regular-expression match in C instead of 768 comparisons in Python
# (about 30 us instead of 150-190 us for ML-KEM-768; tests/crypto check it against the
# coefficient-by-coefficient definition).
_IN_RANGE_TRIPLES: Final = re.compile(
    b"(?:."
    + _byte_class(lambda b: b >> 4 == 0 and b & 0xF < 0xD)
    + b"[\x00-\xd0]|."
    + _byte_class(lambda b: b >> 4 != 0 and b & 0xF < 0xD)
    + b"[\x00-\xcf]|\x00\x0d[\x00-\xd0]|\x00"
    + _byte_class(lambda b: b >> 4 != 0 and b & 0xF == 0xD)
    + b"[\x00-\xcf])*",
    re.DOTALL,
)


def key_vector_in_range(params: ParameterSet, key_vector: bytes) -> bool:
    """FIPS 203 §7.2, modulus check: every 12-bit coefficient of ``ByteEncode12(t_hat)`` is < q.

    Equivalent to the standard's ``ByteEncode12(ByteDecode12(t)) == t``. OpenSSL makes this
    check when it loads a key; code that encapsulates to a key vector it received in pieces
    (SPQR's braid) must make it itself.
    """
    if len(key_vector) != params.key_vector_length:
        return False
    return _IN_RANGE_TRIPLES.fullmatch(key_vector) is not None


def derive_key_and_randomness(m: bytes, ek_hash: bytes) -> tuple[bytes, bytes]:
    """Algorithm 17, line 1: ``(K, r) = G(m ‖ H(ek))`` with ``G = SHA3-512``.

    Args:
        m: the 32 bytes of encapsulation randomness.
        ek_hash: ``H(ek) = SHA3-256(ek)``, the 32-byte hash of the whole encapsulation key.

    Returns:
        ``(K, r)``: the 32-byte shared key and the 32-byte seed of K-PKE.Encrypt's noise.
    """
    g = hashlib.sha3_512(m + ek_hash).digest()
    return g[:32], g[32:]


def _sample_y_hat(params: ParameterSet, r: bytes) -> list[Poly]:
    """Algorithm 14, lines 9-12 and 18: ``y`` from PRF counters ``0 … k-1``, in NTT form."""
    return [_ntt(_sample_cbd(_prf(params.eta1, r, i), params.eta1)) for i in range(params.k)]


def _encrypt_u(params: ParameterSet, rho: bytes, r: bytes, y_hat: list[Poly]) -> bytes:
    """Algorithm 14, lines 3-8, 13-16, 19 and 22: ``c1 = Compress_du(u)``, needing only ``rho``."""
    k = params.k
    # a_hat[i][j] = SampleNTT(rho || j || i)
    a_hat = [[_sample_ntt(rho + bytes((j, i))) for j in range(k)] for i in range(k)]
    e1 = [_sample_cbd(_prf(params.eta2, r, k + i), params.eta2) for i in range(k)]
    u = []
    for i in range(k):
        acc = [0] * N
        for j in range(k):  # (A_hat transposed) o y_hat: row i uses a_hat[j][i]
            acc = _add(acc, _multiply_ntts(a_hat[j][i], y_hat[j]))
        u.append(_add(_ntt_inverse(acc), e1[i]))
    return b"".join(_byte_encode([_compress(x, params.du) for x in p], params.du) for p in u)


def _encrypt_v(
    params: ParameterSet, key_vector: bytes, m: bytes, r: bytes, y_hat: list[Poly]
) -> bytes:
    """Algorithm 14, lines 2, 17, 20-21 and 23: ``c2 = Compress_dv(v)``, needing ``t_hat``."""
    t_hat = _decode_key_vector(params, key_vector)
    e2 = _sample_cbd(_prf(params.eta2, r, 2 * params.k), params.eta2)
    mu = [((m[i // 8] >> (i % 8)) & 1) * ((Q + 1) // 2) for i in range(N)]
    acc = [0] * N
    for j in range(params.k):
        acc = _add(acc, _multiply_ntts(t_hat[j], y_hat[j]))
    v = _add(_add(_ntt_inverse(acc), e2), mu)
    return _byte_encode([_compress(x, params.dv) for x in v], params.dv)


def encrypt_u(params: ParameterSet, rho: bytes, r: bytes) -> bytes:
    """The ``c1`` half of K-PKE.Encrypt: ``Compress_du(NTT^-1(A_hat^T ∘ y_hat) + e1)``.

    ``u`` depends on the key only through the matrix seed ``rho``, which is what lets SPQR send
    it before the encapsulation key vector ``t_hat`` has arrived.

    Args:
        params: the parameter set.
        rho: the 32-byte matrix seed (the last 32 bytes of ``ek``).
        r: the 32-byte noise seed from :func:`derive_key_and_randomness`.
    """
    return _encrypt_u(params, rho, r, _sample_y_hat(params, r))


def encrypt_v(params: ParameterSet, key_vector: bytes, m: bytes, r: bytes) -> bytes:
    """The ``c2`` half of K-PKE.Encrypt: ``Compress_dv(NTT^-1(t_hat^T ∘ y_hat) + e2 + mu)``.

    Args:
        params: the parameter set.
        key_vector: ``ByteEncode12(t_hat)``, the first ``384·k`` bytes of ``ek``; the caller
            has checked it (:func:`key_vector_in_range`, and its hash where that applies).
        m: the 32-byte message (the encapsulation randomness).
        r: the same noise seed that :func:`encrypt_u` was given.
    """
    return _encrypt_v(params, key_vector, m, r, _sample_y_hat(params, r))


def encapsulate_internal(
    ek: bytes, m: bytes, params: ParameterSet = ML_KEM_1024
) -> tuple[bytes, bytes]:
    """FIPS 203 Algorithm 17, ``ML-KEM.Encaps_internal(ek, m)``.

    Args:
        ek: the raw encapsulation key (no libsignal type byte): 1568 bytes for ML-KEM-1024
            (the default, PQXDH's), 1184 for ML-KEM-768, 800 for ML-KEM-512. The §7.2 input
            checks are the caller's (``cryptography`` makes them when it loads the key).
        m: 32 bytes of randomness.
        params: the parameter set.

    Returns:
        ``(K, c)``: the 32-byte ML-KEM shared key and the raw ciphertext.

    Raises:
        ValueError: wrong lengths.
    """
    if len(ek) != params.encapsulation_key_length:
        raise ValueError(
            f"an {params.name} encapsulation key is {params.encapsulation_key_length} bytes,"
            f" got {len(ek)}"
        )
    if len(m) != MESSAGE_LENGTH:
        raise ValueError(f"ML-KEM encapsulation randomness is 32 bytes, got {len(m)}")
    shared, r = derive_key_and_randomness(m, hashlib.sha3_256(ek).digest())
    key_vector, rho = ek[: params.key_vector_length], ek[params.key_vector_length :]
    y_hat = _sample_y_hat(params, r)
    c1 = _encrypt_u(params, rho, r, y_hat)
    c2 = _encrypt_v(params, key_vector, m, r, y_hat)
    return shared, c1 + c2
