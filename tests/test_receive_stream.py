"""ReceiveMessageStream over a live server: acknowledgements on the receiving stream.

Acks sent on the stream mean what AcknowledgeMessages means (deleted envelopes, DELIVERED
statuses), are written in groups, are read no further than a bound while writes wait, and are
all applied before a half-closed stream ends; malformed ones end it with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from grpc import aio
from parley.v1 import account_pb2 as apb
from parley.v1 import messaging_pb2 as mpb
from parley.v1.messaging_pb2_grpc import MessagingServiceStub

from server.app import ParleyServer
from server.domain.ack_stream import UNAPPLIED_ACKS
from server.domain.auth import Principal
from server.domain.ratelimit import Rate
from tests.conftest import LiveServer, ServerFactory
from tests.test_messaging import ALICE, BOB, Member, Stream, member, send_request, stub

_END = object()


class AckStream:
    """A ReceiveMessageStream: events read one by one, acks written whenever the test likes."""

    def __init__(
        self,
        server: LiveServer,
        who: Member,
        timeout: float = 30,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._requests: queue.Queue[object] = queue.Queue()
        messaging = stub(server) if channel is None else MessagingServiceStub(channel)
        self.call = messaging.ReceiveMessageStream(
            self._outgoing(), metadata=who.device.metadata, timeout=timeout
        )
        self._events: Iterator[mpb.ReceiveMessageStreamResponse] = iter(self.call)
        self.sent_all = threading.Event()
        self.statuses: list[mpb.DeliveryStatus] = []

    def _outgoing(self) -> Iterator[mpb.ReceiveMessageStreamRequest]:
        while (item := self._requests.get()) is not _END:
            assert isinstance(item, mpb.ReceiveMessageStreamRequest)
            yield item
        self.sent_all.set()

    def ack(self, envelope_ids: Sequence[int] = (), status_ids: Sequence[int] = ()) -> None:
        self._requests.put(
            mpb.ReceiveMessageStreamRequest(envelope_ids=envelope_ids, status_ids=status_ids)
        )

    def half_close(self) -> list[mpb.ReceiveMessageStreamResponse]:
        """End our side; the events the server still sent before it ended the call."""
        self._requests.put(_END)
        return list(self._events)

    def next(self) -> mpb.ReceiveMessageStreamResponse:
        return next(self._events)

    def until_empty(self) -> list[mpb.Envelope]:
        """The stored backlog's envelopes (its statuses go to `statuses`)."""
        out: list[mpb.Envelope] = []
        while not (event := self.next()).HasField("queue_empty"):
            out.extend(event.envelopes.envelopes)
            self.statuses.extend(event.statuses.statuses)
        return out


def _on_server(server: LiveServer, read: Callable[[ParleyServer], Any]) -> Any:
    async def value(s: ParleyServer) -> Any:
        return read(s)

    return server.run(value)


def ack_jobs(server: LiveServer) -> int:
    return int(_on_server(server, lambda s: s.mailbox.settlement.ack_jobs))


def stored_envelopes(server: LiveServer, who: Member) -> int:
    rows = server.sql(
        "SELECT count(*) FROM envelopes WHERE account_id = ?", [who.device.account_id]
    )
    return int(rows[0][0])


def send_many(server: LiveServer, sender: Member, to: Member, count: int) -> None:
    for start in range(0, count, 1000):
        requests = [send_request([to], b"m%d" % i) for i in range(start, min(count, start + 1000))]
        stub(server).SendMessages(
            mpb.SendMessagesRequest(requests=requests), metadata=sender.device.metadata
        )


