"""Which database a server runs on: `--database` names a SQLite file (the embedded default) or a
PostgreSQL server (`postgresql://...`), and both look the same to everything above storage.

SQLite suits one server process: nothing to install, one file, group commits. PostgreSQL is for
several replicas behind one address (docs/scaling.md): every replica writes, and the database is
the record and the signal between them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from server.storage.sql import StorageTransaction

T = TypeVar("T")

SQLITE_PREFIX = "sqlite:"


class Backend(Protocol):
    """A database the server runs on: the domain's `Store`, and what the server needs to run it
    (health, a name for its log, shutdown)."""

    @property
    def name(self) -> str: ...

    @property
    def writable(self) -> bool: ...

    @property
    def node(self) -> int:
        """This process's number among the processes writing the database (server.domain.ids)."""
        ...

    async def write(self, fn: Callable[[StorageTransaction], T]) -> T: ...
    async def read(self, fn: Callable[[StorageTransaction], T]) -> T: ...
    def on_write_health(self, listener: Callable[[bool], None]) -> None: ...
    async def probe(self) -> bool: ...

    @property
    def shared(self) -> bool:
        """Whether other replicas write the database too (server.domain.signals)."""
        ...

    async def listen(self, handler: Callable[[str], None]) -> None: ...
    def close(self) -> None: ...


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def parse_database(text: str) -> Path | str:
    """`--database`: a PostgreSQL URL as it is; `sqlite:PATH` or a bare path as a file path."""
    text = text.strip()
    if is_postgres_url(text):
        return text
    if text.startswith(SQLITE_PREFIX):
        text = text[len(SQLITE_PREFIX) :]
    if not text:
        raise ValueError("--database needs a file path or a postgresql:// URL")
    return Path(text)


def open_backend(
    database: Path | str, *, synchronous: str, max_bytes: int, slow_write_s: float
) -> Backend:
    """Open (and migrate) the database `--database` names. `slow_write_s`: SQLite's writes and
    checkpoints slower than this are logged (PostgreSQL's are its own to log)."""
    if is_postgres_url(database):
        from server.storage.postgres.database import PostgresDatabase

        return PostgresDatabase(str(database))
    from server.storage.database import Database

    return Database(
        Path(database), synchronous=synchronous, max_bytes=max_bytes, slow_write_s=slow_write_s
    )
