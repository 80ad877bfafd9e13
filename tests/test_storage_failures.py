"""A full database: sends are refused with RESOURCE_EXHAUSTED (not INTERNAL), reads and
acknowledgements go on and free room, and the health service follows whether writes commit.

"Full" is made two ways: the operator's own cap (`--max-database-mb`, SQLite's max_page_count),
and, where this process may mount one, a real filesystem that runs out of space (a small tmpfs).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from server.app import SERVICE_NAMES
from server.domain.errors import DomainError
from server.rpc.errors import from_storage, status_code
from server.storage.database import Database
from server.storage.errors import StorageFull, translate
from server.storage.transaction import SqliteTransaction
from tests.conftest import LiveServer, ServerFactory
from tests.test_messaging import (
    ALICE,
    BOB,
    Member,
    Stream,
    ack,
    failure,
    member,
    send_request,
    stub,
)
from tests.writer_helpers import in_one_group

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PAYLOAD = os.urandom(200 * 1024)  # incompressible, and large: a few fill a small database


def health(server: LiveServer) -> set[int]:
    """The status of the server as a whole and of each Parley service (one value if they agree)."""
    check = health_pb2_grpc.HealthStub(server.channel()).Check
    return {
        check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        for name in ("", *SERVICE_NAMES)
    }


def fill(server: LiveServer, sender: Member, recipient: Member, limit: int = 500) -> grpc.Call:
    """Send large messages until the server refuses one; return that refusal."""
    messaging = stub(server)
    for _ in range(limit):
        try:
            messaging.SendMessage(
                send_request([recipient], PAYLOAD), metadata=sender.device.metadata, timeout=30
            )
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc
    raise AssertionError(f"{limit} sends of {len(PAYLOAD)} bytes never filled the database")


def check_full(server: LiveServer, alice: Member, bob: Member) -> list[mpb.Envelope]:
    """Fill the server; sends are refused as full, health says so, reads go on."""
    assert health(server) == {SERVING}
    refused = fill(server, alice, bob)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()
    assert "storage is full" in (refused.details() or "")
    assert "free disk space" in (refused.details() or "")
    assert "--max-database-mb" in (refused.details() or "")
    assert health(server) == {NOT_SERVING}
    again = failure(
        lambda: stub(server).SendMessage(
            send_request([bob], PAYLOAD), metadata=alice.device.metadata, timeout=30
        )
    )
    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stream = Stream(server, bob)
    received = stream.until_empty()
    stream.close()
    assert received and all(e.content == PAYLOAD for e in received)
    return received


def check_writes_again(server: LiveServer, alice: Member, bob: Member, acked: int) -> None:
    """After room was freed: a send is stored, health is back, the sender learns of delivery."""
    sent = stub(server).SendMessage(
        send_request([bob], PAYLOAD), metadata=alice.device.metadata, timeout=30
    )
    assert sent.stored
    assert health(server) == {SERVING}
    statuses = Stream(server, alice)
    delivered = statuses.statuses(acked)
    statuses.close()
    assert {s.state for s in delivered} == {mpb.DELIVERY_STATE_DELIVERED}


@pytest.mark.sqlite_only  # --max-database-mb caps the SQLite file
def test_database_cap_refuses_sends_keeps_acks_and_reports_health(
    make_server: ServerFactory,
) -> None:
    server = make_server(max_database_mb=2)
    alice, bob = member(server, ALICE), member(server, BOB)
    received = check_full(server, alice, bob)
    # Acknowledging works while full (it deletes), and frees the room the next send needs.
    assert ack(server, bob, received).acknowledged_envelopes == len(received)
    check_writes_again(server, alice, bob, acked=len(received))


@pytest.mark.sqlite_only  # --max-database-mb caps the SQLite file
def test_a_full_database_fails_each_send_of_a_send_stream_alone(
    make_server: ServerFactory,
) -> None:
    """On SendMessageStream a full database is a per-send RESOURCE_EXHAUSTED result, and the
    stream stays open: once an acknowledgement frees room, the next send on it is stored."""
    from tests.test_hardening import SendStream

    server = make_server(max_database_mb=2)
    alice, bob = member(server, ALICE), member(server, BOB)
    received = check_full(server, alice, bob)
    sends = SendStream(server, alice)
    refused = sends.send(send_request([bob], PAYLOAD))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "storage is full" in refused.message
    assert ack(server, bob, received).acknowledged_envelopes == len(received)
    stored = sends.send(send_request([bob], b"after room was freed"))
    assert stored.code == 0 and stored.response.stored
    assert sends.finish() == grpc.StatusCode.OK


def test_cap_below_the_current_size_refuses_growth_at_once(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """Lowering --max-database-mb under the file's size is allowed: nothing may grow."""
    database = tmp_path / "grown.db"
    first = make_server(database=database)
    alice, bob = member(first, ALICE), member(first, BOB)
    for _ in range(12):
        stub(first).SendMessage(send_request([bob], PAYLOAD), metadata=alice.device.metadata)
    first.stop()
    capped = make_server(database=database, max_database_mb=1)
    refused = failure(
        lambda: stub(capped).SendMessage(
            send_request([bob], PAYLOAD), metadata=alice.device.metadata, timeout=30
        )
    )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real "No space left on device" for SQLite."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root; the --max-database-mb test covers it")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"this sandbox cannot mount a tmpfs ({done.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_filesystem_refuses_sends_and_recovers_when_space_is_freed(
    make_server: ServerFactory, small_filesystem: Path
) -> None:
    """A real ENOSPC. SQLite may then be unable to write even a delete (its WAL must grow, and
    with secure_delete, the default of many builds, by as much as it deletes), so an
    acknowledgement may be refused too, but as RESOURCE_EXHAUSTED; once the operator frees
    space, the same server, not restarted, accepts writes and reports SERVING again."""
    ballast = small_filesystem / "ballast"
    ballast.write_bytes(bytes(3 * 1024 * 1024))  # room for the WAL when it is freed
    server = make_server(database=small_filesystem / "parley.db")
    alice, bob = member(server, ALICE), member(server, BOB)
    received = check_full(server, alice, bob)
    try:
        acked = ack(server, bob, received).acknowledged_envelopes
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
        acked = 0
    ballast.unlink()  # the operator frees disk space
    if not acked:
        acked = ack(server, bob, received).acknowledged_envelopes
    assert acked == len(received)
    check_writes_again(server, alice, bob, acked=acked)


