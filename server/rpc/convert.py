"""Small proto <-> domain conversions shared by the servicers."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from parley.v1 import account_pb2

from server.domain.model import AccountKind


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(round(seconds * 1e6))  # floats hold microseconds exactly
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
