"""The SQLite backend's `Transaction`: the storage methods of every area over one connection.

`Database` hands one of these to each job it runs (`server.domain.ports` is the protocol this
implements; mypy checks that it does wherever the app hands `Database` to the domain). It is a
thin adapter: one per connection, made once, holding no state but the connection, so a job
pays nothing for it. `connection` is for storage's own code and storage tests; the domain only
sees the protocol's methods.
"""

from __future__ import annotations

import sqlite3

from server.storage.statements import Statements

# Free pages are given back once they are more than a quarter of the file (and at least
# RECLAIM_MIN_PAGES): below that, new rows reuse them, and shrinking a file that will grow again
# costs writes for nothing. Down to a tenth, at most RECLAIM_STEP pages per call: each page is
# one step of the writer (~40 us), so one call holds it for about 10 ms.
RECLAIM_MIN_PAGES = 2560
RECLAIM_STEP = 256


class SqliteTransaction(Statements):
    connection: sqlite3.Connection

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def reclaim_free_pages(self) -> int:
        """Incremental vacuum (new databases are made with auto_vacuum=INCREMENTAL; on an older
        file the pragma does nothing and this returns 0)."""
        conn = self.connection
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        if free < max(pages // 4, RECLAIM_MIN_PAGES):
            return 0
        wanted = min(free - pages // 10, RECLAIM_STEP)
        # Each step of the pragma frees one page, and the sqlite3 module steps a statement
        # once per execute (executescript would, but it commits the open transaction first).
        for _ in range(wanted):
            conn.execute("PRAGMA incremental_vacuum")
        return free - int(conn.execute("PRAGMA freelist_count").fetchone()[0])
