"""Incremental ML-KEM (client/crypto/mlkem_incremental.py): the NIST ML-KEM-768 known answers
through the two halves, equality with the one-shot encapsulation, OpenSSL's decapsulation of
``ct1 ‖ ct2``, the checks on what the peer sends, and the stored state."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem
from hypothesis import given
from hypothesis import strategies as st

from client.crypto.errors import InvalidKeyError, InvalidMessageError, InvalidStateError
from client.crypto.mlkem_encaps import (
    ML_KEM_512,
    ML_KEM_768,
    ML_KEM_1024,
    encapsulate_internal,
    key_vector_in_range,
)
from client.crypto.mlkem_incremental import (
    HEADER_LENGTH,
    STATE_LENGTH,
    EncapsulationState,
    check_key_vector,
    decapsulate,
    encapsulate1,
    encapsulate2,
    split_encapsulation_key,
)
from tests.crypto.support import deterministic_rng
from tests.crypto.test_primitives_kat import _mlkem_records

KAT_RECORDS = 50


def _key(label: bytes) -> tuple[mlkem.MLKEM768PrivateKey, bytes]:
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(deterministic_rng(label)(64))
    return key, key.public_key().public_bytes_raw()


def _with_coefficient(key_vector: bytes, index: int, value: int) -> bytes:
    """``key_vector`` with its 12-bit coefficient ``index`` (of all 3·256) set to ``value``."""
    acc = int.from_bytes(key_vector, "little")
    acc = (acc & ~(0xFFF << (12 * index))) | (value << (12 * index))
    return acc.to_bytes(len(key_vector), "little")


def test_sizes_are_spqr_v1s() -> None:
    # SPQR incremental_mlkem768.rs: HEADER_SIZE, ENCAPSULATION_KEY_SIZE, CIPHERTEXT1/2_SIZE.
    _, ek = _key(b"sizes")
    header, key_vector = split_encapsulation_key(ek)
    assert (len(header), len(key_vector)) == (HEADER_LENGTH, 1152) == (64, 1152)
    ct1, secret, state = encapsulate1(header, bytes(32))
    assert (len(ct1), len(secret)) == (960, 32)
    assert len(encapsulate2(state, key_vector)) == 128
    assert len(state.serialize()) == STATE_LENGTH == 98


def test_the_nist_ml_kem_768_known_answers_through_both_halves() -> None:
    records = list(_mlkem_records(KAT_RECORDS, 768))
    assert len(records) == KAT_RECORDS
    for r in records:
        ek, sk, ct = bytes.fromhex(r["pk"]), bytes.fromhex(r["sk"]), bytes.fromhex(r["ct"])
        header, key_vector = split_encapsulation_key(ek)
        # The header is rho (the end of ek) and H(ek), which FIPS 203 also stores in dk:
        # dk = dk_PKE (1152) ‖ ek (1184) ‖ H(ek) (32) ‖ z (32).
        assert header == ek[1152:] + sk[2336:2368]
        assert key_vector == ek[:1152]
        ct1, secret, state = encapsulate1(header, bytes.fromhex(r["msg"]))
        assert ct1 == ct[:960]
        assert secret.hex() == r["ss"]
        stored = EncapsulationState.deserialize(state.serialize())
        assert encapsulate2(stored, key_vector) == ct[960:]


@given(seed=st.binary(min_size=64, max_size=64), m=st.binary(min_size=32, max_size=32))
def test_incremental_is_the_one_shot_encapsulation_and_openssl_decapsulates_it(
    seed: bytes, m: bytes
) -> None:
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    ek = key.public_key().public_bytes_raw()
    header, key_vector = split_encapsulation_key(ek)
    ct1, secret, state = encapsulate1(header, m)
    ct2 = encapsulate2(EncapsulationState.deserialize(state.serialize()), key_vector)
    assert (secret, ct1 + ct2) == encapsulate_internal(ek, m, ML_KEM_768)
    assert decapsulate(key, ct1, ct2) == secret == key.decapsulate(ct1 + ct2)


def test_the_other_parameter_sets() -> None:
    """Not SPQR's, but the same code: ML-KEM-1024 through OpenSSL, ML-KEM-512 by its KAT."""
    key = mlkem.MLKEM1024PrivateKey.from_seed_bytes(deterministic_rng(b"1024")(64))
    ek = key.public_key().public_bytes_raw()
    header, key_vector = split_encapsulation_key(ek, ML_KEM_1024)
    assert len(key_vector) == 1536
    ct1, secret, state = encapsulate1(header, bytes(range(32)), ML_KEM_1024)
    stored = EncapsulationState.deserialize(state.serialize())
    assert stored.params == ML_KEM_1024
    ct2 = encapsulate2(stored, key_vector)
    assert (len(ct1), len(ct2)) == (1408, 160)
    assert decapsulate(key, ct1, ct2) == secret
    for r in _mlkem_records(3, 512):
        header, key_vector = split_encapsulation_key(bytes.fromhex(r["pk"]), ML_KEM_512)
        ct1, secret, state = encapsulate1(header, bytes.fromhex(r["msg"]), ML_KEM_512)
        assert (ct1 + encapsulate2(state, key_vector)).hex() == r["ct"]
        assert secret.hex() == r["ss"]


