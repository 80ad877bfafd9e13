"""Versioned schema migrations, applied in order on start.

The schema version is SQLite's `user_version`. A database made by an older Parley is upgraded
step by step, each step in its own transaction, and never recreated: data is kept. A database
from a *newer* Parley is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run DDL statements inside the caller's transaction (executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v1_accounts(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE accounts (
            account_id     TEXT PRIMARY KEY,          -- UUID, opaque to clients
            phone_number   TEXT NOT NULL UNIQUE,      -- E.164
            kind           INTEGER NOT NULL,          -- AccountKind enum value
            created_at     REAL NOT NULL,
            next_device_id INTEGER NOT NULL DEFAULT 2 -- device ids are never reused
        );
        CREATE TABLE devices (
            account_id  TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            device_id   INTEGER NOT NULL,
            name        TEXT NOT NULL,
            token_hash  BLOB NOT NULL UNIQUE,         -- SHA-256 of the bearer token
            created_at  REAL NOT NULL,
            PRIMARY KEY (account_id, device_id)
        ) WITHOUT ROWID;
        CREATE TABLE verifications (
            verification_id TEXT PRIMARY KEY,
            phone_number    TEXT NOT NULL,
            code_hash       BLOB NOT NULL,
            created_at      REAL NOT NULL,
            expires_at      REAL NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            completed       INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX verifications_by_expiry ON verifications(expires_at);
        """,
    )


def _v2_linking_and_last_seen(conn: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(conn)
    db["devices"].add_column("last_seen_at", float)  # type: ignore[union-attr]
    conn.execute("UPDATE devices SET last_seen_at = created_at")
    _run_script(
        conn,
        """
        CREATE TABLE linking_codes (
            code_hash  BLOB PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
            expires_at REAL NOT NULL
        );
        """,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "accounts, devices and phone verifications", _v1_accounts),
    Migration(2, "device linking codes and last-seen times", _v2_linking_and_last_seen),
)
LATEST_VERSION = MIGRATIONS[-1].version


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer Parley; running older code on it could lose data."""


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = LATEST_VERSION) -> list[int]:
    """Bring the schema up to `target`; return the versions applied (empty when up to date)."""
    version = current_version(conn)
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"database schema version {version} is newer than this server supports "
            f"({LATEST_VERSION}); upgrade Parley or use another database file"
        )
    applied = []
    for migration in MIGRATIONS:
        if version < migration.version <= target:
            conn.execute("BEGIN IMMEDIATE")
            try:
                migration.apply(conn)
                conn.execute(f"PRAGMA user_version = {migration.version}")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            applied.append(migration.version)
    return applied
