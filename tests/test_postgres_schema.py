"""The PostgreSQL schema is SQLite's, migration by migration, and migrating it is safe to repeat
and to race.

The comparison is mechanical: both databases are read back from their catalogs (SQLite's
pragmas, PostgreSQL's pg_catalog) into the same shape, after each migration, so a migration
written for one backend only, or written differently, fails here. `postgres_url` (the shared
fixture of tests/conftest.py) is a fresh, empty database per test.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from server.storage import migrations as sqlite_migrations
from server.storage.postgres import migrations as pg_migrations

Column = tuple[str, str, bool, str | None]  # name, type class, NOT NULL, default
Index = tuple[tuple[str, ...], bool, str]  # columns, unique, predicate ('' for none)
ForeignKey = tuple[
    tuple[str, ...], str, tuple[str, ...], str
]  # columns, table, its columns, ON DELETE


@dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    # Every unique constraint or unique index but the primary key, by columns and predicate.
    uniques: frozenset[tuple[tuple[str, ...], str]]
    # Indexes made by CREATE INDEX, by name (those behind constraints have engine-made names).
    indexes: dict[str, Index]
    foreign_keys: frozenset[ForeignKey]
    checks: frozenset[str]
    triggers: frozenset[str]


def _expression(text: str) -> str:
    """An index predicate or CHECK expression with the engines' spelling differences removed:
    PostgreSQL prints `(state <> 3)` for SQLite's `state != 3`."""
    return re.sub(r"[\s()]", "", text.lower()).replace("!=", "<>")


def _default(text: str | None) -> str | None:
    return None if text is None else re.sub(r"::[a-z ]+$", "", text)  # '' vs ''::text


def _affinity(declared: str) -> str:
    """SQLite's type affinity of a declared type (its documented rules, in its order)."""
    d = declared.upper()
    if "INT" in d:
        return "INTEGER"
    if any(word in d for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in d or not d:
        return "BLOB"
    if any(word in d for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


# PostgreSQL's type for each affinity; any other type is kept as it is, and differs.
PG_TYPES = {"bigint": "INTEGER", "double precision": "REAL", "text": "TEXT", "bytea": "BLOB"}
ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def sqlite_schema(conn: sqlite3.Connection) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    names = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    for name, table_sql in names:
        info = conn.execute(f"PRAGMA table_info({name})").fetchall()
        columns = tuple(
            (col, _affinity(declared), bool(notnull or pk), _default(default))
            for _, col, declared, notnull, default, pk in info
        )
        primary_key = tuple(r[1] for r in sorted(info, key=lambda r: r[5]) if r[5])
        uniques: set[tuple[tuple[str, ...], str]] = set()
        indexes: dict[str, Index] = {}
        for _, index, unique, origin, partial in conn.execute(f"PRAGMA index_list({name})"):
            if origin == "pk":
                continue
            cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index})"))
            predicate = ""
            if partial:
                (index_sql,) = conn.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (index,)
                ).fetchone()
                match = re.search(r"\bWHERE\b(.*)$", index_sql, re.IGNORECASE | re.DOTALL)
                assert match is not None, index_sql
                predicate = _expression(match.group(1))
            if unique:
                uniques.add((cols, predicate))
            if origin == "c":
                indexes[index] = (cols, bool(unique), predicate)
        by_id: dict[int, list[tuple[Any, ...]]] = {}
        for row in conn.execute(f"PRAGMA foreign_key_list({name})"):
            by_id.setdefault(row[0], []).append(row)
        foreign_keys = frozenset(
            (
                tuple(r[3] for r in sorted(rows, key=lambda r: r[1])),
                rows[0][2],
                tuple(r[4] for r in sorted(rows, key=lambda r: r[1])),
                rows[0][6],
            )
            for rows in by_id.values()
        )
        checks = frozenset(
            _expression(c) for c in re.findall(r"CHECK\s*\(([^()]*)\)", table_sql, re.IGNORECASE)
        )
        triggers = frozenset(
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (name,)
            )
        )
        tables[name] = Table(
            columns, primary_key, frozenset(uniques), indexes, foreign_keys, checks, triggers
        )
    return tables


