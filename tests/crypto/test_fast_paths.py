"""The protocol core's fast paths give exactly the bytes and verdicts of the plain ones.

* XEdDSA: the per-key Edwards conversion (cached on :class:`PublicKey`) plus
  :func:`xeddsa.verify_edwards` against the ``xeddsa`` package's own conversion with the
  signature's sign bit and its Ed25519 verify.
* X25519 through libsodium (``xeddsa`` wheel) against ``cryptography``'s OpenSSL X25519,
  including twist points, non-canonical and low-order inputs.
* libsodium called directly against the ``xeddsa`` wheel's wrappers.
* The fused symmetric-ratchet KDF against HMAC/HKDF written out, and the unchecked AES-CBC
  constructors against ``Cipher(...)``.
* The protobuf decoder's one-byte-varint fast path against the plain decoder.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
import xeddsa as xeddsa_package
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from client.crypto import xeddsa
from client.crypto.errors import InvalidKeyError, InvalidMessageError
from client.crypto.kdf import hkdf_sha256, message_key_material, ratchet_step
from client.crypto.keys import KeyPair, PrivateKey, PublicKey
from client.crypto.protobuf import decode_fields
from client.crypto.ratchet.message_keys import (
    _UNCHECKED,
    MESSAGE_KEYS_INFO,
    aes_cbc_decrypt,
    aes_cbc_encrypt,
)
from tests.crypto.test_xeddsa import (
    LIBSIGNAL_MESSAGE,
    LIBSIGNAL_PUBLIC,
    LIBSIGNAL_SIGNATURE,
    libsignal_style_sign,
)

P = 2**255 - 19


def _reference_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """libsignal-way verification done only with the ``xeddsa`` package's primitives."""
    u = bytearray(public[-32:])
    u[31] &= 0x7F
    if len(signature) != 64 or int.from_bytes(u, "little") % P == P - 1:
        return False
    sign = bool(signature[63] & 0x80)
    sig = signature[:63] + bytes((signature[63] & 0x7F,))
    if sig[63] & 0xE0:
        return False
    try:
        edwards = xeddsa_package.curve25519_pub_to_ed25519_pub(bytes(u), sign)
        return bool(xeddsa_package.ed25519_verify(sig, edwards, message))
    except xeddsa_package.XEdDSAException:
        return False


def _check_all_paths(public: bytes, message: bytes, signature: bytes) -> bool:
    expected = _reference_verify(public, message, signature)
    assert xeddsa.verify(public, message, signature) == expected
    key = PublicKey.deserialize(public)
    # Twice: the second check uses the cached conversion.
    assert key.verify_signature(message, signature) == expected
    assert key.verify_signature(message, signature) == expected
    return expected


def test_edwards_conversion_sign_bit_is_bit_255() -> None:
    for _ in range(50):
        u = KeyPair.generate().public_key.u
        edwards = xeddsa.edwards_public_key(u)
        assert edwards is not None and not edwards[31] & 0x80
        assert edwards == xeddsa_package.curve25519_pub_to_ed25519_pub(u, False)
        with_sign = edwards[:31] + bytes((edwards[31] | 0x80,))
        assert with_sign == xeddsa_package.curve25519_pub_to_ed25519_pub(u, True)


def test_libsignal_vector_and_its_bit_flips_on_all_paths() -> None:
    public = b"\x05" + LIBSIGNAL_PUBLIC
    assert _check_all_paths(public, LIBSIGNAL_MESSAGE, LIBSIGNAL_SIGNATURE)
    key = PublicKey.deserialize(public)
    for i in range(64):
        for bit in (0x01, 0x20, 0x40, 0x80):
            forged = bytearray(LIBSIGNAL_SIGNATURE)
            forged[i] ^= bit
            assert not _check_all_paths(public, LIBSIGNAL_MESSAGE, bytes(forged))
            assert not key.verify_signature(LIBSIGNAL_MESSAGE, bytes(forged))


def test_both_sign_bits_and_tampering_on_all_paths() -> None:
    seen = set()
    for i in range(16):
        pair = KeyPair.from_private_bytes(hashlib.sha256(b"fast %d" % i).digest())
        public = pair.public_key.serialize()
        message = os.urandom(33 if i % 2 else 1569)
        sig = libsignal_style_sign(pair.private_key.serialize(), message, os.urandom(64))
        seen.add(sig[63] & 0x80)
        assert _check_all_paths(public, message, sig)
        assert _check_all_paths(public, message, pair.private_key.sign(message))
        assert not _check_all_paths(public, message + b"x", sig)
        flipped = sig[:63] + bytes((sig[63] ^ 0x80,))
        assert not _check_all_paths(public, message, flipped)
    assert seen == {0, 0x80}


@settings(max_examples=60)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=80), st.binary(min_size=64))
def test_random_keys_and_signatures_agree(u: bytes, message: bytes, signature: bytes) -> None:
    _check_all_paths(b"\x05" + u, message, signature[:64])


def test_key_without_edwards_point_is_rejected_every_time() -> None:
    minus_one = (P - 1).to_bytes(32, "little")
    key = PublicKey(minus_one)
    sig = KeyPair.generate().private_key.sign(b"m")
    assert xeddsa.edwards_public_key(minus_one) is None
    assert not key.verify_signature(b"m", sig)
    assert not key.verify_signature(b"m", sig)
    assert not xeddsa.verify_edwards(b"\x00" * 31, b"m", sig)


