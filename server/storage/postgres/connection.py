"""A psycopg connection that speaks to the shared storage SQL the way `sqlite3` does.

The storage modules (`server.storage.accounts`, `.messages`, ...) are written once, in the SQL
both backends accept: `?` placeholders, `ON CONFLICT ... DO UPDATE`, `RETURNING`, partial
indexes. What differs is the driver's surface, and this adapter gives psycopg sqlite3's:

* placeholders: `?` becomes `%s`, SQLite's numbered `?1` becomes one `%s` per use (with the
  parameters repeated in that order), and a literal `%` is doubled; quoted text is left alone.
  Each statement is translated once and cached.
* results: `execute` returns the cursor (`fetchone`, `fetchall`, `rowcount`, iteration), as
  `sqlite3.Connection.execute` does. Sums come back as `int`, not `Decimal` (PostgreSQL's
  `sum(bigint)` is `numeric`; every amount here is integer micro-units).
* `in_transaction`, `executemany`.

Where the two dialects need different SQL (a function only one has, a way of returning many
rows that is fast on one), `server.storage.postgres.transaction` overrides that method.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, ClassVar

import psycopg
from psycopg.adapt import Buffer, Loader
from psycopg.pq import TransactionStatus

Params = Sequence[Any]

# A quoted string or identifier (kept as it is), or a placeholder, or a percent sign.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?(\d*)|%")


class _IntegralNumeric(Loader):
    """`numeric` values without a fraction load as `int`: sums of micro-units, counts."""

    def load(self, data: Buffer) -> int | Decimal:
        text = bytes(data).decode()
        if "." in text or "e" in text.lower() or text in ("NaN", "Infinity", "-Infinity"):
            return Decimal(text)
        return int(text)


def configure(raw: psycopg.Connection[Any]) -> None:
    """What every connection of the backend's pool gets once, when it is opened."""
    raw.adapters.register_loader("numeric", _IntegralNumeric)


def translate(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """The statement for psycopg, and for numbered placeholders (`?1`, `?2`) the index of the
    parameter each `%s` takes (None: the parameters are used in order, as given)."""
    order: list[int] = []
    numbered = False
    plain = False

    def swap(m: re.Match[str]) -> str:
        nonlocal numbered, plain
        token = m.group(0)
        if token == "%":
            return "%%"
        if not token.startswith("?"):  # quoted: psycopg still reads its % signs
            return token.replace("%", "%%")
        if m.group(1):
            numbered = True
            order.append(int(m.group(1)) - 1)
        else:
            plain = True
            order.append(len(order))
        return "%s"

    out = _TOKEN.sub(swap, sql)
    if numbered and plain:
        raise ValueError(f"mixed ? and ?N placeholders in: {sql}")
    return out, tuple(order) if numbered else None


class PgConnection:
    """sqlite3.Connection's surface over one psycopg connection (see the module docstring)."""

    _cache: ClassVar[dict[str, tuple[str, tuple[int, ...] | None]]] = {}

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def _statement(self, sql: str, params: Params) -> tuple[str, Params]:
        found = self._cache.get(sql)
        if found is None:
            found = self._cache[sql] = translate(sql)
        text, order = found
        if order is not None:
            params = [params[i] for i in order]
        return text, params

    def execute(self, sql: str, params: Params = ()) -> psycopg.Cursor[Any]:
        text, args = self._statement(sql, params)
        return self.raw.execute(text, args)

    def executemany(self, sql: str, rows: Iterable[Params]) -> psycopg.Cursor[Any]:
        found = self._cache.get(sql)
        if found is None:
            found = self._cache[sql] = translate(sql)
        text, order = found
        args = rows if order is None else [[r[i] for i in order] for r in rows]
        cursor = self.raw.cursor()
        cursor.executemany(text, args)
        return cursor
