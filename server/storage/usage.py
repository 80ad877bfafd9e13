"""SQL for the usage report (`server.domain.usage_model`): a business's charges grouped by day,
category or country, and the ledger's CAPTURE entries of the same messages."""

from __future__ import annotations

import sqlite3

from server.domain.billing_model import ChargeState, EntryKind
from server.domain.usage_model import REASON_COLUMNS, UsageCounts, UsageGroup

_CAPTURED = int(ChargeState.CAPTURED)
_RELEASED = int(ChargeState.RELEASED)
_RESERVED = int(ChargeState.RESERVED)
# The grouping key of each grouping: fixed SQL, never built from a request.
_KEYS = {
    UsageGroup.DAY: "strftime('%Y-%m-%d', sent_at, 'unixepoch')",
    UsageGroup.CATEGORY: "CAST(category AS TEXT)",
    UsageGroup.COUNTRY: "country",
}
_BY_REASON = "".join(
    f" SUM(state = {_CAPTURED} AND reason = {REASON_COLUMNS[name]}),"
    for name in UsageCounts._fields
    if name in REASON_COLUMNS
)
_SUMS = (
    f"COUNT(*), SUM(state = {_CAPTURED}),{_BY_REASON}"
    f" SUM(state = {_RELEASED}),"
    f" SUM(state = {_RESERVED}),"
    f" COALESCE(SUM(CASE WHEN state = {_CAPTURED} THEN amount END), 0),"
    f" COALESCE(SUM(CASE WHEN state = {_RESERVED} THEN amount END), 0)"
)


class SqliteUsage:
    """usage_model.UsageReads over the charges and the ledger."""

    connection: sqlite3.Connection

    def usage_by(
        self, business_account_id: str, start: float, end: float, group: UsageGroup
    ) -> list[UsageCounts]:
        key = _KEYS[group]
        rows = self.connection.execute(
            f"SELECT {key} AS k, {_SUMS} FROM charges"
            " WHERE business_account_id = ? AND sent_at >= ? AND sent_at < ?"
            " GROUP BY k ORDER BY k",
            (business_account_id, start, end),
        ).fetchall()
        return [UsageCounts(str(r[0]), *(int(n) for n in r[1:])) for r in rows]

    def captured_in(self, business_account_id: str, start: float, end: float) -> int:
        (total,) = self.connection.execute(
            "SELECT COALESCE(SUM(l.amount), 0) FROM charges c"
            " JOIN ledger l ON l.message_id = c.message_id AND l.kind = ?"
            " WHERE c.business_account_id = ? AND c.sent_at >= ? AND c.sent_at < ?"
            " AND l.business_account_id = c.business_account_id",
            (int(EntryKind.CAPTURE), business_account_id, start, end),
        ).fetchone()
        return int(total)
