"""Delivered messages, counted end to end: sent → committed → streamed → acknowledged by the
recipient → DELIVERED status streamed back to the sender → acknowledged by the sender.

Each pair's recipient device and sender device both hold a ReceiveMessages stream: the
recipient acknowledges its envelopes as batches arrive (`envelope_ids`), the sender
acknowledges the DELIVERED statuses that come back on its own stream (`status_ids`). A message
counts once the sender's acknowledgement of its status has returned; that moment is recorded,
so a run also yields its throughput over time. The clock starts once every stream has drained
its backlog (QueueEmpty) and stops at the last status acknowledgement.

Sends go out as SendMessages calls of BATCH (IN_FLIGHT per sender), each request made just
before it is sent from a batch template of random payloads (only the request ids change), so
a run of any length holds one batch per pair in memory. A run sends a fixed count, or
(sustained) as many as go out before a deadline, then waits for the rest to be delivered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpc import aio
from parley.v1 import messaging_pb2 as mpb
from parley.v1 import messaging_pb2_grpc

from bench.messaging_bench import IN_FLIGHT, Account, Pair, Server, batches
from bench.sizes import BATCH

Ack = asyncio.Future[mpb.AcknowledgeMessagesResponse]


@dataclass
class Timeline:
    """When messages became delivered: (seconds since the start, count) per acknowledgement."""

    started: float = field(default_factory=time.perf_counter)
    events: list[tuple[float, int]] = field(default_factory=list)

    def add(self, count: int) -> None:
        self.events.append((time.perf_counter() - self.started, count))

    def per_second(self, bin_seconds: float) -> list[float]:
        """Delivered messages per second in consecutive bins of `bin_seconds`."""
        if not self.events:
            return []
        bins = [0.0] * (int(self.events[-1][0] / bin_seconds) + 1)
        for at, count in self.events:
            bins[int(at / bin_seconds)] += count
        return [n / bin_seconds for n in bins]


@dataclass
class Run:
    messages: int
    seconds: float
    timeline: Timeline

    @property
    def per_s(self) -> float:
        return self.messages / self.seconds

    sent: Timeline

    def summary(self, bin_seconds: float) -> dict[str, Any]:
        """For results.json: the rate, and the rates of delivered and of sent messages over
        time (what the plot draws: a gap between them is a backlog building up)."""
        return {
            "per_s": self.per_s,
            "messages": self.messages,
            "seconds": self.seconds,
            "bin_s": bin_seconds,
            "timeline_per_s": self.timeline.per_second(bin_seconds),
            "sent_per_s": self.sent.per_second(bin_seconds),
        }


def run_prefix() -> str:
    """The first four groups of a random UUID: a run's request ids are this prefix and a
    counter in the last group, so they are UUIDs (as the server requires) and statuses of
    other runs can be told apart by prefix."""
    return str(uuid.uuid4())[:24]


def request_id(prefix: str, n: int) -> str:
    return f"{prefix}{n:012x}"


class _Sends:
    """One pair's sends: `count` of them, or (count None) as many as start before `deadline`."""

    def __init__(
        self, to: Account, count: int | None, deadline: float | None, template_id: str
    ) -> None:
        (self._template,) = batches(to, BATCH, template_id)
        self._prefix = run_prefix()
        self._left = count
        self.deadline = deadline
        self.sent = 0

    @property
    def prefix(self) -> str:
        """Every request id of this run starts with it: statuses of other runs are not counted."""
        return self._prefix

    def next_batch(self) -> mpb.SendMessagesRequest | None:
        if self._left is not None and self._left <= 0:
            return None
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return None
        batch = mpb.SendMessagesRequest()
        batch.CopyFrom(self._template)
        if self._left is not None and self._left < BATCH:
            del batch.requests[self._left :]
        for request in batch.requests:
            request.request_id = request_id(self._prefix, self.sent)
            self.sent += 1
        if self._left is not None:
            self._left -= len(batch.requests)
        return batch


class Tally:
    """Counts acknowledged DELIVERED statuses; `done` fires when all sends are delivered."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.delivered = 0
        self.expected: int | None = None
        self.done = asyncio.Event()
        self.failures: list[str] = []

    def add(self, count: int) -> None:
        self.delivered += count
        self.timeline.add(count)
        self._check()

    def all_sent(self, total: int) -> None:
        self.expected = total
        self._check()

    def fail(self, reason: str) -> None:
        self.failures.append(reason)
        self.done.set()

    def _check(self) -> None:
        if self.expected is not None and self.delivered >= self.expected:
            self.done.set()


def chunks(ids: Sequence[int], size: int = BATCH) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


async def _events(
    stub: messaging_pb2_grpc.MessagingServiceAsyncStub, me: Account, ready: asyncio.Event
) -> AsyncIterator[mpb.ReceiveMessagesResponse]:
    """A device's stream: `ready` is set at its QueueEmpty; the call ends with the caller."""
    call = stub.ReceiveMessages(mpb.ReceiveMessagesRequest(), metadata=me.metadata)
    try:
        async for event in call:
            if event.HasField("queue_empty"):
                ready.set()
            else:
                yield event
    finally:
        call.cancel()


def _acknowledge(
    stub: messaging_pb2_grpc.MessagingServiceAsyncStub, me: Account, **ids: list[int]
) -> Ack:
    request = mpb.AcknowledgeMessagesRequest(**ids)
    return asyncio.ensure_future(stub.AcknowledgeMessages(request, metadata=me.metadata))