_SPECIAL_U = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
    P,
    P + 1,
    P + 2,
    2**255 - 1,
]


def _openssl_agree(secret: bytes, u: bytes) -> bytes | None:
    try:
        return x25519.X25519PrivateKey.from_private_bytes(secret).exchange(
            x25519.X25519PublicKey.from_public_bytes(u)
        )
    except ValueError:
        return None


def test_x25519_matches_openssl_on_special_and_random_points() -> None:
    inputs = [v.to_bytes(32, "little") for v in _SPECIAL_U]
    inputs += [(v | 1 << 255).to_bytes(32, "little") for v in _SPECIAL_U if v < 2**255]
    inputs += [os.urandom(32) for _ in range(100)]  # about half are on the twist
    for u in inputs:
        key = PrivateKey(os.urandom(32))
        expected = _openssl_agree(key.serialize(), u)
        try:
            ours: bytes | None = key.agree(PublicKey(u))
        except InvalidKeyError:
            ours = None
        assert ours == expected


def test_x25519_public_keys_match_openssl() -> None:
    for _ in range(50):
        secret = os.urandom(32)
        openssl = x25519.X25519PrivateKey.from_private_bytes(secret).public_key()
        assert PrivateKey(secret).public_key().u == openssl.public_bytes_raw()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


@given(st.binary(min_size=1, max_size=100), st.one_of(st.none(), st.binary(max_size=40)))
def test_ratchet_step_is_kdf_ck_then_message_keys(chain_key: bytes, salt: bytes | None) -> None:
    seed, next_key, cipher_key, mac_key, iv = ratchet_step(chain_key, salt)
    assert seed == _hmac(chain_key, b"\x01")
    assert next_key == _hmac(chain_key, b"\x02")
    okm = hkdf_sha256(seed, salt, MESSAGE_KEYS_INFO, 80)
    assert (cipher_key, mac_key, iv) == (okm[:32], okm[32:64], okm[64:80])
    assert message_key_material(seed, salt) == (cipher_key, mac_key, iv)


def test_unchecked_aes_constructors_are_in_use_and_match_cipher() -> None:
    assert _UNCHECKED  # on the pinned cryptography; the fallback is the public path
    for length in (0, 1, 15, 16, 17, 256, 1000):
        key, iv, plaintext = os.urandom(32), os.urandom(16), os.urandom(length)
        pad = 16 - length % 16
        enc = Cipher(algorithms.AES256(key), modes.CBC(iv)).encryptor()
        expected = enc.update(plaintext + bytes((pad,)) * pad) + enc.finalize()
        assert aes_cbc_encrypt(key, iv, plaintext) == expected
        assert aes_cbc_decrypt(key, iv, expected) == plaintext


def test_direct_libsodium_calls_match_the_wheel_wrappers() -> None:
    from client.crypto import keys

    for _ in range(30):
        secret = PrivateKey(os.urandom(32)).serialize()
        u = os.urandom(32)
        assert keys._x25519_public_fast(secret) == keys._x25519_public(secret)
        try:
            expected: bytes | None = keys._x25519(secret, u)
        except keys._X25519Error:
            expected = None
        try:
            ours: bytes | None = keys._x25519_fast(secret, u)
        except keys._X25519Error:
            ours = None
        assert ours == expected


def _reference_decode_fields(data: bytes) -> dict[int, int | bytes]:
    """The protobuf decoder before its one-byte-varint fast path (for comparison)."""
    fields: dict[int, int | bytes] = {}
    pos, end = 0, len(data)

    def read() -> int:
        nonlocal pos
        result = shift = 0
        for _ in range(10):
            if pos >= end:
                raise InvalidMessageError("truncated")
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
        raise InvalidMessageError("too long")

    while pos < end:
        key = read()
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise InvalidMessageError("field 0")
        if wire_type == 0:
            fields[number] = read()
        elif wire_type == 2:
            length = read()
            if pos + length > end:
                raise InvalidMessageError("truncated")
            fields[number] = data[pos : pos + length]
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise InvalidMessageError("wire type")
        if pos > end:
            raise InvalidMessageError("truncated")
    return fields


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_decode_fields_fast_path_matches_reference(data: bytes) -> None:
    try:
        expected: dict[int, int | bytes] | None = _reference_decode_fields(data)
    except InvalidMessageError:
        expected = None
    try:
        ours: dict[int, int | bytes] | None = decode_fields(data)
    except InvalidMessageError:
        ours = None
    assert ours == expected


@given(
    st.binary(max_size=80),
    st.one_of(st.none(), st.binary(max_size=80)),
    st.binary(max_size=60),
    st.integers(min_value=1, max_value=400),
)
def test_hkdf_matches_rfc5869_written_out(
    ikm: bytes, salt: bytes | None, info: bytes, length: int
) -> None:
    prk = _hmac(salt or bytes(32), ikm)
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = _hmac(prk, block + info + bytes((counter,)))
        okm += block
        counter += 1
    assert hkdf_sha256(ikm, salt, info, length) == okm[:length]


def test_aes_wrong_key_or_iv_length_is_still_refused() -> None:
    for key, iv in ((bytes(16), bytes(16)), (bytes(31), bytes(16)), (bytes(32), bytes(8))):
        with pytest.raises(ValueError):
            aes_cbc_encrypt(key, iv, b"x")
        with pytest.raises(ValueError):
            aes_cbc_decrypt(key, iv, bytes(16))
