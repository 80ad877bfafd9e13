"""One interceptor around every Parley RPC: decode, authenticate, map errors, log.

Authentication sets the caller in a context variable that the servicers read with `caller()`
(a device's Principal) or `operator()` (the operator). Each RPC runs in its own task, so the
variable never leaks between calls. Health and reflection are not Parley services and pass
through untouched.

Which credential a method takes is decided by one table (`authenticators`: a method's full
path, e.g. "/parley.v1.BillingService/TopUp", or a service's full name, e.g.
"parley.v1.AdminService", -> its authenticator; the method's entry wins over its service's, and
everything else takes device tokens). So AdminService and BillingService's operator methods
accept only the operator token and every device RPC only device tokens, with no servicer
checking credentials itself. Streams are device RPCs only (rule 2).

Rules kept here, for every Parley RPC, present and future:
1. Requests are decoded here (`server.rpc.decoding`), not by gRPC: undecodable bytes and
   out-of-range integers are INVALID_ARGUMENT, on unary calls and on each message of a client
   stream alike.
2. A streaming call holds a `Lease` on its credential: when the credential is revoked the call
   ends at once with UNAUTHENTICATED, whether it is waiting, reading or about to write.
3. Errors become statuses in one place (`server.rpc.errors`); anything unexpected is INTERNAL
   with an incident id in the log, never UNKNOWN.
4. A call that ends abnormally is logged at WARNING, one line: the method, the peer, the caller
   if known, the status and why (the client cancelled or went away, its deadline passed, a bug:
   INTERNAL, at ERROR with the incident id). Refusals with a domain status and the ends a call
   is made for are not: a server stream that only the client can end (ReceiveMessages) ends
   when it cancels or its deadline passes, and that is its normal end (DEBUG).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
from grpc import aio

from server.domain.auth import REVOKED_MESSAGE, Authenticator, Lease, Principal
from server.domain.errors import DomainError, Unauthenticated
from server.domain.operator import Operator
from server.rpc import errors
from server.rpc.decoding import RequestDecoder, UndecodableLog

log = logging.getLogger("parley.rpc")

_PRINCIPAL: contextvars.ContextVar[object] = contextvars.ContextVar("parley_principal")
PARLEY_PREFIX = "/parley."
# The server's copy of a deadline runs from when the call's headers arrived, so the client,
# whose clock started first, gives up a little earlier: a call cancelled this close to its
# deadline was cancelled by it (rule 4).
DEADLINE_SLACK = 0.2


class CallAuthenticator(Protocol):
    """Turns a presented bearer token into the caller of one kind, or raises a DomainError."""

    async def authenticate(self, token: str) -> object: ...


def caller() -> Principal:
    """The authenticated device of the current RPC (only on RPCs that require a device)."""
    principal = _PRINCIPAL.get()
    if not isinstance(principal, Principal):
        raise TypeError("caller() on an RPC not authenticated as a device")
    return principal


def operator() -> Operator:
    """Proof that the current RPC presented the operator token (AdminService only)."""
    principal = _PRINCIPAL.get()
    if not isinstance(principal, Operator):
        raise TypeError("operator() on an RPC not authenticated as the operator")
    return principal


def bearer_token(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization metadata must be 'Bearer <auth_token>'")
            return token.strip()
    return ""


if TYPE_CHECKING:
    _Interceptor = aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = aio.ServerInterceptor


class ParleyInterceptor(_Interceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        open_methods: frozenset[str],
        authenticators: Mapping[str, CallAuthenticator] | None = None,
    ) -> None:
        """`authenticator` checks device tokens, on every method not in `authenticators` (a
        method's full path, or its service's full name -> its own authenticator)."""
        self._auth = authenticator
        self._open = open_methods
        self._others: Mapping[str, CallAuthenticator] = dict(authenticators or {})
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._undecodable = UndecodableLog()
        # Set by the server as it stops: the calls cut at the end of the grace period are
        # the shutdown's doing, expected, and not logged as abnormal (rule 4).
        self.stopping = False

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:  # the wrapper of a method never changes: build it once
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(PARLEY_PREFIX):
            return handler
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        service = method[1:].partition("/")[0]
        auth: CallAuthenticator | None = (
            None
            if method in self._open
            else self._others.get(method, self._others.get(service, self._auth))
        )
        assert handler.request_deserializer is not None, method  # generated stubs always set it
        decode = RequestDecoder(method, handler.request_deserializer, self._undecodable)
        # request_deserializer=None: gRPC hands over the bytes and `decode` turns them into the
        # request (rule 1).
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, auth, decode),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if auth is not None and auth is not self._auth:
            # Streams hold a Lease on a device credential (rule 2); other kinds have none.
            raise NotImplementedError(f"{method}: only device RPCs may stream")
        needs_auth = auth is not None
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(
                    cast(Callable[..., AsyncIterator[Any]], handler.unary_stream),
                    method,
                    needs_auth,
                    decode,
                    client_streams=False,
                ),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(
                    cast(Callable[..., AsyncIterator[Any]], handler.stream_stream),
                    method,
                    needs_auth,
                    decode,
                    client_streams=True,
                ),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        raise NotImplementedError(f"{method}: client-streaming RPCs are not used by Parley")

    async def _authenticate(self, context: aio.ServicerContext[Any, Any]) -> Principal:
        token = bearer_token(context.invocation_metadata())
        principal = await self._auth.authenticate(token)
        _PRINCIPAL.set(principal)
        return principal

    @staticmethod
    async def _authenticate_with(
        auth: CallAuthenticator, context: aio.ServicerContext[Any, Any]
    ) -> None:
        token = bearer_token(context.invocation_metadata())
        _PRINCIPAL.set(await auth.authenticate(token))

    def _unary(
        self,
        inner: Callable[..., Awaitable[Any]],
        method: str,
        auth: CallAuthenticator | None,
        decode: RequestDecoder,
    ) -> Callable[..., Awaitable[Any]]:
        async def behavior(raw: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            peer = context.peer()  # gone once the call is cancelled
            try:
                if auth is not None:
                    await self._authenticate_with(auth, context)
                return await inner(decode(raw), context)
            except asyncio.CancelledError:
                _log_cancelled(method, context, peer, normal=self.stopping)
                raise
            except Exception as exc:
                await _abort(context, exc, method)
            finally:
                _log_call(method, started, context)

        return behavior

    def _stream(
        self,
        inner: Callable[..., AsyncIterator[Any]],
        method: str,
        needs_auth: bool,
        decode: RequestDecoder,
        *,
        client_streams: bool,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            peer = context.peer()
            lease: Lease | None = None
            try:
                if needs_auth:
                    lease = self._auth.lease(await self._authenticate(context))
                requests = _decoded(request, decode, lease) if client_streams else decode(request)
                async for response in inner(requests, context):
                    if lease is not None:
                        lease.exposed = False  # gRPC writes the response: see Lease
                    yield response
                    if lease is not None:
                        lease.exposed = True
                        lease.check()
            except asyncio.CancelledError:
                if lease is None or not lease.revoked:
                    # The client went away or the server is stopping: a server stream's normal
                    # end, a client stream's abnormal one (it ends by half-closing).
                    _log_cancelled(
                        method, context, peer, normal=self.stopping or not client_streams
                    )
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, REVOKED_MESSAGE)
            except Exception as exc:
                await _abort(context, exc, method)
            finally:
                if lease is not None:
                    self._auth.release(lease)
                _log_call(method, started, context)

        return behavior


async def _decoded(
    raw_requests: AsyncIterator[bytes], decode: RequestDecoder, lease: Lease | None
) -> AsyncIterator[Any]:
    """A client stream's messages, decoded; a revoked credential ends it (rules 1 and 2)."""
    async for raw in raw_requests:
        if lease is not None:
            lease.check()
        yield decode(raw)


