"""Seeded ML-KEM-1024 encapsulation: the NIST known answers, OpenSSL's decapsulation, and
reproducibility through ``KyberPublicKey.encapsulate(rng)``."""

from __future__ import annotations

import pytest

from client.crypto.keys import KyberKeyPair, deterministic_rng, kyber_shared_secret
from client.crypto.mlkem_encaps import encapsulate_internal
from tests.crypto.test_primitives_kat import _mlkem_records


def test_encapsulation_matches_the_nist_known_answers() -> None:
    records = list(_mlkem_records(10))
    assert len(records) == 10
    for r in records:
        shared, ciphertext = encapsulate_internal(bytes.fromhex(r["pk"]), bytes.fromhex(r["msg"]))
        assert ciphertext.hex() == r["ct"]
        assert shared.hex() == r["ss"]


def test_seeded_encapsulation_is_reproducible_and_openssl_decapsulates_it() -> None:
    for label in (b"one", b"two", b"three"):
        pair = KyberKeyPair.generate(deterministic_rng(label + b" key"))
        first = pair.public_key.encapsulate(deterministic_rng(label))
        again = pair.public_key.encapsulate(deterministic_rng(label))
        assert first == again
        secret, ciphertext = first
        assert ciphertext[0] == 0x08 and len(ciphertext) == 1569
        assert pair.decapsulate(ciphertext) == secret
    other = pair.public_key.encapsulate(deterministic_rng(b"four"))
    assert other[1] != first[1] and other[0] != first[0]
    # The default path (OpenSSL's randomness) still gives fresh ciphertexts.
    secret, ciphertext = pair.public_key.encapsulate()
    assert pair.decapsulate(ciphertext) == secret
    assert pair.public_key.encapsulate()[1] != ciphertext


def test_the_kyber_final_kdf_is_applied_on_the_seeded_path() -> None:
    r = next(iter(_mlkem_records(1)))
    pair = KyberKeyPair(bytes.fromhex(r["d"]) + bytes.fromhex(r["z"]))
    message = bytes.fromhex(r["msg"])
    secret, ciphertext = pair.public_key.encapsulate(lambda n: message[:n])
    assert ciphertext[1:].hex() == r["ct"]
    assert secret == kyber_shared_secret(bytes.fromhex(r["ss"]), ciphertext[1:])


def test_bad_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="1568"):
        encapsulate_internal(bytes(100), bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        encapsulate_internal(bytes(1568), bytes(31))
