"""Stand-ins for the incremental ML-KEM and the erasure code, so that the Braid's state
machine (client/crypto/spqr_braid.py) can be driven now, before the real ones exist.

Both keep the properties the Braid relies on, with none of the mathematics:

* :class:`FakeKem`: the header commits to the encapsulation key exactly as ML-KEM's does
  (``rho || SHA3-256(EK || rho)``), ``encaps1`` needs only the header, ``encaps2`` needs the
  full key, and a wrong ``ct1``/``ct2`` gives a different secret (as ML-KEM's implicit
  rejection does), so tampering shows up as a MAC failure. It offers no secrecy at all.
* :class:`Gf256Code`: a systematic maximum-distance-separable code over GF(2^8) (one
  Reed-Solomon code per byte position), so any ``len / 32`` distinct chunks rebuild the
  payload, as the real GF(2^16) code does. Chunk indices are limited to 0..255.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from client.crypto.spqr_braid import CT1_SIZE, CT2_SIZE, EK_SIZE, KemKeys

__all__ = ["FakeKem", "Gf256Code"]


def _shake(label: bytes, data: bytes, n: int) -> bytes:
    return hashlib.shake_256(label + data).digest(n)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


class FakeKem:
    """A KEM-shaped function with ML-KEM-768's sizes and data flow, and no security."""

    def generate(self, seed: bytes) -> KemKeys:
        assert len(seed) == 64
        ek = _shake(b"ek", seed, EK_SIZE)
        rho = _shake(b"rho", seed, 32)
        header = rho + hashlib.sha3_256(ek + rho).digest()
        return KemKeys(header, ek, seed)

    def encaps1(self, header: bytes, randomness: bytes) -> tuple[bytes, bytes, bytes]:
        assert len(header) == 64 and len(randomness) == 32
        h = header[32:]
        ct1 = _xor(randomness, _shake(b"pad", h, 32)) + _shake(b"ct1", randomness, CT1_SIZE - 32)
        shared = hashlib.sha3_256(b"ss" + randomness + h).digest()
        return ct1, randomness + h, shared

    def encaps2(self, state: bytes, ek: bytes) -> bytes:
        return _shake(b"ct2", ek + state, CT2_SIZE)

    def decaps(self, dk: bytes, ct1: bytes, ct2: bytes) -> bytes:
        keys = self.generate(dk)
        h = keys.header[32:]
        m = _xor(ct1[:32], _shake(b"pad", h, 32))
        if ct1[32:] != _shake(b"ct1", m, CT1_SIZE - 32) or ct2 != self.encaps2(m + h, keys.ek):
            return hashlib.sha3_256(b"reject" + dk + ct1 + ct2).digest()
        return hashlib.sha3_256(b"ss" + m + h).digest()

    def ek_matches_header(self, header: bytes, ek: bytes) -> bool:
        return hashlib.sha3_256(ek + header[:32]).digest() == header[32:]


def _gf_tables() -> tuple[list[int], list[int]]:
    exp = [0] * 512
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)  # multiply by the generator 3
        x &= 0xFF
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


_EXP, _LOG = _gf_tables()


def _mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    return 0 if a == 0 else _EXP[_LOG[a] - _LOG[b] + 255]


def _lagrange(points: Mapping[int, bytes], x: int) -> bytes:
    """Evaluate, byte position by byte position, the polynomial through ``points`` at x."""
    out = bytearray(32)
    for xi, yi in points.items():
        num = den = 1
        for xj in points:
            if xj != xi:
                num = _mul(num, x ^ xj)
                den = _mul(den, xi ^ xj)
        weight = _div(num, den)
        for k in range(32):
            out[k] ^= _mul(yi[k], weight)
    return bytes(out)


class Gf256Code:
    """Systematic Reed-Solomon over GF(2^8): chunk i < n is block i of the payload."""

    def chunk(self, payload: bytes, index: int) -> bytes:
        n = len(payload) // 32
        assert 0 <= index < 256, "the test code has 256 points"
        if index < n:
            return payload[32 * index : 32 * index + 32]
        return _lagrange({i: payload[32 * i : 32 * i + 32] for i in range(n)}, index)

    def decode(self, length: int, chunks: Mapping[int, bytes]) -> bytes:
        n = length // 32
        assert len(chunks) == n
        return b"".join(chunks[i] if i in chunks else _lagrange(chunks, i) for i in range(n))
