"""One fsync for the sends a client makes together (group commit, client side).

A send must not let its ciphertext leave before the session state it advanced is on disk
(``client.api``, rule 1), and the store commits with ``synchronous=FULL``: one commit is an
fsync, a few hundred microseconds on a virtual disk, more than encrypting the message. A
chat app's outbox with many sends queued (or a bot) would pay it for every message. So a
send writes in a ``transaction(durable=False)`` block and then awaits
:meth:`GroupCommit.wait`: the sends that write while the event loop keeps finding new work
share one commit, made as soon as a turn of the loop brings no new waiter (or after
``MAX_TURNS``, so a steady stream of sends cannot hold the first ones back). A lone send
waits two turns of the loop, no more.

While the client has sends in flight (the outbox waits for answers), it commits at most
once every ``BUSY_INTERVAL``: a send then waits up to that long for its commit, which costs
it nothing next to the round trip it is already waiting out behind the others, and the
groups grow from the two or three sends a turn of the loop brings to everything written in
the interval. Each stage downstream (the server's commit groups, the receiver's stream
batches and commits) then works in larger batches too. On the reference client's full path
(both ends in one process on one core) the fsyncs went from ~850 to ~430 per 1,000 messages.

The fsync stays on the event loop's thread: handing it to a worker thread measured
~170 µs more CPU and wall time per fsync on the development VM than the fsync itself
(thread wake-ups and the GIL's hand-back), and smaller groups.

Rules kept here:
1. ``wait`` returns only once everything written before it is committed. If the commit
   fails, every waiter gets its error: the store rolled all of it back, so none of their
   ciphertexts may go out.
2. Nothing is left uncommitted: the commit is scheduled when the first waiter comes, and
   :meth:`flush` commits at once (a client closing).
3. A waiter that is cancelled leaves the others waiting for the same commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from client.store import ClientStore

MAX_TURNS: Final = 8
"""Turns of the event loop a commit may wait for more writers before it is made anyway."""
BUSY_INTERVAL: Final = 0.005
"""Seconds between two commits while sends are in flight (see above)."""


class GroupCommit:
    def __init__(self, store: ClientStore, busy: Callable[[], bool] = lambda: False) -> None:
        """``busy``: whether sends are in flight (the commit may then wait, see above)."""
        self._store = store
        self._busy = busy
        self._last = -BUSY_INTERVAL  # loop time of the last commit
        self._waiters: list[asyncio.Future[None]] = []  # of the commit being gathered
        self._seen = 0  # waiters at the previous turn
        self._turns = 0
        self.commits = 0  # commits made (for tests and metrics)

    async def wait(self, *, spaced: bool = False) -> None:
        """Return once this client's writes so far are committed (rule 1). ``spaced``: the
        caller is one of a stream of writers even when no send is in flight (the receive
        path, while envelopes keep coming): commits are spaced by ``BUSY_INTERVAL``."""
        if not self._store.pending:
            return
        loop = asyncio.get_running_loop()
        if not self._waiters:
            self._seen, self._turns = 0, 0
            busy = spaced or self._busy()
            wait = self._last + BUSY_INTERVAL - loop.time() if busy else 0.0
            if wait > 0:
                loop.call_later(wait, self._turn)
            else:
                loop.call_soon(self._turn)
        waiter = loop.create_future()
        self._waiters.append(waiter)
        await waiter  # each waiter its own future (rule 3)

    def _turn(self) -> None:
        if not self._waiters:  # flushed meanwhile
            return
        self._turns += 1
        if len(self._waiters) != self._seen and self._turns < MAX_TURNS:
            self._seen = len(self._waiters)
            asyncio.get_running_loop().call_soon(self._turn)
            return
        self.flush()

    def flush(self) -> None:
        """Commit now and release the waiters (rule 2); the commit's error goes to them."""
        waiters, self._waiters = self._waiters, []
        self._last = asyncio.get_running_loop().time()
        try:
            self._store.commit()
        except Exception as exc:
            if not waiters:
                raise
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
                    waiter.exception()  # marked retrieved: its send may have been cancelled
            return
        self.commits += 1
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
