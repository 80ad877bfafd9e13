"""Driving the SQLite writer's group commit from a test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from server.storage.database import Database
from server.storage.transaction import SqliteTransaction

Job = Callable[[SqliteTransaction], Any]


async def in_one_group(db: Database, *jobs: Job) -> list[Any]:
    """Run `jobs` in one group commit (one transaction, each job in its savepoint): they are
    queued while a job holding the writer runs, so the writer takes them together. Each job's
    result, or the exception it raised."""
    started, release = threading.Event(), threading.Event()

    def hold(tx: SqliteTransaction) -> None:  # keeps the writer busy while the group forms
        started.set()
        release.wait(10)

    held = asyncio.ensure_future(db.write(hold))
    await asyncio.to_thread(started.wait, 10)
    grouped = asyncio.gather(*(db.write(job) for job in jobs), return_exceptions=True)
    await asyncio.sleep(0.05)  # all are queued behind `hold`: one group
    release.set()
    await held
    return list(await grouped)
