"""The receiving stream read ahead (client/inbox.py), against a scripted stream: envelope
batches merged in order and never across a status, a bounded buffer, the stream's error after
what came before it, and a drain that reads to the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest
from parley.v1 import messaging_pb2 as mpb

from client import inbox
from client.inbox import Call, ReadAhead


class StreamBroke(grpc.RpcError):
    """What grpc.aio raises when the server ends the stream with an error."""


class Script:
    """A receiving stream whose messages the test releases one by one (None: the end, an
    exception: the stream's error); counts what was read from it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[mpb.ReceiveMessageStreamResponse | Exception | None] = (
            asyncio.Queue()
        )
        self.read = 0

    def __aiter__(self) -> AsyncIterator[mpb.ReceiveMessageStreamResponse]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[mpb.ReceiveMessageStreamResponse]:
        while (item := await self.queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            self.read += 1
            yield item


def envelopes(*ids: int) -> mpb.ReceiveMessageStreamResponse:
    response = mpb.ReceiveMessageStreamResponse()
    response.envelopes.envelopes.extend(mpb.Envelope(envelope_id=i) for i in ids)
    return response


def statuses(*ids: int) -> mpb.ReceiveMessageStreamResponse:
    response = mpb.ReceiveMessageStreamResponse()
    response.statuses.statuses.extend(mpb.DeliveryStatus(status_id=i) for i in ids)
    return response


def ids(item: object) -> list[int]:
    assert isinstance(item, list)
    return [e.envelope_id for e in item]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_batches_that_arrived_meanwhile_come_as_one_in_order_never_across_a_status() -> None:
    async def body() -> None:
        script = Script()
        reader = ReadAhead(cast(Call, script))
        for item in (envelopes(1, 2), envelopes(3), statuses(10), envelopes(4), None):
            script.queue.put_nowait(item)
        await settle()
        assert ids(await reader.next()) == [1, 2, 3]
        status = await reader.next()
        assert isinstance(status, mpb.ReceiveMessageStreamResponse)
        assert [s.status_id for s in status.statuses.statuses] == [10]
        assert ids(await reader.next()) == [4]
        assert await reader.next() is None

    asyncio.run(body())


def test_the_buffer_is_bounded_and_a_merge_stays_under_its_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inbox, "MAX_READ_AHEAD", 3)
    monkeypatch.setattr(inbox, "MAX_MERGED", 4)

    async def body() -> None:
        script = Script()
        reader = ReadAhead(cast(Call, script))
        for i in range(6):
            script.queue.put_nowait(envelopes(2 * i, 2 * i + 1))
        script.queue.put_nowait(None)
        await settle()
        assert script.read == 3  # stopped at the bound: flow control holds the server back
        assert ids(await reader.next()) == [0, 1, 2, 3]  # two batches: a third would pass 4
        await settle()
        assert ids(await reader.next()) == [4, 5, 6, 7]
        await settle()
        assert ids(await reader.next()) == [8, 9, 10, 11]
        assert await reader.next() is None
        assert script.read == 6

    asyncio.run(body())


def test_the_streams_error_comes_after_what_arrived_before_it() -> None:
    async def body() -> None:
        script = Script()
        reader = ReadAhead(cast(Call, script))
        script.queue.put_nowait(envelopes(1))
        script.queue.put_nowait(StreamBroke("UNAVAILABLE"))
        await settle()
        assert ids(await reader.next()) == [1]
        with pytest.raises(StreamBroke):
            await reader.next()

    asyncio.run(body())


def test_drain_reads_to_the_end_and_drops_what_it_reads() -> None:
    async def body() -> None:
        script = Script()
        reader = ReadAhead(cast(Call, script))
        for i in range(40):  # more than the buffer holds: the reader must go on
            script.queue.put_nowait(envelopes(i))
        await settle()
        script.queue.put_nowait(None)
        await asyncio.wait_for(reader.drain(), 5.0)
        assert script.read == 40
        assert await reader.next() is None

    asyncio.run(body())