def test_an_ack_grouped_with_a_failing_send_still_commits(tmp_path: Path) -> None:
    """The writer group-commits whatever is waiting; when a send's insert finds the database
    full, SQLite may roll back the whole transaction. The delete queued with it must commit."""
    db = Database(tmp_path / "g.db", max_bytes=1024 * 1024)
    try:
        asyncio.run(_grouped_insert_and_delete(db))
    finally:
        db.close()


async def _grouped_insert_and_delete(db: Database) -> None:
    def create(tx: SqliteTransaction) -> None:
        tx.connection.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")

    def insert(tx: SqliteTransaction) -> None:
        tx.connection.execute("INSERT INTO blobs (data) VALUES (?)", (PAYLOAD,))

    await db.write(create)
    with pytest.raises(StorageFull):
        while True:
            await db.write(insert)
    assert not db.writable

    def delete(tx: SqliteTransaction) -> int:
        return tx.connection.execute("DELETE FROM blobs WHERE id <= 2").rowcount

    outcomes = await in_one_group(db, insert, insert, delete)
    assert outcomes[2] == 2, outcomes
    assert any(isinstance(o, StorageFull) for o in outcomes[:2]), outcomes
    await db.write(insert)  # the room the delete freed
    assert db.writable


def test_storage_errors_map_to_statuses_from_real_sqlite_failures(tmp_path: Path) -> None:
    """A lock held by another program is UNAVAILABLE; a full database RESOURCE_EXHAUSTED; a
    mistake in our own SQL stays an INTERNAL defect."""
    path = tmp_path / "m.db"
    first = sqlite3.connect(path, isolation_level=None)
    second = sqlite3.connect(path, isolation_level=None, timeout=0)
    first.execute("CREATE TABLE t (x)")
    first.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as busy:
        second.execute("BEGIN IMMEDIATE")
    first.execute("ROLLBACK")
    locked = from_storage(translate(busy.value))  # type: ignore[arg-type]
    assert isinstance(locked, DomainError)
    assert status_code(locked) == grpc.StatusCode.UNAVAILABLE
    assert "locked by another process" in locked.message

    first.execute("PRAGMA max_page_count=2")
    with pytest.raises(sqlite3.OperationalError) as full:
        first.execute("CREATE TABLE u (x)")  # a third page
    exhausted = from_storage(translate(full.value))  # type: ignore[arg-type]
    assert isinstance(exhausted, DomainError)
    assert status_code(exhausted) == grpc.StatusCode.RESOURCE_EXHAUSTED

    with pytest.raises(sqlite3.OperationalError) as ours:
        first.execute("SELECT nonexistent FROM t")
    assert translate(ours.value) is ours.value
    first.close()
    second.close()
