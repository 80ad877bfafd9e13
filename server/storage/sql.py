"""What the shared storage SQL needs of a connection: the part of `sqlite3.Connection` that
`server.storage.postgres.connection.PgConnection` also offers.

The storage modules are written once against this, in SQL both backends accept; a method whose
SQL must differ is overridden by the PostgreSQL backend's transaction class.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from server.domain.directory_model import DirectoryTransaction


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class SqlConnection(Protocol):
    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


class StorageTransaction(DirectoryTransaction, Protocol):
    """A backend's transaction: the domain's protocols (the directory's includes the rest), and
    the connection it runs on (for storage's own code and the tests that set up rows with SQL)."""

    @property
    def connection(self) -> SqlConnection: ...
