"""The WAL is checkpointed by a thread of its own, never by a commit (database.py, rule 8)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from server.storage.database import CHECKPOINT_INTERVAL, WAL_RESET_FRAMES, Database
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
        (threshold,) = db._writer_conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert threshold == WAL_RESET_FRAMES  # not SQLite's 1,000: the thread does the copying
        _write(db, MARKER)
        # Committed means in the WAL; the thread copies it into the database file soon after.
        deadline = time.monotonic() + 50 * CHECKPOINT_INTERVAL
        while MARKER not in path.read_bytes():
            assert time.monotonic() < deadline, "the WAL was not checkpointed"
            time.sleep(CHECKPOINT_INTERVAL / 4)
        assert MARKER in (tmp_path / "c.db-wal").read_bytes()  # and the commit wrote the WAL
    finally:
        db.close()


def test_under_steady_writes_the_wal_starts_over_instead_of_growing(tmp_path: Path) -> None:
    """Commits that never pause keep the thread from copying the last frames; the writer then
    finishes the copy between groups and the WAL starts over, cut back to its limit. The
    writer's copy is SQLite's auto-checkpoint, which gives up at once while the thread holds
    the checkpoint lock: on a loaded machine a few commits in a row may find it held (one
    clean-clone CI run saw the WAL reach 2.05 times the reset point), so the bound is three
    times it, a third of the 96 MiB the WAL holds without the writer's part."""
    path = tmp_path / "busy.db"
    db = Database(path, synchronous="NORMAL")
    chunk = bytes(64 * 1024)
    rounds, per_round = 96, 16  # 96 MiB in jobs that never leave the writer idle

    def insert(tx: SqliteTransaction) -> None:
        tx.connection.execute("INSERT INTO blobs VALUES (?)", (chunk,))

    async def write_steadily() -> list[int]:
        await db.write(lambda tx: tx.connection.execute("CREATE TABLE blobs (v BLOB)"))
        sizes: list[int] = []
        for _ in range(rounds):
            await asyncio.gather(*(db.write(insert) for _ in range(per_round)))
            sizes.append(path.with_name("busy.db-wal").stat().st_size)
        return sizes

    try:
        sizes = asyncio.run(write_steadily())
    finally:
        db.close()
    # Without the writer's part the WAL holds everything written: 96 MiB and more.
    largest = max(sizes)
    assert largest <= 3 * WAL_RESET_FRAMES * 4096, f"the WAL grew to {largest} bytes"
    # It started over, cut back to its limit, rather than stopping short of the bound by luck.
    assert any(later < earlier for earlier, later in itertools.pairwise(sizes)), sizes


def test_a_slow_write_is_logged_with_where_its_time_went(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rule 9: a group commit slower than `slow_write_s` is a WARNING that splits its time
    between the jobs and the COMMIT; a quick one says nothing."""
    db = Database(tmp_path / "slow.db", slow_write_s=0.05)
    try:
        with caplog.at_level("WARNING", logger="server.storage.database"):
            _write(db, b"quick")
            assert not [r for r in caplog.records if "slow write" in r.getMessage()]

            def slow_job(tx: SqliteTransaction) -> None:
                time.sleep(0.1)
                tx.connection.execute("INSERT INTO probe VALUES (x'00')")

            asyncio.run(db.write(slow_job))
        (record,) = [r for r in caplog.records if "slow write" in r.getMessage()]
        assert record.levelname == "WARNING"
        assert record.jobs == 1 and record.jobs_ms >= 100  # type: ignore[attr-defined]
        assert 0 <= record.commit_ms < record.jobs_ms  # type: ignore[attr-defined]
        assert "1 jobs took" in record.getMessage() and "COMMIT" in record.getMessage()
    finally:
        db.close()


def test_a_slow_checkpoint_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Rule 9 for the checkpoint thread: with a threshold of a nanosecond every checkpoint is
    slow, and the log says how many frames it copied; with 0 nothing is logged."""
    quiet = Database(tmp_path / "quiet.db", slow_write_s=0)
    try:
        with caplog.at_level("WARNING", logger="server.storage.database"):
            _write(quiet, MARKER)
            time.sleep(5 * CHECKPOINT_INTERVAL)
        assert not caplog.records
    finally:
        quiet.close()
    db = Database(tmp_path / "cp.db", slow_write_s=1e-9)
    try:
        with caplog.at_level("WARNING", logger="server.storage.database"):
            _write(db, MARKER)
            deadline = time.monotonic() + 50 * CHECKPOINT_INTERVAL
            while not [r for r in caplog.records if "slow checkpoint" in r.getMessage()]:
                assert time.monotonic() < deadline, "no checkpoint was logged"
                time.sleep(CHECKPOINT_INTERVAL / 4)
        record = next(r for r in caplog.records if "slow checkpoint" in r.getMessage())
        assert record.frames > 0 and record.checkpoint_ms >= 0  # type: ignore[attr-defined]
    finally:
        db.close()
