"""Billing's rows and storage operations: balances, the ledger, charges, price tables.

Kept apart from `server.domain.ports` (as consent and the sending rules are) so the area is one
module each backend implements (`server.storage.billing`).

Money is integer micro-units (`server.domain.money`). A business's balance is two numbers:
*available* (can pay for new sends) and *reserved* (held for messages sent but not yet
delivered). The ledger is append-only; every entry carries the balance after it, so a
statement can be read off the ledger alone.

What every backend guarantees here, because billing's invariants rest on it:
B1. `reserve` is one conditional UPDATE (`available >= amount` in its WHERE): a balance never
    goes below zero, whatever the number of concurrent writers, and a refusal is reported by
    its result, never by an exception. The balance row's CHECK constraints back it up.
B2. `settle_charges` moves only charges still RESERVED (`state = RESERVED` in the UPDATE's
    WHERE) and the ledger has UNIQUE (message_id, kind): of two concurrent captures (two
    devices' acks, two replicas, a retry after a crash) exactly one moves the charge, writes
    one ledger entry and moves the money; a message is captured or released at most once.
B3. `top_up` inserts its ledger entry first, on UNIQUE (business, reference) with ON CONFLICT
    DO NOTHING, and moves the balance only when that insert happened: a repeated reference
    (a retry, a concurrent duplicate) returns the first entry and adds nothing.
B4. Every read is indexed: balances and charges by primary key, the ledger by
    (business, entry_id), the price tables by effective time, the month's usage by its primary
    key, status events by (business, sequence). A business's pending charges to one recipient
    (read by a block only) are found through the recipient's queued envelopes, by their
    devices' index, each charge by its primary key: an index of charges by pair and state
    would cost every send an insert and every capture a delete.
B5. A business's status events are numbered from a counter row bumped by one upsert per
    business and job, which holds the row until commit: a business's events commit in
    sequence order, without gaps, with any number of writers. A SENT event is its charge
    (`reserve_many` gives each new charge its `sent_sequence`; the charge's primary key makes
    it one per message); the others are rows appended by `append_status_events`, each by the
    transaction that moved its charge out of RESERVED, which B2 lets happen once: one event of
    a kind per message without an index of its own. `status_events_after` reads both, merged
    by sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple, Protocol


class EntryKind(IntEnum):
    """What a ledger entry records (proto `LedgerEntryKind`)."""

    TOP_UP = 1
    RESERVE = 2
    CAPTURE = 3
    RELEASE = 4
    ADJUSTMENT = 5


class ChargeState(IntEnum):
    """Where the charge of one business message stands."""

    # Priced at send; the amount (possibly 0: free) is held until the first delivery.
    RESERVED = 0
    # Delivered: the amount was taken (a free message is "captured" at 0, with no entry).
    CAPTURED = 1
    # Not delivered (expired, failed, blocked): the amount went back to available.
    RELEASED = 2


class Balance(NamedTuple):
    available: int
    reserved: int


class LedgerEntry(NamedTuple):
    entry_id: int
    business_account_id: str
    kind: int  # an EntryKind
    # Signed, as it moved `available` (top-up +, reserve -, release +, capture 0: the money
    # leaves `reserved`), except that `amount` of a capture is what was charged (positive).
    amount: int
    available_after: int
    reserved_after: int
    message_id: int | None  # CAPTURE, RELEASE (and RESERVE entries of one message, before v14)
    reference: str | None
    at: float
    note: str
    # RESERVE: how many messages' prices it holds (those of one send job; each charge names
    # its entry). None on other entries.
    message_count: int | None = None


class Charge(NamedTuple):
    """The price of one business message, fixed when it was sent."""

    message_id: int
    business_account_id: str
    recipient_account_id: str
    category: int  # a MessageCategory
    country: str
    amount: int
    reason: int  # a pricing.FreeReason
    table_version: int
    state: int  # a ChargeState
    sent_at: float
    settled_at: float | None
    # The ledger entry of the reservation (None for a free message) and of its settlement.
    reserve_entry: int | None
    settle_entry: int | None
    # Why it costs what it costs, in words (pricing.Quote.explanation).
    explanation: str = ""
    # The sequence of its SENT status event: the charge *is* that event (B5), numbered by
    # `reserve_many` from the business's counter. None on charges stored before schema 15,
    # whose SENT events are rows of their own.
    sent_sequence: int | None = None


class ChargeRun(NamedTuple):
    """Charges of a send job alike but for their message ids (a batch of one template to one
    person at one price): `charge` holds their common values (its own message_id is not
    used), `message_ids` the messages, in order. Stored as one charge per message."""

    charge: Charge
    message_ids: list[int]


class SettledRun(NamedTuple):
    """Charges that `settle_charges` moved, of one business and one amount: enough to write
    the events and wake the streams."""

    business_account_id: str
    amount: int
    message_ids: list[int]


class StatusKind(IntEnum):
    """What happened to a business's message (proto `StatusEventKind`)."""

    SENT = 1
    DELIVERED = 2
    FAILED = 3
    EXPIRED = 4


