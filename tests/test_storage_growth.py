"""What delivered traffic leaves on disk is bounded by the idempotency window, not the traffic.

The sweep (`Settlement.expire`, every `--expiry-interval`) forgets settled messages once their
idempotency window is over, deletes delivery statuses no device of the sender took within the
envelope TTL, and gives free pages back to the disk (SQLite files made with
auto_vacuum=INCREMENTAL). Live tests run on both backends; the file-level ones on SQLite.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from parley.v1 import messaging_pb2 as mpb

from server.storage.database import Database, connect
from server.storage.migrations import migrate
from server.storage.transaction import RECLAIM_STEP, SqliteTransaction
from tests.conftest import LiveServer, ServerFactory
from tests.test_messaging import ALICE, BOB, Stream, ack, member, send_request, stub

WINDOW = 60.0
TTL = 3600.0


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` (the sweep runs every 50 ms in these tests) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def _messages(server: LiveServer, request_id: str) -> int:
    (row,) = server.sql("SELECT count(*) FROM messages WHERE request_id = ?", (request_id,))
    return int(row[0])


def test_a_delivered_message_is_forgotten_after_the_window_and_a_pending_one_is_kept(
    make_server: ServerFactory,
) -> None:
    server = make_server(idempotency_window=WINDOW, envelope_ttl=TTL, expiry_interval=0.05)
    alice, bob = member(server, ALICE), member(server, BOB)
    delivered = send_request([bob], b"read soon", request_id="11111111-1111-4111-8111-111111111111")
    first = stub(server).SendMessage(delivered, metadata=alice.device.metadata)
    stream = Stream(server, bob)
    (envelope,) = stream.until_empty()
    ack(server, bob, [envelope])
    stream.close()
    # Alice's next message is never read: pending, so it must outlive the window.
    pending = send_request([bob], b"unread", request_id="22222222-2222-4222-8222-222222222222")
    stub(server).SendMessage(pending, metadata=alice.device.metadata)

    # Within the window a retry gets the first answer, not a second copy.
    server.clock.advance(WINDOW / 2)
    again = stub(server).SendMessage(delivered, metadata=alice.device.metadata)
    assert again.message_id == first.message_id
    assert _messages(server, delivered.request_id) == 1

    server.clock.advance(WINDOW)
    _until(lambda: _messages(server, delivered.request_id) == 0, "the delivered message swept")
    assert _messages(server, pending.request_id) == 1, "a pending message was swept"
    # Past the window the request id is forgotten: the same id is a new send (documented).
    later = stub(server).SendMessage(delivered, metadata=alice.device.metadata)
    assert later.message_id != first.message_id


def test_statuses_no_sender_device_takes_are_deleted_after_the_ttl(
    make_server: ServerFactory,
) -> None:
    server = make_server(idempotency_window=WINDOW, envelope_ttl=TTL, expiry_interval=0.05)
    alice, bob = member(server, ALICE), member(server, BOB)
    for i in range(3):
        stub(server).SendMessage(send_request([bob], b"m%d" % i), metadata=alice.device.metadata)
    stream = Stream(server, bob)
    ack(server, bob, stream.until_empty())
    stream.close()

    def statuses() -> int:
        return int(server.sql("SELECT count(*) FROM delivery_statuses")[0][0])

    _until(lambda: statuses() == 3, "three DELIVERED statuses queued for Alice")
    server.clock.advance(TTL / 2)
    time.sleep(0.2)  # a few sweeps: within the TTL they stay for Alice's device
    assert statuses() == 3
    server.clock.advance(TTL)
    _until(lambda: statuses() == 0, "statuses Alice never took deleted after the TTL")
    # And nothing of the delivered messages is left either.
    assert server.sql("SELECT count(*) FROM messages")[0][0] == 0
    # A status Alice's device takes is deleted by her ack, at once (unchanged).
    stub(server).SendMessage(send_request([bob], b"m3"), metadata=alice.device.metadata)
    stream = Stream(server, bob)
    ack(server, bob, stream.until_empty())
    stream.close()
    alice_stream = Stream(server, alice)
    (status,) = alice_stream.statuses(1)
    assert status.state == mpb.DELIVERY_STATE_DELIVERED
    ack(server, alice, statuses=[status])
    alice_stream.close()
    assert statuses() == 0


def _file(tmp_path: Path) -> tuple[sqlite3.Connection, SqliteTransaction]:
    conn = connect(tmp_path / "sweep.db")
    migrate(conn)
    return conn, SqliteTransaction(conn)


@pytest.mark.sqlite_only
def test_the_sweep_deletes_by_a_primary_key_range_not_a_scan(tmp_path: Path) -> None:
    """At thousands of messages a second the sweep must not read the whole table."""
    conn, _ = _file(tmp_path)
    for sql in (
        "SELECT message_id FROM messages WHERE message_id < 1 AND state != 0"
        " ORDER BY message_id LIMIT 10",
        "SELECT status_id FROM delivery_statuses WHERE status_id < 1 ORDER BY status_id LIMIT 10",
    ):
        plan = " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING INTEGER PRIMARY KEY" in plan, plan
    conn.close()


@pytest.mark.sqlite_only
def test_free_pages_go_back_to_the_disk_in_bounded_steps(tmp_path: Path) -> None:
    conn, tx = _file(tmp_path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL, on a new file
    conn.execute("CREATE TABLE filler (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO filler (key, value) VALUES (?, ?)",
        [(f"k{i}", os.urandom(2000).hex()) for i in range(6000)],
    )
    conn.execute("COMMIT")
    conn.execute("DELETE FROM filler WHERE key LIKE 'k%'")
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    assert free > 2 * RECLAIM_STEP
    conn.execute("BEGIN IMMEDIATE")
    assert tx.reclaim_free_pages() == RECLAIM_STEP  # one bounded step per sweep job
    conn.execute("COMMIT")
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == free - RECLAIM_STEP
    # Few free pages (under a quarter of the file): rows reuse them, nothing is given back.
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO filler (key, value) VALUES (?, ?)",
        [(f"j{i}", os.urandom(2000).hex()) for i in range(5000)],
    )
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    assert tx.reclaim_free_pages() == 0
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.sqlite_only
def test_an_older_file_keeps_its_pages_and_start_up_says_how_to_convert_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE before_incremental (x)")  # a file made without the pragma
    old.close()
    with caplog.at_level(logging.WARNING, logger="server.storage.database"):
        db = Database(path)
    db.close()
    (record,) = [r for r in caplog.records if "auto_vacuum" in r.getMessage()]
    assert "PRAGMA auto_vacuum=INCREMENTAL; VACUUM;" in record.getMessage()
    conn = connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    assert SqliteTransaction(conn).reclaim_free_pages() == 0
    conn.close()
