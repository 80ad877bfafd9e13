"""MessagingService: convert, one domain call, convert back."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar, cast

from grpc import aio
from parley.v1 import messaging_pb2 as pb
from parley.v1 import messaging_pb2_grpc

from server.domain.ack_stream import Ack
from server.domain.admission import Copy, MismatchedDevicesError, SendReceipt, SendRequest
from server.domain.errors import DomainError
from server.domain.fanout import Envelopes, KeepAlive, QueueEmpty, StreamEvent
from server.domain.mailbox import Mailbox
from server.domain.model import EnvelopeRow, StatusRow
from server.rpc.convert import timestamp
from server.rpc.errors import from_storage, mismatched_devices, status_code
from server.rpc.interceptors import caller
from server.storage.errors import StorageError

Context = aio.ServicerContext[Any, Any]

# Sends read ahead of the one being committed, in bytes of requests: enough to fill large
# groups (the write path's efficiency), small enough that a client that never reads its results
# holds at most this much of the server's memory (plus one request) before it is held back.
READ_AHEAD_BYTES = 4 * 1024 * 1024


def _request(r: pb.SendMessageRequest) -> SendRequest:
    return SendRequest(
        request_id=r.request_id,
        recipient_account_id=r.recipient_account_id,
        copies=[
            Copy(m.device_id, m.registration_id, m.content_type, m.content) for m in r.messages
        ],
        client_ts_ms=r.client_timestamp_ms,
        online_only=r.online_only,
        category=r.business.category,
        template_name=r.business.template_name,
        template_id=r.business.template_id,
        chat_link_code=r.chat_link_code,
    )


def _response(receipt: SendReceipt) -> pb.SendMessageResponse:
    return pb.SendMessageResponse(
        message_id=receipt.message_id,
        server_timestamp=timestamp(receipt.server_ts),
        stored=receipt.stored,
    )


def _envelope(e: EnvelopeRow, online_only: bool) -> pb.Envelope:
    out = pb.Envelope(
        envelope_id=e.envelope_id,
        message_id=e.message_id,
        sender_account_id=e.sender_account_id,
        sender_device_id=e.sender_device_id,
        server_timestamp=timestamp(e.server_ts),
        client_timestamp_ms=e.client_ts_ms,
        content_type=cast(pb.ContentType.ValueType, e.content_type),
        content=e.content,
        online_only=online_only,
    )
    if e.category or e.template_name or e.template_id:
        # The sub-message fetched once: each `out.business` is a lookup of its own (about a
        # sixth of a business envelope's conversion when repeated for every field).
        business = out.business
        business.category = cast(pb.MessageCategory.ValueType, e.category)
        business.template_name = e.template_name
        business.template_id = e.template_id
    return out


def _status(s: StatusRow) -> pb.DeliveryStatus:
    return pb.DeliveryStatus(
        status_id=s.status_id,
        message_id=s.message_id,
        request_id=s.request_id,
        recipient_account_id=s.recipient_account_id,
        state=cast(pb.DeliveryState.ValueType, s.state),
        at=timestamp(s.at),
        reason=s.reason,
    )


_Response = TypeVar("_Response", pb.ReceiveMessagesResponse, pb.ReceiveMessageStreamResponse)


def _event(event: StreamEvent, response: type[_Response]) -> _Response:
    """One stream event as either receive RPC's response (they share their fields)."""
    if isinstance(event, Envelopes):
        batch = pb.EnvelopeBatch(
            envelopes=[_envelope(e, event.online_only) for e in event.envelopes]
        )
        return response(envelopes=batch)
    if isinstance(event, QueueEmpty):
        return response(queue_empty=pb.QueueEmpty())
    if isinstance(event, KeepAlive):
        return response(keep_alive=pb.KeepAlive())
    return response(statuses=pb.DeliveryStatusBatch(statuses=[_status(s) for s in event.statuses]))


async def _acks(requests: AsyncIterator[pb.ReceiveMessageStreamRequest]) -> AsyncIterator[Ack]:
    async for r in requests:
        yield Ack(list(r.envelope_ids), list(r.status_ids))


def _result(entry: pb.SendResult, request_id: str, result: SendReceipt | DomainError) -> None:
    entry.request_id = request_id
    if isinstance(result, DomainError):
        entry.code = status_code(result).value[0]
        entry.message = result.message
        if isinstance(result, MismatchedDevicesError):
            entry.mismatched_devices.CopyFrom(mismatched_devices(result))
    else:
        entry.response.CopyFrom(_response(result))


