"""Schema migrations: old databases are upgraded in place, never recreated."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from parley.v1 import account_pb2 as apb

from server.storage import migrations
from server.storage.database import Database
from server.storage.transaction import SqliteTransaction
from tests.conftest import ServerFactory

FIXTURES = Path(__file__).parent / "fixtures"
V1_TOKEN = "v1-fixture-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
V1_ACCOUNT = "0b1f8a52-6f0e-4c55-9d7e-1a2b3c4d5e6f"


def make_v1_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / "schema_v1.sql").read_text())
    conn.close()


def test_fresh_database_gets_latest_schema(tmp_path: Path) -> None:
    db = Database(tmp_path / "new.db")
    db.close()
    conn = sqlite3.connect(tmp_path / "new.db")
    assert migrations.current_version(conn) == migrations.LATEST_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_v1_database_is_migrated_and_keeps_its_data(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    path = tmp_path / "old.db"
    make_v1_database(path)
    assert migrations.current_version(sqlite3.connect(path)) == 1

    server = make_server(database=path)
    stub = server.accounts()
    auth = (("authorization", f"Bearer {V1_TOKEN}"),)
    account = stub.GetAccount(apb.GetAccountRequest(), metadata=auth).account
    assert account.account_id == V1_ACCOUNT
    assert account.phone_number == "+14155550123"
    assert list(account.device_ids) == [1, 2]
    devices = stub.ListDevices(apb.ListDevicesRequest(), metadata=auth).devices
    # The new last_seen_at column was filled from created_at, not left empty; device 1 has
    # just been seen (to the hour).
    now = server.clock.now()
    assert [d.last_seen_at.seconds for d in devices] == [now - now % 3600, 1790000100]
    # The new linking feature works on the migrated data; device ids continue after 2.
    code = stub.CreateLinkingCode(apb.CreateLinkingCodeRequest(), metadata=auth)
    linked = stub.LinkDevice(apb.LinkDeviceRequest(linking_code=code.linking_code, device_name="t"))
    assert linked.device_id == 3
    server.stop()
    assert migrations.current_version(sqlite3.connect(path)) == migrations.LATEST_VERSION
    # Migration 8 started the device count from the two devices on file; the link added one.
    counts = sqlite3.connect(path).execute("SELECT account_id, device_count FROM accounts")
    assert counts.fetchall() == [(V1_ACCOUNT, 3)]


def test_migrated_device_count_enforces_the_limit(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    """The counter starts from the existing rows, not 0: with two devices on file and a limit
    of three, one more link is allowed and the next refused."""
    path = tmp_path / "old.db"
    make_v1_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(conn, target=7) == list(range(2, 8))
    conn.execute(
        "INSERT INTO accounts (account_id, phone_number, kind, created_at)"
        " VALUES ('no-devices', '+14155550999', 1, 0)"
    )
    assert migrations.migrate(conn, target=8) == [8]
    counts = dict(conn.execute("SELECT account_id, device_count FROM accounts").fetchall())
    assert counts == {V1_ACCOUNT: 2, "no-devices": 0}
    conn.close()

    server = make_server(database=path, max_devices=3)
    stub = server.accounts()
    auth = (("authorization", f"Bearer {V1_TOKEN}"),)

    def link() -> apb.LinkDeviceResponse:
        code = stub.CreateLinkingCode(apb.CreateLinkingCodeRequest(), metadata=auth)
        return stub.LinkDevice(
            apb.LinkDeviceRequest(linking_code=code.linking_code, device_name="t")
        )

    assert link().device_id == 3
    with pytest.raises(grpc.RpcError) as err:
        link()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_migrating_twice_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(conn) == [m.version for m in migrations.MIGRATIONS[1:]]
    assert migrations.migrate(conn) == []


def test_database_from_newer_parley_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {migrations.LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(migrations.SchemaTooNewError, match="newer than this server"):
        Database(path)


def test_failed_write_job_rolls_back_alone(tmp_path: Path) -> None:
    """A job that raises is rolled back without taking its group-commit neighbours with it."""

    async def main(db: Database) -> list[object]:
        def good(i: int) -> Callable[[SqliteTransaction], int]:
            return lambda tx: (
                tx.connection.execute(
                    "INSERT INTO verifications VALUES (?, '+1', x'00', 0, 0, 0, 0)", (f"v{i}",)
                ).rowcount
            )

        def bad(tx: SqliteTransaction) -> None:
            sql = "INSERT INTO verifications VALUES ('bad', '+1', x'00', 0, 0, 0, 0)"
            tx.connection.execute(sql)
            raise ValueError("boom")

        jobs = [db.write(good(1)), db.write(bad), db.write(good(2))]
        results: list[object] = await asyncio.gather(*jobs, return_exceptions=True)
        return results

    db = Database(tmp_path / "d.db")
    results = asyncio.run(main(db))
    db.close()
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], ValueError)
    conn = sqlite3.connect(tmp_path / "d.db")
    ids = [r[0] for r in conn.execute("SELECT verification_id FROM verifications ORDER BY 1")]
    assert ids == ["v1", "v2"]


def test_stream_positions_continue_above_the_rows_on_file(tmp_path: Path) -> None:
    """Migration 12: envelopes and statuses on file keep their id as their stream position
    (one writer made them, in id order), and each device's counter starts above them, so a
    stream that resumes after the upgrade neither repeats nor skips a row."""
    conn = sqlite3.connect(tmp_path / "v11.db", isolation_level=None)
    migrations.migrate(conn, target=11)
    conn.execute("INSERT INTO accounts (account_id, phone_number, kind, created_at) VALUES"
                 " ('a', '+14155550100', 1, 0)")  # fmt: skip
    for device in (1, 2):
        conn.execute(
            "INSERT INTO devices (account_id, device_id, name, token_hash, created_at)"
            " VALUES ('a', ?, 'd', ?, 0)",
            (device, bytes([device])),
        )
    envelope = "INSERT INTO envelopes (envelope_id, account_id, device_id, message_id,"
    envelope += " sender_account_id, sender_device_id, server_ts, client_ts_ms, content_type,"
    envelope += " content) VALUES (?, 'a', ?, 1, 'a', 1, 0, 0, 1, x'00')"
    for envelope_id, device in ((100, 1), (300, 1), (200, 2)):
        conn.execute(envelope, (envelope_id, device))
    conn.execute(
        "INSERT INTO delivery_statuses (status_id, account_id, device_id, message_id,"
        " request_id, recipient_account_id, state, at) VALUES (500, 'a', 1, 1, 'r', 'a', 1, 0)"
    )
    assert migrations.migrate(conn, target=12) == [12]
    assert conn.execute("SELECT envelope_id, seq FROM envelopes ORDER BY 1").fetchall() == [
        (100, 100), (200, 200), (300, 300)
    ]  # fmt: skip
    assert conn.execute("SELECT seq FROM delivery_statuses").fetchall() == [(500,)]
    counters = "SELECT account_id, device_id, last_seq, epoch FROM device_streams ORDER BY 2"
    assert conn.execute(counters).fetchall() == [("a", 1, 500, 0), ("a", 2, 200, 0)]
    tx = SqliteTransaction(conn)
    row = tx.envelopes_after("a", 1, 0, 10, 1 << 20)[0]
    new = tx.insert_envelopes([row._replace(envelope_id=400, seq=0)])
    assert [e.seq for e in new] == [501]
    assert [e.envelope_id for e in tx.envelopes_after("a", 1, 300, 10, 1 << 20)] == [400]