async def recipient_stream(
    stub: messaging_pb2_grpc.MessagingServiceAsyncStub,
    me: Account,
    ready: asyncio.Event,
    acks: list[Ack],
    on_envelopes: Callable[[int], None] = lambda n: None,
) -> None:
    """A recipient device: acknowledges each envelope batch as it arrives, until cancelled."""
    async for event in _events(stub, me, ready):
        if event.HasField("envelopes"):
            ids = [e.envelope_id for e in event.envelopes.envelopes]
            on_envelopes(len(ids))
            acks += [_acknowledge(stub, me, envelope_ids=part) for part in chunks(ids)]


async def status_stream(
    stub: messaging_pb2_grpc.MessagingServiceAsyncStub,
    me: Account,
    prefix: str,
    ready: asyncio.Event,
    tally: Tally,
    acks: list[Ack],
) -> None:
    """A sender device: acknowledges the statuses coming back on its own stream; those of this
    run (request ids starting with `prefix`) count once their acknowledgement returned."""
    async for event in _events(stub, me, ready):
        if not event.HasField("statuses"):
            continue
        ours = [s for s in event.statuses.statuses if s.request_id.startswith(prefix)]
        failed = [s for s in ours if s.state != mpb.DELIVERY_STATE_DELIVERED]
        if failed:
            tally.fail(f"{len(failed)} not delivered: {failed[0].reason}")
        mine = {s.status_id for s in ours}
        for part in chunks([s.status_id for s in event.statuses.statuses]):
            ack = _acknowledge(stub, me, status_ids=part)
            ack.add_done_callback(_counter(tally, sum(1 for i in part if i in mine)))
            acks.append(ack)


async def close_all(streams: Sequence[asyncio.Task[None]], channels: Sequence[aio.Channel]) -> None:
    """End the streams (cancelling their calls), then close the channels they ran on."""
    for task in streams:
        task.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    for channel in channels:
        await channel.close(None)


def _counter(tally: Tally, count: int) -> Callable[[Ack], None]:
    def counted(ack: Ack) -> None:
        if ack.cancelled():
            return
        if ack.exception() is not None:
            tally.fail(f"status acknowledgement failed: {ack.exception()!r}")
        elif count:
            tally.add(count)

    return counted


async def _send(
    stub: messaging_pb2_grpc.MessagingServiceAsyncStub,
    me: Account,
    sends: _Sends,
    sent: Timeline,
) -> None:
    async def worker() -> None:
        while (batch := sends.next_batch()) is not None:
            reply = await stub.SendMessages(batch, metadata=me.metadata)
            bad = [r for r in reply.results if r.code != 0]
            if bad:
                raise RuntimeError(f"send failed: {bad[0].message}")
            sent.add(len(reply.results))

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


async def deliver(
    servers: Sequence[Server],
    pairs: Sequence[Pair],
    per_pair: int | None = None,
    seconds: float | None = None,
    template_id: str = "",
) -> Run:
    """Deliver `per_pair` messages per pair, or as many as are sent in `seconds`; pair i
    sends and receives through replica i mod n, as a load balancer that balances connections
    would place them. Sent from `template_id` when given (the senders are then businesses)."""
    if (per_pair is None) == (seconds is None):
        raise ValueError("give per_pair or seconds")
    channels = [aio.insecure_channel(s.target) for s in servers]
    stubs = [messaging_pb2_grpc.MessagingServiceStub(ch) for ch in channels]
    on = [stubs[i % len(stubs)] for i in range(len(pairs))]
    timeline, sent = Timeline(), Timeline()
    tally = Tally(timeline)
    acks: list[Ack] = []
    streams: list[asyncio.Task[None]] = []
    try:
        sends = [_Sends(p.receiver, per_pair, None, template_id) for p in pairs]
        readies = []
        for stub, pair, s in zip(on, pairs, sends, strict=True):
            readies += [asyncio.Event(), asyncio.Event()]
            streams.append(
                asyncio.ensure_future(recipient_stream(stub, pair.receiver, readies[-2], acks))
            )
            streams.append(
                asyncio.ensure_future(
                    status_stream(stub, pair.sender, s.prefix, readies[-1], tally, acks)
                )
            )
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        timeline.started = sent.started = started = time.perf_counter()
        if seconds is not None:
            for s in sends:
                s.deadline = started + seconds
        await asyncio.gather(
            *(_send(stub, p.sender, s, sent) for stub, p, s in zip(on, pairs, sends, strict=True))
        )
        total = sum(s.sent for s in sends)
        tally.all_sent(total)
        await _until(tally.done, streams)
        elapsed = time.perf_counter() - started
        if tally.failures:
            raise RuntimeError(tally.failures[0])
        await asyncio.gather(*acks)
        return Run(total, elapsed, timeline, sent)
    finally:
        await close_all(streams, channels)


async def _until(done: asyncio.Event, streams: Sequence[asyncio.Task[None]]) -> None:
    """Wait for `done`, but fail at once if a stream ended (an error, or the server went)."""
    waiter = asyncio.ensure_future(done.wait())
    finished, _ = await asyncio.wait([waiter, *streams], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in finished:
        waiter.cancel()
        ended = next(iter(finished))
        raise RuntimeError(f"a stream ended before every status came back: {ended.exception()!r}")
