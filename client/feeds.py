"""Reading a numbered feed: the server streams the events after a cursor, one ``caught_up``
marker once the backlog is sent, then live events and keep-alives (the support queue's
``WatchSupportQueue``, billing's ``StreamStatusEvents``). One loop for all of them, so that each
starts, stops, cancels and reports refusals the same way."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from client.errors import from_rpc_error

T = TypeVar("T")


async def follow_feed(
    start: Callable[[], aio.UnaryStreamCall[Any, Any]], event: type[T], *, follow: bool
) -> AsyncGenerator[T, None]:
    """The ``event`` (a `event`) of each message of the call `start` makes, in order; the call
    starts when the reading does. Without `follow` it stops at the ``caught_up`` marker (the
    backlog is read); with it, it goes on with live events until the caller stops reading.
    Keep-alives are not passed on; the call is cancelled however the reading ends, and a
    refusal raises :class:`client.errors.ParleyError`."""
    call = start()
    try:
        async for message in call:
            if message.HasField("event"):
                yield message.event
            elif message.HasField("caught_up") and not follow:
                return
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
    finally:
        call.cancel()
