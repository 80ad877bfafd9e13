"""Starting and stopping the real `parley-server`: a server that cannot start says why in one
line (no traceback, non-zero exit), one server per database, private files, and a SIGTERM with
open streams that logs no error."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc, messaging_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from server.app import build_server
from server.config import Settings
from server.storage.database import Database
from server.storage.errors import DatabaseInUse
from server.storage.postgres import migrations as postgres_migrations
from tests.tools import REPO, server_process

NUMBER, CODE = "+15550001111", "123456"


def start_fails(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `python -m server ARGS`, expect it to refuse to start; return its one stderr line."""
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--log-format", "json", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("parley-server: "), lines[0]
    return lines[0]


def migrated(path: Path) -> Path:
    """A real, migrated, closed Parley database."""
    Database(path).close()
    return path


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("shopping list: milk, eggs\n" * 200)
    line = start_fails("--database", str(path))
    assert f"{path} is not a SQLite database" in line and "backup" in line


def test_a_database_with_a_damaged_header(tmp_path: Path) -> None:
    path = migrated(tmp_path / "parley.db")
    with open(path, "r+b") as f:
        f.write(b"\x00" * 16)  # the "SQLite format 3" magic
    line = start_fails("--database", str(path))
    assert "is not a SQLite database or is damaged" in line and "restore it" in line


def test_a_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "parley.db"
    line = start_fails("--database", str(path))
    assert f"{path.parent} of {path} does not exist" in line and "mkdir -p" in line
    assert not path.parent.exists()


def test_a_directory_as_database(tmp_path: Path) -> None:
    line = start_fails("--database", str(tmp_path))
    assert f"{tmp_path} is a directory" in line and "file path" in line


