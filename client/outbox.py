"""The client's outgoing sends: one call for a lone send, one stream while sends queue up.

A unary SendMessage costs the server a whole gRPC call (about 0.5 ms of CPU in Python), and a
client that fires many without waiting piles calls up on its connection (docs/architecture.md,
"Calls in flight"). So :class:`Outbox` sends a message alone as SendMessage, as before, but
while another send is still unanswered it sends through one SendMessageStream, which the
server commits in groups, and never has more than ``in_flight`` sends unanswered on it.

Rules kept here:
1. A caller gets its own send's answer: the response, or the typed error a refused
   SendMessage raises (``client.errors``), whichever way it travelled. Retries stay with the
   caller, with the same request_id (AIP-155), so a send that broke with the stream is safe to
   send again.
2. At most ``in_flight`` sends wait for their results on the stream; more wait in the client.
3. The stream is opened when sends queue up and half-closed when none is left, so an idle
   client holds no stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Final

import grpc
from parley.v1 import messaging_pb2 as mpb
from parley.v1 import messaging_pb2_grpc

from client.errors import ParleyError, Unavailable, from_rpc_error, from_send_result

Metadata = tuple[tuple[str, str], ...]

MAX_SENDS_IN_FLIGHT: Final = 64
"""Unanswered sends on the stream: enough to fill the server's commit groups, few enough that
a stalled server holds little of the client's memory."""


class Outbox:
    def __init__(
        self,
        stub: messaging_pb2_grpc.MessagingServiceAsyncStub,
        metadata: Callable[[], Metadata],
        in_flight: int = MAX_SENDS_IN_FLIGHT,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._slots = asyncio.Semaphore(in_flight)
        self._busy = 0  # sends unanswered, whichever way they went
        self._queue: asyncio.Queue[mpb.SendMessageRequest] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[mpb.SendMessageResponse]] = {}
        self._stream: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # a send queued or answered: the stream's writer looks
        self._sent: set[str] = set()  # request ids the stream took and has not answered
        self.streamed = 0  # sends that went through the stream (for tests and metrics)

    def busy(self) -> bool:
        """Whether sends are waiting for their answers."""
        return self._busy > 0

    async def send(self, request: mpb.SendMessageRequest) -> mpb.SendMessageResponse:
        """Send one message; raises the typed error of a refused send (rule 1)."""
        self._busy += 1
        try:
            if self._busy == 1 and self._stream is None:
                try:
                    return await self._stub.SendMessage(request, metadata=self._metadata())
                except grpc.RpcError as exc:
                    raise from_rpc_error(exc) from exc
            async with self._slots:  # rule 2
                return await self._streamed(request)
        finally:
            self._busy -= 1

    async def _streamed(self, request: mpb.SendMessageRequest) -> mpb.SendMessageResponse:
        answer: asyncio.Future[mpb.SendMessageResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request.request_id] = answer
        self._queue.put_nowait(request)
        self._changed.set()
        if self._stream is None:
            self._stream = asyncio.create_task(self._run())
        self.streamed += 1
        try:
            return await answer
        finally:
            self._waiting.pop(request.request_id, None)
            self._changed.set()

    async def _run(self) -> None:
        """One SendMessageStream, open while sends wait for it (rule 3). The sends it took and
        did not answer fail with its error (rule 1); sends still queued when it ends go on a
        stream of their own."""
        call = self._stub.SendMessageStream(self._requests(), metadata=self._metadata())
        error: ParleyError = Unavailable("the send stream ended before answering this send")
        try:
            async for response in call:
                result = response.result
                self._sent.discard(result.request_id)
                answer = self._waiting.get(result.request_id)
                if answer is None or answer.done():
                    continue
                if result.code:
                    answer.set_exception(from_send_result(result))
                else:
                    answer.set_result(result.response)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
        finally:
            call.cancel()
            for request_id in self._sent:
                answer = self._waiting.get(request_id)
                if answer is not None and not answer.done():
                    answer.set_exception(error)
            self._sent.clear()
            self._stream = None
            if not self._queue.empty():
                self._stream = asyncio.create_task(self._run())

    async def _requests(self) -> AsyncIterator[mpb.SendMessageStreamRequest]:
        while True:
            self._changed.clear()
            if not self._queue.empty():
                request = self._queue.get_nowait()
                self._sent.add(request.request_id)
                yield mpb.SendMessageStreamRequest(request=request)
            elif not self._waiting:
                return  # nothing queued nor unanswered: half-close (rule 3)
            else:
                await self._changed.wait()

    async def close(self) -> None:
        """Stop sending: every send not answered yet fails (the client is closing)."""
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(Unavailable("the client closed before this send went out"))