def test_acks_on_the_stream_delete_envelopes_and_report_delivery(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    for payload in (b"one", b"two", b"three"):
        stub(server).SendMessage(send_request([bob], payload), metadata=alice.device.metadata)
    stream = AckStream(server, bob)
    envelopes = stream.until_empty()
    assert [e.content for e in envelopes] == [b"one", b"two", b"three"]
    stream.ack([e.envelope_id for e in envelopes[:2]])
    stream.ack([envelopes[2].envelope_id, envelopes[0].envelope_id])  # a repeat is harmless
    assert stream.half_close() == []  # the acks were applied, then the call ended OK
    assert stream.call.code() == grpc.StatusCode.OK
    assert stored_envelopes(server, bob) == 0

    alice_stream = AckStream(server, alice)
    assert alice_stream.until_empty() == []
    statuses = alice_stream.statuses
    assert [s.state for s in statuses] == [mpb.DELIVERY_STATE_DELIVERED] * 3
    assert {s.recipient_account_id for s in statuses} == {bob.device.account_id}
    alice_stream.ack(status_ids=[s.status_id for s in statuses])
    alice_stream.half_close()
    assert server.sql("SELECT count(*) FROM delivery_statuses")[0][0] == 0

    again = AckStream(server, bob)
    assert again.until_empty() == []  # acknowledged: never sent again
    again.half_close()


def test_many_ack_messages_make_few_write_jobs(server: LiveServer) -> None:
    """500 acks, one envelope each, sent without waiting: what arrives while a group is being
    written is written as the next group. One job per message was 500 jobs. The first write
    is held until the rest have arrived (a slow disk), so how many groups they make does not
    depend on how fast this machine happens to commit."""
    alice, bob = member(server, ALICE), member(server, BOB)
    send_many(server, alice, bob, 500)
    stream = AckStream(server, bob)
    envelopes = stream.until_empty()
    assert len(envelopes) == 500
    before = ack_jobs(server)
    gate = _hold_acknowledgements(server)
    for envelope in envelopes:
        stream.ack([envelope.envelope_id])
    _wait_for_peak(server, 499, settle=0.0)  # all but the held first one are waiting
    server.run(lambda s: gate())
    stream.half_close()
    assert stream.call.code() == grpc.StatusCode.OK
    jobs = ack_jobs(server) - before
    assert 1 <= jobs <= 100, f"{jobs} write jobs for 500 ack messages"
    assert stored_envelopes(server, bob) == 0


def test_unapplied_acks_are_bounded_while_writes_wait(server: LiveServer) -> None:
    """While acknowledgement writes are held, the server reads at most UNAPPLIED_ACKS ids
    (plus a message) and leaves the rest to flow control; all are applied once writes go on."""
    bob = member(server, BOB)
    gate = _hold_acknowledgements(server)
    stream = AckStream(server, bob)
    assert stream.until_empty() == []
    messages = 3 * UNAPPLIED_ACKS // 1000
    for m in range(messages):  # unknown ids: acknowledged as AcknowledgeMessages does, ignored
        stream.ack(range(10**9 + m * 1000 + 1, 10**9 + (m + 1) * 1000 + 1))
    peak = _wait_for_peak(server, UNAPPLIED_ACKS)
    assert UNAPPLIED_ACKS <= peak <= UNAPPLIED_ACKS + 1000, peak
    server.run(lambda s: gate())
    stream.half_close()
    assert stream.call.code() == grpc.StatusCode.OK
    total = _on_server(server, lambda s: s.mailbox.settlement.peak_unapplied)
    assert total <= UNAPPLIED_ACKS + 1000, total


def _hold_acknowledgements(
    server: LiveServer, held_one: threading.Event | None = None
) -> Callable[[], Awaitable[None]]:
    """Make the server's acknowledgement writes wait until the returned coroutine function is
    run on the server: a disk that stalls, on either backend. `held_one` is set once a write
    waits."""
    release = asyncio.Event()

    async def install(s: ParleyServer) -> None:
        settlement = s.mailbox.settlement
        original = settlement.acknowledge

        async def held(
            caller: Principal, envelope_ids: Sequence[int], status_ids: Sequence[int]
        ) -> tuple[int, int]:
            if held_one is not None:
                held_one.set()
            await release.wait()
            return await original(caller, envelope_ids, status_ids)

        settlement.acknowledge = held  # type: ignore[method-assign]

    server.run(install)

    async def open_gate() -> None:
        release.set()

    return open_gate


def _wait_for_peak(
    server: LiveServer, at_least: int, timeout: float = 20, settle: float = 0.3
) -> int:
    """The peak of unapplied ids once it reached `at_least` and then `settle` seconds passed
    (there is no event for "the server stopped reading": a reader without a bound would go on
    reading during them)."""
    deadline = time.monotonic() + timeout
    peak = 0
    while time.monotonic() < deadline:
        peak = int(_on_server(server, lambda s: s.mailbox.settlement.peak_unapplied))
        if peak >= at_least:
            break
        time.sleep(0.02)
    time.sleep(settle)
    return int(_on_server(server, lambda s: s.mailbox.settlement.peak_unapplied))


@pytest.mark.parametrize(
    ("envelope_ids", "status_ids", "says"),
    [
        ([], [], "nothing to acknowledge"),
        (list(range(1, 1002)), [], "1001 envelope ids and 0 status ids in one message"),
        ([5, 0], [], "0 is not an envelope or status id"),
        ([], [0], "0 is not an envelope or status id"),
    ],
)
def test_a_malformed_ack_ends_the_stream_after_the_acks_before_it(
    server: LiveServer, envelope_ids: list[int], status_ids: list[int], says: str
) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    stub(server).SendMessage(send_request([bob], b"kept?"), metadata=alice.device.metadata)
    stream = AckStream(server, bob)
    (envelope,) = stream.until_empty()
    stream.ack([envelope.envelope_id])
    stream.ack(envelope_ids, status_ids)
    with pytest.raises(grpc.RpcError) as info:
        stream.half_close()
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (info.value.details() or "")
    assert stored_envelopes(server, bob) == 0  # the ack before the bad one was applied


def test_the_stream_ends_as_receive_messages_does(server: LiveServer) -> None:
    """Replaced: ABORTED, with the acks it read applied; device removed: UNAUTHENTICATED."""
    alice, bob = member(server, ALICE), member(server, BOB)
    stub(server).SendMessage(send_request([bob], b"x"), metadata=alice.device.metadata)
    first = AckStream(server, bob)
    (envelope,) = first.until_empty()
    gate = _hold_acknowledgements(server)
    first.ack([envelope.envelope_id])
    _wait_for_peak(server, 1, settle=0)  # read, not applied: its write is held
    second = Stream(server, bob)  # a newer stream of the device replaces it: ABORTED
    # Its backlog (the envelope, whose ack is still held) has come: the server has taken the
    # stream over. Before that, the half-close below could end the first stream normally.
    assert [e.envelope_id for e in second.until_empty()] == [envelope.envelope_id]
    server.run(lambda s: gate())
    with pytest.raises(grpc.RpcError) as info:
        first.half_close()
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert stored_envelopes(server, bob) == 0  # applied before the replaced stream ended
    second.close()

    laptop = member(server, BOB, primary=bob.device)
    linked = AckStream(server, laptop)
    assert linked.until_empty() == []
    server.accounts().RemoveDevice(
        apb.RemoveDeviceRequest(device_id=laptop.device.device_id), metadata=bob.device.metadata
    )
    with pytest.raises(grpc.RpcError) as info:
        linked.next()
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_shutdown_ends_the_stream_unavailable(make_server: ServerFactory) -> None:
    server = make_server()
    bob = member(server, BOB)
    with grpc.insecure_channel(server.target) as channel:  # not closed by server.stop()
        stream = AckStream(server, bob, channel=channel)
        assert stream.until_empty() == []
        server.stop()
        with pytest.raises(grpc.RpcError) as info:
            stream.next()
        assert isinstance(info.value, grpc.Call)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_thousand_unary_acks_in_flight_on_one_connection_all_apply(
    make_server: ServerFactory,
) -> None:
    """The CANCELLED bursts: a receiver firing an AcknowledgeMessages call per envelope without
    waiting had more than 1,000 calls in flight on one connection, and gRPC core cancelled
    those past its backlog of unrequested calls before the server saw them. Every one of
    2,000 now completes, and every envelope is gone."""
    server = make_server(send_rate=Rate.parse("100000/min"))
    alice, bob = member(server, ALICE), member(server, BOB)
    count = 2000
    send_many(server, alice, bob, count)
    stream = AckStream(server, bob)
    envelopes = stream.until_empty()
    stream.half_close()
    assert len(envelopes) == count

    async def fire_all() -> list[grpc.StatusCode]:
        async with aio.insecure_channel(server.target) as channel:
            messaging = MessagingServiceStub(channel)
            calls = [
                messaging.AcknowledgeMessages(
                    mpb.AcknowledgeMessagesRequest(envelope_ids=[e.envelope_id]),
                    metadata=bob.device.metadata,
                    timeout=120,
                )
                for e in envelopes
            ]
            done = await asyncio.gather(*calls, return_exceptions=True)
            return [
                r.code()
                if isinstance(r, aio.AioRpcError)
                else grpc.StatusCode.OK
                if isinstance(r, mpb.AcknowledgeMessagesResponse)
                else grpc.StatusCode.UNKNOWN
                for r in done
            ]

    codes = asyncio.run(fire_all())
    assert codes == [grpc.StatusCode.OK] * count, {c: codes.count(c) for c in set(codes)}
    assert stored_envelopes(server, bob) == 0
