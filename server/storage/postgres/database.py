"""PostgreSQL as the record several server replicas share.

Rules this module keeps (docs/architecture.md, "Storage"), next to the SQLite backend's:
1. The asyncio event loop never waits on the database: jobs run on a small pool of threads,
   each borrowing a connection from psycopg's pool for the length of one transaction.
2. Every write job is its own transaction at READ COMMITTED. Nothing relies on there being one
   writer: each invariant is a constraint or a conditional statement (ports guarantees), so
   other replicas may write the same rows at any moment.
3. A job that loses a race to another transaction (a serialization failure, a deadlock, a
   unique key another replica took first) is rolled back and run again, a few times with a
   short random pause; its second run sees the winner's rows. Jobs may run more than once
   already (ports guarantee 1), so this costs no new rule.
4. A job's result is returned after its COMMIT returned: "accepted" means committed.
5. Reads run in a REPEATABLE READ, READ ONLY transaction: one consistent snapshot, like a
   SQLite read transaction.
6. A database that cannot be reached, or refuses writes, becomes `StorageUnavailable` (and a
   full disk `StorageFull`), never a bare psycopg error; whether writes commit is published as
   `writable` / `on_write_health` for the health service, and a periodic probe keeps it true
   while no write happens.
7. Migrations run at start-up under an advisory lock, so replicas starting together apply
   each migration once (`server.storage.postgres.migrations`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool

from server.domain.replicas_model import CHANNEL, NODES, RESYNC
from server.storage.errors import CannotOpenDatabase, StorageError
from server.storage.postgres import migrations
from server.storage.postgres.connection import PgConnection, configure
from server.storage.postgres.errors import RETRYABLE, translate
from server.storage.postgres.transaction import PostgresTransaction

T = TypeVar("T")
log = logging.getLogger(__name__)

WRITE_THREADS = 6
READ_THREADS = 4
# A job that keeps losing races is reported (UNAVAILABLE, retry) rather than retried forever.
MAX_ATTEMPTS = 6
CONNECT_TIMEOUT_S = 5
# The advisory lock key space of replica numbers ("PN"); the number is the second key.
NODE_LOCK_SPACE = 0x504E
# How long a job waits for a connection from the pool before it is answered UNAVAILABLE.
POOL_TIMEOUT_S = 10.0


def redacted(url: str) -> str:
    """The URL without its password: safe for logs and error messages."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable address)"
    params.pop("password", None)
    user = params.get("user")
    host = params.get("host", "")
    port = params.get("port")
    db = params.get("dbname", "")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{f'{user}@' if user else ''}{where}/{db}"


