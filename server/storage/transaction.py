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


class SqliteTransaction(Statements):
    connection: sqlite3.Connection

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
