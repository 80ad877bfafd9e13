"""The mailbox: store-and-forward of ciphertext envelopes between devices.

A thin facade over the three parts of the send and receive path, so the servicer makes one
call per RPC:

    send:    admission rules -> deferred writes -> commit (the envelopes) -> fan-out
    receive: fan-out (this server's open streams, backed by the database), with the
             acknowledgements on the same stream if the client sends them there (ack_stream)
    settle:  acknowledgement or expiry -> delivery status -> fan-out

* `admission` (`server.domain.admission`) decides whether a send is stored, by rules;
* `fanout` (`server.domain.fanout`) knows who is connected and hands them what was committed;
* `settlement` (`server.domain.settlement`) acknowledges, expires and reports delivery.

Rule kept here: a send's envelopes are committed before the caller hears "accepted", and only
then fanned out; each request of a batch succeeds or fails alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from server.domain import ack_stream
from server.domain.admission import (
    RACE_ATTEMPTS,
    Admission,
    AdmissionRule,
    Outcome,
    RequestIdRace,
    SendReceipt,
    SendRequest,
    race_refusal,
)
from server.domain.auth import Principal
from server.domain.clock import Clock
from server.domain.errors import DomainError, InvalidArgument
from server.domain.fanout import Fanout, StreamEvent
from server.domain.ids import IdGenerator
from server.domain.messaging_policy import MessagingPolicy
from server.domain.metering import Wake
from server.domain.ports import Store, Transaction
from server.domain.ratelimit import RateLimiter
from server.domain.settlement import Settlement


class Mailbox:
    def __init__(
        self,
        db: Store,
        clock: Clock,
        policy: MessagingPolicy,
        ids: IdGenerator,
        rules: Sequence[AdmissionRule] | None = None,
        wake: Wake | None = None,
        *,
        shared: bool = False,
        released: Callable[[int], None] | None = None,
    ) -> None:
        """`wake` tells the status event streams of businesses that they have new events
        (metering: a business's send, a delivery, an expiry), after the commit. `shared`:
        other replicas write the database too (fanout rule 6). `released` hears the most an
        ended stream buffered (fanout rule 3)."""
        self._db = db
        self._clock = clock
        self.policy = policy
        self.admission = Admission(policy, ids) if rules is None else Admission(policy, ids, rules)
        self.fanout = Fanout(db, policy, shared=shared, released=released)
        self._wake: Wake = wake or (lambda businesses: None)
        self.settlement = Settlement(db, clock, policy, ids, self.fanout, self._wake)
        self._send_limit = RateLimiter(
            policy.send_rate, clock, "messages sent by this device", shared=db if shared else None
        )

    # -- sending -----------------------------------------------------------------------------

    async def send(self, caller: Principal, request: SendRequest) -> SendReceipt:
        (result,) = await self.send_many(caller, [request])
        if isinstance(result, DomainError):
            raise result
        return result

    async def send_many(
        self, caller: Principal, requests: Sequence[SendRequest]
    ) -> list[SendReceipt | DomainError]:
        """Each request succeeds or fails alone; all successes are committed in one transaction.

        Every rule of an item runs before anything of it is written, so a failed item leaves
        nothing behind and needs no savepoint.
        """
        if not requests:
            raise InvalidArgument("the batch is empty; put at least one request in it")
        if len(requests) > self.policy.max_batch:
            raise InvalidArgument(
                f"{len(requests)} requests in one batch; at most {self.policy.max_batch} allowed"
            )
        await self._send_limit.take(f"{caller.account_id}/{caller.device_id}", cost=len(requests))
        admission = self.admission
        results: list[SendReceipt | DomainError | None] = [None] * len(requests)
        stored: list[tuple[int, SendRequest]] = []
        online: list[tuple[int, SendRequest]] = []
        seen_ids: set[str] = set()
        for i, request in enumerate(requests):
            try:
                admission.validate(caller, request)
                if request.request_id in seen_ids:
                    raise InvalidArgument(
                        f"request_id {request.request_id} appears twice in this batch"
                    )
                seen_ids.add(request.request_id)
            except DomainError as exc:
                results[i] = exc
                continue
            (online if request.online_only else stored).append((i, request))
        now = self._clock.now()
        # Rows are made here, on the event loop, so the single writer thread spends its time on
        # the rules' lookups and SQL only. Online-only sends store nothing: their rules run in
        # a read transaction.
        if stored:
            drafts = [admission.draft(caller, r, now) for _, r in stored]
            outcomes = await self._store(admission.store_job(caller, drafts), len(drafts))
            for (i, _), outcome in zip(stored, outcomes, strict=True):
                if isinstance(outcome, DomainError):
                    results[i] = outcome
                    continue
                receipt, rows = outcome
                self.fanout.notify_envelopes(rows)
                results[i] = receipt
            # A business's stored sends appended SENT events (metering); waking streams of a
            # business that has none costs a dictionary lookup.
            if any(not isinstance(o, DomainError) for o in outcomes):
                self._wake((caller.account_id,))
        if online:
            drafts = [admission.draft(caller, r, now) for _, r in online]
            outcomes = await self._db.read(admission.online_job(caller, drafts))
            for (i, _), outcome in zip(online, outcomes, strict=True):
                if isinstance(outcome, DomainError):
                    results[i] = outcome
                    continue
                receipt, rows = outcome
                delivered = self.fanout.push_online(rows)
                results[i] = SendReceipt(receipt.message_id, receipt.server_ts, delivered)
        return [r for r in results if r is not None]

    async def _store(
        self, job: Callable[[Transaction], list[Outcome]], count: int
    ) -> list[Outcome]:
        """Run the store job; again, whole, if a request_id raced another writer (the job was
        rolled back: nothing of it, deferred writes included, was kept)."""
        for _ in range(RACE_ATTEMPTS):
            try:
                return await self._db.write(job)
            except RequestIdRace:
                continue
        return [race_refusal()] * count

    # -- receiving and settling --------------------------------------------------------------

    def stream(self, caller: Principal) -> AsyncIterator[StreamEvent]:
        """The device's events: stored backlog, QueueEmpty, then live events and keep-alives."""
        return self.fanout.stream(caller)

    def stream_with_acks(
        self, caller: Principal, acks: AsyncIterator[ack_stream.Ack]
    ) -> AsyncIterator[StreamEvent]:
        """The device's events, as `stream`, while the acknowledgements it sends on the same
        stream are applied in groups (`server.domain.ack_stream`)."""
        return ack_stream.receive(self.fanout, self.settlement, caller, acks)

    async def acknowledge(
        self, caller: Principal, envelope_ids: Sequence[int], status_ids: Sequence[int]
    ) -> tuple[int, int]:
        return await self.settlement.acknowledge(caller, envelope_ids, status_ids)

    async def expire(self) -> int:
        return await self.settlement.expire()

    async def run_expiry(self, interval: float) -> None:
        await self.settlement.run_expiry(interval)

    def close_streams(self) -> None:
        """End every open stream (UNAVAILABLE: reconnect) and refuse new ones: the server is
        stopping. Streams never end by themselves, so without this a shutdown would wait its
        whole grace period and then cancel them."""
        self.fanout.close_streams()
