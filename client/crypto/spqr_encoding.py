"""SPQR's erasure code: a large value sent 32 bytes at a time, rebuilt from any sufficient set.

Why this exists: SPQR (libsignal's sparse post-quantum ratchet, the "ML-KEM Braid") sends
values of up to 1152 bytes, but each Signal message carries at most one 32-byte chunk of
one of them. Messages get lost and reordered, so the sender does not repeat the value: it
sends chunk 0, 1, 2, ... of a Reed-Solomon code, and the receiver rebuilds the value from
*any* ``ceil(len / 32)`` distinct chunks. Parley must produce and accept exactly libsignal's
chunk bytes, so this module follows SPQR v1 (``src/encoding/gf.rs`` and
``src/encoding/polynomial.rs`` of signalapp/SparsePostQuantumRatchet, read for behaviour
only; written here from the mathematics).

The code, as the reference defines it:

* Field: GF(2^16) with the reduction polynomial ``x^16 + x^12 + x^3 + x + 1`` (``0x1100B``);
  a 16-bit integer ``v`` is the field element whose coefficients are the bits of ``v``.
* The value (even length ``L``) is read as ``L / 2`` big-endian 16-bit elements
  ``m_0, m_1, ...``. Element ``m_k`` goes to *lane* ``k mod 16`` at position
  ``k div 16``, so lane ``i`` holds the points ``(t, m_{16t+i})`` for ``t = 0, 1, ...``.
* Lane ``i``'s polynomial ``P_i`` is the one of lowest degree through its points
  (degree < its point count; the zero polynomial for an empty lane).
* Chunk ``x`` (``0 <= x <= 65535``) is ``BE16(P_0(x)) || ... || BE16(P_15(x))``: 32 bytes.
  For ``x`` below a lane's point count that is the lane's own element, so when ``32``
  divides ``L`` (all of SPQR's values) chunk ``x < L / 32`` is the value's bytes
  ``[32x, 32x + 32)`` and every later chunk is parity.
* On the wire a chunk is ``varint(x) || 32 bytes`` (SPQR ``v1/chunked/states/serialize.rs``).

Every lane polynomial has degree below ``ceil(L / 32)``, so any ``ceil(L / 32)`` distinct
chunk indices determine the value; fewer do not.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from client.crypto.errors import InvalidMessageError, InvalidStateError
from client.crypto.protobuf import varint

__all__ = [
    "CHUNK_DATA_SIZE",
    "CT1_SIZE",
    "CT2_VALUE_SIZE",
    "EK_VECTOR_SIZE",
    "FIELD_POLYNOMIAL",
    "HEADER_VALUE_SIZE",
    "LANES",
    "MAX_CHUNK_INDEX",
    "MAX_VALUE_SIZE",
    "SPQR_VALUE_SIZES",
    "Chunk",
    "ChunkDecoder",
    "ChunkEncoder",
    "chunks_needed",
    "gf_inv",
    "gf_mul",
    "parse_chunk",
]

FIELD_POLYNOMIAL: Final = 0x1100B
"""``x^16 + x^12 + x^3 + x + 1``, SPQR ``gf.rs`` ``POLY``; primitive, so ``x`` generates."""
_ORDER: Final = 0xFFFF
"""Size of the multiplicative group of GF(2^16)."""
CHUNK_DATA_SIZE: Final = 32
"""Bytes of value data in one chunk (SPQR ``Chunk.data``)."""
LANES: Final = CHUNK_DATA_SIZE // 2
"""Field elements per chunk: one per lane polynomial (SPQR ``NUM_POLYS``)."""
MAX_CHUNK_INDEX: Final = 0xFFFF
"""Chunk indices are 16-bit: the evaluation point is the index read as a field element, and
SPQR refuses a message whose chunk index is above this."""
MAX_VALUE_SIZE: Final = 2048
"""Largest value we encode or decode (64 chunks). SPQR's largest is 1152 bytes; the bound
keeps a corrupt session record from making us allocate or interpolate without limit."""
_MAX_VARINT_BYTES: Final = 10
"""SPQR reads a chunk index as a varint of at most 10 bytes, then range-checks it."""
_U64: Final = (1 << 64) - 1
"""SPQR's varint reader keeps 64 bits; bits shifted beyond them in a 10th byte are lost."""

