"""Billing's services: the price book (versions of the table) and the cashier (balances,
top-ups, the ledger).

Rules kept here, and what enforces each one with concurrent writers:
1. A message is priced by the table in force when it was sent: versions are never edited,
   only added, each with an effective time that is not in the past (`PriceBook.set_table`), so
   no message already sent can fall under another version.
2. A top-up counts once per reference (billing_model B3); a repeated reference, even with
   another amount, answers the first entry with `applied = false`.
3. Ledger pages are read by entry id (AIP-158 page tokens carry the last id seen and whose
   ledger it is), so paging while entries are appended neither skips nor repeats an entry.
4. A quote (`quote_for`) is computed from facts read in one transaction (the recipient's
   country, the open windows, the month's usage) by the table in force at `now`, so QuotePrice
   answers exactly what a send at that moment would be priced at.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from server.domain import validation
from server.domain.auth import Principal
from server.domain.billing_model import Balance, LedgerEntry, PriceTableRow
from server.domain.clock import Clock
from server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from server.domain.links import entry_window_open
from server.domain.model import AccountKind, AccountRow, MessageCategory
from server.domain.money import MAX_AMOUNT_MICROS, format_amount
from server.domain.operator import Operator
from server.domain.ports import ReadTransaction, Store, Transaction
from server.domain.pricing import (
    PriceSchedule,
    PriceTable,
    PriceTableError,
    Quote,
    SendFacts,
    Window,
    default_table,
    from_json,
    parse_toml,
    quote,
)

MAX_REFERENCE = 128
MAX_NOTE = 500
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
# A price change scheduled this far ahead at most: a typo in a year would otherwise hide a
# table nobody looks at until it takes over.
MAX_SCHEDULE_AHEAD = 366 * 86_400.0
_TOKEN_PREFIX = b"ledger1:"
BILLING_OFF = (
    "billing is off on this server (--billing off): no message is priced or charged, so there "
    "is nothing to quote"
)
# The customer-service window: a user's message lets the business answer for 24 hours.
SERVICE_WINDOW_SECONDS = 86_400.0


@dataclass(frozen=True)
class TableVersion:
    """A stored price table version."""

    version: int
    table: PriceTable


class PriceBook:
    """Every version of the price table, read from the store and cached (a handful of rows
    that change rarely), and the operator's way to add one."""

    def __init__(self, db: Store, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._versions: list[TableVersion] = []

    async def start(self, wanted: PriceTable | None = None, source: str = "") -> None:
        """Load the versions; store the operator's table (read from --price-file at start, or
        the shipped one) as a new version when it differs from the one in force, effective now
        (since always for the very first one), so editing the file and restarting changes the
        prices from then on."""
        if wanted is None:
            wanted, source = default_table(), "shipped default"
        now = self._clock.now()

        def job(tx: Transaction) -> list[PriceTableRow]:
            rows = tx.price_tables()
            in_force = _schedule(rows).in_force(now) if rows else None
            if in_force is None or not _same_prices(in_force, wanted):
                when = 0.0 if not rows else now
                tx.add_price_table(when, _at(wanted, when).to_json(), now, source)
                rows = tx.price_tables()
            return rows

        self._load(await self._db.write(job))

    def _load(self, rows: list[PriceTableRow]) -> None:
        self._versions = [
            TableVersion(r.version, _at(from_json(r.body), r.effective_at)) for r in rows
        ]

    async def refresh(self) -> None:
        """Re-read the versions (another replica may have added one)."""
        self._load(await self._db.read(lambda tx: tx.price_tables()))

    def in_force(self, at: float) -> TableVersion:
        """The version in force at `at`."""
        found = None
        for v in self._versions:
            if v.table.effective_at > at:
                break
            found = v
        if found is None:
            raise FailedPrecondition("no price table is in force; the operator must set one")
        return found

    def next_after(self, at: float) -> TableVersion | None:
        """The first version taking effect after `at`, if one is scheduled."""
        return next((v for v in self._versions if v.table.effective_at > at), None)

    def version(self, number: int) -> TableVersion:
        """A version by its number (a charge names the one that priced it)."""
        found = next((v for v in self._versions if v.version == number), None)
        if found is None:
            raise FailedPrecondition(f"price table version {number} is not stored")
        return found

    def listing(self, at: float | None) -> tuple[TableVersion, TableVersion | None]:
        """The version in force at `at` (now when None) and the next one, if scheduled: what
        GetPriceList shows, so a business sees a price change coming."""
        when = self._clock.now() if at is None else at
        if at is not None and self._versions and at < self._versions[0].table.effective_at:
            raise InvalidArgument(
                "at is before the first price table took effect; ask for a later time, or "
                "leave at unset for now"
            )
        return self.in_force(when), self.next_after(when)

    async def set_table(self, _: Operator, toml: str, effective_at: float | None) -> TableVersion:
        """Add a version from the operator's TOML, in force from `effective_at` (now when
        None), which must not be in the past (rule 1)."""
        now = self._clock.now()
        when = now if effective_at is None else effective_at
        if when < now:
            raise InvalidArgument(
                "effective_at is in the past: a price change may only apply to messages sent "
                "from now on; leave it unset for now, or give a future time"
            )
        if when > now + MAX_SCHEDULE_AHEAD:
            raise InvalidArgument("effective_at is more than a year ahead; check the year")
        try:
            table = parse_toml(toml, effective_at=when)
        except PriceTableError as exc:
            raise InvalidArgument(f"the price table is not valid: {exc}") from None

        def job(tx: Transaction) -> list[PriceTableRow]:
            if any(r.effective_at == when for r in tx.price_tables()):
                raise FailedPrecondition(
                    "a price table version takes effect at that very time already; choose "
                    "another effective_at"
                )
            tx.add_price_table(when, table.to_json(), now, "rpc")
            return tx.price_tables()

        self._load(await self._db.write(job))
        return next(v for v in self._versions if v.table.effective_at == when)


class Cashier:
    """Balances, top-ups and the ledger of each business."""

    def __init__(self, db: Store, clock: Clock, prices: PriceBook) -> None:
        self._db = db
        self._clock = clock
        self._prices = prices

    def currency(self) -> str:
        return self._prices.in_force(self._clock.now()).table.currency

    async def balance(self, business_account_id: str) -> Balance:
        def read(tx: ReadTransaction) -> Balance:
            _require_business(tx, business_account_id)
            return tx.get_balance(business_account_id)

        return await self._db.read(read)

    async def top_up(
        self, _: Operator, business_account_id: str, amount: int, reference: str, note: str
    ) -> tuple[LedgerEntry, bool]:
        business = validation.uuid_string(business_account_id, field="business_account_id")
        if amount <= 0:
            raise InvalidArgument("amount_micros must be more than 0 (1 USD = 1000000)")
        if amount > MAX_AMOUNT_MICROS:
            raise InvalidArgument(
                f"amount_micros is above the largest top-up, {MAX_AMOUNT_MICROS} "
                f"({format_amount(MAX_AMOUNT_MICROS)}); split it into several top-ups"
            )
        if not 1 <= len(reference) <= MAX_REFERENCE or not reference.isprintable():
            raise InvalidArgument(
                f"reference is required: 1-{MAX_REFERENCE} printable characters that identify "
                "this payment (a retry with the same reference adds nothing)"
            )
        if len(note) > MAX_NOTE:
            raise InvalidArgument(f"note is longer than {MAX_NOTE} characters")
        now = self._clock.now()

        def job(tx: Transaction) -> tuple[LedgerEntry, bool]:
            _require_business(tx, business)
            return tx.top_up(business, amount, reference, now, note)

        return await self._db.write(job)

    async def ledger(
        self, business_account_id: str, page_size: int, page_token: str
    ) -> tuple[list[LedgerEntry], str]:
        """One page of the ledger and the token of the next (rule 3)."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _read_token(page_token, business_account_id) if page_token else 0

        def read(tx: ReadTransaction) -> list[LedgerEntry]:
            _require_business(tx, business_account_id)
            return tx.ledger_page(business_account_id, after, size + 1)

        rows = await self._db.read(read)
        more = len(rows) > size
        rows = rows[:size]
        token = _make_token(rows[-1].entry_id, business_account_id) if more else ""
        return rows, token


def month_key(at: float) -> str:
    """The calendar month (UTC) of a time, as the usage counters name it: "2026-11"."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m")


