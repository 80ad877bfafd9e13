"""One SQLite file shared by one writer thread and a few reader threads.

Rules this module keeps (docs/architecture.md, "Storage"):
1. The asyncio event loop never runs SQLite or waits on fsync: writes go to the writer thread,
   reads to a small pool of reader threads, each with its own connection.
2. Every write is a job run by the single writer. Jobs waiting together are group-committed:
   one `BEGIN IMMEDIATE ... COMMIT` (one fsync) for all of them, each job inside its own
   SAVEPOINT so a job that raises is rolled back alone and its caller gets the exception.
3. A job's future resolves only after the COMMIT that holds it returned, so "accepted" in a
   reply always means "on disk" (synchronous=FULL by default).
4. WAL mode: readers see the last committed state and never block the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from server.storage import migrations

T = TypeVar("T")
log = logging.getLogger(__name__)

# Upper bound of jobs in one group commit: large enough to amortise the fsync over a burst of
# sends, small enough that the first job of a batch is not held back by a very long queue.
MAX_JOBS_PER_COMMIT = 512
READER_THREADS = 2
BUSY_TIMEOUT_MS = 10_000
# Page cache per connection (SQLite's default is 2 MiB): the hot index pages of a table with
# millions of envelopes stay in memory. Reads of the file go through mmap, without copies.
CACHE_KIB = 64 * 1024
MMAP_BYTES = 256 * 1024 * 1024


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP = object()


def connect(path: Path | str, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open a connection with the pragmas every connection of ours needs."""
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return conn


class Database:
    """The server's SQLite database: migrated on open, written by one group-committing thread."""

    def __init__(self, path: Path | str, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._writer_conn = connect(self.path, synchronous=self._synchronous)
        migrations.migrate(self._writer_conn)
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-reader")
        self._closed = False
        self._writer.start()

    # -- public API -------------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a write transaction; return its result once the transaction is durable."""
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, loop, future))
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a reader connection (a short read transaction) off the event loop."""
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    def close(self) -> None:
        """Finish queued writes, then close every connection."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        self._writer.join()
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
        self._writer_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._writer_conn.close()

    # -- threads ----------------------------------------------------------------------------

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, synchronous=self._synchronous)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    def _write_loop(self) -> None:
        conn = self._writer_conn
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is _STOP:
                break
            batch: list[_Job] = [first]  # type: ignore[list-item]
            while len(batch) < MAX_JOBS_PER_COMMIT:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)  # type: ignore[arg-type]
            self._commit_batch(conn, batch)

    @staticmethod
    def _commit_batch(conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    result = job.fn(conn)
                except BaseException as exc:  # the caller gets it; other jobs go on
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((True, result))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.exception("group commit of %d jobs failed", len(batch))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(False, exc)] * len(batch)
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            # RuntimeError: the caller's loop is gone (shutdown); the write stands regardless.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_settle, job.future, ok, value)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
