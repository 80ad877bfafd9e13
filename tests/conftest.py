"""Fixtures: a real Parley server on a loopback port with a real SQLite file.

The server runs on its own asyncio loop in a background thread; tests talk to it through the
generated stubs over a real gRPC channel, exactly like any other client. Tests of the PostgreSQL
backend get a database of their own from a throwaway cluster (`postgres_url`, at the end).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc

from server.app import ParleyServer, build_server
from server.config import Settings
from server.domain.clock import ManualClock
from server.domain.codes import VerificationGate
from server.storage.postgres import migrations as postgres_migrations
from server.storage.postgres.local import PostgresCluster, PostgresUnavailable, find_bin_dir
from server.storage.sql import StorageTransaction

# Set by .ci/run: a test that would be skipped (a missing Node.js, Chromium, PostgreSQL...) fails
# instead, so CI can never pass by skipping. On a developer's machine a skip says what to install.
REQUIRE_ALL = "PARLEY_REQUIRE_ALL"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_ALL) == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but {REQUIRE_ALL}=1 forbids skips: {reason}"


T = TypeVar("T")

TEST_NUMBER = "+15550001111"
TEST_CODE = "123456"


class RecordingCodeSender:
    """Stands in for the SMS gateway (an external system): remembers the last code per number."""

    def __init__(self) -> None:
        self.codes: dict[str, str] = {}
        self.sent = 0

    async def send(self, phone_number: str, code: str, verification_id: str) -> None:
        self.codes[phone_number] = code
        self.sent += 1


class LiveServer:
    def __init__(
        self,
        settings: Settings,
        clock: ManualClock,
        sender: RecordingCodeSender,
        gate: VerificationGate | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sender = sender
        self.gate = gate
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: ParleyServer | None = None
        self._channels: list[grpc.Channel] = []
        self.port = 0
        self.start()

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    @property
    def http_port(self) -> int:
        """The landing pages' port (a server made with `http_port=0`)."""
        assert self._server is not None and self._server.http_port is not None, "no HTTP"
        return self._server.http_port

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                self._server = await build_server(
                    self.settings,
                    clock=self.clock,
                    code_sender=self.sender,
                    verification_gate=self.gate,
                )
                await self._server.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                raise
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.port = self._server.port
            ready.set()
            await self._stop.wait()
            await self._server.stop(grace=1.0)

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        # Later starts (restart) must reuse the same port so old channels reconnect.
        self.settings = replace(self.settings, port=self.port)

    def stop(self) -> None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        if self._loop and self._stop and self._thread:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        self._thread = None

    def run(self, make: Callable[[ParleyServer], Awaitable[T]], timeout: float = 30) -> T:
        """Run a coroutine on the server's own loop, against its assembled parts: for tests
        that set up rows with the storage methods (`parts.db.write(job)`) or wake a notifier
        the way the server's own writers do."""
        assert self._loop is not None and self._server is not None, "the server is not running"
        server = self._server
        return asyncio.run_coroutine_threadsafe(_awaited(make, server), self._loop).result(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.target)
        self._channels.append(ch)
        return ch

    def accounts(self) -> account_pb2_grpc.AccountServiceStub:
        return account_pb2_grpc.AccountServiceStub(self.channel())

    @property
    def on_sqlite(self) -> bool:
        return isinstance(self.settings.database, Path)

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the server's database, whichever the backend (`?`
        placeholders, SQL both accept), in a write transaction of its own; its rows."""

        def job(tx: StorageTransaction) -> list[tuple[Any, ...]]:
            cursor = tx.connection.execute(query, params)
            if getattr(cursor, "description", None) is None:
                return []
            return [tuple(r) for r in cursor.fetchall()]

        return self.run(lambda s: s.db.write(job))

    def table_names(self) -> list[str]:
        if self.on_sqlite:
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
            query += " AND name NOT LIKE 'sqlite_%' ORDER BY name"
        else:
            query = "SELECT table_name FROM information_schema.tables"
            query += " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            query += " ORDER BY table_name"
        return [str(r[0]) for r in self.sql(query)]

    def all_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table: for tests of what the server keeps (and does not)."""
        return {t: self.sql(f"SELECT * FROM {t}") for t in self.table_names()}

    @property
    def sqlite_file(self) -> Path:
        """The server's SQLite file, for the tests that read it directly."""
        database = self.settings.database
        assert isinstance(database, Path), f"this server runs on {database}, not a SQLite file"
        return database