HEADER_VALUE_SIZE: Final = 64 + 32
"""The ML-KEM-768 encapsulation-key header (64 bytes) followed by its 32-byte MAC: 3 chunks."""
EK_VECTOR_SIZE: Final = 1152
"""The ML-KEM-768 encapsulation-key vector: 36 chunks."""
CT1_SIZE: Final = 960
"""The first ML-KEM-768 ciphertext part: 30 chunks."""
CT2_VALUE_SIZE: Final = 128 + 32
"""The second ciphertext part (128 bytes) followed by its 32-byte MAC: 5 chunks."""
SPQR_VALUE_SIZES: Final = (HEADER_VALUE_SIZE, EK_VECTOR_SIZE, CT1_SIZE, CT2_VALUE_SIZE)
"""Every value SPQR v1 sends in chunks."""

_STATE_VERSION: Final = 1
"""First byte of a serialized encoder or decoder (our session-record format, not SPQR's)."""


def _build_tables() -> tuple[list[int], list[int]]:
    """Exponent and logarithm tables of GF(2^16) for the generator ``x`` (the integer 2).

    Multiplying by ``x`` is a shift and, when bit 16 comes out, a reduction by the field
    polynomial. ``exp`` is doubled so that ``exp[log a + log b]`` needs no modulo.
    """
    exp = [0] * (2 * _ORDER)
    log = [0] * (_ORDER + 1)
    value = 1
    for power in range(_ORDER):
        exp[power] = value
        exp[power + _ORDER] = value
        log[value] = power
        value <<= 1
        if value & 0x10000:
            value ^= FIELD_POLYNOMIAL
    if value != 1 or len(set(exp[:_ORDER])) != _ORDER:
        raise AssertionError("the SPQR field polynomial is not primitive")  # pragma: no cover
    return exp, log


_EXP, _LOG = _build_tables()


def gf_mul(a: int, b: int) -> int:
    """Product of two GF(2^16) elements (16-bit integers)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    """Multiplicative inverse of a non-zero GF(2^16) element.

    Raises:
        ZeroDivisionError: ``a`` is zero.
    """
    if a == 0:
        raise ZeroDivisionError("zero has no inverse in GF(2^16)")
    return _EXP[_ORDER - _LOG[a]]


def chunks_needed(length: int) -> int:
    """How many distinct chunks rebuild a value of ``length`` bytes: ``ceil(length / 32)``."""
    return -(-length // CHUNK_DATA_SIZE)


def _check_length(length: int) -> None:
    if length <= 0 or length % 2 or length > MAX_VALUE_SIZE:
        raise ValueError(
            f"an SPQR chunked value is an even number of bytes from 2 to {MAX_VALUE_SIZE}, "
            f"got {length}"
        )


def _check_index(index: int) -> None:
    if not 0 <= index <= MAX_CHUNK_INDEX:
        raise ValueError(f"a chunk index is 0..{MAX_CHUNK_INDEX}, got {index}")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk: its index (the evaluation point) and 32 bytes of lane values."""

    index: int
    data: bytes

    def __post_init__(self) -> None:
        _check_index(self.index)
        if len(self.data) != CHUNK_DATA_SIZE:
            raise ValueError(f"chunk data is {CHUNK_DATA_SIZE} bytes, got {len(self.data)}")

    def to_bytes(self) -> bytes:
        """Wire form inside an SPQR message: ``varint(index) || data``."""
        return varint(self.index) + self.data


