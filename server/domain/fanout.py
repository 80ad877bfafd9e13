"""Fan-out: who is connected right now, and handing them what was just committed.

This part is in-process by nature: it knows the streams open on *this* server. What it hands
out was committed first (or, online-only, never stored), so a replica that is not told about
a send loses nothing: its device's stream reads the database on reconnect.

Rules kept here:
1. Each device receives its envelopes in stream position order (positions grow in commit
   order, ports guarantee 15), every one until acknowledged; a stream sends an envelope at
   most once, a new stream sends again whatever was not acknowledged.
2. A device has one stream: a new one replaces the old, which ends ABORTED.
3. A connected device's buffer is bounded in bytes: past it the stream forgets what it
   buffered and re-reads the database, so a stalled reader costs bounded memory, nothing is
   lost. When a stream ends, `released` hears the most it buffered, so the process can give
   a large buffer's memory back to the system (`server.heap.GiveBack`).
4. Online-only content (typing) is never stored: it reaches the devices connected right now,
   or nobody.
5. At shutdown every open stream ends UNAVAILABLE (reconnect) and new ones are refused.
6. With several replicas on one database (`shared`), what this server hands out is not all
   there is: another replica's commits reach a stream here as signals
   (`server.domain.signals`) that make it re-read the database from its position, and a
   stream also re-reads on a slow poll, so a lost signal costs latency, never a message. A
   stream claims an epoch when it opens; a newer epoch of the same device, opened on any
   replica, ends it (rule 2 across replicas).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from server.domain.auth import Principal
from server.domain.errors import Aborted, Unavailable
from server.domain.messaging_policy import MessagingPolicy
from server.domain.model import EnvelopeRow, StatusRow
from server.domain.ports import ReadTransaction, Store, Transaction

# Envelopes per stream message are capped by bytes too, well under gRPC's default 4 MiB
# receive limit, so a batch of large ciphertexts never breaks a client.
STREAM_CHUNK_BYTES = 1024 * 1024
SHUTTING_DOWN = "the server is shutting down; reconnect (to another replica, or in a moment)"
# What one delivery status weighs in a stream buffer: its ids, request id and reason.
STATUS_BYTES = 256


# -- stream events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelopes:
    envelopes: list[EnvelopeRow]
    online_only: bool = False


@dataclass(frozen=True)
class Statuses:
    statuses: list[StatusRow]


@dataclass(frozen=True)
class QueueEmpty:
    pass


@dataclass(frozen=True)
class KeepAlive:
    pass


StreamEvent = Envelopes | Statuses | QueueEmpty | KeepAlive


@dataclass(eq=False)
class _Connection:
    """One open stream of one device: a wake-up event and an in-memory buffer bounded in bytes.

    Past `limit_bytes` the stream stops buffering and re-reads from the database instead: a
    stalled reader costs at most `limit_bytes` of memory, and nothing is lost.
    """

    limit_bytes: int
    envelopes: collections.deque[EnvelopeRow] = field(default_factory=collections.deque)
    online: collections.deque[EnvelopeRow] = field(default_factory=collections.deque)
    statuses: collections.deque[StatusRow] = field(default_factory=collections.deque)
    size: int = 0  # bytes of content (and statuses) buffered now
    peak: int = 0  # the most it buffered
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflow: bool = False
    replaced: bool = False
    epoch: int = 0  # the stream's claim on its device, when replicas share the database

    def _room(self, size: int) -> bool:
        return self.size + size <= self.limit_bytes

    def _hold(self, size: int) -> None:
        self.size += size
        self.peak = max(self.peak, self.size)

    def push_envelopes(self, rows: list[EnvelopeRow]) -> None:
        size = sum(len(r.content) for r in rows)
        if self.overflow or not self._room(size):
            self.fall_back()
        else:
            self.envelopes.extend(rows)
            self._hold(size)
        self.wake.set()

    def push_statuses(self, rows: list[StatusRow]) -> None:
        size = STATUS_BYTES * len(rows)
        if self.overflow or not self._room(size):
            self.fall_back()
        else:
            self.statuses.extend(rows)
            self._hold(size)
        self.wake.set()

    def push_online(self, row: EnvelopeRow) -> None:
        if self._room(len(row.content)):  # typing indicators may be dropped, never stored
            self.online.append(row)
            self._hold(len(row.content))
            self.wake.set()

    def fall_back(self) -> None:
        """Forget the stored rows buffered so far: the stream re-reads them from the database."""
        self.overflow = True
        self.envelopes.clear()
        self.statuses.clear()
        self.size = sum(len(r.content) for r in self.online)

    def take_online(self) -> list[EnvelopeRow]:
        rows = list(self.online)
        self.online.clear()
        self.size -= sum(len(r.content) for r in rows)
        return rows

    def take_stored(self) -> tuple[list[EnvelopeRow], list[StatusRow]]:
        envelopes, statuses = list(self.envelopes), list(self.statuses)
        self.envelopes.clear()
        self.statuses.clear()
        self.size = sum(len(r.content) for r in self.online)
        return envelopes, statuses


class Fanout:
    """The open streams of this server's connected devices."""

    def __init__(
        self,
        db: Store,
        policy: MessagingPolicy,
        *,
        shared: bool = False,
        released: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        self.policy = policy
        self._released = released or (lambda peak_bytes: None)
        # Other replicas write the database too (rule 6): streams claim epochs and poll.
        self.shared = shared
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._closing = False

    async def stream(self, caller: Principal) -> AsyncGenerator[StreamEvent, None]:
        """The device's events: stored backlog, QueueEmpty, then live events and keep-alives."""
        if self._closing:
            raise Unavailable(SHUTTING_DOWN)
        key = (caller.account_id, caller.device_id)
        connection = _Connection(self.policy.stream_buffer_bytes)
        old = self._connections.get(key)
        if old is not None:
            old.replaced = True
            old.wake.set()
        self._connections[key] = connection  # before reading the backlog: nothing slips between
        sent = _Position()
        loop = asyncio.get_running_loop()
        try:
            if self.shared:
                connection.epoch = await self._db.write(
                    partial(_claim_stream, account_id=caller.account_id, device_id=caller.device_id)
                )
            async for event in self._from_database(caller, sent):
                yield sent.past(event)
            yield QueueEmpty()
            idle_since = loop.time()  # a keep-alive after keepalive_interval without events
            while True:
                wait = idle_since + self.policy.keepalive_interval - loop.time()
                if self.shared:
                    wait = min(wait, self.policy.stream_poll_interval)
                try:
                    await asyncio.wait_for(connection.wake.wait(), max(wait, 0.0))
                except TimeoutError:
                    if loop.time() >= idle_since + self.policy.keepalive_interval:
                        idle_since = loop.time()
                        yield KeepAlive()
                    if not self.shared:
                        continue
                    connection.overflow = True  # the slow poll: what a lost signal announced
                else:
                    connection.wake.clear()
                    idle_since = loop.time()
                if self._closing:
                    raise Unavailable(SHUTTING_DOWN)
                if connection.replaced:
                    raise Aborted("another ReceiveMessages stream of this device replaced this one")
                if connection.online:
                    yield Envelopes(connection.take_online(), online_only=True)
                if connection.overflow:
                    connection.overflow = False
                    connection.take_stored()
                    async for event in self._from_database(caller, sent):
                        yield sent.past(event)
                    continue
                envelopes, statuses = connection.take_stored()
                fresh = [r for r in envelopes if r.seq > sent.envelope]
                for chunk in self._chunks(fresh):
                    yield sent.past(Envelopes(chunk))
                news = [s for s in statuses if s.seq > sent.status]
                if news:
                    yield sent.past(Statuses(news))
        finally:
            if self._connections.get(key) is connection:
                del self._connections[key]
            self._released(connection.peak)  # rule 3

    def _chunks(self, rows: list[EnvelopeRow]) -> Iterator[list[EnvelopeRow]]:
        """Stream messages of at most `stream_batch` envelopes and about STREAM_CHUNK_BYTES."""
        chunk: list[EnvelopeRow] = []
        size = 0
        for row in rows:
            if chunk and (
                len(chunk) >= self.policy.stream_batch
                or size + len(row.content) > STREAM_CHUNK_BYTES
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(row)
            size += len(row.content)
        if chunk:
            yield chunk

    async def _from_database(
        self, caller: Principal, sent: _Position
    ) -> AsyncIterator[Envelopes | Statuses]:
        """What the device has stored past `sent`: envelopes, then delivery statuses."""
        envelopes = partial(_envelopes_after, max_bytes=STREAM_CHUNK_BYTES)
        async for rows in self._pages(envelopes, caller, sent.envelope):
            for chunk in self._chunks(rows):
                yield Envelopes(chunk)
        async for statuses in self._pages(_statuses_after, caller, sent.status):
            yield Statuses(statuses)

    async def _pages(
        self, fetch: Callable[..., list[_Row]], caller: Principal, after: int
    ) -> AsyncIterator[list[_Row]]:
        """Read `fetch` page by page, each page a short read transaction off the event loop."""
        while True:
            rows = await self._db.read(
                partial(
                    fetch,
                    account_id=caller.account_id,
                    device_id=caller.device_id,
                    after_seq=after,
                    limit=self.policy.stream_batch,
                )
            )
            if not rows:
                return
            after = rows[-1].seq
            yield rows

    def close_streams(self) -> None:
        """End every open stream (UNAVAILABLE: reconnect) and refuse new ones: the server is
        stopping. Streams never end by themselves, so without this a shutdown would wait its
        whole grace period and then cancel them."""
        self._closing = True
        for connection in self._connections.values():
            connection.wake.set()

    # -- signals from other replicas (server.domain.signals.Streams) -------------------------

    def on_rows(self, account_id: str, device_id: int) -> None:
        """Another replica committed rows for the device: its stream here re-reads them."""
        connection = self._connections.get((account_id, device_id))
        if connection is not None:
            connection.fall_back()
            connection.wake.set()

    def on_stream(self, account_id: str, device_id: int, epoch: int) -> None:
        """The device opened a stream with `epoch` on another replica: an older one here ends."""
        connection = self._connections.get((account_id, device_id))
        if connection is not None and connection.epoch < epoch:
            connection.replaced = True
            connection.wake.set()

    def resync(self) -> None:
        """Signals may have been lost (the signal connection restarted): every stream re-reads."""
        for connection in self._connections.values():
            connection.fall_back()
            connection.wake.set()

    def notify_envelopes(self, rows: list[EnvelopeRow]) -> None:
        by_device: dict[tuple[str, int], list[EnvelopeRow]] = {}
        for row in rows:
            by_device.setdefault((row.account_id, row.device_id), []).append(row)
        for key, group in by_device.items():
            connection = self._connections.get(key)
            if connection is not None:
                connection.push_envelopes(group)

    def notify_statuses(self, rows: list[StatusRow]) -> None:
        for row in rows:
            connection = self._connections.get((row.account_id, row.device_id))
            if connection is not None:
                connection.push_statuses([row])

    def push_online(self, rows: list[EnvelopeRow]) -> bool:
        delivered = False
        for row in rows:
            connection = self._connections.get((row.account_id, row.device_id))
            if connection is not None:
                connection.push_online(row)
                delivered = True
        return delivered


_Row = TypeVar("_Row", EnvelopeRow, StatusRow)


@dataclass
class _Position:
    """How far a stream has sent: the stream positions of the last envelope and status."""

    envelope: int = 0
    status: int = 0

    def past(self, event: Envelopes | Statuses) -> Envelopes | Statuses:
        if isinstance(event, Envelopes):
            self.envelope = event.envelopes[-1].seq
        else:
            self.status = event.statuses[-1].seq
        return event


def _claim_stream(tx: Transaction, account_id: str, device_id: int) -> int:
    return tx.claim_stream(account_id, device_id)


def _envelopes_after(
    tx: ReadTransaction, account_id: str, device_id: int, after_seq: int, limit: int, max_bytes: int
) -> list[EnvelopeRow]:
    return tx.envelopes_after(account_id, device_id, after_seq, limit, max_bytes)


def _statuses_after(
    tx: ReadTransaction, account_id: str, device_id: int, after_seq: int, limit: int
) -> list[StatusRow]:
    return tx.statuses_after(account_id, device_id, after_seq, limit)
