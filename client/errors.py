"""Typed errors of the Python client: what the server refused, as exceptions an app can catch.

The server answers every refused call with a gRPC status code, a message written for people,
and sometimes machine-readable details in a ``google.rpc.Status`` (``RetryInfo`` on rate
limits, ``parley.v1.MismatchedDevices`` on a send whose device list is out of date).
:func:`from_rpc_error` turns such an answer into one of the classes below, so that an app
writes ``except RateLimited as exc: await asyncio.sleep(exc.retry_after or 1)`` instead of
comparing status codes and decoding trailers itself.

The details are read with ``grpcio-status`` (:func:`grpc_status.rpc_status.from_call`), the
gRPC project's own decoder of the ``grpc-status-details-bin`` trailer.

Hierarchy (every class is a :class:`ParleyError`; catch that to handle them all)::

    ParleyError
    ├── InvalidArgument        the request was malformed (fix the input; retrying won't help)
    ├── NotFound               no such account, device, verification...
    ├── AlreadyExists          e.g. a prekey id uploaded twice with different keys
    ├── FailedPrecondition     the state does not allow it yet (e.g. no keys uploaded)
    │   └── MismatchedDevices  a send named the wrong devices (see .missing/.extra/.stale)
    ├── PermissionDenied       allowed for someone else, not for this device
    ├── Unauthenticated        the token is missing, wrong or revoked (register again)
    ├── Aborted                a conflict, e.g. another receiver on this device
    ├── RateLimited            too many requests; .retry_after says when to come back
    ├── Unavailable            the server cannot be reached (retry later)
    ├── DeadlineExceeded       the call took longer than its deadline
    ├── Cancelled              the call was cancelled (usually by this process)
    └── ServerError            anything else (INTERNAL, UNKNOWN...): a server bug to report
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Final

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from parley.v1 import messaging_pb2 as mpb

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "MismatchedDevices",
    "NotFound",
    "ParleyError",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "rich_status",
]

log = logging.getLogger("parley.client")


class ParleyError(Exception):
    """A call the server refused (or could not be made).

    Attributes:
        code: the gRPC status code.
        message: the server's explanation, written for people (what was wrong, what to do).
        status: the ``google.rpc.Status`` with the machine-readable details, if the server
            sent one.
    """

    status_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else self.status_code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.code.name.lower().replace('_', ' ')}: {self.message}"


class InvalidArgument(ParleyError):
    """The request was malformed; the message names the field. Retrying the same call fails."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ParleyError):
    """The account, device, verification or linking code does not exist (or expired)."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ParleyError):
    status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ParleyError):
    """The server's state does not allow the call yet (e.g. the recipient has no keys)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class MismatchedDevices(FailedPrecondition):
    """A send listed devices that do not match the recipient's current ones.

    :class:`~client.api.ParleyClient` repairs this itself (new sessions for missing or
    stale devices, none for extra ones) and retries; an app on the raw stubs does the same
    from these three lists.
    """

    def __init__(
        self,
        message: str,
        *,
        detail: mpb.MismatchedDevices,
        code: grpc.StatusCode | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.detail = detail
        """The ``parley.v1.MismatchedDevices`` the server attached."""

    @property
    def missing(self) -> tuple[int, ...]:
        """Devices the send left out: start sessions with them and include them."""
        return tuple(self.detail.missing_devices)

    @property
    def extra(self) -> tuple[int, ...]:
        """Devices that no longer exist (or never had keys): drop them."""
        return tuple(self.detail.extra_devices)

    @property
    def stale(self) -> tuple[int, ...]:
        """Devices whose registration id changed (reinstalled): start new sessions."""
        return tuple(self.detail.stale_devices)


class PermissionDenied(ParleyError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ParleyError):
    """The device's token is missing, wrong or revoked (device removed, number re-registered)."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class Aborted(ParleyError):
    status_code = grpc.StatusCode.ABORTED


class RateLimited(ParleyError):
    """A rate limit or quota was hit (RESOURCE_EXHAUSTED)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: grpc.StatusCode | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after
        """Seconds until a retry is worth it (the server's ``google.rpc.RetryInfo``), or None
        when the server gave no estimate (a quota rather than a rate)."""


class Unavailable(ParleyError):
    """The server cannot be reached or is shutting down; the same call may succeed later."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ParleyError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ParleyError):
    status_code = grpc.StatusCode.CANCELLED


class ServerError(ParleyError):
    """INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS: not the caller's fault; worth a report."""


_BY_CODE: Final[dict[grpc.StatusCode, type[ParleyError]]] = {
    cls.status_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        Aborted,
        RateLimited,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
    )
}


def rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a refused call carried in its trailers, or None.

    ``error`` is the exception a stub raised (``grpc.aio.AioRpcError`` or a sync
    ``grpc.RpcError`` that is also a ``grpc.Call``). A status that does not decode or
    contradicts the call's own code is ignored (logged): the code and message still count.
    """
    call: Any = error
    if not hasattr(call, "trailing_metadata"):
        return None
    try:
        status: status_pb2.Status | None = rpc_status.from_call(call)
        return status
    except (ValueError, DecodeError) as exc:
        log.debug("ignoring an undecodable google.rpc.Status", extra={"error": str(exc)})
        return None


def _retry_after(status: status_pb2.Status) -> float | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.seconds) + float(info.retry_delay.nanos) / 1e9
    return None


def _mismatch(status: status_pb2.Status) -> mpb.MismatchedDevices | None:
    for detail in status.details:
        if detail.Is(mpb.MismatchedDevices.DESCRIPTOR):
            out = mpb.MismatchedDevices()
            detail.Unpack(out)
            return out
    return None


def from_rpc_error(error: grpc.RpcError) -> ParleyError:
    """The typed error for what a stub raised (use ``raise from_rpc_error(e) from e``)."""
    call: Any = error
    code: grpc.StatusCode = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    message: str = (call.details() if hasattr(call, "details") else None) or code.name.lower()
    status = rich_status(error)
    mismatch = _mismatch(status) if status is not None else None
    wait = _retry_after(status) if status is not None else None
    return _typed(code, message, status, mismatch, wait)


def from_send_result(result: mpb.SendResult) -> ParleyError:
    """The typed error for a refused item of a batched or streamed send (``result.code`` is
    not 0): the same classes a refused SendMessage raises."""
    code = next((c for c in grpc.StatusCode if c.value[0] == result.code), grpc.StatusCode.UNKNOWN)
    mismatch = result.mismatched_devices if result.HasField("mismatched_devices") else None
    return _typed(code, result.message or code.name.lower(), None, mismatch, None)


def _typed(
    code: grpc.StatusCode,
    message: str,
    status: status_pb2.Status | None,
    mismatch: mpb.MismatchedDevices | None,
    retry_after: float | None,
) -> ParleyError:
    if code == grpc.StatusCode.FAILED_PRECONDITION and mismatch is not None:
        return MismatchedDevices(message, detail=mismatch, code=code, status=status)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(message, retry_after=retry_after, code=code, status=status)
    cls = _BY_CODE.get(code, ServerError)
    return cls(message, code=code, status=status)
