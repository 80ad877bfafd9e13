"""The one place where domain errors become gRPC statuses (with google.rpc details)."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from parley.v1 import messaging_pb2

from server.domain import errors
from server.domain.admission import MismatchedDevicesError
from server.storage.errors import StorageError, StorageFull

_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def from_storage(exc: Exception) -> Exception:
    """A storage failure as the domain error of the same meaning (full: RESOURCE_EXHAUSTED,
    else UNAVAILABLE), so it takes the same path to a status; any other exception unchanged."""
    if isinstance(exc, StorageFull):
        return errors.ResourceExhausted(exc.message)
    if isinstance(exc, StorageError):
        return errors.Unavailable(exc.message)
    return exc


def status_code(error: errors.DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def mismatched_devices(error: MismatchedDevicesError) -> messaging_pb2.MismatchedDevices:
    return messaging_pb2.MismatchedDevices(
        account_id=error.account_id,
        missing_devices=error.missing,
        extra_devices=error.extra,
        stale_devices=error.stale,
        support_devices=error.support_devices,
    )


def _details(error: errors.DomainError) -> list[Message]:
    details: list[Message] = [d for d in error.details if isinstance(d, Message)]
    if isinstance(error, MismatchedDevicesError):
        details.append(mismatched_devices(error))
    if isinstance(error, errors.ResourceExhausted) and error.retry_after is not None:
        wait = duration_pb2.Duration(seconds=max(1, math.ceil(error.retry_after)))
        details.append(error_details_pb2.RetryInfo(retry_delay=wait))
    return details


def trailing_metadata(error: errors.DomainError) -> tuple[tuple[str, bytes], ...]:
    """google.rpc.Status in the trailers, as grpcio-status clients expect; empty if no details."""
    details = _details(error)
    if not details:
        return ()
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    code = status_code(error).value[0]
    status = status_pb2.Status(code=code, message=error.message, details=packed)
    assert code != code_pb2.OK
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)
