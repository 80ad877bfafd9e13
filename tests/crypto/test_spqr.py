"""The SPQR first-epoch receive key (tests/crypto/spqr_first_epoch.py), recomputed with
``cryptography``'s HKDF from the derivation documented there."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client.crypto.errors import InvalidMessageError
from tests.crypto import spqr_first_epoch as spqr


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, bytes(32), info).derive(ikm)


def _expected(auth_key: bytes, a2b: bool, index: int) -> bytes:
    gen = _hkdf(auth_key, b"Signal PQ Ratchet V1 Chain  Start", 96)
    nxt = gen[32:64] if a2b else gen[64:96]
    key = b""
    for n in range(1, index + 1):
        out = _hkdf(nxt, n.to_bytes(4, "big") + b"Signal PQ Ratchet V1 Chain Next", 64)
        nxt, key = out[:32], out[32:]
    return key


def test_header_parsing() -> None:
    assert spqr.parse_header(b"\x01\x01\x00\x01\x00") == (1, 1, 0)
    assert spqr.parse_header(b"\x01\x01\xac\x02\x01") == (1, 1, 300)
    with pytest.raises(InvalidMessageError):
        spqr.parse_header(b"\x01\x81")


@pytest.mark.parametrize("a2b", [True, False])
def test_first_epoch_keys(a2b: bool) -> None:
    auth = bytes(range(32))
    for index in (1, 2, 5):
        header = bytes([1, 1, index, 1, 0])
        assert spqr.message_key_salt(header, auth, a2b) == _expected(auth, a2b, index)
    assert spqr.message_key_salt(b"", auth, a2b) is None
    assert spqr.message_key_salt(b"\x01\x01\x00\x01\x00", auth, a2b) is None  # index 0
    assert spqr.message_key_salt(b"\x02\x01\x01\x01", auth, a2b) is None  # unknown version
    with pytest.raises(InvalidMessageError, match="epoch"):
        spqr.message_key_salt(b"\x01\x02\x01\x01\x00", auth, a2b)