_PG_COLUMNS = """
    SELECT column_name, data_type, is_nullable = 'NO', column_default
    FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position
"""
# Column names of an attribute-number array, in the array's order.
_NAMES = """ARRAY(SELECT a.attname::text FROM unnest({keys}) WITH ORDINALITY k(n, o)
    JOIN pg_attribute a ON a.attrelid = {rel} AND a.attnum = k.n ORDER BY k.o)"""
_PG_CONSTRAINTS = f"""
    SELECT c.contype::text, {_NAMES.format(keys="c.conkey", rel="c.conrelid")},
        c.confrelid::regclass::text, {_NAMES.format(keys="c.confkey", rel="c.confrelid")},
        c.confdeltype::text, pg_get_constraintdef(c.oid)
    FROM pg_constraint c WHERE c.conrelid = %s::regclass
"""
_PG_INDEXES = f"""
    SELECT x.relname::text, i.indisunique, i.indisprimary,
        {_NAMES.format(keys="i.indkey::int2[]", rel="i.indrelid")},
        pg_get_expr(i.indpred, i.indrelid),
        EXISTS (SELECT 1 FROM pg_constraint c
                WHERE c.conindid = i.indexrelid AND c.contype IN ('p', 'u', 'x'))
    FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid WHERE i.indrelid = %s::regclass
"""


def pg_schema(conn: psycopg.Connection[Any]) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    names = conn.execute(
        "SELECT relname::text FROM pg_class"
        " WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'"
    ).fetchall()
    for (name,) in names:
        if name == pg_migrations.VERSION_TABLE:
            continue
        columns = tuple(
            (col, PG_TYPES.get(data_type, data_type), notnull, _default(default))
            for col, data_type, notnull, default in conn.execute(_PG_COLUMNS, (name,))
        )
        primary_key: tuple[str, ...] = ()
        foreign_keys: set[ForeignKey] = set()
        checks: set[str] = set()
        for kind, cols, ref, ref_cols, on_delete, definition in conn.execute(
            _PG_CONSTRAINTS, (name,)
        ):
            if kind == "p":
                primary_key = tuple(cols)
            elif kind == "f":
                foreign_keys.add((tuple(cols), ref, tuple(ref_cols), ON_DELETE[on_delete]))
            elif kind == "c":
                checks.add(_expression(definition.removeprefix("CHECK")))
        uniques: set[tuple[tuple[str, ...], str]] = set()
        indexes: dict[str, Index] = {}
        for index, unique, primary, cols, predicate, constraint in conn.execute(
            _PG_INDEXES, (name,)
        ):
            where = "" if predicate is None else _expression(predicate)
            if unique and not primary:
                uniques.add((tuple(cols), where))
            if not constraint:
                indexes[index] = (tuple(cols), unique, where)
        triggers = frozenset(
            r[0]
            for r in conn.execute(
                "SELECT tgname::text FROM pg_trigger"
                " WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                (name,),
            )
        )
        tables[name] = Table(
            columns,
            primary_key,
            frozenset(uniques),
            indexes,
            frozenset(foreign_keys),
            frozenset(checks),
            triggers,
        )
    return tables


