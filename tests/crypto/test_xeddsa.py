"""XEdDSA: we sign the spec way and verify the libsignal way.

A small pure-Python Ed25519 model (test-only, slow, obviously correct) produces signatures
exactly as libsignal's ``calculate_signature`` does: no negation of the private scalar and the
Edwards sign bit stored in bit 7 of byte 63. Roughly half of those have sign bit 1; the
spec-strict verifier rejects them and ours must accept them.
"""

from __future__ import annotations

import hashlib
import os

from hypothesis import given
from hypothesis import strategies as st

from client.crypto import xeddsa
from client.crypto.keys import KeyPair, PrivateKey

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, -1, P) % P
BASE_Y = 4 * pow(5, -1, P) % P


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if x % 2 != sign:
        x = P - x
    return x


BASE = (_recover_x(BASE_Y, 0), BASE_Y)


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P
    return x3, y3


def _mul(k: int, point: tuple[int, int]) -> tuple[int, int]:
    result = (0, 1)
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def _encode(point: tuple[int, int]) -> bytes:
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


def libsignal_style_sign(private: bytes, message: bytes, random: bytes) -> bytes:
    """libsignal ``PrivateKey::calculate_signature``: a unclamped-as-given, no negation."""
    a = int.from_bytes(private, "little")
    public = _encode(_mul(a, BASE))
    prefix = b"\xfe" + b"\xff" * 31
    r = int.from_bytes(hashlib.sha512(prefix + private + message + random).digest(), "little") % L
    cap_r = _encode(_mul(r, BASE))
    h = int.from_bytes(hashlib.sha512(cap_r + public + message).digest(), "little") % L
    s = (h * a + r) % L
    sig = bytearray(cap_r + s.to_bytes(32, "little"))
    sig[63] = (sig[63] & 0x7F) | (public[31] & 0x80)
    return bytes(sig)


# libsignal's own test vector (rust/protocol/src/curve/curve25519.rs, test_signature): its
# byte 63 is 0x88, i.e. a signature with Edwards sign bit 1.
LIBSIGNAL_PUBLIC = bytes.fromhex("ab7e717d4a163b7d9a1d8071dfe9dcf8cdcd1cea3339b6356be84d887e322c64")
LIBSIGNAL_MESSAGE = bytes.fromhex(
    "05edce9d9c415ca78cb7252e72c2c4a554d3eb29485a0e1d503118d1a82d99fb4a"
)
LIBSIGNAL_SIGNATURE = bytes.fromhex(
    "5de88ca9a89b4a115da79109c67c9c7464a3e4180274f1cb8c63c2984e286dfb"
    "ede82deb9dcd9fae0bfbb821569b3d9001bd8130cd11d486cef047bd60b86e88"
)


def test_libsignal_vector_verifies() -> None:
    assert LIBSIGNAL_SIGNATURE[63] & 0x80
    assert xeddsa.verify(b"\x05" + LIBSIGNAL_PUBLIC, LIBSIGNAL_MESSAGE, LIBSIGNAL_SIGNATURE)
    assert xeddsa.verify(LIBSIGNAL_PUBLIC, LIBSIGNAL_MESSAGE, LIBSIGNAL_SIGNATURE)
    # A spec-strict verifier rejects it: the reason verification must be libsignal's way.
    assert not xeddsa.verify_strict(
        b"\x05" + LIBSIGNAL_PUBLIC, LIBSIGNAL_MESSAGE, LIBSIGNAL_SIGNATURE
    )


def test_libsignal_vector_any_flipped_bit_is_rejected() -> None:
    for i in range(64):
        for bit in (0x01, 0x80):
            forged = bytearray(LIBSIGNAL_SIGNATURE)
            forged[i] ^= bit
            assert not xeddsa.verify(b"\x05" + LIBSIGNAL_PUBLIC, LIBSIGNAL_MESSAGE, bytes(forged))


def test_libsignal_style_signatures_with_both_sign_bits_verify() -> None:
    seen = set()
    for i in range(12):
        pair = KeyPair.from_private_bytes(hashlib.sha256(b"key %d" % i).digest())
        message = pair.public_key.serialize()
        sig = libsignal_style_sign(pair.private_key.serialize(), message, bytes(64))
        seen.add(sig[63] & 0x80)
        assert xeddsa.verify(pair.public_key.serialize(), message, sig)
        assert xeddsa.verify_strict(pair.public_key.serialize(), message, sig) == (
            sig[63] & 0x80 == 0
        )
    assert seen == {0, 0x80}


def test_our_signatures_are_spec_signatures() -> None:
    private = hashlib.sha256(b"fixed").digest()
    sig = xeddsa.sign(private, b"message", bytes(64))
    assert len(sig) == 64
    assert sig[63] & 0x80 == 0
    # Deterministic given the randomness, different with other randomness.
    assert sig == xeddsa.sign(private, b"message", bytes(64))
    assert sig != xeddsa.sign(private, b"message", b"\x01" * 64)


@given(
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=200),
    st.binary(min_size=64, max_size=64),
)
def test_strict_and_libsignal_paths_agree_on_our_signatures(
    private: bytes, message: bytes, random: bytes
) -> None:
    key = PrivateKey(private)
    public = key.public_key().serialize()
    sig = xeddsa.sign(private, message, random)
    assert xeddsa.verify(public, message, sig)
    assert xeddsa.verify_strict(public, message, sig)
    assert not xeddsa.verify(public, message + b"x", sig)


def test_malformed_inputs_return_false() -> None:
    pair = KeyPair.generate()
    message = b"m"
    sig = pair.private_key.sign(message)
    public = pair.public_key.serialize()
    assert not xeddsa.verify(public, message, sig[:63])
    assert not xeddsa.verify(public, message, sig + b"\x00")
    assert not xeddsa.verify(b"\x06" + public[1:], message, sig)
    assert not xeddsa.verify(public[:20], message, sig)
    # u = -1 has no Edwards point.
    minus_one = ((2**255 - 19) - 1).to_bytes(32, "little")
    assert not xeddsa.verify(minus_one, message, sig)
    # s must be below 2^253 after the sign bit is cleared.
    high_s = bytearray(sig)
    high_s[63] |= 0x60
    assert not xeddsa.verify(public, message, bytes(high_s))


def test_random_signatures_verify() -> None:
    for _ in range(20):
        pair = KeyPair.generate()
        message = os.urandom(33)
        assert pair.public_key.verify_signature(message, pair.private_key.sign(message))
