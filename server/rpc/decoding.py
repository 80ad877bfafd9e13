"""Turn request bytes into request messages, refusing what Parley cannot take, at the edge.

The interceptor decodes every request itself (gRPC hands it the raw bytes), so that:
1. Bytes that are not the RPC's request message are INVALID_ARGUMENT, with a message that
   names the expected type, never UNKNOWN, and are logged as one short line (no traceback; at
   most one line per `_LOG_EVERY` seconds, so garbage cannot flood the log).
2. Every 64-bit unsigned integer, at any depth of the request, fits in 63 bits. Parley's ids
   and timestamps are 63-bit (SQLite integers are signed 64-bit), so a larger value cannot name
   anything that exists; refusing it here, generically, means no RPC — present or future —
   can reach the store with one. The check is compiled once per message type and visits only
   the fields that can hold such a value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from server.domain.errors import InvalidArgument

log = logging.getLogger("parley.rpc")

INT63_MAX = 2**63 - 1
_LOG_EVERY = 10.0
_WIDE = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)

Check = Callable[[Message, str], None]


class RequestDecoder:
    """Decodes one RPC's request messages and checks their integer ranges."""

    def __init__(
        self, method: str, deserialize: Callable[[bytes], Any], undecodable: UndecodableLog
    ) -> None:
        self.method = method
        self._log = undecodable
        self._deserialize = deserialize
        message_type: type[Message] = deserialize.__self__  # type: ignore[attr-defined]
        self.type_name = message_type.DESCRIPTOR.full_name
        self._check = range_check(cast(Descriptor, message_type.DESCRIPTOR))

    def __call__(self, raw: bytes) -> Any:
        try:
            message = self._deserialize(raw)
        except DecodeError:
            self._log(self.method, len(raw))
            raise InvalidArgument(
                f"the request is not a valid {self.type_name} message ({len(raw)} bytes that "
                f"do not decode); send the request type that the .proto defines for "
                f"{self.method}"
            ) from None
        if self._check is not None:
            self._check(message, "")
        return message


_checks: dict[str, Check | None] = {}


def range_check(descriptor: Descriptor) -> Check | None:
    """A function that raises InvalidArgument for any 64-bit unsigned value above 2^63-1
    reachable from `descriptor`, or None when no such field is reachable."""
    if descriptor.full_name in _checks:
        return _checks[descriptor.full_name]
    _checks[descriptor.full_name] = None  # recursion guard: a cycle adds nothing new
    parts: list[Check] = []
    for f in descriptor.fields:
        if f.type in _WIDE:
            parts.append(_wide_field(f))
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            inner = range_check(_message_type(f))
            if inner is not None:
                parts.append(_message_field(f, inner))
    check = _all(parts) if parts else None
    _checks[descriptor.full_name] = check
    return check


def _message_type(f: FieldDescriptor) -> Descriptor:
    assert f.message_type is not None, f.full_name
    return f.message_type


def _all(parts: list[Check]) -> Check:
    def check(message: Message, prefix: str) -> None:
        for part in parts:
            part(message, prefix)

    return check


def _too_large(path: str, value: int) -> InvalidArgument:
    return InvalidArgument(
        f"{path} is {value}, above {INT63_MAX} (2^63-1), the largest value Parley accepts: "
        "its ids and timestamps fit in 63 bits, so no larger value can refer to anything"
    )


def _wide_field(f: FieldDescriptor) -> Check:
    name = f.name
    if f.is_repeated:

        def repeated(message: Message, prefix: str) -> None:
            for i, value in enumerate(getattr(message, name)):
                if value > INT63_MAX:
                    raise _too_large(f"{prefix}{name}[{i}]", value)

        return repeated

    def single(message: Message, prefix: str) -> None:
        value = getattr(message, name)
        if value > INT63_MAX:
            raise _too_large(f"{prefix}{name}", value)

    return single


def _message_field(f: FieldDescriptor, inner: Check) -> Check:
    name = f.name
    entry = _message_type(f)
    if entry.GetOptions().map_entry:
        # A map arrives as a dict: check its values (an entry's own check would see an entry
        # message, which a map never hands out). Map keys cannot be 64-bit wide here: no map
        # in Parley's protos has integer keys, and keys are not ids.
        value_field = entry.fields_by_name["value"]
        value_check = (
            range_check(_message_type(value_field))
            if value_field.type == FieldDescriptor.TYPE_MESSAGE
            else None
        )

        def mapping(message: Message, prefix: str) -> None:
            for key, value in getattr(message, name).items():
                path = f"{prefix}{name}[{key!r}]"
                if value_check is not None:
                    value_check(value, path + ".")
                elif value > INT63_MAX:
                    raise _too_large(path, value)

        return mapping
    if f.is_repeated:

        def repeated(message: Message, prefix: str) -> None:
            for i, item in enumerate(getattr(message, name)):
                inner(item, f"{prefix}{name}[{i}].")

        return repeated

    def single(message: Message, prefix: str) -> None:
        if message.HasField(name):
            inner(getattr(message, name), f"{prefix}{name}.")

    return single


class UndecodableLog:
    """Logs refused undecodable requests as one INFO line per `_LOG_EVERY` seconds at most
    (with a count of the ones left out), so garbage cannot flood the log (rule 1)."""

    def __init__(self) -> None:
        self._last = -_LOG_EVERY
        self._suppressed = 0

    def __call__(self, method: str, size: int) -> None:
        now = time.monotonic()
        if now - self._last < _LOG_EVERY:
            self._suppressed += 1
            return
        log.info(
            "refused an undecodable request to %s (%d bytes)",
            method,
            size,
            extra={"method": method, "bytes": size, "suppressed_since_last": self._suppressed},
        )
        self._last, self._suppressed = now, 0
