"""Seeded ML-KEM encapsulation: the NIST known answers of all three parameter sets, OpenSSL's
decapsulation, and reproducibility through ``KyberPublicKey.encapsulate(rng)``."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem

from client.crypto.keys import KyberKeyPair, deterministic_rng, kyber_shared_secret
from client.crypto.mlkem_encaps import (
    _IN_RANGE_TRIPLES,
    ML_KEM_512,
    ML_KEM_768,
    ML_KEM_1024,
    ParameterSet,
    encapsulate_internal,
    key_vector_in_range,
)
from tests.crypto.test_primitives_kat import _mlkem_records


def test_encapsulation_matches_the_nist_known_answers() -> None:
    records = list(_mlkem_records(10))
    assert len(records) == 10
    for r in records:
        shared, ciphertext = encapsulate_internal(bytes.fromhex(r["pk"]), bytes.fromhex(r["msg"]))
        assert ciphertext.hex() == r["ct"]
        assert shared.hex() == r["ss"]


@pytest.mark.parametrize(
    ("params", "level"), [(ML_KEM_512, 512), (ML_KEM_768, 768), (ML_KEM_1024, 1024)]
)
def test_every_parameter_set_matches_the_nist_known_answers(
    params: ParameterSet, level: int
) -> None:
    records = list(_mlkem_records(10, level))
    assert len(records) == 10
    for r in records:
        ek = bytes.fromhex(r["pk"])
        assert len(ek) == params.encapsulation_key_length
        assert len(bytes.fromhex(r["ct"])) == params.ciphertext_length
        assert key_vector_in_range(params, ek[: params.key_vector_length])
        shared, ciphertext = encapsulate_internal(ek, bytes.fromhex(r["msg"]), params)
        assert ciphertext.hex() == r["ct"]
        assert shared.hex() == r["ss"]


def test_openssl_decapsulates_ml_kem_768() -> None:
    for label in (b"one", b"two"):
        key = mlkem.MLKEM768PrivateKey.from_seed_bytes(deterministic_rng(label)(64))
        ek = key.public_key().public_bytes_raw()
        shared, ciphertext = encapsulate_internal(
            ek, deterministic_rng(label + b" m")(32), ML_KEM_768
        )
        assert len(ciphertext) == 1088
        assert key.decapsulate(ciphertext) == shared


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
    with pytest.raises(ValueError, match="ML-KEM-768 encapsulation key is 1184 bytes, got 1568"):
        encapsulate_internal(bytes(1568), bytes(32), ML_KEM_768)


def test_the_modulus_check() -> None:
    assert key_vector_in_range(ML_KEM_768, bytes(1152))
    # 0xD01 = 3329 = q in the first 12-bit coefficient: out of range.
    assert not key_vector_in_range(ML_KEM_768, b"\x01\x0d" + bytes(1150))
    assert key_vector_in_range(ML_KEM_768, b"\x00\x0d" + bytes(1150))  # 3328 = q - 1
    # The last coefficient of the last polynomial: the top 12 bits.
    assert not key_vector_in_range(ML_KEM_768, bytes(1150) + b"\x10\xd0")
    assert not key_vector_in_range(ML_KEM_768, bytes(1151))


def test_the_modulus_check_agrees_with_the_coefficients_for_every_kind_of_triple() -> None:
    """The check matches byte patterns; here it is held to the definition, coefficient by
    coefficient, for every (b1, b2) and the three kinds of b0 that matter (0, 1, 255: only
    whether b0 is zero changes c0's verdict when the low nibble of b1 is 0xD)."""

    def by_definition(triple: bytes) -> bool:
        c0 = triple[0] | (triple[1] & 0x0F) << 8
        c1 = triple[1] >> 4 | triple[2] << 4
        return c0 < 3329 and c1 < 3329

    zeros = bytes(1152 - 3)
    for b1 in range(256):
        for b2 in range(256):
            for b0 in (0, 1, 255):
                triple = bytes((b0, b1, b2))
                expected = by_definition(triple)
                # The pattern of one triple (the check is a run of them)...
                assert (_IN_RANGE_TRIPLES.fullmatch(triple) is not None) is expected, triple.hex()
        # ...and the whole check, with the triple first and last in a key vector.
        for triple in (bytes((0, b1, 0xD0)), bytes((1, b1, 0xCF)), bytes((0, b1, 0xD1))):
            expected = by_definition(triple)
            assert key_vector_in_range(ML_KEM_768, triple + zeros) is expected, triple.hex()
            assert key_vector_in_range(ML_KEM_768, zeros + triple) is expected, triple.hex()