def test_a_database_locked_by_another_program_is_reported_quickly(tmp_path: Path) -> None:
    path = migrated(tmp_path / "parley.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # e.g. a sqlite3 shell in the middle of a write
    try:
        started = time.monotonic()
        line = start_fails("--database", str(path))
        took = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked by another process" in line and "close that program" in line
    assert took < 9, f"took {took:.1f} s: the start-up must not wait out the 10 s busy timeout"


def test_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = start_fails(
            "--host", "127.0.0.1", "--port", str(port), "--database", str(tmp_path / "p.db")
        )
    assert f"127.0.0.1:{port}" in line and "in use" in line and "--port" in line


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        ((), {"PARLEY_LOG_LEVEL": "verbose"}, "PARLEY_LOG_LEVEL"),
        (("--log-level", "loud"), {}, "--log-level"),
    ],
)
def test_an_unknown_log_level(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    line = start_fails("--database", str(tmp_path / "p.db"), *args, env=env)
    assert named in line and "DEBUG, INFO, WARNING, ERROR" in line


def health_ok(port: int) -> bool:
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_a_second_server_process_on_the_same_database_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    with server_process("--port", "0", "--database", str(database)) as (first, port):
        line = start_fails("--database", str(database))
        assert f"another parley-server (pid {first.pid}) is serving {database}" in line
        assert "stop it or choose another --database" in line
        assert health_ok(port)  # the first one is untouched
        first.send_signal(signal.SIGKILL)  # the kernel releases the lock, however it ends
        first.wait(30)
    with server_process("--port", "0", "--database", str(database)) as (_, port):
        assert health_ok(port)


def test_build_server_twice_on_one_database_in_one_process(tmp_path: Path) -> None:
    settings = Settings(port=0, database=tmp_path / "p.db")

    async def scenario() -> None:
        first = await build_server(settings)
        await first.start()
        with pytest.raises(DatabaseInUse) as refused:
            await build_server(replace(settings, port=0))
        assert f"pid {os.getpid()}" in str(refused.value)
        await first.stop(grace=0)
        again = await build_server(settings)  # released by stop()
        await again.stop(grace=0)

    asyncio.run(scenario())


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, under which SQLite alone would create files 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def register(port: int, number: str = NUMBER) -> tuple[tuple[str, str], ...]:
    with grpc.insecure_channel(f"localhost:{port}") as channel:
        accounts = account_pb2_grpc.AccountServiceStub(channel)
        started = accounts.StartVerification(apb.StartVerificationRequest(phone_number=number))
        done = accounts.CompleteVerification(
            apb.CompleteVerificationRequest(
                verification_id=started.verification_id,
                code=CODE,
                device_name="phone",
                account_kind=apb.ACCOUNT_KIND_PERSON,
            )
        )
    return (("authorization", f"Bearer {done.auth_token}"),)


def test_database_files_are_created_private(tmp_path: Path, umask_022: None) -> None:
    database = tmp_path / "parley.db"
    args = ["--port", "0", "--database", str(database), "--test-number", f"{NUMBER}={CODE}"]
    with server_process(*args) as (_, port):
        register(port)  # a write: the WAL and its index exist now
        files = [database, *(Path(f"{database}{s}") for s in ("-wal", "-shm", ".lock"))]
        modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert modes == {f.name: "0o600" for f in files}


def warnings_in(log: Path) -> list[str]:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [r["msg"] for r in records if r["level"] == "WARNING"]


def test_a_database_others_can_read_gets_one_warning(tmp_path: Path) -> None:
    database = migrated(tmp_path / "parley.db")
    log = tmp_path / "server.log"
    with server_process("--port", "0", "--database", str(database), log=log):
        pass
    assert warnings_in(log) == []
    database.chmod(0o644)
    with server_process("--port", "0", "--database", str(database), log=log) as (_, port):
        assert health_ok(port)  # a warning, not a refusal: the mode is the operator's choice
    (warning,) = warnings_in(log)
    assert f"{database} is accessible to other users (mode 0644)" in warning
    assert "chmod 600" in warning


class OpenStreams:
    """A device's ReceiveMessages and SendMessageStream, both known to be open on the server."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
        self.receiving = messaging.ReceiveMessages(
            mpb.ReceiveMessagesRequest(), metadata=metadata, timeout=60
        )
        assert next(iter(self.receiving)).HasField("queue_empty")
        self.requests: queue.Queue[mpb.SendMessageStreamRequest | None] = queue.Queue()
        self.sending = messaging.SendMessageStream(self._outgoing(), metadata=metadata, timeout=60)
        # A send the server answers (it has no request_id) proves this stream is open, too.
        self.requests.put(mpb.SendMessageStreamRequest(request=mpb.SendMessageRequest()))
        assert next(iter(self.sending)).result.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    def _outgoing(self) -> Iterator[mpb.SendMessageStreamRequest]:
        while (item := self.requests.get()) is not None:
            yield item

    def close(self) -> None:
        self.requests.put(None)
        self.receiving.cancel()  # type: ignore[no-untyped-call]
        self.sending.cancel()  # type: ignore[no-untyped-call]


def test_sigterm_with_open_streams_logs_no_error(tmp_path: Path) -> None:
    """Streams never end by themselves: gRPC cancels them when the grace period is over, and
    those cancellations must end quietly. Several devices, as the cancellations race the exit."""
    numbers = [f"+1555000{i:04d}" for i in range(4)]
    log = tmp_path / "server.log"
    args = ["--port", "0", "--database", str(tmp_path / "p.db"), "--shutdown-grace", "1"]
    args += [arg for n in numbers for arg in ("--test-number", f"{n}={CODE}")]
    with server_process(*args, log=log) as (proc, port):
        channel = grpc.insecure_channel(f"localhost:{port}")
        streams = [OpenStreams(channel, register(port, n)) for n in numbers]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        for s in streams:
            # Receive streams are ended by the server at once, with a status that says what
            # to do (they never end by themselves, and would otherwise be cut at the grace).
            with pytest.raises(grpc.RpcError) as ended:
                next(iter(s.receiving))
            assert isinstance(ended.value, grpc.Call)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down; reconnect" in (ended.value.details() or "")
            s.close()
        channel.close()
    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text
    records = [json.loads(line) for line in text.splitlines()]  # every line is a JSON record
    assert [r for r in records if r["level"] in ("ERROR", "CRITICAL")] == []
    assert [r["msg"] for r in records][-2:] == ["shutting down", "stopped"]


def test_a_missing_tls_file(tmp_path: Path) -> None:
    missing = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    key.write_text("not read: the certificate is missing first\n")
    line = start_fails(
        "--database", str(tmp_path / "p.db"), "--tls-cert", str(missing), "--tls-key", str(key)
    )
    assert f"cannot read --tls-cert {missing}" in line


def test_an_unreachable_postgresql_is_one_line_naming_the_address(tmp_path: Path) -> None:
    """No server at the address: the replica does not start, and says where it looked and what
    to check (never the password)."""
    url = f"postgresql://parley:secret@/parley?host={tmp_path}&port=5999"
    line = start_fails("--database", url)
    assert "cannot connect to PostgreSQL at postgresql://parley@" in line and "secret" not in line
    assert "check that the server is running" in line


def test_a_newer_postgresql_schema_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        postgres_migrations.migrate(conn)
        conn.execute(
            "INSERT INTO schema_migrations (version, description) VALUES (%s, 'from the future')",
            (postgres_migrations.LATEST_VERSION + 1,),
        )
    line = start_fails("--database", postgres_url)
    assert "newer than this server supports" in line
