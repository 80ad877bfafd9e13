"""Metering: a business pays for each message *delivered* to a person, exactly once.

The money path, and what enforces each step with concurrent writers (billing_model B1-B5):
1. **Priced when sent.** Every message a BUSINESS account sends to a PERSON (stored, not to
   itself) is priced by the table in force at its send time (as `billing.price_at` prices),
   in the send's own transaction, from metadata only: the category the sending rules stamped
   (the template's, or SERVICE), the recipient's country (its phone number), the windows
   open between them, and the business's count of the month. It gets a charge row (amount 0
   when free, with the reason) and a SENT status event.
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
from server.domain.billing import PriceBook, month_key, windows_at
from server.domain.billing_model import (
    Charge,
    ChargeState,
    SettledCharge,
    StatusEventRow,
    StatusKind,
)
from server.domain.errors import FailedPrecondition
from server.domain.model import AccountKind, MessageCategory, MessageRow
from server.domain.money import format_amount
from server.domain.ports import Transaction
from server.domain.pricing import FreeReason, SendFacts, quote

log = logging.getLogger(__name__)

# Reasons of the events that release a price.
EXPIRED_REASON = "not delivered: no device of the recipient received it in time"
BLOCKED_REASON = "not delivered: the recipient does not accept messages from you"
# Quotes that count towards the month's allowance and volume tiers: what the business would
# pay for, not what a window made free.
_COUNTED = (FreeReason.BILLABLE, FreeReason.ALLOWANCE)

Wake = Callable[[Iterable[str]], None]


class BalanceRace(RequestIdRace):
    """A reservation found less money than the rule saw (a concurrent writer spent it): the
    job is rolled back whole and run again, like a request_id race (rule 2)."""


class Reserve(NamedTuple):
    """The deferred write of a priced message: its charge, the held amount, the month's count
    and the SENT event, together with the envelopes or not at all. A job's reservations are
    applied together (`apply_many`): a few statements for the batch, not a few per message."""

    charge: Charge
    counts: bool
    month: str

    def apply(self, tx: Transaction) -> None:
        Reserve.apply_many(tx, [self])

    @classmethod
    def apply_many(cls, tx: Transaction, writes: Sequence[Reserve]) -> None:
        charges = [w.charge for w in writes]
        if not tx.reserve_many(charges, charges[0].sent_at):
            raise BalanceRace()
        counted: dict[tuple[str, str, int, str], int] = {}
        for w in writes:
            if w.counts:
                c = w.charge
                key = (c.business_account_id, w.month, c.category, c.country)
                counted[key] = counted.get(key, 0) + 1
        for (business, month, category, country), n in counted.items():
            tx.count_usage(business, month, category, country, n)
        tx.append_status_events(
            [
                StatusEventRow(
                    c.business_account_id, 0, int(StatusKind.SENT), c.message_id, c.sent_at, 0, ""
                )
                for c in charges
            ]
        )


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
        if not self.enabled or draft.to_self or r.online_only:
            return ()
        business = job.caller.account_id
        if job.account_kind(business) != AccountKind.BUSINESS:
            return ()
        user = r.recipient_account_id
        if job.account_kind(user) != AccountKind.PERSON:
            return ()
        tx = job.tx
        recipient = job.memo("account", user, lambda: tx.get_account(user))
        if recipient is None:  # deleted concurrently: the recipient rule saw it
            return ()
        stamp = job.stamps.get(draft.message.message_id)
        category = MessageCategory(stamp[0]) if stamp else MessageCategory.SERVICE
        now = draft.message.server_ts
        country = job.memo("country", user, lambda: validation.country_of(recipient.phone_number))
        windows = job.memo("billing-windows", user, lambda: windows_at(tx, business, user, now))
        month = job.memo("month", "", lambda: month_key(now))  # a job's drafts share `now`
        # [of the category, of it to this country] this month: read once, then counted here
        # as the job admits messages that are not stored yet.
        counts: list[int] = job.memo(
            "month-usage",
            f"{int(category)}/{country}/{month}",
            lambda: list(tx.month_usage(business, month, int(category), country)),
        )
        totals: list[int] = job.memo("month-total", f"{int(category)}/{month}", lambda: [counts[0]])
        version = self._book.in_force(now)
        table = version.table
        if (
            totals[0] >= table.allowances.get(category, 0)
            and (category, country) not in table.tiers
        ):
            # Past the allowance and without tiers, the count no longer matters: the price is
            # the same for every message of the job to this recipient and category.
            price = job.memo(
                "price",
                f"{version.version}/{int(category)}/{user}",
                lambda: quote(table, SendFacts(category, country, windows, totals[0], counts[1])),
            )
        else:
            price = quote(table, SendFacts(category, country, windows, totals[0], counts[1]))
        available: list[int] = job.memo(
            "available", "", lambda: [tx.get_balance(business).available]
        )
        if price.amount > available[0]:
            raise FailedPrecondition(
                f"insufficient balance: need {format_amount(price.amount, price.currency)},"
                f" available {format_amount(available[0], price.currency)} ({price.explanation});"
                " ask the operator for a top-up (GetBalance shows what is reserved)"
            )
        available[0] -= price.amount
        counted = price.reason in _COUNTED
        if counted:
            totals[0] += 1
            counts[1] += 1
        charge = Charge(
            draft.message.message_id, business, user, int(category), price.country,
            price.amount, int(price.reason), version.version, int(ChargeState.RESERVED), now,
            None, None, None, price.explanation,
        )  # fmt: skip
        return (Reserve(charge, counted, month),)


def _events(
    settled: Sequence[SettledCharge], kind: StatusKind, at: float, reason: str
) -> list[StatusEventRow]:
    # A DELIVERED event's ledger entry is read from the ledger (billing_model StatusEventRow).
    return [
        StatusEventRow(c.business_account_id, 0, int(kind), c.message_id, at, 0, reason)
        for c in settled
    ]


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
    tx.append_status_events(_events(moved, kind, at, "" if delivered else reason or EXPIRED_REASON))
    return {c.business_account_id for c in moved}


def release_blocked(
    tx: Transaction,
    user: str,
    business: str,
    at: float,
    failed: Callable[[list[int]], list[MessageRow]],
) -> set[str]:
    """The user blocked the business: its messages still on their way to the user are settled
    as failed (`failed` settles the messages and deletes their envelopes), their prices
    released, each with a FAILED event (step 4)."""
    pending = tx.pending_charges_to(business, user)
    if not pending:
        return set()
    messages = failed(pending)
    moved = tx.settle_charges([m.message_id for m in messages], ChargeState.RELEASED, at)
    tx.append_status_events(_events(moved, StatusKind.FAILED, at, BLOCKED_REASON))
    return {c.business_account_id for c in moved}
