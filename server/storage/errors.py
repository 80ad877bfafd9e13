"""What the storage layer reports when SQLite fails, in words a caller and an operator can act on.

Two kinds of failure, kept apart because their remedies differ:

* Start-up (`CannotOpenDatabase` and its subclass `DatabaseInUse`): the server must not run at
  all. The message is one line for the operator's terminal: what is wrong and what to do.
* Run time (`StorageFull`, `StorageUnavailable`): one write (or read) failed, the server goes
  on. Storage sits below the domain and imports none of it, so these are plain exceptions;
  `server.rpc.errors` maps them to RESOURCE_EXHAUSTED / UNAVAILABLE next to the domain's errors,
  instead of the INTERNAL a bare `sqlite3.Error` would become.

A `sqlite3.Error` that is none of these (a constraint a job violated, a bug in SQL) stays what it
is: that is a defect of ours, and INTERNAL with a logged incident is the right answer to it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class CannotOpenDatabase(Exception):
    """The database cannot be opened for serving; the message says why and what to do."""


class DatabaseInUse(CannotOpenDatabase):
    """Another Parley server holds the database's lock file."""

    def __init__(self, path: Path, holder: str) -> None:
        who = f"another parley-server (pid {holder})" if holder else "another parley-server"
        super().__init__(
            f"{who} is serving {path}; stop it or choose another --database "
            "(one database serves one server process)"
        )


class StorageError(Exception):
    """A run-time failure of the disk or the database file; `message` is shown to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StorageFull(StorageError):
    """The database cannot grow: the disk is full or --max-database-mb is reached."""


class StorageUnavailable(StorageError):
    """The database cannot be written (or read) right now: an I/O error, a lock, a damaged file."""


class StorageConflict(StorageUnavailable):
    """A conditional update moved fewer rows than the same transaction had read: another
    writer changed them in between (never with SQLite's one writer; a backend with several).
    The job is rolled back; retrying it sees the other writer's result."""


FULL_MESSAGE = (
    "the server's storage is full, so nothing new can be stored now; retry later "
    "(acknowledging received messages still works and frees room). Operator: free disk space "
    "on the database's volume or raise --max-database-mb"
)

_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_UNAVAILABLE = {
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_NOMEM,
    *_BUSY,
    *_DAMAGED,
}


def primary_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code (extended codes keep it in their low byte)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def translate(exc: BaseException) -> BaseException:
    """The storage error for a SQLite failure of the environment; anything else unchanged."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    code = primary_code(exc)
    if code == sqlite3.SQLITE_FULL:
        return StorageFull(FULL_MESSAGE)
    if code in _BUSY:
        return StorageUnavailable(
            "the server's database is locked by another process, so this cannot be done now; "
            "retry in a moment. Operator: close the program holding the database (a sqlite3 "
            "shell, a backup) or keep its transactions short"
        )
    if code in _DAMAGED:
        return StorageUnavailable(
            "the server's database file is damaged, so this cannot be done; retry later. "
            "Operator: stop the server and restore the database from a backup "
            f"(SQLite said: {exc})"
        )
    if code in _UNAVAILABLE:
        return StorageUnavailable(
            f"the server cannot use its database right now ({exc}); retry later. Operator: "
            "check the disk and the database file's permissions, then see the server log"
        )
    return exc


def is_storage_failure(exc: BaseException) -> bool:
    """True for a failure of the disk or the file (full, I/O, locked), not of our own SQL."""
    return isinstance(translate(exc), StorageError)


def opening_error(exc: sqlite3.Error, path: Path) -> CannotOpenDatabase:
    """One line for the operator when the database fails at start-up."""
    code = primary_code(exc)
    if code in _DAMAGED:
        return CannotOpenDatabase(
            f"{path} is not a SQLite database or is damaged ({exc}); restore it from a backup, "
            "or choose another --database to start with an empty one"
        )
    if code in _BUSY:
        return CannotOpenDatabase(
            f"{path} is locked by another process (not a parley-server; e.g. a sqlite3 shell or "
            "a backup in a write transaction); close that program and start again"
        )
    if code == sqlite3.SQLITE_READONLY:
        return CannotOpenDatabase(
            f"{path} is read-only for this user ({exc}); make it and its directory writable "
            "by the server's user, or choose another --database"
        )
    if code == sqlite3.SQLITE_FULL:
        return CannotOpenDatabase(
            f"{path} cannot be written: the disk is full or --max-database-mb is below the "
            "database's size; free disk space or raise --max-database-mb"
        )
    return CannotOpenDatabase(
        f"cannot open the database {path} ({exc}); check the path, its permissions and the disk"
    )