class PostgresDatabase:
    """The server's PostgreSQL database: migrated on open, written by jobs on a thread pool.

    It is the domain's `server.domain.ports.Store`: each job gets a `PostgresTransaction`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = redacted(url)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                migrations.migrate(conn)
        except psycopg.OperationalError as exc:
            raise CannotOpenDatabase(
                f"cannot connect to PostgreSQL at {self.name}: {_first_line(exc)}; check that "
                "the server is running and the address, role and database in --database"
            ) from None
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=2,
            max_size=WRITE_THREADS + READ_THREADS + 1,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=configure,
            timeout=POOL_TIMEOUT_S,
            name="parley",
            open=True,
        )
        self._node_conn, self._node = _claim_node(url)
        self._node_lost = False
        self._writable = True
        self._health_listeners: list[Callable[[bool], None]] = []
        self._health_lock = threading.Lock()
        self._writers = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="pg-writer")
        self._readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="pg-reader")
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    async def write(self, fn: Callable[[PostgresTransaction], T]) -> T:
        """Run `fn` in a write transaction; return its result once it committed. `fn` may run
        more than once (rule 3): it must only touch the transaction it gets."""
        if self._closed:
            raise RuntimeError("database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._writers, self._run_write, fn)

    async def read(self, fn: Callable[[PostgresTransaction], T]) -> T:
        """Run `fn` in a read-only snapshot transaction off the event loop."""
        if self._closed:
            raise RuntimeError("database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn)

    @property
    def node(self) -> int:
        """This replica's number among those writing the database (server.domain.ids), held
        as a session advisory lock for as long as the replica runs."""
        return self._node

    @property
    def writable(self) -> bool:
        """False from a write (or probe) that failed on the database to the next success."""
        return self._writable

    def on_write_health(self, listener: Callable[[bool], None]) -> None:
        self._health_listeners.append(listener)

    # Several replicas write this database: streams claim epochs and poll (fanout rule 6).
    shared = True

    async def listen(self, handler: Callable[[str], None]) -> None:
        """Hand every signal other replicas send (server.domain.signals) to `handler`, on the
        event loop, until cancelled. The LISTEN connection is a session of its own; when it
        breaks it is opened again, and `handler(RESYNC)` says signals may have been missed."""
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.1
                    _hand(handler, RESYNC)
                    async for note in conn.notifies():
                        _hand(handler, note.payload)
            except psycopg.Error as exc:
                log.warning(
                    "the replica signal connection to %s failed (%s); reconnecting in %.1f s",
                    self.name,
                    _first_line(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def probe(self) -> bool:
        """Whether the database answers now (the health loop calls this while idle); also
        takes the replica number back if its connection was lost (the database restarted)."""
        try:
            await self.write(lambda tx: tx.connection.execute("SELECT 1").fetchone())
        except StorageError:
            return False
        if self._node_conn.closed or self._node_conn.broken:
            await asyncio.get_running_loop().run_in_executor(self._writers, self._reclaim_node)
        return True

    def _reclaim_node(self) -> None:
        """Hold this replica's number again. Another replica may have taken it while the lock
        was gone: then ids could collide, so this replica stops serving writes (and says why)
        rather than risk it."""
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            (held,) = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (NODE_LOCK_SPACE, self._node)
            ).fetchone() or (False,)
        except psycopg.Error as exc:
            log.warning("could not take replica number %d back yet: %s", self._node, exc)
            return
        if not held:
            conn.close()
            self._node_lost = True
            self._set_writable(
                False,
                StorageError(f"replica number {self._node} was taken by another replica"),
            )
            log.error(
                "replica number %d was taken by another replica while this one was cut off "
                "from the database; restart this replica",
                self._node,
            )
            return
        self._node_conn.close()
        self._node_conn = conn

    def close(self) -> None:
        """Finish running jobs, close every connection."""
        if self._closed:
            return
        self._closed = True
        self._writers.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._pool.close()
        self._node_conn.close()

    # -- threads ----------------------------------------------------------------------------

    def _run_write(self, fn: Callable[[PostgresTransaction], T]) -> T:
        attempt = 1
        while True:
            try:
                with self._pool.connection() as raw, raw.transaction():
                    result = fn(PostgresTransaction(PgConnection(raw), self._node))
            except RETRYABLE as exc:
                if attempt >= MAX_ATTEMPTS:
                    log.warning("a write lost %d races in a row: %s", attempt, _first_line(exc))
                    raise translate(exc) from exc
                attempt += 1
                time.sleep(random.uniform(0.001, 0.005 * attempt))
                continue
            except (psycopg.Error, StorageError) as exc:
                storage = translate(exc)
                if isinstance(storage, StorageError):
                    self._set_writable(False, storage)
                if storage is exc:
                    raise
                raise storage from exc
            self._set_writable(True, None)
            return result

    def _run_read(self, fn: Callable[[PostgresTransaction], T]) -> T:
        try:
            with self._pool.connection() as raw, raw.transaction():
                raw.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return fn(PostgresTransaction(PgConnection(raw), self._node))
        except psycopg.Error as exc:
            storage = translate(exc)
            if storage is exc:
                raise
            raise storage from exc

    def _set_writable(self, writable: bool, cause: BaseException | None) -> None:
        if writable and self._node_lost:  # NOT_SERVING until restarted (_reclaim_node)
            return
        with self._health_lock:
            if writable == self._writable:
                return
            self._writable = writable
        if writable:
            log.info("writes to the database %s commit again", self.name)
        else:
            log.error(
                "writes to the database %s fail: %s. Health reports NOT_SERVING until a "
                "write commits",
                self.name,
                cause,
            )
        for listener in self._health_listeners:
            try:
                listener(writable)
            except Exception:
                log.exception("a write-health listener failed")


def _hand(handler: Callable[[str], None], payload: str) -> None:
    """A signal to its handler; a handler that fails is logged, and the signals go on."""
    try:
        handler(payload)
    except Exception:
        log.exception("a replica signal's handler failed on %r", payload[:80])


def _claim_node(url: str) -> tuple[psycopg.Connection[Any], int]:
    """The lowest replica number no running replica holds, and the connection that holds it: a
    session advisory lock, released by PostgreSQL when the connection ends, however the
    replica ends. Ids carry the number, so two replicas never make the same id."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        for node in range(NODES):
            (held,) = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (NODE_LOCK_SPACE, node)
            ).fetchone() or (False,)
            if held:
                return conn, node
    except BaseException:
        conn.close()
        raise
    conn.close()
    raise CannotOpenDatabase(
        f"{NODES} replicas already run on this database, the most it supports; stop one or "
        "point this one at another database"
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
