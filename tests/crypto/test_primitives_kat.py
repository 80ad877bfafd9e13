"""Known-answer tests for the primitives, from the ``cryptography-vectors`` package.

RFC 7748 X25519, RFC 5869 HKDF-SHA256, RFC 4231 HMAC-SHA256, NIST CAVS AES-256-CBC, the
ML-KEM-1024 KAT (with the round-3 Kyber final KDF on top) and RFC 8032 Ed25519 vectors run
through our libsignal-style XEdDSA verifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import cryptography_vectors
import pytest
import xeddsa as xeddsa_lib
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from client.crypto import xeddsa
from client.crypto.kdf import hkdf_sha256, hkdf_sha256_96, hmac_sha256
from client.crypto.keys import KyberKeyPair, PrivateKey, PublicKey, kyber_shared_secret
from client.crypto.ratchet.message_keys import aes_cbc_decrypt, aes_cbc_encrypt

VECTORS = Path(cryptography_vectors.__file__).parent


def _records(relative: str, first_key: str) -> Iterator[dict[str, str]]:
    """Parse ``KEY = value`` files into one dict per record (a record starts at first_key)."""
    record: dict[str, str] = {}
    with (VECTORS / relative).open() as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or line.startswith("["):
                continue
            if "=" not in line:
                continue
            key, _, value = (part.strip() for part in line.partition("="))
            if key == first_key and record:
                yield record
                record = {}
            record[key] = value
    if record:
        yield record


def test_x25519_rfc7748() -> None:
    records = list(_records("asymmetric/X25519/rfc7748.txt", "COUNT"))
    assert len(records) >= 3
    for r in records:
        # RFC scalars are unclamped; X25519 clamps, and so does PrivateKey: same result.
        private = PrivateKey(bytes.fromhex(r["INPUT_SCALAR"]))
        shared = private.agree(PublicKey(bytes.fromhex(r["INPUT_U"])))
        assert shared.hex() == r["OUTPUT_U"]


def test_hkdf_sha256_rfc5869() -> None:
    records = list(_records("KDF/rfc-5869-HKDF-SHA256.txt", "COUNT"))
    assert len(records) == 3
    for r in records:
        salt = bytes.fromhex(r["salt"]) if r["salt"] else None
        okm = hkdf_sha256(bytes.fromhex(r["IKM"]), salt, bytes.fromhex(r["info"]), int(r["L"]))
        assert okm.hex() == r["OKM"]
        assert hmac_sha256(salt or bytes(32), bytes.fromhex(r["IKM"])).hex() == r["PRK"]
        # The unrolled 96-byte variant used for message keys agrees with the general one.
        full = hkdf_sha256(bytes.fromhex(r["IKM"]), salt, bytes.fromhex(r["info"]), 96)
        assert hkdf_sha256_96(bytes.fromhex(r["IKM"]), salt, bytes.fromhex(r["info"])) == full


def test_hmac_sha256_rfc4231() -> None:
    records = list(_records("HMAC/rfc-4231-sha256.txt", "Len"))
    assert len(records) >= 6
    for r in records:
        mac = hmac_sha256(bytes.fromhex(r["Key"]), bytes.fromhex(r["Msg"]))
        # RFC 4231 test case 5 is truncated to 128 bits; compare the given length.
        assert mac.hex()[: len(r["MD"])] == r["MD"]


@pytest.mark.parametrize(
    "name", ["CBCMMT256.rsp", "CBCGFSbox256.rsp", "CBCKeySbox256.rsp", "CBCVarKey256.rsp"]
)
def test_aes256_cbc_nist(name: str) -> None:
    records = [r for r in _records(f"ciphers/AES/CBC/{name}", "COUNT") if "PLAINTEXT" in r]
    assert records
    for r in records:
        key, iv = bytes.fromhex(r["KEY"]), bytes.fromhex(r["IV"])
        plaintext, ciphertext = bytes.fromhex(r["PLAINTEXT"]), bytes.fromhex(r["CIPHERTEXT"])
        ours = aes_cbc_encrypt(key, iv, plaintext)
        # PKCS#7 adds one block to block-aligned input; CBC leaves the prefix unchanged.
        assert ours[: len(ciphertext)] == ciphertext
        assert len(ours) == len(ciphertext) + 16
        assert aes_cbc_decrypt(key, iv, ours) == plaintext


def test_aes_fast_path_matches_public_cipher_api() -> None:
    key, iv = bytes(range(32)), bytes(range(16))
    for size in (0, 1, 15, 16, 17, 255, 256):
        plaintext = bytes(size)
        pad = 16 - size % 16
        enc = Cipher(algorithms.AES256(key), modes.CBC(iv)).encryptor()
        expected = enc.update(plaintext + bytes([pad]) * pad) + enc.finalize()
        assert aes_cbc_encrypt(key, iv, plaintext) == expected


def _mlkem_records(limit: int, level: int = 1024) -> Iterator[dict[str, str]]:
    """The first ``limit`` NIST records of ML-KEM-``level`` (512, 768 or 1024)."""
    for i, r in enumerate(_records(f"asymmetric/MLKEM/kat_MLKEM_{level}.rsp", "count")):
        if i >= limit:
            return
        yield r


def test_mlkem1024_kat_and_kyber_final_kdf() -> None:
    for r in _mlkem_records(5):
        pair = KyberKeyPair(bytes.fromhex(r["d"]) + bytes.fromhex(r["z"]))
        assert pair.public_key.serialize() == b"\x08" + bytes.fromhex(r["pk"])
        ct = bytes.fromhex(r["ct"])
        # ML-KEM gives K; libsignal's Kyber-1024 hashes it with the ciphertext.
        expected = hashlib.shake_256(bytes.fromhex(r["ss"]) + hashlib.sha3_256(ct).digest()).digest(
            32
        )
        assert pair.decapsulate(b"\x08" + ct) == expected
        assert kyber_shared_secret(bytes.fromhex(r["ss"]), ct) == expected
        # Implicit rejection: a modified ciphertext gives a different, deterministic key.
        ct_n = bytes.fromhex(r["ct_n"])
        assert pair.decapsulate(b"\x08" + ct_n) == kyber_shared_secret(
            bytes.fromhex(r["ss_n"]), ct_n
        )


def test_ed25519_rfc8032_vectors_verify_as_libsignal_xeddsa() -> None:
    """An Ed25519 signature is a libsignal-style XEdDSA signature once the public key's
    sign bit is folded into byte 63, so sign.input exercises both sign-bit values."""
    lines = (VECTORS / "asymmetric/Ed25519/sign.input").read_text().splitlines()[:64]
    sign_bits = set()
    for line in lines:
        _seed, pub_hex, msg_hex, sig_msg = line.split(":")[:4]
        pub = bytes.fromhex(pub_hex)
        msg = bytes.fromhex(msg_hex)
        sig = bytes.fromhex(sig_msg)[:64]
        u = xeddsa_lib.ed25519_pub_to_curve25519_pub(pub)
        sign_bit = pub[31] & 0x80
        sign_bits.add(sign_bit)
        folded = sig[:63] + bytes([sig[63] | sign_bit])
        assert xeddsa.verify(b"\x05" + u, msg, folded)
        assert xeddsa.verify_strict(b"\x05" + u, msg, folded) == (sign_bit == 0)
        if msg:
            assert not xeddsa.verify(b"\x05" + u, msg[:-1] + bytes([msg[-1] ^ 1]), folded)
    assert sign_bits == {0, 0x80}
