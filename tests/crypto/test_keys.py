"""Key encodings and the Kyber-1024 wrapper."""

from __future__ import annotations

import pytest

from client.crypto.errors import InvalidKeyError, InvalidMessageError
from client.crypto.keys import (
    IdentityKeyPair,
    KeyPair,
    KyberKeyPair,
    KyberPublicKey,
    PrivateKey,
    PublicKey,
)


def test_ec_public_key_encoding() -> None:
    pair = KeyPair.generate()
    data = pair.public_key.serialize()
    assert len(data) == 33 and data[0] == 0x05
    assert PublicKey.deserialize(data) == pair.public_key
    assert hash(PublicKey.deserialize(data)) == hash(pair.public_key)
    for bad in (data[:32], data + b"\x00", b"\x08" + data[1:]):
        with pytest.raises(InvalidKeyError):
            PublicKey.deserialize(bad)


def test_private_keys_are_clamped() -> None:
    key = PrivateKey(b"\xff" * 32)
    secret = key.serialize()
    assert secret[0] & 7 == 0 and secret[31] & 0x80 == 0 and secret[31] & 0x40
    with pytest.raises(InvalidKeyError):
        PrivateKey(b"\x00" * 31)


def test_agreement_is_symmetric_and_low_order_points_are_refused() -> None:
    a, b = KeyPair.generate(), IdentityKeyPair.generate()
    assert a.private_key.agree(b.public_key) == b.private_key.agree(a.public_key)
    with pytest.raises(InvalidKeyError):
        a.private_key.agree(PublicKey(bytes(32)))


def test_canonical_encoding() -> None:
    assert PublicKey(bytes(32)).is_canonical()
    assert not PublicKey(b"\xff" * 32).is_canonical()
    p = (2**255 - 19).to_bytes(32, "little")
    assert not PublicKey(p).is_canonical()


def test_kyber_round_trip_and_encodings() -> None:
    pair = KyberKeyPair.generate()
    public = pair.public_key.serialize()
    assert len(public) == 1569 and public[0] == 0x08
    assert KyberPublicKey.deserialize(public) == pair.public_key
    secret, ciphertext = KyberPublicKey.deserialize(public).encapsulate()
    assert len(ciphertext) == 1569 and ciphertext[0] == 0x08 and len(secret) == 32
    assert pair.decapsulate(ciphertext) == secret
    assert KyberKeyPair(pair.serialize_secret()).decapsulate(ciphertext) == secret
    with pytest.raises(InvalidMessageError):
        pair.decapsulate(ciphertext[1:])
    with pytest.raises(InvalidKeyError):
        KyberPublicKey.deserialize(public[:-1])
    with pytest.raises(InvalidKeyError):
        KyberPublicKey.deserialize(b"\x05" + public[1:])
    assert pair.serialize_secret().hex() not in repr(pair)