def parse_chunk(data: bytes, pos: int = 0) -> tuple[Chunk, int]:
    """Read a chunk written by :meth:`Chunk.to_bytes` at ``pos``; return it and the end offset.

    Accepts what SPQR accepts: a varint of up to 10 bytes (not necessarily minimal) whose
    value, truncated to 64 bits, is at most :data:`MAX_CHUNK_INDEX`, then 32 bytes. Bytes
    after them are left to the caller (SPQR ignores trailing data in its messages).

    Raises:
        InvalidMessageError: truncated chunk, over-long varint or index above 65535.
    """
    index = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos >= len(data):
            raise InvalidMessageError("truncated SPQR chunk index")
        byte = data[pos]
        pos += 1
        index = (index | (byte & 0x7F) << (7 * i)) & _U64  # SPQR reads into a u64
        if not byte & 0x80:
            break
    else:
        raise InvalidMessageError("SPQR chunk index varint is longer than 10 bytes")
    if index > MAX_CHUNK_INDEX:
        raise InvalidMessageError(f"SPQR chunk index {index} is above {MAX_CHUNK_INDEX}")
    end = pos + CHUNK_DATA_SIZE
    if end > len(data):
        raise InvalidMessageError("truncated SPQR chunk data")
    return Chunk(index, bytes(data[pos:end])), end