def test_a_key_vector_that_does_not_match_the_header_is_refused() -> None:
    _, ek = _key(b"alice")
    _, other_ek = _key(b"mallory")
    header, key_vector = split_encapsulation_key(ek)
    _, other_vector = split_encapsulation_key(other_ek)
    _, _, state = encapsulate1(header, bytes(32))
    flipped = bytes((key_vector[0] ^ 1,)) + key_vector[1:]
    for bad in (other_vector, flipped, key_vector[:-1] + bytes((key_vector[-1] ^ 0x80,))):
        with pytest.raises(InvalidKeyError, match="does not hash to the H\\(ek\\)"):
            check_key_vector(header, bad)
        with pytest.raises(InvalidKeyError, match="do not send ct2"):
            encapsulate2(state, bad)
    # A header whose hash (or seed) was changed no longer matches the real key vector.
    for bad_header in (
        header[:63] + bytes((header[63] ^ 1,)),
        bytes((header[0] ^ 1,)) + header[1:],
    ):
        _, _, bad_state = encapsulate1(bad_header, bytes(32))
        with pytest.raises(InvalidKeyError, match="does not hash"):
            encapsulate2(bad_state, key_vector)
    check_key_vector(header, key_vector)  # the real one passes


def test_a_coefficient_not_below_q_is_refused_even_with_a_matching_hash() -> None:
    _, ek = _key(b"range")
    key_vector, rho = ek[:1152], ek[1152:]
    for index, value in ((0, 3329), (767, 4095), (300, 3329)):
        bad_vector = _with_coefficient(key_vector, index, value)
        bad_ek = bad_vector + rho
        with pytest.raises(InvalidKeyError, match="not below q"):
            split_encapsulation_key(bad_ek)
        header = rho + hashlib.sha3_256(bad_ek).digest()  # honest hash of a bad key
        with pytest.raises(InvalidKeyError, match="not below q"):
            check_key_vector(header, bad_vector)
        _, _, state = encapsulate1(header, bytes(32))
        with pytest.raises(InvalidKeyError, match="not below q"):
            encapsulate2(state, bad_vector)
    # q - 1 is in range: the check is exact.
    edge = _with_coefficient(key_vector, 5, 3328)
    check_key_vector(rho + hashlib.sha3_256(edge + rho).digest(), edge)