def quote_for(
    tx: ReadTransaction,
    book: PriceBook,
    business: str,
    recipient: str,
    category: MessageCategory,
    now: float,
) -> tuple[Quote, int]:
    """What a message of `category` from `business` to `recipient` costs if sent at `now`,
    and the number of the table version that priced it (rule 4).

    Only messages from a business to a person are priced; the caller has checked that
    `business` is one, and the recipient is checked here (NOT_FOUND, FAILED_PRECONDITION)."""
    account = tx.get_account(recipient)
    if account is None:
        raise NotFound(f"no account {recipient}; look the recipient's number up first")
    if recipient == business:
        raise InvalidArgument(
            "that is your own account: a business's messages to itself are never priced"
        )
    if account.kind != AccountKind.PERSON:
        raise FailedPrecondition(
            f"account {recipient} is a business: only messages from a business to a person "
            "are priced, messages between businesses cost nothing"
        )
    return price_at(tx, book, business, account, category, now)


def windows_at(tx: ReadTransaction, business: str, user: str, now: float) -> frozenset[Window]:
    """The windows open between the business and the user at `now` that a free rule can name:
    the 24-hour customer-service window, the 72-hour entry window of a click-to-chat link."""
    windows: set[Window] = set()
    opened = tx.window_opened_at(business, user)
    if opened is not None and opened <= now < opened + SERVICE_WINDOW_SECONDS:
        windows.add(Window.SERVICE)
    if entry_window_open(tx, business, user, now) is not None:
        windows.add(Window.ENTRY)
    return frozenset(windows)


