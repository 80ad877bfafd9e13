"""ML-KEM-1024 encapsulation with caller-supplied randomness (FIPS 203 §6.2 / §5.2).

Why this exists: ``cryptography``'s ``MLKEM1024PublicKey.encapsulate()`` draws its 32 random
bytes ``m`` from OpenSSL's generator and takes no randomness from the caller. Everything else
in :mod:`client.crypto` takes an ``rng`` parameter, so a seeded run (``parley trace --seed``,
golden transcripts) would still differ in the KEM ciphertext and hence in every key after it.
This module is the deterministic ``ML-KEM.Encaps_internal(ek, m)`` of FIPS 203 (Algorithm 17,
with K-PKE.Encrypt, Algorithm 14), written from the standard in plain Python. It is slow
(tens of milliseconds) and used only when a caller passes its own ``rng``; the default path
stays OpenSSL's. Tests check it against the NIST ML-KEM-1024 known-answer vectors (``msg``
→ ``ct``/``ss``) and against OpenSSL's decapsulation.

Only encapsulation is here: decapsulation always runs in OpenSSL (through ``cryptography``),
which also means every ciphertext made here is checked by an independent implementation
whenever the peer decapsulates it.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["MESSAGE_LENGTH", "encapsulate_internal"]

Q: Final = 3329
N: Final = 256
K: Final = 4
ETA1: Final = 2
ETA2: Final = 2
DU: Final = 11
DV: Final = 5
MESSAGE_LENGTH: Final = 32
"""Length of the encapsulation randomness ``m`` (FIPS 203 Algorithm 20 draws 32 bytes)."""
ENCAPSULATION_KEY_LENGTH: Final = 384 * K + 32


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
    """Algorithm 8: the centred binomial distribution from ``64·eta`` bytes."""
    bits = [(data[i // 8] >> (i % 8)) & 1 for i in range(len(data) * 8)]
    out: Poly = []
    for i in range(N):
        x = sum(bits[2 * i * eta + j] for j in range(eta))
        y = sum(bits[2 * i * eta + eta + j] for j in range(eta))
        out.append((x - y) % Q)
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
    """Algorithm 6 for ``d = 12`` (coefficients reduced mod q, as the standard says)."""
    acc = int.from_bytes(data, "little")
    return [(acc >> (12 * i)) & 0xFFF for i in range(N)]


def _k_pke_encrypt(ek: bytes, m: bytes, r: bytes) -> bytes:
    """Algorithm 14: K-PKE.Encrypt(ek, m, r)."""
    t_hat = [_byte_decode12(ek[384 * i : 384 * (i + 1)]) for i in range(K)]
    rho = ek[384 * K :]
    # a_hat[i][j] = SampleNTT(rho || j || i)
    a_hat = [[_sample_ntt(rho + bytes((j, i))) for j in range(K)] for i in range(K)]
    counter = 0
    y = []
    for _ in range(K):
        y.append(_sample_cbd(_prf(ETA1, r, counter), ETA1))
        counter += 1
    e1 = []
    for _ in range(K):
        e1.append(_sample_cbd(_prf(ETA2, r, counter), ETA2))
        counter += 1
    e2 = _sample_cbd(_prf(ETA2, r, counter), ETA2)
    y_hat = [_ntt(p) for p in y]
    u = []
    for i in range(K):
        acc = [0] * N
        for j in range(K):  # (A_hat transposed) o y_hat: row i uses a_hat[j][i]
            acc = _add(acc, _multiply_ntts(a_hat[j][i], y_hat[j]))
        u.append(_add(_ntt_inverse(acc), e1[i]))
    mu = [((m[i // 8] >> (i % 8)) & 1) * ((Q + 1) // 2) for i in range(N)]
    acc = [0] * N
    for j in range(K):
        acc = _add(acc, _multiply_ntts(t_hat[j], y_hat[j]))
    v = _add(_add(_ntt_inverse(acc), e2), mu)
    c1 = b"".join(_byte_encode([_compress(x, DU) for x in p], DU) for p in u)
    c2 = _byte_encode([_compress(x, DV) for x in v], DV)
    return c1 + c2


def encapsulate_internal(ek: bytes, m: bytes) -> tuple[bytes, bytes]:
    """FIPS 203 Algorithm 17, ``ML-KEM.Encaps_internal(ek, m)`` for ML-KEM-1024.

    Args:
        ek: the raw 1568-byte encapsulation key (no libsignal type byte).
        m: 32 bytes of randomness.

    Returns:
        ``(K, c)``: the 32-byte ML-KEM shared key and the raw 1568-byte ciphertext.

    Raises:
        ValueError: wrong lengths.
    """
    if len(ek) != ENCAPSULATION_KEY_LENGTH:
        raise ValueError(f"an ML-KEM-1024 encapsulation key is 1568 bytes, got {len(ek)}")
    if len(m) != MESSAGE_LENGTH:
        raise ValueError(f"ML-KEM encapsulation randomness is 32 bytes, got {len(m)}")
    g = hashlib.sha3_512(m + hashlib.sha3_256(ek).digest()).digest()
    shared, r = g[:32], g[32:]
    return shared, _k_pke_encrypt(ek, m, r)