@contextmanager
def pg(url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def versions(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()


def test_both_backends_number_and_describe_migrations_alike() -> None:
    def listing(migrations: tuple[Any, ...]) -> list[tuple[int, str]]:
        return [(m.version, m.description) for m in migrations]

    assert listing(pg_migrations.MIGRATIONS) == listing(sqlite_migrations.MIGRATIONS)
    assert pg_migrations.LATEST_VERSION == sqlite_migrations.LATEST_VERSION
    assert pg_migrations.SchemaTooNewError is sqlite_migrations.SchemaTooNewError


def test_schema_matches_sqlite_after_every_migration(postgres_url: str, tmp_path: Path) -> None:
    lite = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    with pg(postgres_url) as conn:
        for migration in sqlite_migrations.MIGRATIONS:
            step = migration.version
            assert sqlite_migrations.migrate(lite, target=step) == [step]
            assert pg_migrations.migrate(conn, target=step) == step
            expected, actual = sqlite_schema(lite), pg_schema(conn)
            assert sorted(actual) == sorted(expected), f"tables after migration {step}"
            for name, table in expected.items():
                assert actual[name] == table, f"table {name} after migration {step}"
    lite.close()


def test_text_sorts_bytewise_and_only_engine_made_keys_are_identities(postgres_url: str) -> None:
    """What the comparison with SQLite cannot see: every text column sorts by bytes, like
    SQLite's BINARY, whatever the database's locale; and exactly the keys SQLite assigns (the
    rowid of price_tables, the AUTOINCREMENT of the ledger) are made by PostgreSQL, never the
    server's time-ordered ids."""
    with pg(postgres_url) as conn:
        pg_migrations.migrate(conn)
        loose = conn.execute(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND data_type = 'text'"
            " AND table_name != %s AND collation_name IS DISTINCT FROM 'C'",
            (pg_migrations.VERSION_TABLE,),
        ).fetchall()
        assert loose == []
        identities = conn.execute(
            "SELECT table_name, column_name, identity_generation FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY 1"
        ).fetchall()
        assert identities == [
            ("ledger", "entry_id", "BY DEFAULT"),
            ("price_tables", "version", "BY DEFAULT"),
        ]
        # Byte order: upper case before lower case, as in SQLite.
        conn.execute(
            "INSERT INTO usage_months VALUES ('b', '2026-11', 1, 'de', 1),"
            " ('b', '2026-11', 1, 'DE', 1)"
        )
        rows = conn.execute("SELECT country FROM usage_months ORDER BY country").fetchall()
        assert rows == [("DE",), ("de",)]


def test_migrating_twice_is_a_no_op(postgres_url: str) -> None:
    with pg(postgres_url) as conn:
        assert pg_migrations.current_version(conn) == 0
        assert pg_migrations.migrate(conn) == pg_migrations.LATEST_VERSION
        schema, recorded = pg_schema(conn), versions(conn)
        assert [r[0] for r in recorded] == [m.version for m in pg_migrations.MIGRATIONS]
        assert pg_migrations.migrate(conn) == pg_migrations.LATEST_VERSION
        assert pg_schema(conn) == schema
        assert versions(conn) == recorded  # same rows, same times: nothing was re-applied


def test_a_schema_from_a_newer_parley_is_refused(postgres_url: str) -> None:
    newer = pg_migrations.LATEST_VERSION + 1
    with pg(postgres_url) as conn:
        pg_migrations.migrate(conn)
        conn.execute(
            "INSERT INTO schema_migrations (version, description) VALUES (%s, 'payouts')",
            (newer,),
        )
        schema = pg_schema(conn)
        with pytest.raises(pg_migrations.SchemaTooNewError) as refused:
            pg_migrations.migrate(conn)
        message = str(refused.value)
        assert f"version {newer} (payouts) is newer than this server supports" in message
        assert "upgrade Parley" in message and "--database" in message
        assert pg_schema(conn) == schema
        # The refusal rolled its transaction back: the connection is usable, the lock free.
        free = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s)", (pg_migrations.MIGRATION_LOCK_KEY,)
        )
        assert free.fetchone() == (True,)


@pytest.mark.parametrize("isolation", [None, psycopg.IsolationLevel.SERIALIZABLE])
def test_replicas_migrating_at_once_apply_each_migration_once(
    postgres_url: str, isolation: psycopg.IsolationLevel | None
) -> None:
    """Two replicas start together on an empty database: both succeed, one applies each step
    and the other, having waited for the lock, finds it done (a step applied twice would fail
    on its CREATE TABLE or on the version's primary key). Also with connections set to a
    snapshot isolation level, under which the waiting replica would read a stale version if
    migrate did not force READ COMMITTED."""
    start = threading.Barrier(2)
    results: list[object] = []

    def replica() -> None:
        try:
            with psycopg.connect(postgres_url) as conn:
                conn.isolation_level = isolation
                start.wait(timeout=10)
                results.append(pg_migrations.migrate(conn))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [pg_migrations.LATEST_VERSION] * 2
    with pg(postgres_url) as conn:
        assert [(r[0], r[1]) for r in versions(conn)] == [
            (m.version, m.description) for m in pg_migrations.MIGRATIONS
        ]


