"""PQXDH derivation checked against an independent computation with ``cryptography``'s own
X25519 and HKDF: the IKM layout, salt, info string and 96-byte split."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client.crypto import pqxdh
from client.crypto.errors import InvalidKeyError, InvalidMessageError, InvalidSignatureError
from client.crypto.keys import IdentityKeyPair, KeyPair, PublicKey
from tests.crypto.support import new_party


def _dh(private: KeyPair | IdentityKeyPair, public: PublicKey) -> bytes:
    ours = X25519PrivateKey.from_private_bytes(private.private_key.serialize())
    return ours.exchange(X25519PublicKey.from_public_bytes(public.u))


@pytest.mark.parametrize("with_one_time", [True, False])
def test_initiator_and_responder_match_the_spec(with_one_time: bool) -> None:
    alice_id = IdentityKeyPair.generate()
    bob = new_party(2)
    bundle = bob.bundle(with_one_time=with_one_time)
    result = pqxdh.initiate(bundle, alice_id)
    signed = bob.prekeys.signed[1]
    kem = bob.prekeys.kyber[1].decapsulate(result.kyber_ciphertext)
    ikm = (
        b"\xff" * 32
        + _dh(alice_id, bundle.signed_pre_key)
        + _dh(result.base_key, bundle.identity_key)
        + _dh(result.base_key, bundle.signed_pre_key)
        + (_dh(result.base_key, bundle.pre_key) if bundle.pre_key else b"")
        + kem
    )
    okm = HKDF(
        hashes.SHA256(), 96, bytes(32), b"WhisperText_X25519_SHA-256_CRYSTALS-KYBER-1024"
    ).derive(ikm)
    assert result.secrets.root_key == okm[:32]
    assert result.secrets.chain_key == okm[32:64]
    assert result.secrets.pqr_auth_key == okm[64:]

    theirs = pqxdh.respond(
        bob.identity,
        signed,
        bob.prekeys.one_time.get(1) if with_one_time else None,
        bob.prekeys.kyber[1],
        alice_id.public_key,
        result.base_key.public_key,
        result.kyber_ciphertext,
    )
    assert (theirs.root_key, theirs.chain_key, theirs.pqr_auth_key) == (
        result.secrets.root_key,
        result.secrets.chain_key,
        result.secrets.pqr_auth_key,
    )
    assert "secret" in repr(result) and result.secrets.root_key.hex() not in repr(result)


def test_signatures_are_over_the_serialized_keys() -> None:
    bob = new_party(2)
    bundle = bob.bundle()
    bundle.verify_signatures()
    raw_sig = bob.identity.sign(bundle.signed_pre_key.u)  # over 32 bytes: wrong
    with pytest.raises(InvalidSignatureError, match="signed prekey"):
        dataclasses.replace(bundle, signed_pre_key_signature=raw_sig).verify_signatures()
    with pytest.raises(InvalidSignatureError, match="Kyber"):
        dataclasses.replace(
            bundle, kyber_pre_key_signature=bundle.signed_pre_key_signature
        ).verify_signatures()
    other = IdentityKeyPair.generate()
    with pytest.raises(InvalidSignatureError):
        dataclasses.replace(bundle, identity_key=other.public_key).verify_signatures()


def test_bundle_validation() -> None:
    bob = new_party(2)
    bundle = bob.bundle()
    with pytest.raises(InvalidKeyError):
        dataclasses.replace(bundle, pre_key=None)
    with pytest.raises(InvalidKeyError):
        dataclasses.replace(bundle, signed_pre_key_id=2**32)


def test_responder_rejects_bad_kyber_ciphertext() -> None:
    bob = new_party(2)
    bob.bundle()
    with pytest.raises(InvalidMessageError):
        pqxdh.respond(
            bob.identity,
            bob.prekeys.signed[1],
            None,
            bob.prekeys.kyber[1],
            IdentityKeyPair.generate().public_key,
            KeyPair.generate().public_key,
            b"\x07" + bytes(1568),
        )


def test_libsignal_x3dh_vector_for_bob() -> None:
    """libsignal rust/protocol/tests/ratchet.rs ``test_ratcheting_session_as_bob``: the
    pre-Kyber (X3DH) key schedule with fixed keys and the expected sender chain key. Same IKM
    layout and HKDF as PQXDH, minus the KEM secret and with the label ``WhisperText``."""
    h = bytes.fromhex
    bob_identity = IdentityKeyPair.from_private_bytes(
        h("4875cc69ddf8ea0719ec947d61081135868d5fd801f02c0225e516df2156605e")
    )
    assert bob_identity.public_key.serialize() == h(
        "05f1f43874f6966956c2dd473f8fa15adeb71d1cb991b2341692324cefb1c5e626"
    )
    signed = KeyPair.from_private_bytes(
        h("583900131fb727998b7803fe6ac22cc591f342e4e42a8c8d5d78194209b8d253")
    )
    assert signed.public_key.serialize() == h(
        "05ac248a8f263be6863576eb0362e28c828f0107a3379d34bab1586bf8c770cd67"
    )
    parts = pqxdh.responder_agreements(
        bob_identity,
        signed,
        None,
        PublicKey.deserialize(
            h("05b4a8455660ada65b401007f615e654041746432e3339c6875149bceefcb42b4a")
        ),
        PublicKey.deserialize(
            h("05472d1fb1a9862c3af6beaca8920277e2b26f4a79213ec7c906aeb35e03cf8950")
        ),
    )
    secrets = pqxdh.derive_secrets(parts, pqxdh.X3DH_INFO)
    assert secrets.chain_key.hex() == (
        "9797caca53c989bbe229a40ca7727010eb2604fc14945d77958a0aeda088b44d"
    )
