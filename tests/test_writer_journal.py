"""The writer keeps its statement journals in memory (database.py, `temp_store`).

A job of a group commit runs inside a SAVEPOINT, so SQLite saves each page the job changes that
an earlier job of the group changed already, to roll the job back alone if it fails. Past
64 KiB SQLite moves that journal to a temporary file (deleted at once, so only the process's
open files show it): a write call per delivered message, before the setting."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from server.storage.database import Database
from server.storage.transaction import SqliteTransaction
from tests.writer_helpers import in_one_group

pytestmark = [
    pytest.mark.sqlite_only,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd"),
]

ROWS = 2_000  # ~120 pages of 4 KiB: far past the 64 KiB a journal holds before it spills


def _open_temp_files() -> list[str]:
    """SQLite's temporary files this process holds open (named etilqs_*, deleted)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since the listing
            continue
        if "etilqs_" in target:
            found.append(target)
    return found


def test_a_job_that_changes_the_pages_of_the_job_before_it_opens_no_temporary_file(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "journal.db")
    try:
        assert asyncio.run(_grouped_rewrite(db)) == []
    finally:
        db.close()


async def _grouped_rewrite(db: Database) -> list[str]:
    def create(tx: SqliteTransaction) -> None:
        tx.connection.execute("CREATE TABLE rows (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")

    def insert(tx: SqliteTransaction) -> None:
        tx.connection.execute(
            "INSERT INTO rows SELECT value, zeroblob(200) FROM json_each(?)",
            (json.dumps(list(range(ROWS))),),
        )

    def rewrite(tx: SqliteTransaction) -> tuple[int, list[str]]:
        changed = tx.connection.execute("UPDATE rows SET v = zeroblob(201)").rowcount
        return changed, _open_temp_files()

    await db.write(create)
    inserted, rewritten = await in_one_group(db, insert, rewrite)
    assert inserted is None, inserted
    changed, open_files = rewritten
    assert changed == ROWS
    return list(open_files)
