"""The SQLite backend's `Transaction`: the storage methods of every area over one connection.

`Database` hands one of these to each job it runs (`server.domain.ports` is the protocol this
implements; mypy checks that it does wherever the app hands `Database` to the domain). It is a
thin adapter: one per connection, made once, holding no state but the connection, so a job
pays nothing for it. `connection` is for storage's own code and storage tests; the domain only
sees the protocol's methods.
"""

from __future__ import annotations

import sqlite3

from server.storage.accounts import SqliteAccounts
from server.storage.billing import SqliteBilling
from server.storage.consent import SqliteConsent
from server.storage.directory import SqliteDirectory
from server.storage.keys import SqliteKeys
from server.storage.links import SqliteLinks
from server.storage.messages import SqliteMessages
from server.storage.sending import SqliteSending
from server.storage.support import SqliteSupport
from server.storage.usage import SqliteUsage


class SqliteTransaction(
    SqliteAccounts,
    SqliteKeys,
    SqliteMessages,
    SqliteDirectory,
    SqliteConsent,
    SqliteSending,
    SqliteSupport,
    SqliteLinks,
    SqliteBilling,
    SqliteUsage,
):
    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
