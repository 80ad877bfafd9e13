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


def uint_field(number: int, value: int) -> bytes:
    """A varint field (``uint32``/``uint64``/``bool``)."""
    return varint(number << 3 | WIRE_VARINT) + varint(value)


def bytes_field(number: int, value: bytes) -> bytes:
    """A length-delimited field (``bytes``/``string``/embedded message)."""
    return varint(number << 3 | WIRE_LEN) + varint(len(value)) + value


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
    fields: dict[int, int | bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        # One-byte varints (tags, ids, short lengths) inline; longer ones via _read_varint.
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise InvalidMessageError("protobuf field number 0")
        if wire_type == WIRE_VARINT:
            if pos < end and data[pos] < 0x80:
                fields[number] = data[pos]
                pos += 1
            else:
                value, pos = _read_varint(data, pos)
                fields[number] = value
        elif wire_type == WIRE_LEN:
            if pos < end and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise InvalidMessageError("truncated protobuf length-delimited field")
            fields[number] = data[pos : pos + length]
            pos += length
        elif wire_type == WIRE_I64:
            pos += 8
        elif wire_type == WIRE_I32:
            pos += 4
        else:
            raise InvalidMessageError(f"unsupported protobuf wire type {wire_type}")
        if pos > end:
            raise InvalidMessageError("truncated protobuf fixed-width field")
    return fields


def decode_repeated(data: bytes, number: int) -> list[bytes]:
    """All length-delimited values of field ``number`` (for repeated fields in saved state).

    Raises:
        InvalidMessageError: malformed protobuf.
    """
    values: list[bytes] = []
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        num, wire_type = key >> 3, key & 7
        if wire_type == WIRE_VARINT:
            _, pos = _read_varint(data, pos)
        elif wire_type == WIRE_LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise InvalidMessageError("truncated protobuf length-delimited field")
            if num == number:
                values.append(data[pos : pos + length])
            pos += length
        elif wire_type == WIRE_I64:
            pos += 8
        elif wire_type == WIRE_I32:
            pos += 4
        else:
            raise InvalidMessageError(f"unsupported protobuf wire type {wire_type}")
    return values
