"""The usage report: what a business sent in a period, what was delivered, free or billable,
and what it was charged, checked against the ledger.

Rules kept here:
1. A period is a calendar month (UTC) or [start, end) with start before end, at most
   `MAX_PERIOD` long (a report holds one row per day at most, so its size is bounded).
2. The counts and amounts are summed in the store from the business's charges of messages
   *sent* in the period (their `sent_at`), so a message delivered on the 1st of the next month
   is still in the month it was sent (and priced) in.
3. `reconciled` is computed, never assumed: the charges' captured amounts and the ledger's
   CAPTURE entries of the same messages are read in one transaction and compared. They differ
   only if the books are damaged, and then the report says so instead of hiding it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from server.domain.auth import Principal
from server.domain.billing import PriceBook, month_key
from server.domain.clock import Clock
from server.domain.errors import InvalidArgument
from server.domain.model import MessageCategory
from server.domain.ports import ReadTransaction, Store
from server.domain.profiles import require_business_kind
from server.domain.usage_model import UsageCounts, UsageGroup

MAX_PERIOD = 366 * 86_400.0
_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class UsageReport:
    start: float
    end: float
    currency: str
    rows: list[UsageCounts]
    total: UsageCounts
    ledger_captured: int

    @property
    def reconciled(self) -> bool:
        return self.total.charged == self.ledger_captured


def month_period(month: str) -> tuple[float, float]:
    """[first instant, first instant of the next month) of "2026-11" (UTC)."""
    match = _MONTH.fullmatch(month)
    if (
        match is None
        or not 1 <= int(match.group(2)) <= 12
        or not 1970 <= int(match.group(1)) < 9999
    ):
        raise InvalidArgument(f'month {month[:32]!r} is not a month such as "2026-11"')
    year, number = int(match.group(1)), int(match.group(2))
    start = datetime(year, number, 1, tzinfo=UTC)
    after = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), after.timestamp()


def _period(month: str, start: float | None, end: float | None, now: float) -> tuple[float, float]:
    """Rule 1."""
    if month and (start is not None or end is not None):
        raise InvalidArgument("give either month, or start and end, not both")
    if month:
        return month_period(month)
    if start is None and end is None:
        return month_period(month_key(now))
    if start is None or end is None:
        raise InvalidArgument("start and end go together: give both (end exclusive), or a month")
    if end <= start:
        raise InvalidArgument("the period is empty or reversed: end must be after start")
    if end - start > MAX_PERIOD:
        raise InvalidArgument("the period is longer than 366 days; ask for one year at a time")
    return start, end


def _total(rows: list[UsageCounts]) -> UsageCounts:
    sums = [sum(column) for column in zip(*(r[1:] for r in rows), strict=True)]
    return UsageCounts("total", *sums) if rows else UsageCounts("total", *[0] * 10)


def _named(row: UsageCounts, group: UsageGroup) -> UsageCounts:
    if group is UsageGroup.CATEGORY:
        number = int(row.key)
        name = MessageCategory(number).name if number in set(MessageCategory) else row.key
        return row._replace(key=name)
    return row


class UsageReports:
    """GetUsageReport's domain."""

    def __init__(self, db: Store, clock: Clock, book: PriceBook) -> None:
        self._db = db
        self._clock = clock
        self._book = book

    async def report(
        self,
        caller: Principal,
        month: str,
        start: float | None,
        end: float | None,
        group: int,
    ) -> UsageReport:
        try:
            grouping = UsageGroup(group or UsageGroup.DAY)
        except ValueError:
            raise InvalidArgument(
                "group_by must be USAGE_GROUPING_DAY, USAGE_GROUPING_CATEGORY or "
                "USAGE_GROUPING_COUNTRY"
            ) from None
        now = self._clock.now()
        first, after = _period(month, start, end, now)
        business = caller.account_id

        def read(tx: ReadTransaction) -> tuple[list[UsageCounts], int]:
            require_business_kind(tx, business, "have a usage report")
            rows = tx.usage_by(business, first, after, grouping)
            return rows, tx.captured_in(business, first, after)  # rule 3: same transaction

        rows, captured = await self._db.read(read)
        named = sorted((_named(r, grouping) for r in rows), key=lambda r: r.key)
        currency = self._book.in_force(now).table.currency
        return UsageReport(first, after, currency, named, _total(rows), captured)