class StatusEventRow(NamedTuple):
    """One status event as read; `sequence` was assigned from the business's counter (B5), and
    `ledger_entry_id` (a DELIVERED event's capture) is read from the ledger, never stored."""

    business_account_id: str
    sequence: int
    kind: int  # a StatusKind
    message_id: int
    at: float
    ledger_entry_id: int
    detail: str


class StatusEventView(NamedTuple):
    """A status event with the pricing of its message (the charge's)."""

    event: StatusEventRow
    charge: Charge


class PriceTableRow(NamedTuple):
    version: int
    effective_at: float
    body: str  # canonical JSON (pricing.PriceTable.to_json)
    created_at: float
    source: str


class Reservation(NamedTuple):
    """What `reserve` did: whether the charge was recorded, the balance after (or the one that
    was short), and the reservation's ledger entry (None for a free message or a refusal)."""

    accepted: bool
    balance: Balance
    entry_id: int | None


class BillingReads(Protocol):
    def get_balance(self, business_account_id: str) -> Balance:
        """The balance (0, 0 for a business that never had one)."""
        ...

    def get_charge(self, message_id: int) -> Charge | None: ...

    def ledger_page(
        self, business_account_id: str, after_entry_id: int, limit: int
    ) -> list[LedgerEntry]:
        """At most `limit` entries after `after_entry_id`, oldest first (B4)."""
        ...

    def entry_for_reference(
        self, business_account_id: str, reference: str
    ) -> LedgerEntry | None: ...

    def price_tables(self) -> list[PriceTableRow]:
        """Every version, oldest first (a handful: one per price change)."""
        ...

    def month_usage(
        self, business_account_id: str, month: str, category: int, country: str
    ) -> tuple[int, int]:
        """(messages of the category this month, of them to this country) that counted
        towards the allowance and the tiers."""
        ...

    def status_events_after(
        self, business_account_id: str, after_sequence: int, limit: int
    ) -> list[StatusEventView]:
        """At most `limit` of the business's events after `after_sequence`, in order (B4)."""
        ...

    def pending_charges_to(self, business_account_id: str, recipient_account_id: str) -> list[int]:
        """Message ids of the business's charges still RESERVED whose messages are queued for
        the recipient, in order (B4). A message none of whose copies is queued any more (they
        went with a removed device) is not among them: the expiry sweep releases it."""
        ...


class BillingWrites(Protocol):
    def add_price_table(self, effective_at: float, body: str, at: float, source: str) -> int:
        """Store a version; its number. A second version at the same effective time replaces
        nothing: UNIQUE (effective_at) refuses it (StorageConflict)."""
        ...

    def top_up(
        self, business_account_id: str, amount: int, reference: str, at: float, note: str
    ) -> tuple[LedgerEntry, bool]:
        """Add to the available balance once per reference (B3); the entry and whether this
        call made it."""
        ...

    def reserve_many(self, runs: Sequence[ChargeRun], at: float) -> bool:
        """Record a job's charges and hold their amounts (B1, one conditional UPDATE per
        business for its total, and one RESERVE entry for it that the priced charges name);
        each charge is its message's SENT event, numbered in the order given (B5). False,
        with nothing written, when a balance is short."""
        ...

    def reserve(self, charge: Charge, at: float) -> Reservation:
        """Record the charge and hold its amount when it is not zero (B1); when the balance is
        short, write nothing and say so."""
        ...

    def settle_charges(
        self, message_ids: list[int], state: ChargeState, at: float
    ) -> list[SettledRun]:
        """Capture (CAPTURED) or release (RELEASED) the charges of these messages that are
        still RESERVED (B2), with their ledger entries; the ones moved, by business and
        amount."""
        ...

    def count_usage(
        self, business_account_id: str, month: str, category: int, country: str, n: int = 1
    ) -> None:
        """Count `n` messages towards the month's allowance and tiers."""
        ...

    def append_status_events(
        self,
        business_account_id: str,
        kind: StatusKind,
        message_ids: list[int],
        at: float,
        detail: str = "",
    ) -> None:
        """Store an event of `kind` at `at` for each of the business's messages, numbered in
        the order given (B5)."""
        ...
