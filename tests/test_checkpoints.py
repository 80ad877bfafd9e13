"""The WAL is checkpointed by a thread of its own, never by a commit (database.py, rule 8)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from server.storage.database import CHECKPOINT_INTERVAL, Database
from server.storage.transaction import SqliteTransaction

pytestmark = pytest.mark.sqlite_only

MARKER = b"checkpointed-by-the-thread-" * 4


def _write(db: Database, value: bytes) -> None:
    def job(tx: SqliteTransaction) -> None:
        tx.connection.execute("CREATE TABLE IF NOT EXISTS probe (v BLOB)")
        tx.connection.execute("INSERT INTO probe VALUES (?)", (value,))

    asyncio.run(db.write(job))


def test_commits_leave_checkpoints_to_the_checkpoint_thread(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    db = Database(path)
    try:
        assert db._writer_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        _write(db, MARKER)
        # Committed means in the WAL; the thread copies it into the database file soon after.
        deadline = time.monotonic() + 50 * CHECKPOINT_INTERVAL
        while MARKER not in path.read_bytes():
            assert time.monotonic() < deadline, "the WAL was not checkpointed"
            time.sleep(CHECKPOINT_INTERVAL / 4)
        assert MARKER in (tmp_path / "c.db-wal").read_bytes()  # and the commit wrote the WAL
    finally:
        db.close()