def test_data_migrations_carry_existing_rows(postgres_url: str) -> None:
    """Migration 2 fills last_seen_at from created_at, migration 8 starts each account's device
    count from the devices on file: a PostgreSQL database, too, may be at any version."""
    with pg(postgres_url) as conn:
        assert pg_migrations.migrate(conn, target=1) == 1
        conn.execute("INSERT INTO accounts VALUES ('a', '+14155550123', 1, 1790000000.0, 3)")
        conn.execute(
            "INSERT INTO devices VALUES ('a', 1, 'phone', '\\x01', 1790000000.0),"
            " ('a', 2, 'laptop', '\\x02', 1790000100.0)"
        )
        assert pg_migrations.migrate(conn, target=7) == 7
        conn.execute(
            "INSERT INTO accounts (account_id, phone_number, kind, created_at)"
            " VALUES ('b', '+14155550999', 1, 0)"
        )
        assert pg_migrations.migrate(conn) == pg_migrations.LATEST_VERSION
        seen = conn.execute("SELECT device_id, last_seen_at FROM devices ORDER BY 1").fetchall()
        assert seen == [(1, 1790000000.0), (2, 1790000100.0)]
        counts = conn.execute("SELECT account_id, device_count FROM accounts ORDER BY 1")
        assert counts.fetchall() == [("a", 2), ("b", 0)]


def test_triggers_and_checks_hold_on_postgres(postgres_url: str) -> None:
    """The rules the SQLite schema enforces by trigger and CHECK are enforced here too, with
    IntegrityError (psycopg's) as with sqlite3."""
    with pg(postgres_url) as conn:
        pg_migrations.migrate(conn)
        conn.execute(
            "INSERT INTO accounts (account_id, phone_number, kind, created_at)"
            " VALUES ('shop', '+15550000001', 2, 0), ('ann', '+15550000002', 1, 0)"
        )
        conn.execute(
            "INSERT INTO templates (template_id, business_account_id, name, language, category,"
            " body, parameter_count, status, created_at) VALUES"
            " ('t1', 'shop', 'hello', 'en', 2, 'Hi', 0, 2, 0),"
            " ('t2', 'shop', 'draft', 'en', 2, 'Hi', 0, 1, 0)"
        )
        for change in ("category = 1", "body = 'Buy now'", "name = name"):
            with pytest.raises(psycopg.IntegrityError, match="approved template never changes"):
                conn.execute(f"UPDATE templates SET {change} WHERE template_id = 't1'")
        with pytest.raises(psycopg.IntegrityError, match="keeps its status"):
            conn.execute("UPDATE templates SET status = 3 WHERE template_id = 't1'")
        conn.execute("UPDATE templates SET pause_reason = 'business' WHERE template_id = 't1'")
        conn.execute("UPDATE templates SET body = 'Hey', status = 2 WHERE template_id = 't2'")

        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO balances VALUES ('shop', -1, 0)")

        conn.execute(
            "INSERT INTO consents (user_phone, business_account_id, category, kind)"
            " VALUES ('+15550000002', 'shop', 2, 1), ('+15550000003', 'shop', 2, 2)"
        )
        conn.execute("DELETE FROM accounts WHERE account_id = 'ann'")
        left = conn.execute("SELECT user_phone FROM consents").fetchall()
        assert left == [("+15550000003",)]  # the deleted account's number lost its consents
        conn.execute("DELETE FROM accounts WHERE account_id = 'shop'")
        assert conn.execute("SELECT count(*) FROM consents").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM templates").fetchone() == (0,)


def test_migrate_refuses_a_connection_inside_a_transaction(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SELECT 1")  # psycopg opened a transaction
        with pytest.raises(ValueError, match="outside any transaction"):
            pg_migrations.migrate(conn)
        conn.rollback()
        assert pg_migrations.migrate(conn) == pg_migrations.LATEST_VERSION
