"""SQL for the usage report (`server.domain.usage_model`): a business's charges grouped by day,
category or country, and the ledger's CAPTURE entries of the same messages."""

from __future__ import annotations

from server.domain.billing_model import ChargeState, EntryKind
from server.domain.usage_model import REASON_COLUMNS, UsageCounts, UsageGroup
from server.storage.billing import charge_day
from server.storage.sql import SqlConnection

_CAPTURED = int(ChargeState.CAPTURED)
_RELEASED = int(ChargeState.RELEASED)
_RESERVED = int(ChargeState.RESERVED)
# The grouping key of each grouping: fixed SQL, never built from a request. The day of a
# timestamp is the one SQL function the two dialects spell differently (`day_sql`).
_KEYS = {
    UsageGroup.CATEGORY: "CAST(category AS TEXT)",
    UsageGroup.COUNTRY: "country",
}


def _count(condition: str) -> str:
    # Portable: PostgreSQL does not sum booleans.
    return f" SUM(CASE WHEN {condition} THEN 1 ELSE 0 END),"


_BY_REASON = "".join(
    _count(f"state = {_CAPTURED} AND reason = {REASON_COLUMNS[name]}")
    for name in UsageCounts._fields
    if name in REASON_COLUMNS
)
_SUMS = (
    f"COUNT(*),{_count(f'state = {_CAPTURED}')}{_BY_REASON}"
    f"{_count(f'state = {_RELEASED}')}"
    f"{_count(f'state = {_RESERVED}')}"
    f" COALESCE(SUM(CASE WHEN state = {_CAPTURED} THEN amount END), 0),"
    f" COALESCE(SUM(CASE WHEN state = {_RESERVED} THEN amount END), 0)"
)


# The charges of a business sent in [start, end), as a FROM item: those with a SENT sequence
# are a range of `charges_by_sent_sequence`, from the first to the last sequence marked on the
# days the period touches (`charge_days`), those of before schema 15 a range of the partial
# index by send time that no new charge enters. Both filtered by the exact send time.
_PERIOD = (
    "(SELECT {columns} FROM charges WHERE business_account_id = ?"
    " AND sent_sequence >= (SELECT min(first_sequence) FROM charge_days"
    " WHERE business_account_id = ? AND day >= ? AND day <= ?)"
    " AND sent_sequence <= (SELECT max(last_sequence) FROM charge_days"
    " WHERE business_account_id = ? AND day >= ? AND day <= ?)"
    " AND sent_at >= ? AND sent_at < ?"
    " UNION ALL SELECT {columns} FROM charges WHERE business_account_id = ?"
    " AND sent_sequence IS NULL AND sent_at >= ? AND sent_at < ?) AS c"
)


def _period(
    columns: str, business_account_id: str, start: float, end: float
) -> tuple[str, tuple[object, ...]]:
    """The FROM item of the business's charges sent in [start, end) with `columns`, and its
    parameters."""
    days = (business_account_id, charge_day(start), charge_day(end))
    params = (business_account_id, *days, *days, start, end, business_account_id, start, end)
    return _PERIOD.format(columns=columns), params


class SqlUsage:
    """usage_model.UsageReads over the charges and the ledger."""

    connection: SqlConnection
    # The UTC day ("2026-11-28") of the `sent_at` column, in this dialect.
    day_sql = "strftime('%Y-%m-%d', sent_at, 'unixepoch')"

    def usage_by(
        self, business_account_id: str, start: float, end: float, group: UsageGroup
    ) -> list[UsageCounts]:
        key = self.day_sql if group is UsageGroup.DAY else _KEYS[group]
        charges, params = _period(
            "category, country, amount, reason, state, sent_at", business_account_id, start, end
        )
        rows = self.connection.execute(
            f"SELECT {key} AS k, {_SUMS} FROM {charges} GROUP BY k ORDER BY k", params
        ).fetchall()
        return [UsageCounts(str(r[0]), *(int(n) for n in r[1:])) for r in rows]

    def captured_in(self, business_account_id: str, start: float, end: float) -> int:
        charges, params = _period("message_id", business_account_id, start, end)
        (total,) = self.connection.execute(
            f"SELECT COALESCE(SUM(l.amount), 0) FROM {charges}"
            " JOIN ledger l ON l.message_id = c.message_id AND l.kind = ?"
            " WHERE l.business_account_id = ?",
            (*params, int(EntryKind.CAPTURE), business_account_id),
        ).fetchone()
        return int(total)
