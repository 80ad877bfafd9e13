"""A receiving stream that carries its own acknowledgements (ReceiveMessageStream).

A device that acknowledges with one AcknowledgeMessages call per received batch pays a whole
gRPC call per batch, and a receiver that does not wait for them piles calls up on its
connection (docs/architecture.md, "Calls in flight"). Here the acknowledgements travel on the
receiving stream itself and are written in groups.

Rules kept here:
1. An acknowledgement means what AcknowledgeMessages means: each group is applied by
   `Settlement.acknowledge` (a device deletes only its own envelopes and statuses, the first
   acknowledgement settles a message as delivered, a business message's charge is captured in
   the same transaction), in groups of at most `max_batch` ids of each kind.
2. What arrives while a group is being written is written together as the next group: one
   write job for many acknowledgement messages, no waiting when the stream is quiet.
3. At most `unapplied` ids wait (plus one message): past that the stream stops reading, so
   HTTP/2 flow control holds a faster client back and the server's memory stays bounded.
4. A message is checked as it arrives; a malformed one ends the stream with INVALID_ARGUMENT,
   once the acknowledgements before it are applied.
5. When the client half-closes, every acknowledgement it sent is applied, then the stream ends
   (OK). When the events end it (ABORTED: replaced, UNAVAILABLE: the server stops), the
   acknowledgements already read are applied first. A cancelled call (the client went away, a
   revoked credential) applies nothing more: what it did not apply is delivered again.
   grpc.aio ends the reading of the client's messages the same way for a half-close and for
   the client's cancel, and tells the handler of the cancel separately: a cancel that reaches
   the reading first, while no write is pending, ends the call as a half-close would (what
   was read is applied: the client sent it) and is not logged as abnormal.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from server.domain.auth import Principal
from server.domain.errors import InvalidArgument
from server.domain.fanout import Fanout, StreamEvent
from server.domain.settlement import Settlement

# Ids (envelopes and statuses together) read and not yet applied before the stream stops
# reading (rule 3): a few groups' worth, so the writer always has a full group waiting.
UNAPPLIED_ACKS = 4_000


@dataclass(frozen=True)
class Ack:
    """One acknowledgement message of a stream."""

    envelope_ids: Sequence[int]
    status_ids: Sequence[int]


class _Pending:
    """The ids read and not yet applied (ordered sets: a repeated id is applied once)."""

    def __init__(self, settlement: Settlement, caller: Principal, unapplied: int) -> None:
        self._settlement = settlement
        self._caller = caller
        self._unapplied = unapplied
        self._envelopes: dict[int, None] = {}
        self._statuses: dict[int, None] = {}
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._reading = True

    def __len__(self) -> int:
        return len(self._envelopes) + len(self._statuses)

    async def read(self, acks: AsyncIterator[Ack]) -> None:
        """Read acknowledgements until the client half-closes (rules 3 and 4)."""
        try:
            async for ack in acks:
                self._settlement.check_acks(ack.envelope_ids, ack.status_ids, "message")
                if 0 in ack.envelope_ids or 0 in ack.status_ids:
                    raise InvalidArgument(
                        "0 is not an envelope or status id: acknowledge the envelope_id of a "
                        "received Envelope, the status_id of a received DeliveryStatus"
                    )
                self._envelopes.update(dict.fromkeys(ack.envelope_ids))
                self._statuses.update(dict.fromkeys(ack.status_ids))
                self._settlement.note_unapplied(len(self))
                self._arrived.set()
                if len(self) >= self._unapplied:
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._reading = False
            self._arrived.set()

    async def apply(self) -> None:
        """Write what is pending, a group at a time, until reading ended and nothing is left
        (rules 1 and 2)."""
        limit = self._settlement.policy.max_batch
        while True:
            if not self:
                if not self._reading:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            envelopes = _take(self._envelopes, limit)
            statuses = _take(self._statuses, limit)
            if len(self) < self._unapplied:
                self._room.set()
            await self._settlement.acknowledge(self._caller, envelopes, statuses)


def _take(ids: dict[int, None], limit: int) -> list[int]:
    taken = list(itertools.islice(ids, limit))
    for i in taken:
        del ids[i]
    return taken


async def receive(
    fanout: Fanout,
    settlement: Settlement,
    caller: Principal,
    acks: AsyncIterator[Ack],
    unapplied: int = UNAPPLIED_ACKS,
) -> AsyncIterator[StreamEvent]:
    """The device's events (as `Fanout.stream`), while its acknowledgements are applied."""
    pending = _Pending(settlement, caller, unapplied)
    reader = asyncio.ensure_future(pending.read(acks))
    writer = asyncio.ensure_future(pending.apply())
    events = fanout.stream(caller)
    next_event: asyncio.Future[StreamEvent] = asyncio.ensure_future(anext(events))
    try:
        while True:
            racing: set[asyncio.Future[Any]] = {next_event, writer}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            if next_event.done():
                try:
                    event = next_event.result()
                except BaseException:
                    # Rule 5: the events ended (replaced, shutting down): apply what was read.
                    reader.cancel()
                    await _settled(writer)
                    raise
                yield event
                next_event = asyncio.ensure_future(anext(events))
            elif writer.done():
                writer.result()  # a failed write ends the stream with its status
                reader.result()  # a malformed message (rule 4); none: the client half-closed
                return
    finally:
        for task in (next_event, reader, writer):
            task.cancel()
        await asyncio.gather(next_event, reader, writer, return_exceptions=True)
        await events.aclose()


async def _settled(writer: asyncio.Future[None]) -> None:
    """Wait for the writer to apply what is pending; its failure is not the stream's status
    (the stream already has one)."""
    with contextlib.suppress(Exception):
        await writer
