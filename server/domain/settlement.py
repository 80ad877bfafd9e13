"""Settlement: acknowledgements and expiry, and the delivery status each one sends back.

Rules kept here, and what enforces each one with concurrent writers:
1. The first acknowledgement by any recipient device settles a message as delivered, once.
   `settle_messages` is a conditional UPDATE (`state = PENDING` in its WHERE, ports guarantee
   4): of two devices (or replicas) acknowledging at once, exactly one moves the message and
   so exactly one delivery status is queued.
2. An envelope is deleted by its own device's acknowledgement only: the DELETE is keyed by
   (account_id, device_id, envelope_id), so a device cannot acknowledge another's envelopes.
3. A message that no device acknowledged within the envelope TTL settles as failed (whether its
   envelopes expired or went away with a removed device), by the same conditional UPDATE, so
   an acknowledgement racing expiry yields one status, never two.
4. Either way the sending device gets one delivery status, queued in the same transaction
   (dropped if that device no longer exists), and fanned out after the commit.
5. A message is kept while it is pending and for the idempotency window after it was sent
   (`MessagingPolicy.idempotency_window`), so a retried request_id still gets its first
   result (admission rule 2); then the sweep deletes it. A delivery status no device of its
   sender acknowledged within the envelope TTL is deleted too: what a delivered message leaves
   behind is bounded by the window, not by the traffic.
6. A business message's charge settles with it, in the same transaction: captured when the
   message is delivered, released when it expires or the recipient blocks the business
   (`server.domain.metering`, steps 3-4). A block settles the business's messages still on
   their way to the blocker as failed and deletes their queued envelopes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from server.domain import metering
from server.domain.auth import Principal, as_caller
from server.domain.clock import Clock
from server.domain.errors import InvalidArgument
from server.domain.fanout import Fanout
from server.domain.ids import IdGenerator
from server.domain.messaging_policy import MessagingPolicy
from server.domain.model import MessageRow, MessageState, StatusRow
from server.domain.ports import Store, Transaction

log = logging.getLogger(__name__)

# Rows of each kind one sweep job expires or forgets: bounds how long it holds the writer
# (a few milliseconds; sends queued meanwhile wait that long). A backlog takes more jobs.
EXPIRY_BATCH = 2_000
NOT_DELIVERED = "not delivered: no device of the recipient received it in time"


class Settlement:
    def __init__(
        self,
        db: Store,
        clock: Clock,
        policy: MessagingPolicy,
        ids: IdGenerator,
        fanout: Fanout,
        wake: metering.Wake | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self.policy = policy
        self._ids = ids
        self._fanout = fanout
        # Wakes the status event streams of businesses whose messages settled (after commit).
        self.wake: metering.Wake = wake or (lambda businesses: None)
        # Write jobs made by acknowledgements, for operators and tests: acknowledgements on a
        # stream are coalesced, so this grows much slower than the acknowledgements sent.
        self.ack_jobs = 0
        # The most ids a ReceiveMessageStream held read and not yet applied (its bound).
        self.peak_unapplied = 0

    def check_acks(
        self, envelope_ids: Sequence[int], status_ids: Sequence[int], per: str = "call"
    ) -> None:
        """The shape of one acknowledgement (a call, or a message of a stream `per` names)."""
        if not envelope_ids and not status_ids:
            raise InvalidArgument("nothing to acknowledge: give envelope_ids or status_ids")
        limit = self.policy.max_batch
        if len(envelope_ids) > limit or len(status_ids) > limit:
            raise InvalidArgument(
                f"{len(envelope_ids)} envelope ids and {len(status_ids)} status ids in one "
                f"{per}; at most {limit} of each: split them"
            )

    def note_unapplied(self, count: int) -> None:
        self.peak_unapplied = max(self.peak_unapplied, count)

    async def acknowledge(
        self, caller: Principal, envelope_ids: Sequence[int], status_ids: Sequence[int]
    ) -> tuple[int, int]:
        self.check_acks(envelope_ids, status_ids)
        now = self._clock.now()
        ids = self._ids

        def job(tx: Transaction) -> tuple[int, int, list[StatusRow], set[str]]:
            message_ids = tx.delete_envelopes(caller.account_id, caller.device_id, envelope_ids)
            settled = tx.settle_messages(message_ids, MessageState.DELIVERED, now)
            statuses = _statuses_for(tx, settled, MessageState.DELIVERED, now, ids, "")
            billed = metering.settle(tx, _business(settled), True, now)
            removed = tx.delete_statuses(caller.account_id, caller.device_id, status_ids)
            return len(message_ids), removed, statuses, billed

        self.ack_jobs += 1
        acked, removed, statuses, billed = await self._db.write(as_caller(caller, job))
        self._fanout.notify_statuses(statuses)
        self.wake(billed)
        return acked, removed

    async def expire(self) -> int:
        """Delete expired envelopes and settle their undelivered messages as failed; forget
        messages past the idempotency window and statuses past the TTL (rule 5); give free
        pages back. Returns the number of expired envelopes and failed messages."""
        now = self._clock.now()
        cutoff = IdGenerator.floor(now - self.policy.envelope_ttl)
        forget = IdGenerator.floor(now - self.policy.idempotency_window)
        ids = self._ids
        total = 0
        while True:

            def job(tx: Transaction) -> tuple[int, int, list[StatusRow], set[str]]:
                # All copies of a message share its send time, so they expire with it. A message
                # still pending at that age was acknowledged by no device: its envelopes expired,
                # or went with a removed device or a deleted account.
                count = tx.expire_envelopes(cutoff, EXPIRY_BATCH)
                failed = tx.settle_messages(
                    tx.pending_before(cutoff, EXPIRY_BATCH), MessageState.FAILED, now
                )
                statuses = _statuses_for(tx, failed, MessageState.FAILED, now, ids, NOT_DELIVERED)
                billed = metering.settle(tx, _business(failed), False, now)
                swept = tx.delete_settled_messages(forget, EXPIRY_BATCH)
                swept += tx.expire_statuses(cutoff, EXPIRY_BATCH)
                tx.delete_full_buckets(now)
                swept += tx.reclaim_free_pages()
                return max(count, len(failed)), swept, statuses, billed

            count, swept, statuses, billed = await self._db.write(job)
            self._fanout.notify_statuses(statuses)
            self.wake(billed)
            total += count
            # Another round while any part filled its batch: each job stays short (the
            # writer serves sends between them), and a day's backlog still clears in one sweep.
            if count < EXPIRY_BATCH and swept < EXPIRY_BATCH:
                return total

    async def run_expiry(self, interval: float) -> None:
        """Background task: expire envelopes every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await self.expire()
            except Exception:
                log.exception("envelope expiry failed; will retry")
                continue
            if expired:
                log.info("expired %d undelivered envelopes", expired)

    def release_blocked(
        self, tx: Transaction, user: str, business: str, now: float
    ) -> Callable[[], None]:
        """Inside the block's transaction (rule 6): settle the blocked business's messages
        still on their way to the user as failed, delete their queued envelopes, release their
        prices. Returns what to do once it committed (notify the senders and the streams)."""
        ids = self._ids
        statuses: list[StatusRow] = []

        def failed(message_ids: list[int]) -> list[MessageRow]:
            settled = tx.settle_messages(message_ids, MessageState.FAILED, now)
            tx.delete_message_envelopes(
                [m.message_id for m in settled], self.policy.max_devices_per_send
            )
            statuses.extend(
                _statuses_for(tx, settled, MessageState.FAILED, now, ids, metering.BLOCKED_REASON)
            )
            return settled

        billed = metering.release_blocked(tx, user, business, now, failed)

        def after_commit() -> None:
            self._fanout.notify_statuses(statuses)
            self.wake(billed)

        return after_commit


def _business(messages: list[MessageRow]) -> list[MessageRow]:
    """The messages that may carry a charge: a business's (their category is set)."""
    return [m for m in messages if m.category]


def _statuses_for(
    tx: Transaction,
    settled: list[MessageRow],
    state: MessageState,
    now: float,
    ids: IdGenerator,
    reason: str,
) -> list[StatusRow]:
    return tx.insert_statuses(
        [
            StatusRow(
                status_id=status_id,
                account_id=m.sender_account_id,
                device_id=m.sender_device_id,
                message_id=m.message_id,
                request_id=m.request_id,
                recipient_account_id=m.recipient_account_id,
                state=int(state),
                at=now,
                reason=reason,
            )
            for status_id, m in zip(ids.many(now, len(settled)), settled, strict=True)
        ]
    )
