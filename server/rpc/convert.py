"""Small proto <-> domain conversions shared by the servicers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from parley.v1 import account_pb2

from server.domain.errors import InvalidArgument
from server.domain.feeds import CaughtUp, KeepAlive
from server.domain.model import AccountKind

R = TypeVar("R")
M = TypeVar("M")


_last_timestamp: tuple[float, timestamp_pb2.Timestamp] = (-1.0, timestamp_pb2.Timestamp())


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """The proto Timestamp of `seconds`. The last one made is kept: a batch's envelopes,
    results and statuses carry one time (the batch's), and a field assignment copies the
    message, so callers never share it. Not thread-safe by design: the event loop's only."""
    global _last_timestamp
    last, ts = _last_timestamp
    if seconds != last:
        ts = timestamp_pb2.Timestamp()
        ts.FromMicroseconds(round(seconds * 1e6))  # floats hold microseconds exactly
        _last_timestamp = (seconds, ts)
    return ts


_KINDS: dict[int, AccountKind] = {
    account_pb2.ACCOUNT_KIND_PERSON: AccountKind.PERSON,
    account_pb2.ACCOUNT_KIND_BUSINESS: AccountKind.BUSINESS,
}


def account_kind_from_proto(value: int) -> AccountKind | None:
    """None for UNSPECIFIED or an unknown number, which the domain refuses with a message."""
    return _KINDS.get(value)


def account_kind_to_proto(kind: AccountKind) -> account_pb2.AccountKind.ValueType:
    return (
        account_pb2.ACCOUNT_KIND_PERSON
        if kind is AccountKind.PERSON
        else (account_pb2.ACCOUNT_KIND_BUSINESS)
    )


# The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31 (seconds since the epoch).
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def optional_seconds(message: Message, field: str) -> float | None:
    """Seconds since the epoch of an optional Timestamp field of `message`, None when unset;
    INVALID_ARGUMENT naming the field when it is outside the Timestamp range."""
    if not message.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, field)
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument(
            f"{field} is not a valid timestamp (seconds from 0001-01-01 to 9999-12-31, nanos "
            "0-999999999); send an RFC 3339 time such as 2026-12-01T00:00:00Z"
        )
    return float(ts.seconds) + ts.nanos / 1e9


async def feed_responses(
    items: AsyncIterator[R | CaughtUp | KeepAlive],
    item: Callable[[R], M],
    caught_up: Callable[[int], M],
    keep_alive: Callable[[], M],
) -> AsyncIterator[M]:
    """A followed feed's items (`server.domain.feeds.follow`) as a stream's responses: each item,
    the caught-up marker and the keep-alives by the stream's own message."""
    async for value in items:
        if isinstance(value, CaughtUp):
            yield caught_up(value.cursor)
        elif isinstance(value, KeepAlive):
            yield keep_alive()
        else:
            yield item(value)