def price_at(
    tx: ReadTransaction,
    book: PriceBook,
    business: str,
    recipient: AccountRow,
    category: MessageCategory,
    now: float,
    counted: tuple[int, int] = (0, 0),
) -> tuple[Quote, int]:
    """The price of a message from `business` to the person `recipient` sent at `now` and the
    table version that priced it: the facts (the windows open between them, the recipient's
    country, the business's count of the month plus `counted`, what a send job counted and has
    not stored yet) gathered in `tx`, then `pricing.quote`. The send path (metering) and
    QuotePrice price the same way through this one function."""
    windows = windows_at(tx, business, recipient.account_id, now)
    country = validation.country_of(recipient.phone_number)
    month, month_country = tx.month_usage(business, month_key(now), int(category), country)
    version = book.in_force(now)
    facts = SendFacts(category, country, windows, month + counted[0], month_country + counted[1])
    try:
        return quote(version.table, facts), version.version
    except PriceTableError as exc:  # a stored table always prices every category: a bug
        raise FailedPrecondition(f"the price table in force cannot price this: {exc}") from None


class PriceDesk:
    """The price list and the quote, as the BillingService RPCs ask for them."""

    def __init__(self, db: Store, clock: Clock, book: PriceBook, *, billing: bool) -> None:
        self._db = db
        self._clock = clock
        self.book = book
        self.billing = billing

    async def quote(
        self, caller: Principal, recipient_account_id: str, category: int
    ) -> tuple[Quote, int]:
        recipient = validation.uuid_string(recipient_account_id, field="recipient_account_id")
        if category not in set(MessageCategory) - {MessageCategory.UNSPECIFIED}:
            raise InvalidArgument(
                "category is required: MARKETING, UTILITY, AUTHENTICATION or SERVICE"
            )
        if not self.billing:
            raise FailedPrecondition(BILLING_OFF)
        kind = MessageCategory(category)
        now = self._clock.now()
        business = caller.account_id

        def read(tx: ReadTransaction) -> tuple[Quote, int]:
            _require_business(tx, business)
            return quote_for(tx, self.book, business, recipient, kind, now)

        return await self._db.read(read)


def _require_business(tx: ReadTransaction, account_id: str) -> None:
    account = tx.get_account(account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    if account.kind != AccountKind.BUSINESS:
        raise FailedPrecondition(
            "only business accounts have a balance: billing applies to messages businesses send"
        )


def _owner_tag(account_id: str) -> bytes:
    return hashlib.sha256(account_id.encode()).digest()[:6]


def _make_token(after_entry_id: int, account_id: str) -> str:
    raw = _TOKEN_PREFIX + _owner_tag(account_id) + after_entry_id.to_bytes(8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_token(token: str, account_id: str) -> int:
    bad = InvalidArgument(
        "page_token is not one ListLedgerEntries returned to you; start again with an empty "
        "page_token"
    )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise bad from None
    size = len(_TOKEN_PREFIX) + 6 + 8
    if len(raw) != size or not raw.startswith(_TOKEN_PREFIX):
        raise bad
    if raw[len(_TOKEN_PREFIX) : len(_TOKEN_PREFIX) + 6] != _owner_tag(account_id):
        raise bad
    return int.from_bytes(raw[-8:], "big")


def _schedule(rows: list[PriceTableRow]) -> PriceSchedule:
    return PriceSchedule([_at(from_json(r.body), r.effective_at) for r in rows])


def _at(table: PriceTable, effective_at: float) -> PriceTable:
    return PriceTable(
        table.currency, table.prices, table.free, table.allowances, table.tiers, effective_at
    )


def _same_prices(a: PriceTable, b: PriceTable) -> bool:
    return _at(a, 0.0).to_json() == _at(b, 0.0).to_json()
