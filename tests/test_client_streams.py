"""The reference client's use of the streams: it receives and acknowledges on one
ReceiveMessageStream (no AcknowledgeMessages call per batch), and sends what queues up on one
SendMessageStream, with a bound on the sends in flight."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc import aio
from parley.v1 import messaging_pb2 as mpb

from client.api import DeliveryUpdate, TextMessage
from client.outbox import Outbox
from tests.client_helpers import closing, drain, registered
from tests.conftest import LiveServer

ALICE = "+14155550123"
BOB = "+442079460123"
RPC_LOG = "parley.rpc"


def calls(caplog: pytest.LogCaptureFixture, name: str) -> int:
    """Calls of `name` the server finished (the interceptor's DEBUG line per call)."""
    return sum(
        1
        for r in caplog.records
        if r.name == RPC_LOG
        and r.__dict__.get("method", "").endswith(f"/{name}")
        and r.getMessage().startswith("rpc ")
    )


def test_the_client_acknowledges_on_the_receiving_stream(
    server: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=RPC_LOG)

    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)

        async def talk() -> None:
            for i in range(5):
                await alice.send(BOB, f"hello {i}")
            got = await drain(bob)
            assert [e.text for e in got if isinstance(e, TextMessage)] == [
                f"hello {i}" for i in range(5)
            ]
            # Bob's acks were applied before drain returned: Alice hears of every delivery,
            # and her own statuses are acknowledged on her stream in turn.
            updates = [e for e in await drain(alice) if isinstance(e, DeliveryUpdate)]
            assert len(updates) == 5 and all(u.delivered for u in updates)
            assert await drain(bob) == [] and await drain(alice) == []

        await closing([alice, bob], talk)

    asyncio.run(body())
    server.stop()  # every call has ended, and logged
    assert calls(caplog, "ReceiveMessageStream") >= 4
    assert calls(caplog, "AcknowledgeMessages") == 0
    assert calls(caplog, "ReceiveMessages") == 0


def test_queued_sends_go_on_one_stream_with_a_bound_in_flight(
    server: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty sends at once: the first as a SendMessage, the others on SendMessageStream, never
    more than the bound unanswered; each caller gets its own answer, and Bob gets them all."""
    caplog.set_level(logging.DEBUG, logger=RPC_LOG)
    bound = 4

    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)

        async def talk() -> None:
            await alice.send(BOB, "first")  # the session exists: the rest need no bundles
            outbox = alice._outbox
            alice._outbox = Outbox(alice._messaging, alice._metadata, in_flight=bound)
            await outbox.close()
            peak = 0
            real = alice._outbox._streamed

            async def watched(request: mpb.SendMessageRequest) -> mpb.SendMessageResponse:
                nonlocal peak
                peak = max(peak, len(alice._outbox._waiting) + 1)
                return await real(request)

            alice._outbox._streamed = watched  # type: ignore[method-assign]
            sent = await asyncio.gather(*(alice.send(BOB, f"queued {i}") for i in range(20)))
            assert len({s.message_id for s in sent}) == 20
            assert alice._outbox.streamed >= 19
            assert peak <= bound, peak
            got = await drain(bob)
            assert sorted(e.text for e in got if isinstance(e, TextMessage)) == sorted(
                ["first", *(f"queued {i}" for i in range(20))]
            )

        await closing([alice, bob], talk)

    asyncio.run(body())
    server.stop()
    assert calls(caplog, "SendMessageStream") >= 1
    # "first" and its probe for other devices of Alice's, and the first of the twenty
    assert calls(caplog, "SendMessage") <= 3


class _FakeMessaging:
    """A MessagingService stub whose unary send waits until released, whose first send
    stream answers one send, takes a second and breaks (UNAVAILABLE), and whose later streams
    answer all."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.streams = 0

    async def _unary(self, request: mpb.SendMessageRequest) -> mpb.SendMessageResponse:
        await self.release.wait()
        return mpb.SendMessageResponse(message_id=1, stored=True)

    def SendMessage(self, request: mpb.SendMessageRequest, metadata: object) -> object:
        return self._unary(request)

    def SendMessageStream(self, requests: Any, metadata: object) -> Any:
        self.streams += 1
        return _FakeCall(requests, broken=self.streams == 1)


class _FakeCall:
    def __init__(self, requests: Any, *, broken: bool) -> None:
        self._requests = requests
        self._broken = broken

    def cancel(self) -> bool:
        return True

    async def __aiter__(self) -> Any:
        taken = 0
        async for item in self._requests:
            taken += 1
            if self._broken and taken == 2:
                raise aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), "gone", None
                )
            yield mpb.SendMessageStreamResponse(
                result=mpb.SendResult(
                    request_id=item.request.request_id,
                    response=mpb.SendMessageResponse(message_id=taken + 100, stored=True),
                )
            )


def test_a_broken_send_stream_fails_the_sends_it_took_and_the_queued_go_on() -> None:
    """The send the broken stream took and did not answer fails with its status (its caller
    sends it again, same request_id); the ones still queued go on a new stream, and nobody
    waits forever (before, a send taken by a stream that broke while others were queued
    waited for an answer that would never come)."""

    async def body() -> list[str]:
        fake = _FakeMessaging()
        outbox = Outbox(cast(Any, fake), lambda: (), in_flight=2)
        requests = [mpb.SendMessageRequest(request_id=f"r{i}") for i in range(6)]
        tasks = [asyncio.ensure_future(outbox.send(r)) for r in requests]
        done = await asyncio.wait_for(asyncio.gather(*tasks[1:], return_exceptions=True), 10)
        fake.release.set()
        await tasks[0]
        return [type(r).__name__ for r in done]

    outcomes = asyncio.run(body())
    assert outcomes == ["SendMessageResponse", "Unavailable", *["SendMessageResponse"] * 3]