def _lane_sizes(length: int) -> list[int]:
    """Points per lane: element ``k`` of the value belongs to lane ``k mod 16``."""
    elements = length // 2
    return [(elements - lane + LANES - 1) // LANES for lane in range(LANES)]


@functools.lru_cache(maxsize=64)
def _log_denominators(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``log prod_{k != j} (x_j - x_k)`` for each point: the Lagrange basis denominators.

    Cached (a few recent point sets: peers choose the decoder's) because the encoder always
    interpolates through ``0, 1, ..., n - 1`` and the decoder reuses its set for every lane.
    """
    out = []
    for j, xj in enumerate(xs):
        total = 0
        for k, xk in enumerate(xs):
            if k != j:
                total += _LOG[xj ^ xk]
        out.append(total % _ORDER)
    return tuple(out)


def _log_weights(xs: tuple[int, ...], x: int) -> list[int]:
    """Logs of the Lagrange weights ``L_j(x)`` for the points ``xs``, at an ``x`` not in them.

    ``P(x) = sum_j y_j L_j(x)`` with ``L_j(x) = prod_{k != j} (x - x_k) / (x_j - x_k)``; in
    characteristic 2 subtraction is XOR. The numerator is ``N(x) / (x - x_j)`` with
    ``N(x) = prod_k (x - x_k)``, so every weight costs O(1) after an O(n) product.
    """
    log_n = 0
    for xk in xs:
        log_n += _LOG[x ^ xk]
    denominators = _log_denominators(xs)
    return [(log_n - _LOG[x ^ xj] - dj) % _ORDER for xj, dj in zip(xs, denominators, strict=True)]


def _evaluate(log_weights: list[int], ys: list[int]) -> int:
    """``sum_j y_j L_j(x)`` given the weights' logarithms."""
    acc = 0
    for lw, y in zip(log_weights, ys, strict=True):
        if y:
            acc ^= _EXP[lw + _LOG[y]]
    return acc


def _elements(data: bytes) -> list[int]:
    """The big-endian 16-bit field elements of ``data`` (even length). ``struct`` does it in
    C: a key vector's 576 elements took ~90 us one ``int.from_bytes`` at a time, and an
    encoder is built for every message that carries a chunk of a payload not cached."""
    return list(struct.unpack(f">{len(data) // 2}H", data))


def _pack(elements: Sequence[int]) -> bytes:
    return struct.pack(f">{len(elements)}H", *elements)


class ChunkEncoder:
    """Produces the chunks of one value, in SPQR's order or at any index.

    The state is the value and the index of the next chunk to send; parity chunks are
    recomputed from the value (a few hundred field multiplications each), so nothing else
    needs saving in the session record.
    """

    __slots__ = ("_lanes", "_next_index", "_value")

    def __init__(self, value: bytes, next_index: int = 0) -> None:
        """Encode ``value`` (even length, 2..:data:`MAX_VALUE_SIZE` bytes).

        Raises:
            ValueError: bad length or ``next_index``.
        """
        _check_length(len(value))
        _check_index(next_index)
        self._value = bytes(value)
        self._next_index = next_index
        elements = _elements(self._value)
        self._lanes = [elements[lane::LANES] for lane in range(LANES)]

    @property
    def value(self) -> bytes:
        """The value being sent."""
        return self._value

    @property
    def next_index(self) -> int:
        """Index of the chunk :meth:`next_chunk` returns next."""
        return self._next_index

    @property
    def chunks_needed(self) -> int:
        """How many distinct chunks the receiver needs."""
        return chunks_needed(len(self._value))

    def chunk(self, index: int) -> Chunk:
        """Chunk ``index`` (0..65535), byte for byte as SPQR's encoder makes it.

        Raises:
            ValueError: index out of range.
        """
        _check_index(index)
        out: list[int] = []
        weights: dict[int, list[int]] = {}
        for ys in self._lanes:
            n = len(ys)
            if index < n:
                out.append(ys[index])
                continue
            if n not in weights:
                weights[n] = _log_weights(tuple(range(n)), index)
            out.append(_evaluate(weights[n], ys))
        return Chunk(index, _pack(out))

    def next_chunk(self) -> Chunk:
        """The next chunk in sending order: 0, 1, 2, ... (data first, then parity).

        After index 65535 the sequence starts again at 0, as SPQR's 16-bit index does; by
        then the receiver has long had enough chunks.
        """
        chunk = self.chunk(self._next_index)
        self._next_index = (self._next_index + 1) & MAX_CHUNK_INDEX
        return chunk

    def to_bytes(self) -> bytes:
        """``0x01 || BE16(next index) || value`` for the session record."""
        return bytes((_STATE_VERSION,)) + self._next_index.to_bytes(2, "big") + self._value

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkEncoder:
        """Inverse of :meth:`to_bytes`.

        Raises:
            InvalidStateError: unknown version or a value of impossible length.
        """
        if len(data) < 3 or data[0] != _STATE_VERSION:
            raise InvalidStateError("corrupt SPQR chunk encoder state: bad version or length")
        try:
            return cls(data[3:], int.from_bytes(data[1:3], "big"))
        except ValueError as exc:
            raise InvalidStateError(f"corrupt SPQR chunk encoder state: {exc}") from exc


class ChunkDecoder:
    """Collects the chunks of one value of known length and rebuilds it.

    Chunks may come in any order, repeated, with gaps, data or parity. The value is rebuilt
    as soon as :func:`chunks_needed` distinct indices are in; until then at most that many
    chunks are kept (34 bytes each in the saved state). Input that cannot all come from one
    value is refused and leaves the decoder unchanged, so the caller can reject just that
    message.
    """

    __slots__ = ("_chunks", "_encoder", "_length")

    def __init__(self, length: int) -> None:
        """A decoder for a value of ``length`` bytes (even, 2..:data:`MAX_VALUE_SIZE`).

        Raises:
            ValueError: bad length.
        """
        _check_length(length)
        self._length = length
        self._chunks: dict[int, bytes] = {}
        self._encoder: ChunkEncoder | None = None

    @property
    def length(self) -> int:
        """Length in bytes of the value being received."""
        return self._length

    @property
    def chunks_needed(self) -> int:
        """Distinct chunks needed to rebuild the value."""
        return chunks_needed(self._length)

    @property
    def chunks_received(self) -> int:
        """Distinct chunks kept so far (never more than :attr:`chunks_needed`)."""
        return len(self._chunks)

    @property
    def value(self) -> bytes | None:
        """The rebuilt value, or ``None`` while chunks are missing."""
        return None if self._encoder is None else self._encoder.value

    def add_chunk(self, chunk: Chunk) -> bytes | None:
        """Take one chunk; return the value once it can be rebuilt, else ``None``.

        A repeat of a chunk already held is ignored. Once the value is known, every further
        chunk is checked against it.

        Raises:
            InvalidMessageError: the chunk contradicts chunks already received (same index,
                other bytes; or not on the polynomials they determine). The decoder is left
                as it was.
        """
        if self._encoder is not None:
            if self._encoder.chunk(chunk.index).data != chunk.data:
                raise InvalidMessageError(
                    f"SPQR chunk {chunk.index} does not belong to the value already rebuilt "
                    "from earlier chunks"
                )
            return self._encoder.value
        held = self._chunks.get(chunk.index)
        if held is not None:
            if held != chunk.data:
                raise InvalidMessageError(
                    f"SPQR chunk {chunk.index} arrived twice with different contents"
                )
            return None
        if len(self._chunks) + 1 < self.chunks_needed:
            self._chunks[chunk.index] = chunk.data
            return None
        candidate = dict(self._chunks)
        candidate[chunk.index] = chunk.data
        value = _decode(self._length, candidate)  # raises before any change
        self._chunks = candidate
        self._encoder = ChunkEncoder(value)
        return value

    def to_bytes(self) -> bytes:
        """``0x01 || BE16(length) || (BE16(index) || 32 bytes)*``, indices ascending."""
        parts = [bytes((_STATE_VERSION,)), self._length.to_bytes(2, "big")]
        for index in sorted(self._chunks):
            parts.append(index.to_bytes(2, "big"))
            parts.append(self._chunks[index])
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkDecoder:
        """Inverse of :meth:`to_bytes`; a complete state is decoded again (and so checked).

        Raises:
            InvalidStateError: unknown version, bad length, unsorted or too many chunks, or
                chunks that do not fit one value.
        """
        record = 2 + CHUNK_DATA_SIZE
        if len(data) < 3 or data[0] != _STATE_VERSION or (len(data) - 3) % record:
            raise InvalidStateError("corrupt SPQR chunk decoder state: bad version or length")
        try:
            decoder = cls(int.from_bytes(data[1:3], "big"))
        except ValueError as exc:
            raise InvalidStateError(f"corrupt SPQR chunk decoder state: {exc}") from exc
        count = (len(data) - 3) // record
        if count > decoder.chunks_needed:
            raise InvalidStateError("corrupt SPQR chunk decoder state: more chunks than needed")
        previous = -1
        for pos in range(3, len(data), record):
            index = int.from_bytes(data[pos : pos + 2], "big")
            if index <= previous:
                raise InvalidStateError("corrupt SPQR chunk decoder state: indices not ascending")
            previous = index
            try:
                decoder.add_chunk(Chunk(index, data[pos + 2 : pos + record]))
            except InvalidMessageError as exc:
                raise InvalidStateError(f"corrupt SPQR chunk decoder state: {exc}") from exc
        return decoder


def _decode(length: int, chunks: dict[int, bytes]) -> bytes:
    """Rebuild the value from ``chunks_needed(length)`` distinct chunks.

    Each lane needs as many points as it has elements; a lane with fewer elements than
    chunks received (when ``L / 2`` is not a multiple of 16) gets its extra points checked
    against the polynomial the others determine, and an empty lane must be all zeros.

    Raises:
        InvalidMessageError: the chunks do not fit one value.
    """
    xs_all = sorted(chunks)
    columns = {x: _elements(chunks[x]) for x in xs_all}
    weights: dict[tuple[int, int], list[int]] = {}  # (points used, x): shared by all lanes
    lanes: list[list[int]] = []
    for lane, n in enumerate(_lane_sizes(length)):
        xs = tuple(xs_all[:n])  # the lowest indices, as SPQR's decoder picks them
        ys = [columns[x][lane] for x in xs]
        values = []
        for t in range(n):
            if t in columns:
                values.append(columns[t][lane])
                continue
            if (n, t) not in weights:
                weights[n, t] = _log_weights(xs, t)
            values.append(_evaluate(weights[n, t], ys))
        for x in xs_all[n:]:
            if (n, x) not in weights:
                weights[n, x] = _log_weights(xs, x)
            if columns[x][lane] != _evaluate(weights[n, x], ys):
                raise InvalidMessageError(
                    f"SPQR chunk {x} is inconsistent with the other chunks of the value"
                )
        lanes.append(values)
    elements = [lanes[k % LANES][k // LANES] for k in range(length // 2)]
    return _pack(elements)
