"""Metering: a business pays for each message *delivered* to a person, exactly once.

The money path, and what enforces each step with concurrent writers (billing_model B1-B5):
1. **Priced when sent.** Every message a BUSINESS account sends to a PERSON (stored, not to
   itself) is priced by the table in force at its send time (as `billing.price_at` prices),
   in the send's own transaction, from metadata only: the category the sending rules stamped
   (the template's, or SERVICE), the recipient's country (its phone number), the windows
   open between them, and the business's count of the month. It gets a charge row (amount 0
   when free, with the reason), which is its SENT status event (numbered in it, B5).
2. **Reserved, or refused.** A billable price is held (available -> reserved) by one
   conditional UPDATE (`available >= amount`, B1) in the same transaction that stores the
   envelopes (`MeteringRule` returns it as a deferred write). When the balance is short the
   send is refused FAILED_PRECONDITION "insufficient balance: need X, available Y" and nothing
   is stored. A reservation that loses a race to a concurrent writer rolls the whole job back
   and runs it again (`BalanceRace`), which then refuses with the fresh balance.
3. **Captured on the first delivery.** The acknowledgement that settles the message as
   delivered (one conditional UPDATE of the message, ports guarantee 4) captures its charge in
   the same transaction (one conditional UPDATE of the charge plus a ledger entry on UNIQUE
   (message_id, kind), B2): a second device's ack, a repeated ack, concurrent acks, a replay
   after a crash charge nothing more. A DELIVERED event carries the amount and the entry.
4. **Released when it will not be delivered**: at expiry (EXPIRED) and when the recipient
   blocks the business (FAILED: its envelopes still queued for the recipient are deleted, so a
   blocked business's message is neither delivered nor paid for), by the same conditional
   updates.
5. A business's status events are numbered per business without gaps (B5), and a message's
   events never go backwards: SENT, then at most one of DELIVERED / EXPIRED / FAILED, because
   the message settles once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from server.domain import validation
from server.domain.admission import DeferredWrite, Draft, RequestIdRace, SendJob
from server.domain.billing import PriceBook, TableVersion, month_key, windows_at
from server.domain.billing_model import (
    Charge,
    ChargeRun,
    ChargeState,
    SettledRun,
    StatusKind,
)
from server.domain.errors import FailedPrecondition
from server.domain.model import AccountKind, MessageCategory, MessageRow
from server.domain.money import format_amount
from server.domain.ports import Transaction
from server.domain.pricing import FreeReason, Quote, SendFacts, Window, quote

log = logging.getLogger(__name__)

# Reasons of the events that release a price.
EXPIRED_REASON = "not delivered: no device of the recipient received it in time"
BLOCKED_REASON = "not delivered: the recipient does not accept messages from you"
# Quotes that count towards the month's allowance and volume tiers: what the business would
# pay for, not what a window made free.
_COUNTED = (FreeReason.BILLABLE, FreeReason.ALLOWANCE)
_RESERVED = int(ChargeState.RESERVED)

Wake = Callable[[Iterable[str]], None]
_new = tuple.__new__


class BalanceRace(RequestIdRace):
    """A reservation found less money than the rule saw (a concurrent writer spent it): the
    job is rolled back whole and run again, like a request_id race (rule 2)."""


class Reserve(NamedTuple):
    """The deferred write of a priced message: its charge (its SENT event), the held amount
    and the month's count, together with the envelopes or not at all. `charge` holds the price
    and is shared by the job's messages priced alike (its message_id is not used). A job's
    reservations are applied together (`apply_many`): a few statements for the batch, not a
    few per message."""

    charge: Charge
    message_id: int
    counts: bool
    month: str

    def apply(self, tx: Transaction) -> None:
        Reserve.apply_many(tx, [self])

    @classmethod
    def apply_many(cls, tx: Transaction, writes: Sequence[Reserve]) -> None:
        # Consecutive messages priced alike (the same charge object) are one run: what a
        # message adds here is its id.
        runs: list[ChargeRun] = []
        firsts: list[Reserve] = []
        shape: Charge | None = None
        ids: list[int] = []
        for w in writes:
            if w.charge is not shape:
                shape = w.charge
                ids = []
                runs.append(ChargeRun(shape, ids))
                firsts.append(w)
            ids.append(w.message_id)
        if not tx.reserve_many(runs, runs[0].charge.sent_at):
            raise BalanceRace()
        counted: dict[tuple[str, str, int, str], int] = {}
        for (c, messages), first in zip(runs, firsts, strict=True):
            if first.counts:  # alike in price, alike in what counts
                key = (c.business_account_id, first.month, c.category, c.country)
                counted[key] = counted.get(key, 0) + len(messages)
        for (business, month, category, country), n in counted.items():
            tx.count_usage(business, month, category, country, n)


class _ToRecipient:
    """What the prices of a job's messages to one person in one category depend on, read once
    per job: the person's country, the windows open between them, the month's counts (kept
    up to date as the job admits messages that are not stored yet), and the price itself once
    it no longer depends on the count."""

    __slots__ = ("charge", "country", "counts", "price", "totals", "windows")

    def __init__(
        self, country: str, windows: frozenset[Window], counts: list[int], totals: list[int]
    ) -> None:
        self.country = country
        self.windows = windows
        # [of the category, of it to this country] this month, and the category's total as
        # this job counts it (shared by the job's recipients in the category).
        self.counts = counts
        self.totals = totals
        self.price: Quote | None = None
        # The charge of `price`, shared by the messages it prices.
        self.charge: Charge | None = None


class _JobMeter:
    """One send job's metering at one send time: the table in force, the month, the money
    available, and a `_ToRecipient` per (person, category). A batch sends many messages to few
    people, so a message's own work is a dictionary lookup, a quote when the count matters,
    and its charge."""

    __slots__ = ("available", "month", "recipients", "totals", "usage", "version")

    def __init__(self, version: TableVersion, month: str) -> None:
        self.version = version
        self.month = month
        self.available: int | None = None
        # (person, category) -> its facts; None for a recipient that is not priced
        self.recipients: dict[tuple[str, int], _ToRecipient | None] = {}
        self.totals: dict[int, list[int]] = {}
        self.usage: dict[tuple[int, str], list[int]] = {}


class MeteringRule:
    """Admission rule 8: price, and hold the price of, each business message to a person
    (steps 1-2). After `BusinessRule`, whose stamp gives the category. The facts a price
    depends on are read once per job and recipient (the windows) or category and country (the
    month's counts), then kept up to date in the job as it admits more."""

    def __init__(self, book: PriceBook, *, enabled: bool = True) -> None:
        self._book = book
        self.enabled = enabled

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        r = draft.request
        if not self.enabled or r.online_only or draft.to_self:
            return ()
        message = draft.message
        stamp = job.stamps.get(message.message_id)
        if stamp is None:
            # Only the business rule stamps, and only a business's sends: unstamped, this is
            # a person's send, or a business's on a server without that rule.
            if job.caller_kind() != AccountKind.BUSINESS:
                return ()
            category = int(MessageCategory.SERVICE)
        else:
            category = stamp[0]
        business = job.caller.account_id
        now = message.server_ts
        meters: dict[float, _JobMeter] = job.memo("metering", "", dict)
        meter = meters.get(now)
        if meter is None:
            meter = meters[now] = _JobMeter(self._book.in_force(now), month_key(now))
        user = r.recipient_account_id
        try:
            to = meter.recipients[user, category]
        except KeyError:
            to = meter.recipients[user, category] = self._recipient(job, meter, user, category, now)
        if to is None:
            return ()
        table = meter.version.table
        price = to.price
        charge = to.charge
        if price is None or charge is None:
            price = quote(
                table,
                SendFacts(
                    MessageCategory(category), to.country, to.windows, to.totals[0], to.counts[1]
                ),
            )
            charge = Charge(
                0, business, user, category, price.country, price.amount, int(price.reason),
                meter.version.version, _RESERVED, now, None, None, None, price.explanation,
            )  # fmt: skip
            if to.totals[0] >= table.allowances.get(price.category, 0) and (
                (price.category, to.country) not in table.tiers
            ):
                # Past the allowance and without tiers, the count no longer matters: the price
                # (and its charge) is the same for the job's later messages to this person in
                # this category.
                to.price, to.charge = price, charge
        if meter.available is None:
            meter.available = job.tx.get_balance(business).available
        if price.amount > meter.available:
            raise FailedPrecondition(
                f"insufficient balance: need {format_amount(price.amount, price.currency)},"
                f" available {format_amount(meter.available, price.currency)}"
                f" ({price.explanation}); ask the operator for a top-up (GetBalance shows what"
                " is reserved)"
            )
        meter.available -= price.amount
        counted = price.reason in _COUNTED
        if counted:
            to.totals[0] += 1
            to.counts[1] += 1
        # tuple.__new__, not the named constructor (a Python-level call): one per message.
        return (_new(Reserve, (charge, message.message_id, counted, meter.month)),)

    @staticmethod
    def _recipient(
        job: SendJob, meter: _JobMeter, user: str, category: int, now: float
    ) -> _ToRecipient | None:
        """The facts of a job's messages to `user` in `category`; None when they are not
        priced (a business's messages to a person are)."""
        if job.account_kind(user) != AccountKind.PERSON:
            return None
        tx = job.tx
        recipient = job.memo("account", user, lambda: tx.get_account(user))
        if recipient is None:  # deleted concurrently: the recipient rule saw it
            return None
        business = job.caller.account_id
        country = validation.country_of(recipient.phone_number)
        windows = job.memo("billing-windows", user, lambda: windows_at(tx, business, user, now))
        usage = meter.usage.get((category, country))
        if usage is None:
            usage = meter.usage[category, country] = list(
                tx.month_usage(business, meter.month, category, country)
            )
        totals = meter.totals.setdefault(category, [usage[0]])
        return _ToRecipient(country, windows, usage, totals)


def _events(
    tx: Transaction, settled: Sequence[SettledRun], kind: StatusKind, at: float, reason: str
) -> set[str]:
    """The events of charges that just settled, per business in message order; the
    businesses."""
    # A DELIVERED event's ledger entry is read from the ledger (billing_model StatusEventRow).
    ids: dict[str, list[int]] = {}
    for run in settled:
        ids.setdefault(run.business_account_id, []).extend(run.message_ids)
    for business, messages in sorted(ids.items()):  # counters locked in business order
        tx.append_status_events(business, kind, sorted(messages), at, reason)
    return set(ids)


def settle(
    tx: Transaction, messages: Sequence[MessageRow], delivered: bool, at: float, reason: str = ""
) -> set[str]:
    """Capture (delivered) or release the charges of messages that just settled, in their
    settlement's transaction (steps 3-4), with their events; the businesses to wake."""
    if not messages:
        return set()
    ids = [m.message_id for m in messages]
    state = ChargeState.CAPTURED if delivered else ChargeState.RELEASED
    moved = tx.settle_charges(ids, state, at)
    kind = StatusKind.DELIVERED if delivered else StatusKind.EXPIRED
    return _events(tx, moved, kind, at, "" if delivered else reason or EXPIRED_REASON)


def release_blocked(
    tx: Transaction,
    user: str,
    business: str,
    at: float,
    failed: Callable[[list[int]], list[MessageRow]],
) -> set[str]:
    """The user blocked the business: its messages still queued for the user are settled
    as failed (`failed` settles the messages and deletes their envelopes), their prices
    released, each with a FAILED event (step 4)."""
    pending = tx.pending_charges_to(business, user)
    if not pending:
        return set()
    messages = failed(pending)
    moved = tx.settle_charges([m.message_id for m in messages], ChargeState.RELEASED, at)
    return _events(tx, moved, StatusKind.FAILED, at, BLOCKED_REASON)
