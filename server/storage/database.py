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
5. One server process per database file: a lock file next to it (`<db>.lock`, flock'd, with
   the holder's pid) is taken before anything else, and released by the kernel when the
   process ends, however it ends.
6. Failures of the disk or the file (full, I/O error, locked by another program) become
   `StorageFull` / `StorageUnavailable` (see `errors.py`), never a bare `sqlite3.Error`. When
   one job's failure (or the COMMIT's) takes a whole group down, every job of the group is
   retried alone, so a job that can still commit (an acknowledgement deletes rows and frees
   pages) does not fail with the others. A job may therefore run twice; jobs only touch the
   connection they are given, so a rolled-back run leaves nothing behind. Whether writes
   currently commit is published as `writable` / `on_write_health` (the health service).
7. Files are created 0600: they hold phone numbers, token hashes and message metadata.
8. The WAL is copied back into the database file by a checkpoint thread of its own (PASSIVE:
   it never blocks the writer), not by whichever COMMIT crosses SQLite's auto-checkpoint
   threshold: that commit would pay for the copy and the database file's fsync, and every
   message of its group would wait for them. The writer's auto-checkpoint stays, at a higher
   threshold, for what the thread cannot do under steady load: copy the last frames so that
   the WAL starts over.
9. A group commit or a checkpoint that takes longer than `slow_write_s` (`--stall-warning-ms`)
   is logged (WARNING, with the time its jobs took and the time its COMMIT took, i.e. the WAL's
   fsync), so a latency spike seen by clients can be told apart: the disk, the jobs, or neither
   (then the wait was elsewhere: the event loop, the garbage collector, the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from server import watchdog
from server.storage import migrations
from server.storage.errors import (
    CannotOpenDatabase,
    DatabaseInUse,
    StorageError,
    is_storage_failure,
    opening_error,
    translate,
)
from server.storage.transaction import SqliteTransaction

T = TypeVar("T")
log = logging.getLogger(__name__)

# Upper bound of jobs in one group commit: large enough to amortise the fsync over a burst of
# sends, small enough that the first job of a batch is not held back by a very long queue.
MAX_JOBS_PER_COMMIT = 512
READER_THREADS = 2
BUSY_TIMEOUT_MS = 10_000
# At start-up a lock held by another program is reported, not waited out: the operator at the
# terminal learns in two seconds that something else holds the file.
STARTUP_BUSY_TIMEOUT_MS = 2_000
# Page cache per connection (SQLite's default is 2 MiB): the hot index pages of a table with
# millions of envelopes stay in memory. Reads of the file go through mmap, without copies.
CACHE_KIB = 64 * 1024
MMAP_BYTES = 256 * 1024 * 1024
# The database, its -wal/-shm (SQLite gives them the database's mode) and the lock file.
FILE_MODE = 0o600
# Rule 8: while writes go on, the checkpoint thread copies the WAL back this often; each
# checkpoint moves what was committed since the last one (about a thousand pages at full load).
CHECKPOINT_INTERVAL = 0.1
# Under a steady stream of commits the thread never copies the very last frames (new ones keep
# coming), so the WAL is never started over and grows. Past this many frames (16 MiB of 4 KiB
# pages) SQLite's own auto-checkpoint in the writer's commit finishes the copy: only the tail
# the thread has not reached, and its next transaction starts the WAL from the beginning.
WAL_RESET_FRAMES = 4096


@dataclass
class _Job:
    fn: Callable[[SqliteTransaction], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP = object()
_Outcome = tuple[bool, Any]


class _GroupLost(Exception):
    """A job failed and SQLite rolled back the whole transaction with it (it may, on a full
    disk or an I/O error): the other jobs' work is gone too."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def connect(
    path: Path | str, *, synchronous: str = "FULL", busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    """Open a connection with the pragmas every connection of ours needs."""
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # Takes effect on a new, empty file only (an existing one keeps its mode until a
        # VACUUM): lets the expiry sweep give free pages back (reclaim_free_pages).
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    except BaseException:
        conn.close()
        raise
    return conn


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _check_path(path: Path) -> None:
    """Refuse paths SQLite would only answer with "unable to open database file"."""
    if path.is_dir():
        raise CannotOpenDatabase(
            f"{path} is a directory; --database takes a file path, e.g. {path / 'parley.db'}"
        )
    parent = path.parent
    if not parent.exists():
        # Not created for the operator: a mistyped path would silently start an empty database.
        raise CannotOpenDatabase(
            f"the directory {parent} of {path} does not exist; create it (mkdir -p {parent}) "
            "or choose another --database"
        )
    if not parent.is_dir():
        raise CannotOpenDatabase(f"{parent} is not a directory; choose another --database")


def _take_lock(path: Path) -> int:
    """Hold `<db>.lock` for the life of this process (or until `close`); say who holds it."""
    where = lock_path(path)
    try:
        fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise CannotOpenDatabase(
            f"cannot create the lock file {where} ({exc.strerror}); make {path.parent} writable "
            "for the server's user or choose another --database"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DatabaseInUse(path, holder) from None
    with contextlib.suppress(OSError):  # a lock file left by an older version may be wider
        os.fchmod(fd, FILE_MODE)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _create_private(path: Path) -> int | None:
    """Create the database file 0600 before SQLite does (it would use 0644 under umask 022);
    SQLite gives its -wal and -shm files the database file's mode. Returns the mode of a file
    that existed already (None when this call created it)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
    return None


def _warn_if_shared(path: Path, mode: int | None) -> None:
    """Warn once, at start-up, about a database other users may read: chmod is the operator's
    decision (a group may be intended), so it is not changed behind their back."""
    if mode is not None and mode & 0o077:
        log.warning(
            "the database %s is accessible to other users (mode %04o); it holds phone "
            "numbers and token hashes: run chmod 600 on it and its -wal and -shm files",
            path,
            mode,
            extra={"path": str(path), "mode": f"{mode:04o}"},
        )


def _limit_size(conn: sqlite3.Connection, path: Path, max_bytes: int) -> None:
    """Cap the file at `max_bytes` (0: no cap); past it, writes fail with SQLITE_FULL."""
    if max_bytes <= 0:
        return
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    wanted = max(1, max_bytes // page_size)
    granted = int(conn.execute(f"PRAGMA max_page_count={wanted}").fetchone()[0])
    if granted > wanted:  # SQLite never caps below the current size
        log.warning(
            "the database %s is already %d MiB, above --max-database-mb; it will not grow "
            "until acknowledgements and expiry free room",
            path,
            granted * page_size // (1024 * 1024),
        )


def _open_writer(path: Path, synchronous: str, max_bytes: int) -> sqlite3.Connection:
    """The writer's connection, migrated and proven writable, or a one-line start-up error."""
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path, synchronous=synchronous, busy_timeout_ms=STARTUP_BUSY_TIMEOUT_MS)
        migrations.migrate(conn)
        _limit_size(conn, path, max_bytes)
        _note_vacuum_mode(conn, path)
        # Prove the write lock can be had now (a migrated database needs no write to start).
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise opening_error(exc, path) from None
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


def _note_vacuum_mode(conn: sqlite3.Connection, path: Path) -> None:
    """A file made before auto_vacuum=INCREMENTAL keeps its free pages (new rows reuse them,
    the file never shrinks): say once how to convert it, which needs the server stopped."""
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
        log.warning(
            "%s does not give free space back to the disk (it predates auto_vacuum="
            "INCREMENTAL); to convert it, stop the server and run: sqlite3 %s"
            " 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'",
            path,
            path,
        )


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class Database:
    """The server's SQLite database: migrated on open, written by one group-committing thread.

    It is the domain's `server.domain.ports.Store`: each job gets a `SqliteTransaction`."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        max_bytes: int = 0,
        slow_write_s: float = watchdog.STALL_S,
    ) -> None:
        """`slow_write_s`: rule 9's threshold (0: log none), by default the watchdog's."""
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._slow_write_s = slow_write_s
        _check_path(self.path)
        self._lock_fd = _take_lock(self.path)
        try:
            existing_mode = _create_private(self.path)
            self._writer_conn = _open_writer(self.path, self._synchronous, max_bytes)
        except BaseException:
            os.close(self._lock_fd)
            raise
        _warn_if_shared(self.path, existing_mode)
        self._writable = True
        self._health_listeners: list[Callable[[bool], None]] = []
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-reader")
        self._closed = False
        # Rule 8: the checkpoint thread copies the WAL back after writes; the writer only
        # finishes the copy when the WAL passes WAL_RESET_FRAMES (SQLite's default is 1,000).
        # Once the WAL starts over, its file is cut back to that many frames' worth of bytes.
        self._writer_conn.execute(f"PRAGMA wal_autocheckpoint={WAL_RESET_FRAMES}")
        self._writer_conn.execute(f"PRAGMA journal_size_limit={WAL_RESET_FRAMES * 4096}")
        # Each job's SAVEPOINT (and each statement of a job that may fail half-way) keeps the
        # pages it changes again as they were, in a statement journal. Past 64 KiB SQLite moves
        # that journal to a temporary file, written and dropped every group: 2.2 KB per
        # delivered plain message and 2.8 KB per billed one, a write call for most messages.
        # In memory it costs a copy: at most one of each page the job changes, emptied when the
        # job is released. Set after the migrations, whose index builds on a large file sort
        # through temporary files rather than memory.
        self._writer_conn.execute("PRAGMA temp_store=MEMORY")
        self._wrote = threading.Event()
        self._stopping = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
        )
        self._writer.start()
        self._checkpointer.start()

    # -- public API -------------------------------------------------------------------------

    async def write(self, fn: Callable[[SqliteTransaction], T]) -> T:
        """Run `fn` in a write transaction; return its result once the transaction is durable.

        `fn` gets the transaction (`server.domain.ports.Transaction`). It may run more than once
        (see rule 6): it must only touch the transaction it gets.
        """
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, loop, future))
        return await future

    async def read(self, fn: Callable[[SqliteTransaction], T]) -> T:
        """Run `fn` on a reader connection (a short read transaction) off the event loop."""
        if self._closed:
            raise RuntimeError("database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    @property
    def writable(self) -> bool:
        """False from a write that failed on storage (full, I/O, locked) to the next commit."""
        return self._writable

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def node(self) -> int:
        """This process's number among those writing the database (ids): one per file."""
        return 0

    # One process writes the file: there are no other replicas to hear from.
    shared = False

    async def listen(self, handler: Callable[[str], None]) -> None:
        """No other replica sends signals (server.domain.signals): nothing to listen to."""

    async def probe(self) -> bool:
        """Whether writes commit: the file has no server that could go away between writes, so
        the last write's outcome is the answer."""
        return self._writable

    def on_write_health(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(writable)` on each change of `writable`, from the writer thread."""
        self._health_listeners.append(listener)

    def close(self) -> None:
        """Finish queued writes, close every connection, release the lock file."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        self._writer.join()
        self._stopping.set()
        self._checkpointer.join()
        self._readers.shutdown(wait=True)
        try:
            with self._reader_lock:
                for conn in self._reader_conns:
                    conn.close()
            try:
                self._writer_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # e.g. a full disk: the WAL stays, and is replayed
                log.warning("could not checkpoint the database on close: %s", exc)
            self._writer_conn.close()
        finally:
            os.close(self._lock_fd)

    # -- threads ----------------------------------------------------------------------------

    def _run_read(self, fn: Callable[[SqliteTransaction], T]) -> T:
        tx: SqliteTransaction | None = getattr(self._local, "tx", None)
        try:
            if tx is None:
                conn = connect(self.path, synchronous=self._synchronous)
                conn.execute("PRAGMA query_only=1")
                tx = self._local.tx = SqliteTransaction(conn)
                with self._reader_lock:
                    self._reader_conns.append(conn)
            tx.connection.execute("BEGIN")
            try:
                return fn(tx)
            finally:
                _rollback(tx.connection)  # a read transaction: nothing to commit
        except sqlite3.Error as exc:
            storage = translate(exc)
            if storage is exc:
                raise
            raise storage from exc

    def _checkpoint_loop(self) -> None:
        """Rule 8: a PASSIVE checkpoint after writes, at most every CHECKPOINT_INTERVAL. It
        copies the frames no reader needs and never waits for the writer; once it has copied
        them all, the writer's next transaction starts the WAL over from its beginning."""
        conn: sqlite3.Connection | None = None
        try:
            while not self._stopping.wait(CHECKPOINT_INTERVAL):
                if not self._wrote.is_set():
                    continue
                self._wrote.clear()
                try:
                    if conn is None:
                        conn = connect(self.path, synchronous=self._synchronous)
                        # It reads the WAL and writes the file; it needs no cache of its own.
                        conn.execute("PRAGMA cache_size=-1024")
                        conn.execute("PRAGMA mmap_size=0")
                    started = time.perf_counter()
                    _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    took = time.perf_counter() - started
                    if self._slow_write_s and took > self._slow_write_s:
                        log.warning(
                            "slow checkpoint: copying %d of %d WAL frames back took %.0f ms",
                            copied, frames, took * 1e3,
                            extra={"checkpoint_ms": round(took * 1e3, 1), "frames": copied},
                        )  # fmt: skip
                except sqlite3.Error as exc:  # a full or failing disk: the writer reports it
                    log.debug("checkpoint of %s failed: %s", self.path, exc)
                    self._wrote.set()  # the frames are still to copy: try again next time
        finally:
            if conn is not None:
                conn.close()

    def _write_loop(self) -> None:
        tx = SqliteTransaction(self._writer_conn)
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
            self._commit_batch(tx, batch)
            self._wrote.set()

    def _commit_batch(self, tx: SqliteTransaction, batch: list[_Job]) -> None:
        conn = tx.connection
        try:
            outcomes = _run_group(tx, batch, self._slow_write_s)
        except (sqlite3.Error, _GroupLost) as failure:
            _rollback(conn)
            cause = failure.cause if isinstance(failure, _GroupLost) else failure
            # A job that took the transaction down with it, or a COMMIT that failed on the disk,
            # says nothing about the other jobs: each gets its own try.
            lost = isinstance(failure, _GroupLost) or is_storage_failure(cause)
            if len(batch) > 1 and lost:
                outcomes = [self._commit_alone(tx, job) for job in batch]
            else:
                outcomes = [_failed(cause, len(batch))] * len(batch)
        self._note_health(outcomes)
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            # RuntimeError: the caller's loop is gone (shutdown); the write stands regardless.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_settle, job.future, ok, value)

    def _commit_alone(self, tx: SqliteTransaction, job: _Job) -> _Outcome:
        try:
            return _run_group(tx, [job], self._slow_write_s)[0]
        except (sqlite3.Error, _GroupLost) as failure:
            _rollback(tx.connection)
            return _failed(failure.cause if isinstance(failure, _GroupLost) else failure, 1)

    def _note_health(self, outcomes: list[_Outcome]) -> None:
        failure = next((v for ok, v in outcomes if not ok and isinstance(v, StorageError)), None)
        if failure is not None:
            self._set_writable(False, failure)
        elif any(ok for ok, _ in outcomes):
            self._set_writable(True, None)

    def _set_writable(self, writable: bool, cause: BaseException | None) -> None:
        if writable == self._writable:
            return
        self._writable = writable
        if writable:
            log.info("writes to the database %s commit again", self.path)
        else:
            log.error(
                "writes to the database %s fail: %s. Reads and acknowledgements go on; "
                "health reports NOT_SERVING until a write commits",
                self.path,
                cause,
            )
        for listener in self._health_listeners:
            try:
                listener(writable)
            except Exception:
                log.exception("a write-health listener failed")


def _run_group(tx: SqliteTransaction, batch: list[_Job], slow: float) -> list[_Outcome]:
    """One transaction for the batch, each job in a SAVEPOINT so a job that raises is rolled
    back alone; raises when the transaction as a whole fails. Logs it when it took longer than
    `slow` seconds (rule 9; 0: never)."""
    conn = tx.connection
    outcomes: list[_Outcome] = []
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    for job in batch:
        conn.execute("SAVEPOINT job")
        try:
            result = job.fn(tx)
        except BaseException as exc:  # the caller gets it; other jobs go on
            if not conn.in_transaction:
                raise _GroupLost(exc) from exc
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            outcomes.append((False, translate(exc)))
        else:
            conn.execute("RELEASE job")
            outcomes.append((True, result))
    committing = time.perf_counter()
    conn.execute("COMMIT")
    done = time.perf_counter()
    if slow and done - started > slow:
        log.warning(
            "slow write: %d jobs took %.0f ms, then COMMIT (the WAL's fsync) %.0f ms",
            len(batch), (committing - started) * 1e3, (done - committing) * 1e3,
            extra={
                "jobs": len(batch),
                "jobs_ms": round((committing - started) * 1e3, 1),
                "commit_ms": round((done - committing) * 1e3, 1),
            },
        )  # fmt: skip
    return outcomes


def _failed(cause: BaseException, jobs: int) -> _Outcome:
    """The outcome of a job whose transaction failed; a failure of our own SQL is logged."""
    storage = translate(cause)
    if storage is cause:
        log.error("a group commit of %d jobs failed", jobs, exc_info=cause)
    return (False, storage)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