def test_own_keys_skip_the_modulus_check_because_openssl_makes_and_imports_only_keys_in_range() -> (
    None
):
    """`from_keygen=True` (SPQR's key generation) trusts OpenSSL: every key it generates is in
    range, and it refuses to import one that is not, so the check could only fail for bytes
    that never came from it."""
    for seed in (b"own-1", b"own-2", b"own-3"):
        _, ek = _key(seed)
        assert key_vector_in_range(ML_KEM_768, ek[:1152])
        assert split_encapsulation_key(ek, from_keygen=True) == split_encapsulation_key(ek)
    _, ek = _key(b"range")
    bad_ek = _with_coefficient(ek[:1152], 0, 3329) + ek[1152:]
    with pytest.raises(ValueError):
        mlkem.MLKEM768PublicKey.from_public_bytes(bad_ek)
    # The flag is a promise about where the bytes came from, not a check.
    split_encapsulation_key(bad_ek, from_keygen=True)


def test_wrong_lengths_are_refused() -> None:
    _, ek = _key(b"lengths")
    header, key_vector = split_encapsulation_key(ek)
    with pytest.raises(InvalidKeyError, match="ML-KEM-768 encapsulation key is 1184 bytes"):
        split_encapsulation_key(ek[:-1])
    with pytest.raises(InvalidKeyError, match="header is 64 bytes, got 63"):
        encapsulate1(header[:63], bytes(32))
    with pytest.raises(InvalidKeyError, match="header is 64 bytes, got 65"):
        check_key_vector(header + b"\0", key_vector)
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        encapsulate1(header, bytes(31))
    _, _, state = encapsulate1(header, bytes(32))
    with pytest.raises(InvalidKeyError, match="key vector is 1152 bytes, got 1151"):
        encapsulate2(state, key_vector[:-1])
    with pytest.raises(InvalidKeyError, match="key vector is 1152 bytes, got 1536"):
        encapsulate2(state, key_vector + bytes(384))


def test_decapsulation_of_tampered_parts() -> None:
    key, ek = _key(b"tamper")
    header, key_vector = split_encapsulation_key(ek)
    ct1, secret, state = encapsulate1(header, bytes(range(32)))
    ct2 = encapsulate2(state, key_vector)
    # Implicit rejection: no error, another (deterministic) key. SPQR's MAC catches it.
    tampered = decapsulate(key, bytes((ct1[0] ^ 1,)) + ct1[1:], ct2)
    assert tampered != secret
    assert tampered == decapsulate(key, bytes((ct1[0] ^ 1,)) + ct1[1:], ct2)
    assert decapsulate(key, ct1, bytes((ct2[0] ^ 1,)) + ct2[1:]) != secret
    with pytest.raises(InvalidMessageError, match="960 \\+ 128 bytes, got 959 \\+ 128"):
        decapsulate(key, ct1[:-1], ct2)
    with pytest.raises(InvalidMessageError, match="got 960 \\+ 129"):
        decapsulate(key, ct1, ct2 + b"\0")


def test_the_state_round_trips_and_corrupt_states_are_refused() -> None:
    _, ek = _key(b"state")
    header, key_vector = split_encapsulation_key(ek)
    m = bytes(range(100, 132))
    _, _, state = encapsulate1(header, m)
    data = state.serialize()
    assert data == b"\x01\x03" + header + m
    again = EncapsulationState.deserialize(data)
    assert again == state
    assert encapsulate2(again, key_vector) == encapsulate2(state, key_vector)
    assert m.hex() not in repr(state) and "ML-KEM-768" in repr(state)
    for bad, message in (
        (data[:-1], "98 bytes, got 97"),
        (data + b"\0", "98 bytes, got 99"),
        (b"\x02" + data[1:], "unsupported ML-KEM encapsulation state format 2"),
        (b"\x01\x05" + data[2:], "unknown ML-KEM rank 5"),
    ):
        with pytest.raises(InvalidStateError, match=message):
            EncapsulationState.deserialize(bad)
    with pytest.raises(InvalidStateError):
        EncapsulationState(ML_KEM_768, header[:32], m)
