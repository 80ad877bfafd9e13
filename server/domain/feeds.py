"""Following a numbered feed from the database: the backlog from a cursor, a caught-up marker,
then live items and keep-alives. What the support queue (WatchSupportQueue) and the business
status events (StreamStatusEvents) share.

Rules kept here, for every feed:
1. The database is the only source of items: a stream reads them in pages, from the last
   position it sent, so it holds one page in memory whatever the backlog, and a resumed
   stream (from the last position the client saw) misses nothing and repeats nothing.
2. Writers wake the streams of a key (a business) through `Wakeups` after their commit. One
   flag per stream, cleared *before* each read: a commit that lands during a read sets it
   again, so the stream reads again. Another replica's commits arrive as FEED signals
   (server.domain.signals); a wake-up lost anyway costs at most one keep-alive interval,
   after which the stream reads again: latency, never an item.
3. `close` ends every stream with UNAVAILABLE (the server is stopping: reconnect) and refuses
   new ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from server.domain.errors import Unavailable
from server.domain.fanout import SHUTTING_DOWN
from server.domain.ports import ReadTransaction, Store

R = TypeVar("R")


@dataclass(frozen=True)
class CaughtUp:
    """The backlog is sent; `cursor` is the last position sent so far."""

    cursor: int


@dataclass(frozen=True)
class KeepAlive:
    """Nothing happened for a keep-alive interval."""


class Wakeups:
    """Wakes this server's streams of a key after a change to its feed commits (rule 2)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self.closing = False

    def subscribe(self, key: str) -> asyncio.Event:
        flag = asyncio.Event()
        self._waiters.setdefault(key, set()).add(flag)
        return flag

    def unsubscribe(self, key: str, flag: asyncio.Event) -> None:
        flags = self._waiters.get(key)
        if flags is not None:
            flags.discard(flag)
            if not flags:
                del self._waiters[key]

    def notify(self, key: str) -> None:
        for flag in self._waiters.get(key, ()):
            flag.set()

    def notify_all(self) -> None:
        """Every stream reads again (another replica's wake-ups may have been lost)."""
        for flags in self._waiters.values():
            for flag in flags:
                flag.set()

    def close(self) -> None:
        """Rule 3: wake every stream so it ends, and mark new ones refused."""
        self.closing = True
        for flags in self._waiters.values():
            for flag in flags:
                flag.set()


async def follow(
    db: Store,
    wakeups: Wakeups,
    key: str,
    cursor: int,
    page: Callable[[int], Callable[[ReadTransaction], list[R]]],
    position: Callable[[R], int],
    page_size: int,
    keepalive_interval: float,
) -> AsyncIterator[R | CaughtUp | KeepAlive]:
    """Every item of `key`'s feed after `cursor`, `CaughtUp` once, then live items and
    keep-alives, until the server closes (UNAVAILABLE). `page(after)` is the read of at most
    `page_size` items after position `after` (and any check that the caller may still read
    them: it runs on every page); `position` is an item's position."""
    if wakeups.closing:
        raise Unavailable(SHUTTING_DOWN)
    # Subscribe before the first read: nothing committed after it goes unnoticed.
    flag = wakeups.subscribe(key)
    try:
        after = cursor
        caught_up = False
        while True:
            flag.clear()  # before the read: a change committed during it wakes us again
            rows = await db.read(page(after))
            for row in rows:
                yield row
                after = position(row)
            if len(rows) >= page_size:
                continue  # more backlog
            if not caught_up:
                caught_up = True
                yield CaughtUp(after)
            try:
                await asyncio.wait_for(flag.wait(), keepalive_interval)
            except TimeoutError:
                yield KeepAlive()  # and read again: a wake-up may have been lost
            if wakeups.closing:
                raise Unavailable(SHUTTING_DOWN)
    finally:
        wakeups.unsubscribe(key, flag)