class MessagingServicer(messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, mailbox: Mailbox) -> None:
        self._mailbox = mailbox

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        return _response(await self._mailbox.send(caller(), _request(request)))

    async def SendMessages(
        self, request: pb.SendMessagesRequest, context: Context
    ) -> pb.SendMessagesResponse:
        results = await self._mailbox.send_many(caller(), [_request(r) for r in request.requests])
        out = pb.SendMessagesResponse()
        for item, result in zip(request.requests, results, strict=True):
            _result(out.results.add(), item.request_id, result)
        return out

    async def SendMessageStream(
        self, requests: AsyncIterator[pb.SendMessageStreamRequest], context: Context
    ) -> AsyncIterator[pb.SendMessageStreamResponse]:
        """Sends that arrive while the previous group is being committed go together as the
        next group (one write job, one commit): no waiting when the stream is quiet, batches
        as large as the load when it is busy.

        Back-pressure: the reader stops reading once READ_AHEAD_BYTES of sends wait, and sends
        are taken only as fast as their results are written to the client, so a client that
        pushes without reading its results is held back by HTTP/2 flow control instead of
        growing the server's memory. An error reading the stream (bytes that do not decode,
        a revoked credential) ends the call with its status once the sends before it are done.
        """
        principal = caller()
        waiting: collections.deque[tuple[pb.SendMessageRequest, int]] = collections.deque()
        waiting_bytes = 0
        arrived = asyncio.Event()
        room = asyncio.Event()
        room.set()
        max_batch = self._mailbox.policy.max_batch

        async def read() -> None:
            nonlocal waiting_bytes
            try:
                async for message in requests:
                    size = message.ByteSize()
                    waiting.append((message.request, size))
                    waiting_bytes += size
                    arrived.set()
                    if waiting_bytes >= READ_AHEAD_BYTES or len(waiting) >= max_batch:
                        room.clear()
                        await room.wait()
            finally:
                arrived.set()  # wake the sender for the end of the stream, or its error

        reader = asyncio.ensure_future(read())
        try:
            while True:
                if not waiting:
                    if reader.done():
                        reader.result()  # raises what ended the client stream, if anything
                        break
                    await arrived.wait()
                    arrived.clear()
                    continue
                group = [waiting.popleft() for _ in range(min(max_batch, len(waiting)))]
                waiting_bytes -= sum(size for _, size in group)
                room.set()
                sends = [r for r, _ in group]
                try:
                    results: Sequence[SendReceipt | DomainError] = await self._mailbox.send_many(
                        principal, [_request(r) for r in sends]
                    )
                except (DomainError, StorageError) as exc:
                    # The device's send rate, or a full disk: each send of the group fails alone,
                    # with its status, and the stream stays open for the next ones.
                    failure = from_storage(exc)
                    assert isinstance(failure, DomainError)
                    results = [failure] * len(sends)
                for item, result in zip(sends, results, strict=True):
                    response = pb.SendMessageStreamResponse()
                    _result(response.result, item.request_id, result)
                    yield response
        finally:
            reader.cancel()

    async def ReceiveMessages(
        self, request: pb.ReceiveMessagesRequest, context: Context
    ) -> AsyncIterator[pb.ReceiveMessagesResponse]:
        async for event in self._mailbox.stream(caller()):
            yield _event(event, pb.ReceiveMessagesResponse)

    async def ReceiveMessageStream(
        self, requests: AsyncIterator[pb.ReceiveMessageStreamRequest], context: Context
    ) -> AsyncIterator[pb.ReceiveMessageStreamResponse]:
        async for event in self._mailbox.stream_with_acks(caller(), _acks(requests)):
            yield _event(event, pb.ReceiveMessageStreamResponse)

    async def AcknowledgeMessages(
        self, request: pb.AcknowledgeMessagesRequest, context: Context
    ) -> pb.AcknowledgeMessagesResponse:
        envelopes, statuses = await self._mailbox.acknowledge(
            caller(), list(request.envelope_ids), list(request.status_ids)
        )
        return pb.AcknowledgeMessagesResponse(
            acknowledged_envelopes=envelopes, acknowledged_statuses=statuses
        )
