"""The usage report's rows and storage reads: a business's charges summed over a period.

Kept apart from `billing_model` (the money path's module) as the other areas are: one module
each backend implements (`server.storage.usage`), mixed into `ports.ReadTransaction`.

What every backend guarantees here:
R1. Both reads are served by indexes, never a scan of other businesses' rows: the business's
    charges with a SENT sequence are one range of `charges_by_sent_sequence`, between the first
    and the last sequence marked on the period's UTC days (`charge_days`, one upsert per send
    job, where an index by send time would be a write per message); those of before schema 15
    (no sequence) a range of a partial index by send time that no new charge enters. The
    ledger is joined by its unique (message_id, kind) index.
R2. Both read the same rows (the business's charges with `sent_at` in [start, end)), so a
    report read in one transaction compares the charges' captured amounts with the ledger's
    CAPTURE entries of the very same messages.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple, Protocol

from server.domain.pricing import FreeReason


class UsageGroup(IntEnum):
    """How a report groups its rows (proto `UsageGrouping`)."""

    DAY = 1
    CATEGORY = 2
    COUNTRY = 3


class UsageCounts(NamedTuple):
    """One group's counts and amounts (micro-units)."""

    # The day "2026-11-28" (UTC), the category's number as text, or the country code.
    key: str
    sent: int
    delivered: int
    billable: int
    free_service_window: int
    free_entry_window: int
    free_allowance: int
    not_delivered: int
    pending: int
    charged: int
    reserved: int


# The delivered messages each column counts, by the charge's reason (pricing.FreeReason).
REASON_COLUMNS: dict[str, int] = {
    "billable": FreeReason.BILLABLE,
    "free_service_window": FreeReason.SERVICE_WINDOW,
    "free_entry_window": FreeReason.ENTRY_WINDOW,
    "free_allowance": FreeReason.ALLOWANCE,
}


class UsageReads(Protocol):
    def usage_by(
        self, business_account_id: str, start: float, end: float, group: UsageGroup
    ) -> list[UsageCounts]:
        """The business's charges of messages sent in [start, end), grouped, in key order
        (R1, R2)."""
        ...

    def captured_in(self, business_account_id: str, start: float, end: float) -> int:
        """The sum of the business's CAPTURE ledger entries of the messages it sent in
        [start, end) (R1, R2)."""
        ...
