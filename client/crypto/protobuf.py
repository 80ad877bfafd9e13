"""A minimal protobuf (proto2) codec: varints and length-delimited fields only.

The Signal wire messages (libsignal ``proto/wire.proto``) and our saved session state use
just two wire types, so a hand-written codec is smaller than a generated one and keeps
``client.crypto`` free of the protobuf runtime. Encoders write fields in ascending field
number, as prost (libsignal's protobuf library) does, so our bytes equal libsignal's.

Protobuf encoding reference: https://protobuf.dev/programming-guides/encoding/
"""

from __future__ import annotations

from typing import Final

from client.crypto.errors import InvalidMessageError

__all__ = [
    "WIRE_LEN",
    "WIRE_VARINT",
    "bytes_field",
    "decode_fields",
    "decode_with_repeated",
    "uint_field",
    "varint",
]

WIRE_VARINT: Final = 0
WIRE_I64: Final = 1
WIRE_LEN: Final = 2
WIRE_I32: Final = 5
MAX_VARINT_BYTES: Final = 10

_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(128))


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a base-128 varint."""
    if value < 0x80:
        if value < 0:
            raise ValueError("varints here are unsigned")
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# The keys of fields 1-15 (one byte each), made once: saved session state is written for
# every message, field by field.
_VARINT_KEYS: Final = tuple(varint(n << 3 | WIRE_VARINT) for n in range(16))
_LEN_KEYS: Final = tuple(varint(n << 3 | WIRE_LEN) for n in range(16))


def uint_field(number: int, value: int) -> bytes:
    """A varint field (``uint32``/``uint64``/``bool``)."""
    key = _VARINT_KEYS[number] if number < 16 else varint(number << 3 | WIRE_VARINT)
    return key + (_SMALL_VARINTS[value] if 0 <= value < 0x80 else varint(value))


def bytes_field(number: int, value: bytes) -> bytes:
    """A length-delimited field (``bytes``/``string``/embedded message)."""
    key = _LEN_KEYS[number] if number < 16 else varint(number << 3 | WIRE_LEN)
    size = len(value)
    return key + (_SMALL_VARINTS[size] if size < 0x80 else varint(size)) + value


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(data)
    for _ in range(MAX_VARINT_BYTES):
        if pos >= end:
            raise InvalidMessageError("truncated protobuf varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise InvalidMessageError("protobuf varint longer than 10 bytes")


def decode_fields(data: bytes) -> dict[int, int | bytes]:
    """Decode a message into ``{field number: value}``.

    Varint fields become ``int``, length-delimited fields ``bytes``; for a repeated number
    the last value wins (proto2 rule for optional fields). Fixed-width fields are skipped as
    unknown; groups and malformed input raise.

    Raises:
        InvalidMessageError: malformed protobuf.
    """
    return decode_with_repeated(data, 0)[0]


def decode_with_repeated(data: bytes, number: int) -> tuple[dict[int, int | bytes], list[bytes]]:
    """`decode_fields`, and every length-delimited value of field `number` in order (a repeated
    field), in one pass over `data`: saved session state is read once per message, and its
    records hold repeated fields (stored keys, chains) next to singular ones. `number` 0
    collects nothing.

    Raises:
        InvalidMessageError: malformed protobuf.
    """
    fields: dict[int, int | bytes] = {}
    repeated: list[bytes] = []
    pos = 0
    end = len(data)
    while pos < end:
        # One-byte varints (tags, ids, short lengths) inline; longer ones via _read_varint.
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise InvalidMessageError("protobuf field number 0")
        if wire_type == WIRE_VARINT:
            if pos < end and data[pos] < 0x80:
                fields[field] = data[pos]
                pos += 1
            else:
                value, pos = _read_varint(data, pos)
                fields[field] = value
        elif wire_type == WIRE_LEN:
            if pos < end and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise InvalidMessageError("truncated protobuf length-delimited field")
            value_bytes = data[pos : pos + length]
            if field == number:
                repeated.append(value_bytes)
            fields[field] = value_bytes
            pos += length
        elif wire_type == WIRE_I64:
            pos += 8
        elif wire_type == WIRE_I32:
            pos += 4
        else:
            raise InvalidMessageError(f"unsupported protobuf wire type {wire_type}")
        if pos > end:
            raise InvalidMessageError("truncated protobuf fixed-width field")
    return fields, repeated
