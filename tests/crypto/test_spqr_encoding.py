"""SPQR's erasure code (client/crypto/spqr_encoding.py): reference chunks, any-subset decoding,
saved decoder state, refused input.

The reference (signalapp/SparsePostQuantumRatchet) ships no chunk vectors, so
``fixtures/spqr_encoding_vectors.json`` holds chunks computed by running its own encoder
(``src/encoding/polynomial.rs``) on the inputs the file describes.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.crypto import spqr_encoding as enc
from client.crypto.errors import InvalidMessageError, InvalidStateError
from client.crypto.spqr_encoding import Chunk, ChunkDecoder, ChunkEncoder

FIXTURES = Path(__file__).parent / "fixtures"


def _clmul_reduce(a: int, b: int) -> int:
    """Schoolbook GF(2^16) product: carry-less multiply, then reduce by 0x1100B."""
    product = 0
    for bit in range(16):
        if b >> bit & 1:
            product ^= a << bit
    for bit in range(31, 15, -1):
        if product >> bit & 1:
            product ^= 0x1100B << (bit - 16)
    return product


def _value(length: int) -> bytes:
    return hashlib.shake_128(b"parley spqr erasure code %d" % length).digest(length)


# --- the field -----------------------------------------------------------------------------


def test_field_polynomial() -> None:
    # x^15 * x = x^16 = x^12 + x^3 + x + 1
    assert enc.gf_mul(0x8000, 2) == 0x100B
    assert enc.gf_mul(0x1234, 1) == 0x1234
    assert enc.gf_mul(0, 0xFFFF) == 0
    with pytest.raises(ZeroDivisionError):
        enc.gf_inv(0)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
@settings(max_examples=300)
def test_field_tables_match_schoolbook(a: int, b: int) -> None:
    assert enc.gf_mul(a, b) == _clmul_reduce(a, b)
    if a:
        assert enc.gf_mul(a, enc.gf_inv(a)) == 1


# --- the encoder against the reference -----------------------------------------------------


def _vectors() -> list[tuple[int, int, str]]:
    doc = json.loads((FIXTURES / "spqr_encoding_vectors.json").read_text())
    return [
        (v["length"], int(index), data)
        for v in doc["vectors"]
        for index, data in v["chunks"].items()
    ]


@pytest.mark.parametrize(("length", "index", "data"), _vectors())
def test_reference_chunks(length: int, index: int, data: str) -> None:
    assert ChunkEncoder(_value(length)).chunk(index).data.hex() == data


@pytest.mark.parametrize("length", enc.SPQR_VALUE_SIZES)
def test_spqr_values_are_systematic(length: int) -> None:
    value = _value(length)
    encoder = ChunkEncoder(value)
    assert encoder.chunks_needed == {96: 3, 1152: 36, 960: 30, 160: 5}[length]
    sent = [encoder.next_chunk() for _ in range(encoder.chunks_needed + 2)]
    assert [c.index for c in sent] == list(range(encoder.chunks_needed + 2))
    assert b"".join(c.data for c in sent[: encoder.chunks_needed]) == value


def test_reference_small_example() -> None:
    # SPQR polynomial.rs test "encode_and_decode_small": 10 bytes back from chunks 1 and 2.
    encoder = ChunkEncoder(b"abcdefghij")
    decoder = ChunkDecoder(10)
    assert decoder.add_chunk(encoder.chunk(1)) == b"abcdefghij"  # one chunk suffices
    assert decoder.add_chunk(encoder.chunk(2)) == b"abcdefghij"


def test_wire_form() -> None:
    chunk = ChunkEncoder(_value(96)).chunk(300)
    wire = chunk.to_bytes()
    assert wire[:2] == b"\xac\x02" and len(wire) == 34
    assert enc.parse_chunk(b"\x05" + wire + b"tail", 1) == (chunk, 35)
    assert Chunk(0, bytes(32)).to_bytes() == bytes(33)
    assert Chunk(65535, bytes(32)).to_bytes()[:3] == b"\xff\xff\x03"
    # Non-minimal varints are read as SPQR reads them.
    assert enc.parse_chunk(b"\x80\x00" + bytes(32))[0].index == 0
    # ... including a 10th byte whose bits above 2^64 fall off.
    assert enc.parse_chunk(b"\x85" + b"\x80" * 8 + b"\x02" + bytes(32))[0].index == 5


def test_next_chunk_wraps_like_the_reference() -> None:
    encoder = ChunkEncoder(_value(96), next_index=65535)
    assert encoder.next_chunk().index == 65535
    assert encoder.next_chunk().index == 0
    assert encoder.next_index == 1


def test_encoder_state_round_trip() -> None:
    encoder = ChunkEncoder(_value(160))
    for _ in range(7):
        encoder.next_chunk()
    restored = ChunkEncoder.from_bytes(encoder.to_bytes())
    assert restored.next_index == 7 and restored.value == encoder.value
    assert restored.next_chunk() == encoder.next_chunk()


# --- decoding from any sufficient subset ---------------------------------------------------

_LENGTHS = st.one_of(
    st.sampled_from(enc.SPQR_VALUE_SIZES), st.integers(1, 160).map(lambda n: 2 * n)
)


@st.composite
def _delivery(draw: st.DrawFn) -> tuple[bytes, list[int], int]:
    """A value, the chunk indices delivered (shuffled, repeated, gappy) and how many first
    indices are needed to decode (the position of the ``needed``-th distinct one)."""
    length = draw(_LENGTHS)
    value = draw(st.binary(min_size=length, max_size=length))
    needed = enc.chunks_needed(length)
    parity_only = draw(st.booleans())
    low = needed if parity_only else 0
    pool = st.one_of(st.integers(low, low + 3 * needed), st.integers(low, enc.MAX_CHUNK_INDEX))
    distinct = draw(st.lists(pool, min_size=needed, max_size=needed + 3, unique=True))
    rnd = draw(st.randoms(use_true_random=False))
    indices = distinct + [rnd.choice(distinct) for _ in range(draw(st.integers(0, 4)))]
    rnd.shuffle(indices)
    seen: set[int] = set()
    for position, index in enumerate(indices):
        seen.add(index)
        if len(seen) == needed:
            return value, indices, position + 1
    raise AssertionError("unreachable")


@given(_delivery())
@settings(max_examples=60)
def test_any_sufficient_subset_decodes(delivery: tuple[bytes, list[int], int]) -> None:
    value, indices, enough = delivery
    encoder = ChunkEncoder(value)
    decoder = ChunkDecoder(len(value))
    for position, index in enumerate(indices, 1):
        result = decoder.add_chunk(encoder.chunk(index))
        if position < enough:
            assert result is None and decoder.value is None, "decoded from too few chunks"
            # The saved state carries on where it was.
            decoder = ChunkDecoder.from_bytes(decoder.to_bytes())
        else:
            assert result == value and decoder.value == value
    assert decoder.chunks_received == decoder.chunks_needed
    assert ChunkDecoder.from_bytes(decoder.to_bytes()).value == value


@pytest.mark.parametrize("length", enc.SPQR_VALUE_SIZES)
def test_fewer_than_needed_never_decode(length: int) -> None:
    encoder = ChunkEncoder(_value(length))
    decoder = ChunkDecoder(length)
    rnd = random.Random(length)
    indices = rnd.sample(range(2 * encoder.chunks_needed), encoder.chunks_needed - 1)
    for index in indices * 2:
        assert decoder.add_chunk(encoder.chunk(index)) is None
    assert decoder.chunks_received == encoder.chunks_needed - 1


# --- refused input -------------------------------------------------------------------------


def _flip(chunk: Chunk, byte: int = 0) -> Chunk:
    data = bytearray(chunk.data)
    data[byte] ^= 1
    return Chunk(chunk.index, bytes(data))


def test_conflicting_duplicate_refused_and_state_kept() -> None:
    encoder = ChunkEncoder(_value(96))
    decoder = ChunkDecoder(96)
    decoder.add_chunk(encoder.chunk(7))
    before = decoder.to_bytes()
    with pytest.raises(InvalidMessageError, match="chunk 7 arrived twice"):
        decoder.add_chunk(_flip(encoder.chunk(7)))
    assert decoder.to_bytes() == before
    assert decoder.add_chunk(encoder.chunk(7)) is None  # an identical repeat is fine


def test_chunk_after_completion_is_checked() -> None:
    encoder = ChunkEncoder(_value(160))
    decoder = ChunkDecoder(160)
    for index in range(10, 15):
        decoder.add_chunk(encoder.chunk(index))
    assert decoder.add_chunk(encoder.chunk(2)) == encoder.value
    with pytest.raises(InvalidMessageError, match="does not belong"):
        decoder.add_chunk(_flip(encoder.chunk(99)))


@pytest.mark.parametrize(("length", "byte"), [(34, 10), (10, 20)])
def test_inconsistent_lanes_refused(length: int, byte: int) -> None:
    # 34 bytes: lanes 1..15 hold one element, so two chunks over-determine them.
    # 10 bytes: lanes 5..15 are empty and always zero.
    encoder = ChunkEncoder(_value(length))
    decoder = ChunkDecoder(length)
    for index in range(enc.chunks_needed(length) - 1):
        decoder.add_chunk(encoder.chunk(index))
    before = decoder.to_bytes()
    with pytest.raises(InvalidMessageError, match="inconsistent"):
        decoder.add_chunk(_flip(encoder.chunk(40), byte))
    assert decoder.to_bytes() == before and decoder.value is None


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"", "truncated SPQR chunk index"),
        (b"\x80", "truncated SPQR chunk index"),
        (b"\x80" * 10 + b"\x00", "longer than 10 bytes"),
        (b"\x80\x80\x04" + bytes(32), "65536 is above 65535"),
        (b"\x01" + bytes(31), "truncated SPQR chunk data"),
    ],
)
def test_bad_wire_chunks(wire: bytes, message: str) -> None:
    with pytest.raises(InvalidMessageError, match=message):
        enc.parse_chunk(wire)


def test_bad_arguments() -> None:
    for length in (0, 3, enc.MAX_VALUE_SIZE + 2):
        with pytest.raises(ValueError, match="even number of bytes"):
            ChunkDecoder(length)
        with pytest.raises(ValueError, match="even number of bytes"):
            ChunkEncoder(bytes(length))
    with pytest.raises(ValueError, match="chunk index"):
        Chunk(65536, bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        Chunk(0, bytes(31))
    with pytest.raises(ValueError, match="chunk index"):
        ChunkEncoder(bytes(2)).chunk(-1)


def test_corrupt_states_refused() -> None:
    encoder = ChunkEncoder(_value(96))
    decoder = ChunkDecoder(96)
    for index in (5, 1):
        decoder.add_chunk(encoder.chunk(index))
    good = decoder.to_bytes()
    record = good[3:]
    first, second = record[:34], record[34:]
    corrupt = {
        "version": b"\x02" + good[1:],
        "length": good[:1] + (97).to_bytes(2, "big") + record,
        "truncated": good[:-1],
        "order": good[:3] + second + first,
        "repeat": good[:3] + first + first,
        "too many": good + b"\x00\x09" + bytes(32) + b"\x00\x0a" + bytes(32),
        # Exactly enough chunks always fit some value; uneven lanes (34 bytes) over-determine.
        "inconsistent": b"\x01\x00\x22\x00\x00"
        + bytes(32)
        + b"\x00\x01"
        + bytes(10)
        + b"\x01"
        + bytes(21),
    }
    for name, state in corrupt.items():
        with pytest.raises(InvalidStateError, match="corrupt SPQR chunk decoder state"):
            ChunkDecoder.from_bytes(state)
            pytest.fail(f"accepted a state with a bad {name}")
    for state in (b"", b"\x01\x00", b"\x02\x00\x00\x00\x00", b"\x01\x00\x00\x00"):
        with pytest.raises(InvalidStateError, match="corrupt SPQR chunk encoder state"):
            ChunkEncoder.from_bytes(state)