async def _awaited(make: Callable[[ParleyServer], Awaitable[T]], server: ParleyServer) -> T:
    return await make(server)


@dataclass
class Device:
    """Credentials of one registered device, for tests."""

    account_id: str
    device_id: int
    token: str
    phone_number: str
    metadata: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.metadata = (("authorization", f"Bearer {self.token}"),)


def register(
    server: LiveServer,
    phone_number: str,
    kind: int = apb.ACCOUNT_KIND_PERSON,
    device_name: str = "phone",
) -> Device:
    stub = server.accounts()
    started = stub.StartVerification(apb.StartVerificationRequest(phone_number=phone_number))
    code = server.settings.test_numbers.get(phone_number) or server.sender.codes[phone_number]
    done = stub.CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=started.verification_id,
            code=code,
            device_name=device_name,
            account_kind=kind,  # type: ignore[arg-type]
        )
    )
    return Device(done.account_id, done.device_id, done.auth_token, phone_number)


def link(server: LiveServer, primary: Device, device_name: str = "laptop") -> Device:
    stub = server.accounts()
    code = stub.CreateLinkingCode(apb.CreateLinkingCodeRequest(), metadata=primary.metadata)
    done = stub.LinkDevice(
        apb.LinkDeviceRequest(linking_code=code.linking_code, device_name=device_name)
    )
    return Device(done.account_id, done.device_id, done.auth_token, primary.phone_number)


ServerFactory = Callable[..., LiveServer]

# Every test of a live server runs on each storage backend (the `backend` parameter), except
# those marked `sqlite_only`: they read the SQLite file itself, or its single-writer machinery.
# PARLEY_TEST_BACKENDS=sqlite narrows a local run to one backend; CI runs both.
BACKENDS = tuple(os.environ.get("PARLEY_TEST_BACKENDS", "sqlite,postgres").split(","))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: runs on the SQLite backend only (reads the file, or its writer)"
    )
    config.addinivalue_line(
        "markers", "postgres_only: runs on PostgreSQL only (several replicas on one database)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker
        if marked("sqlite_only"):
            backends = ["sqlite"]
        elif marked("postgres_only"):
            backends = ["postgres"]
        else:
            backends = list(BACKENDS)
        metafunc.parametrize("backend", backends)


@pytest.fixture
def make_server(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    servers: list[LiveServer] = []
    databases: list[str] = []

    def database() -> Path | str:
        """A new database: a file in the test's folder, or a database of the test cluster."""
        if backend == "sqlite":
            return tmp_path / f"parley-{len(servers)}.db"
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        template: str = request.getfixturevalue("migrated_template")
        databases.append(cluster.create_database(template=template))
        return databases[-1]

    def factory(
        *,
        verification_gate: VerificationGate | None = None,
        clock: ManualClock | None = None,
        **overrides: Any,
    ) -> LiveServer:
        settings = Settings(
            host="localhost",
            port=0,
            database=overrides.pop("database", None) or database(),
            test_numbers={TEST_NUMBER: TEST_CODE},
            shutdown_grace=1.0,
            # The features' own tests run without metering (a deployment may turn it off);
            # the billing tests turn it on, with the balances they need.
            billing=False,
        )
        settings = replace(settings, **overrides)
        srv = LiveServer(settings, clock or ManualClock(), RecordingCodeSender(), verification_gate)
        servers.append(srv)
        return srv

    yield factory
    for srv in servers:
        srv.stop()
    if databases:
        cluster = request.getfixturevalue("postgres_cluster")
        for url in databases:
            cluster.drop_database(url)


@pytest.fixture
def server(make_server: ServerFactory) -> LiveServer:
    return make_server()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the whole session (server/storage/postgres/local.py).

    Started by the first test that asks for it (about half a second), so a run without
    PostgreSQL tests never starts one; stopped and deleted when the session ends. Without the
    server binaries every test using it skips with the command that installs them (a failure
    under PARLEY_REQUIRE_ALL=1).
    """
    try:
        bin_dir = find_bin_dir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with PostgresCluster(bin_dir) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def migrated_template(postgres_cluster: PostgresCluster) -> str:
    """A database migrated to the latest schema once per session: the servers' databases are
    copies of it, so each server starts without running the migrations again (about 80 ms
    per server, times a few hundred tests)."""

    def migrate(url: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            postgres_migrations.migrate(conn)

    return postgres_cluster.make_template("parley_migrated", migrate)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh, empty database of its own for this test, dropped after it:
    `postgresql://parley@/parley_test_<n>?host=<socket folder>&port=5432`."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)