async def _abort(context: aio.ServicerContext[Any, Any], exc: Exception, method: str) -> None:
    """Turn an exception into a status; re-raise what is already a status."""
    if isinstance(exc, aio.AbortError):
        raise exc
    exc = errors.from_storage(exc)  # a full disk is RESOURCE_EXHAUSTED, not INTERNAL
    if isinstance(exc, DomainError):
        await context.abort(
            errors.status_code(exc), exc.message, trailing_metadata=errors.trailing_metadata(exc)
        )
    incident = uuid.uuid4().hex[:12]
    log.error(
        "unexpected error in %s (incident %s)",
        method,
        incident,
        exc_info=exc,
        extra={**_who(context.peer()), "code": grpc.StatusCode.INTERNAL.name},
    )
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal server error (incident {incident}); the request may be retried, and the "
        "operator can find the cause in the server log",
    )


def _who(peer: str) -> dict[str, object]:
    """The peer and, once authenticated, the calling device: what an operator looks for."""
    who: dict[str, object] = {"peer": peer}
    principal = _PRINCIPAL.get(None)
    if isinstance(principal, Principal):
        who["account_id"] = principal.account_id
        who["device_id"] = principal.device_id
    elif isinstance(principal, Operator):
        who["caller"] = "operator"
    return who


def _log_cancelled(
    method: str, context: aio.ServicerContext[Any, Any], peer: str, *, normal: bool
) -> None:
    """Rule 4: a cancelled call, at WARNING unless cancelling is how this call ends. gRPC
    cancels the handler for a client that cancelled, a connection that broke, a deadline that
    passed and a server that stops past its grace period (`normal` then); only the deadline
    leaves a trace (no time remaining), so the others share one reason."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK:
        code, why = grpc.StatusCode.DEADLINE_EXCEEDED, "the client's deadline passed first"
    else:
        code = grpc.StatusCode.CANCELLED
        why = "the client cancelled it or its connection broke"
    level = logging.DEBUG if normal else logging.WARNING
    if log.isEnabledFor(level):
        log.log(
            level,
            "%s ended %s before it finished: %s",
            method,
            code.name,
            why,
            extra={**_who(peer), "method": method, "code": code.name, "reason": why},
        )


def _log_call(method: str, started: float, context: aio.ServicerContext[Any, Any]) -> None:
    if log.isEnabledFor(logging.DEBUG):
        code = context.code()
        log.debug(
            "rpc %s",
            method,
            extra={
                "method": method,
                "code": code.name if isinstance(code, grpc.StatusCode) else "OK",
                "ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
