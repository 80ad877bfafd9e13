"""The mailbox: store-and-forward of ciphertext envelopes between devices.

Rules kept here:
1. A send is accepted only when its device list is exactly the recipient's devices that can
   receive (have published keys), with their current registration ids; a send to one's own
   account covers every device but the sender, and may be empty when the sender believes it
   has no other device (nothing is stored; a wrong belief comes back as missing devices).
   Otherwise MismatchedDevicesError says which devices are missing, extra or stale.
2. A send's envelopes are committed before the caller hears "accepted"; a retried request_id
   returns the first result and stores nothing; a reused request_id with another body is refused.
3. Each device receives its envelopes in id order (ids are time-ordered and increase in commit
   order), every one until acknowledged; a stream sends an envelope at most once, a new stream
   sends again whatever was not acknowledged.
4. The first acknowledgement by any recipient device settles a message as delivered, once; a
   message that no device acknowledged within the envelope TTL settles as failed (whether its
   envelopes expired or went away with a removed device). Either way the sending device gets
   one delivery status.
5. Online-only content (typing) is never stored: it reaches the devices connected right now.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import sqlite3
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, TypeVar

from server.domain import validation
from server.domain.auth import Principal, as_caller, ensure_current
from server.domain.clock import Clock
from server.domain.errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from server.domain.ratelimit import Rate, RateLimiter
from server.storage import accounts as account_store
from server.storage import messages as store
from server.storage.database import Database
from server.storage.messages import EnvelopeRow, IdGenerator, StatusRow

log = logging.getLogger(__name__)

# libsignal's CiphertextMessageType values, as carried in ContentType.
CONTENT_TYPES = frozenset({2, 3, 7, 8})
CATEGORIES = frozenset({0, 1, 2, 3, 4})
MAX_TEMPLATE_NAME = 512
EXPIRY_BATCH = 10_000
# Envelopes per stream message are capped by bytes too, well under gRPC's default 4 MiB
# receive limit, so a batch of large ciphertexts never breaks a client.
STREAM_CHUNK_BYTES = 1024 * 1024
# Settled messages are kept this long so request_id retries keep returning the first result.
IDEMPOTENCY_RETENTION = 86_400.0


@dataclass(frozen=True)
class MessagingPolicy:
    max_envelope_bytes: int = 256 * 1024
    max_devices_per_send: int = 32
    max_batch: int = 1000
    send_rate: Rate = Rate(6000, 60.0)
    envelope_ttl: float = 30 * 86_400.0
    stream_batch: int = 500
    keepalive_interval: float = 30.0
    stream_buffer_bytes: int = 8 * 1024 * 1024


class Copy(NamedTuple):
    """The ciphertext for one recipient device."""

    device_id: int
    registration_id: int
    content_type: int
    content: bytes


@dataclass(frozen=True)
class SendRequest:
    request_id: str
    recipient_account_id: str
    copies: Sequence[Copy]
    client_ts_ms: int = 0
    online_only: bool = False
    category: int = 0
    template_name: str = ""

    def fingerprint(self) -> bytes:
        """Digest of the body, to tell a retry from a reused request_id."""
        parts = [
            self.recipient_account_id.encode(),
            struct.pack(">Q?I", self.client_ts_ms, self.online_only, self.category),
            self.template_name.encode(),
        ]
        for c in self.copies:
            parts.append(
                struct.pack(">IIII", c.device_id, c.registration_id, c.content_type, len(c.content))
            )
            parts.append(c.content)
        return hashlib.sha256(b"\0".join(parts)).digest()


@dataclass(frozen=True)
class SendReceipt:
    message_id: int
    server_ts: float
    stored: bool


class MismatchedDevicesError(FailedPrecondition):
    """The send's device list is not the recipient's receiving devices.

    ``without_keys`` are devices that exist but have not uploaded keys yet; they are also in
    ``extra`` (the MismatchedDevices detail has no field of its own for them, and a client's
    session with such a device is useless either way: the device it was made with is gone),
    but the message names them apart, because "they no longer exist" would send a person
    looking in the wrong place.
    """

    def __init__(
        self,
        account_id: str,
        missing: list[int],
        extra: list[int],
        stale: list[int],
        *,
        without_keys: list[int] | None = None,
        own_account: bool = False,
    ):
        without_keys = without_keys or []
        gone = [d for d in extra if d not in without_keys]
        parts = []
        if missing:
            parts.append(f"missing devices {missing} (fetch their prekey bundles and add them)")
        if gone:
            parts.append(f"extra devices {gone} (they no longer exist: drop their sessions)")
        if stale:
            parts.append(f"stale devices {stale} (re-registered: fetch new bundles)")
        if without_keys:
            parts.append(_without_keys_message(without_keys, own_account))
        if without_keys and len(parts) == 1:
            message = parts[0]
        else:
            message = "the device list does not match the recipient's devices: " + "; ".join(parts)
        super().__init__(message)
        self.account_id = account_id
        self.missing = missing
        self.extra = extra
        self.stale = stale
        self.without_keys = without_keys


def _without_keys_message(devices: list[int], own_account: bool) -> str:
    whose = "your account" if own_account else "the recipient"
    if len(devices) == 1:
        return (
            f"device {devices[0]} of {whose} has not uploaded its keys yet"
            " (KeyService/UploadPreKeys), so it cannot receive messages"
        )
    return (
        f"devices {devices} of {whose} have not uploaded their keys yet"
        " (KeyService/UploadPreKeys), so they cannot receive messages"
    )


# -- stream events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelopes:
    envelopes: list[EnvelopeRow]
    online_only: bool = False


@dataclass(frozen=True)
class Statuses:
    statuses: list[StatusRow]


@dataclass(frozen=True)
class QueueEmpty:
    pass


@dataclass(frozen=True)
class KeepAlive:
    pass


StreamEvent = Envelopes | Statuses | QueueEmpty | KeepAlive


SHUTTING_DOWN = "the server is shutting down; reconnect (to another replica, or in a moment)"
# What one delivery status weighs in a stream buffer: its ids, request id and reason.
STATUS_BYTES = 256


@dataclass(eq=False)
class _Connection:
    """One open stream of one device: a wake-up event and an in-memory buffer bounded in bytes.

    Past `limit_bytes` the stream stops buffering and re-reads from the database instead: a
    stalled reader costs at most `limit_bytes` of memory, and nothing is lost.
    """

    limit_bytes: int
    envelopes: collections.deque[EnvelopeRow] = field(default_factory=collections.deque)
    online: collections.deque[EnvelopeRow] = field(default_factory=collections.deque)
    statuses: collections.deque[StatusRow] = field(default_factory=collections.deque)
    size: int = 0  # bytes of content (and statuses) buffered now
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflow: bool = False
    replaced: bool = False

    def _room(self, size: int) -> bool:
        return self.size + size <= self.limit_bytes

    def push_envelopes(self, rows: list[EnvelopeRow]) -> None:
        size = sum(len(r.content) for r in rows)
        if self.overflow or not self._room(size):
            self.fall_back()
        else:
            self.envelopes.extend(rows)
            self.size += size
        self.wake.set()

    def push_statuses(self, rows: list[StatusRow]) -> None:
        size = STATUS_BYTES * len(rows)
        if self.overflow or not self._room(size):
            self.fall_back()
        else:
            self.statuses.extend(rows)
            self.size += size
        self.wake.set()

    def push_online(self, row: EnvelopeRow) -> None:
        if self._room(len(row.content)):  # typing indicators may be dropped, never stored
            self.online.append(row)
            self.size += len(row.content)
            self.wake.set()

    def fall_back(self) -> None:
        """Forget the stored rows buffered so far: the stream re-reads them from the database."""
        self.overflow = True
        self.envelopes.clear()
        self.statuses.clear()
        self.size = sum(len(r.content) for r in self.online)

    def take_online(self) -> list[EnvelopeRow]:
        rows = list(self.online)
        self.online.clear()
        self.size -= sum(len(r.content) for r in rows)
        return rows

    def take_stored(self) -> tuple[list[EnvelopeRow], list[StatusRow]]:
        envelopes, statuses = list(self.envelopes), list(self.statuses)
        self.envelopes.clear()
        self.statuses.clear()
        self.size = sum(len(r.content) for r in self.online)
        return envelopes, statuses


class Mailbox:
    def __init__(self, db: Database, clock: Clock, policy: MessagingPolicy, ids: IdGenerator):
        self._db = db
        self._clock = clock
        self.policy = policy
        self._ids = ids
        self._send_limit = RateLimiter(policy.send_rate, clock, "messages sent by this device")
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._closing = False

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

        Every check of an item runs before anything of it is written, so a failed item leaves
        nothing behind and needs no savepoint.
        """
        if not requests:
            raise InvalidArgument("the batch is empty; put at least one request in it")
        if len(requests) > self.policy.max_batch:
            raise InvalidArgument(
                f"{len(requests)} requests in one batch; at most {self.policy.max_batch} allowed"
            )
        self._send_limit.check(f"{caller.account_id}/{caller.device_id}", cost=len(requests))
        results: list[SendReceipt | DomainError | None] = [None] * len(requests)
        stored: list[tuple[int, SendRequest]] = []
        online: list[tuple[int, SendRequest]] = []
        seen_ids: set[str] = set()
        for i, request in enumerate(requests):
            try:
                self._validate(caller, request)
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
        # Ids and rows are made here, on the event loop, so the single writer thread spends its
        # time on SQL only. Jobs run in the order they are queued, so envelope ids still grow
        # in commit order.
        # Online-only sends store nothing: their checks run in a read transaction.
        for group, run in ((stored, self._db.write), (online, self._db.read)):
            if not group:
                continue
            drafts = [self._draft(caller, r, now) for _, r in group]
            outcomes = await run(self._send_job(caller, drafts))
            for (i, request), outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, DomainError):
                    results[i] = outcome
                    continue
                receipt, rows = outcome
                if request.online_only:
                    receipt = SendReceipt(
                        receipt.message_id, receipt.server_ts, self._push_online(rows)
                    )
                else:
                    self._notify_envelopes(rows)
                results[i] = receipt
        return [r for r in results if r is not None]

    def _validate(self, caller: Principal, r: SendRequest) -> None:
        validation.uuid_string(r.request_id, field="request_id")
        validation.uuid_string(r.recipient_account_id, field="recipient_account_id")
        if not r.copies and r.recipient_account_id != caller.account_id:
            raise InvalidArgument("messages is empty: include one ciphertext per recipient device")
        if len(r.copies) > self.policy.max_devices_per_send:
            raise InvalidArgument(
                f"{len(r.copies)} device messages in one send; at most "
                f"{self.policy.max_devices_per_send} are allowed"
            )
        seen: set[int] = set()
        for c in r.copies:
            validation.device_id(c.device_id, field="messages.device_id")
            if c.device_id in seen:
                raise InvalidArgument(f"device {c.device_id} appears twice in messages")
            seen.add(c.device_id)
            if c.content_type not in CONTENT_TYPES:
                raise InvalidArgument(
                    f"messages[device {c.device_id}].content_type must be WHISPER, PREKEY, "
                    "SENDER_KEY or PLAINTEXT"
                )
            if not c.content:
                raise InvalidArgument(f"messages[device {c.device_id}].content is empty")
            if len(c.content) > self.policy.max_envelope_bytes:
                raise InvalidArgument(
                    f"messages[device {c.device_id}].content is {len(c.content)} bytes; the "
                    f"limit is {self.policy.max_envelope_bytes} (send large files as attachments)"
                )
        if r.category not in CATEGORIES:
            raise InvalidArgument("business.category is not a known MessageCategory")
        if len(r.template_name) > MAX_TEMPLATE_NAME:
            raise InvalidArgument(f"business.template_name is longer than {MAX_TEMPLATE_NAME}")

    def _draft(self, caller: Principal, r: SendRequest, now: float) -> _Draft:
        message_id = self._ids.block(now, 1 + len(r.copies))
        envelopes = [
            EnvelopeRow(
                message_id + 1 + k,
                r.recipient_account_id,
                c.device_id,
                message_id,
                caller.account_id,
                caller.device_id,
                now,
                r.client_ts_ms,
                c.content_type,
                c.content,
                r.category,
                r.template_name,
            )
            for k, c in enumerate(r.copies)
        ]
        message = store.MessageRow(
            message_id,
            caller.account_id,
            caller.device_id,
            r.recipient_account_id,
            r.request_id,
            r.fingerprint(),
            now,
            store.SYNC if r.recipient_account_id == caller.account_id else store.PENDING,
            r.category,
            r.template_name,
        )
        return _Draft(r, message, envelopes)

    @staticmethod
    def _send_job(
        caller: Principal, drafts: Sequence[_Draft]
    ) -> Callable[[sqlite3.Connection], list[tuple[SendReceipt, list[EnvelopeRow]] | DomainError]]:
        def job(
            conn: sqlite3.Connection,
        ) -> list[tuple[SendReceipt, list[EnvelopeRow]] | DomainError]:
            try:
                ensure_current(conn, caller)  # a revoked sender stores nothing (auth rule 2)
            except DomainError as exc:
                return [exc] * len(drafts)
            out: list[tuple[SendReceipt, list[EnvelopeRow]] | DomainError] = []
            messages: list[store.MessageRow] = []
            envelopes: list[EnvelopeRow] = []
            devices: dict[str, dict[int, int] | None] = {}  # recipient -> registrations
            previous = store.find_messages(
                conn,
                caller.account_id,
                [d.request.request_id for d in drafts if not d.request.online_only],
            )
            for draft in drafts:
                try:
                    _admit(conn, caller, draft, previous, devices)
                except DomainError as exc:
                    out.append(exc)
                    continue
                except _Repeat as repeat:
                    out.append((repeat.receipt, []))
                    continue
                m = draft.message
                # An empty send to one's own account is a probe: "I know of no other device".
                stored = not draft.request.online_only and bool(draft.envelopes)
                out.append((SendReceipt(m.message_id, m.server_ts, stored), draft.envelopes))
                if stored:
                    messages.append(m)
                    envelopes.extend(draft.envelopes)
            store.insert_messages(conn, messages)
            store.insert_envelopes(conn, envelopes)
            return out

        return job

    # -- receiving ---------------------------------------------------------------------------

    async def stream(self, caller: Principal) -> AsyncIterator[StreamEvent]:
        """The device's events: stored backlog, QueueEmpty, then live events and keep-alives."""
        if self._closing:
            raise Unavailable(SHUTTING_DOWN)
        key = (caller.account_id, caller.device_id)
        connection = _Connection(self.policy.stream_buffer_bytes)
        old = self._connections.get(key)
        if old is not None:
            old.replaced = True
            old.wake.set()
        self._connections[key] = connection  # before reading the backlog: nothing slips between
        sent = _Position()
        try:
            async for event in self._from_database(caller, sent):
                yield sent.past(event)
            yield QueueEmpty()
            while True:
                try:
                    await asyncio.wait_for(connection.wake.wait(), self.policy.keepalive_interval)
                except TimeoutError:
                    yield KeepAlive()
                    continue
                connection.wake.clear()
                if self._closing:
                    raise Unavailable(SHUTTING_DOWN)
                if connection.replaced:
                    raise Aborted("another ReceiveMessages stream of this device replaced this one")
                if connection.online:
                    yield Envelopes(connection.take_online(), online_only=True)
                if connection.overflow:
                    connection.overflow = False
                    connection.take_stored()
                    async for event in self._from_database(caller, sent):
                        yield sent.past(event)
                    continue
                envelopes, statuses = connection.take_stored()
                fresh = [r for r in envelopes if r.envelope_id > sent.envelope]
                for chunk in self._chunks(fresh):
                    yield sent.past(Envelopes(chunk))
                news = [s for s in statuses if s.status_id > sent.status]
                if news:
                    yield sent.past(Statuses(news))
        finally:
            if self._connections.get(key) is connection:
                del self._connections[key]

    def _chunks(self, rows: list[EnvelopeRow]) -> Iterator[list[EnvelopeRow]]:
        """Stream messages of at most `stream_batch` envelopes and about STREAM_CHUNK_BYTES."""
        chunk: list[EnvelopeRow] = []
        size = 0
        for row in rows:
            if chunk and (
                len(chunk) >= self.policy.stream_batch
                or size + len(row.content) > STREAM_CHUNK_BYTES
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(row)
            size += len(row.content)
        if chunk:
            yield chunk

    async def _from_database(
        self, caller: Principal, sent: _Position
    ) -> AsyncIterator[Envelopes | Statuses]:
        """What the device has stored past `sent`: envelopes, then delivery statuses."""
        envelopes = partial(store.envelopes_after, max_bytes=STREAM_CHUNK_BYTES)
        async for rows in self._pages(envelopes, caller, sent.envelope):
            for chunk in self._chunks(rows):
                yield Envelopes(chunk)
        async for statuses in self._pages(store.statuses_after, caller, sent.status):
            yield Statuses(statuses)

    async def _pages(
        self, fetch: Callable[..., list[_Row]], caller: Principal, after: int
    ) -> AsyncIterator[list[_Row]]:
        """Read `fetch` page by page, each page a short read transaction off the event loop."""
        while True:
            rows = await self._db.read(
                partial(
                    fetch,
                    account_id=caller.account_id,
                    device_id=caller.device_id,
                    after_id=after,
                    limit=self.policy.stream_batch,
                )
            )
            if not rows:
                return
            after = rows[-1][0]  # envelope_id / status_id: the first column of either row
            yield rows

    def close_streams(self) -> None:
        """End every open stream (UNAVAILABLE: reconnect) and refuse new ones: the server is
        stopping. Streams never end by themselves, so without this a shutdown would wait its
        whole grace period and then cancel them."""
        self._closing = True
        for connection in self._connections.values():
            connection.wake.set()

    def _notify_envelopes(self, rows: list[EnvelopeRow]) -> None:
        by_device: dict[tuple[str, int], list[EnvelopeRow]] = {}
        for row in rows:
            by_device.setdefault((row.account_id, row.device_id), []).append(row)
        for key, group in by_device.items():
            connection = self._connections.get(key)
            if connection is not None:
                connection.push_envelopes(group)

    def _notify_statuses(self, rows: list[StatusRow]) -> None:
        for row in rows:
            connection = self._connections.get((row.account_id, row.device_id))
            if connection is not None:
                connection.push_statuses([row])

    def _push_online(self, rows: list[EnvelopeRow]) -> bool:
        delivered = False
        for row in rows:
            connection = self._connections.get((row.account_id, row.device_id))
            if connection is not None:
                connection.push_online(row)
                delivered = True
        return delivered

    # -- acknowledging and expiry ------------------------------------------------------------

    async def acknowledge(
        self, caller: Principal, envelope_ids: Sequence[int], status_ids: Sequence[int]
    ) -> tuple[int, int]:
        if not envelope_ids and not status_ids:
            raise InvalidArgument("nothing to acknowledge: give envelope_ids or status_ids")
        limit = self.policy.max_batch
        if len(envelope_ids) > limit or len(status_ids) > limit:
            raise InvalidArgument(f"at most {limit} envelope ids and {limit} status ids per call")
        now = self._clock.now()
        ids = self._ids

        def job(conn: sqlite3.Connection) -> tuple[int, int, list[StatusRow]]:
            message_ids = store.delete_envelopes(
                conn, caller.account_id, caller.device_id, envelope_ids
            )
            settled = store.settle_messages(conn, message_ids, store.DELIVERED, now)
            statuses = _statuses_for(conn, settled, store.DELIVERED, now, ids, "")
            removed = store.delete_statuses(conn, caller.account_id, caller.device_id, status_ids)
            return len(message_ids), removed, statuses

        acked, removed, statuses = await self._db.write(as_caller(caller, job))
        self._notify_statuses(statuses)
        return acked, removed

    async def expire(self) -> int:
        """Delete expired envelopes; settle their undelivered messages as failed."""
        now = self._clock.now()
        cutoff = IdGenerator.floor(now - self.policy.envelope_ttl)
        ids = self._ids
        total = 0
        while True:

            def job(conn: sqlite3.Connection) -> tuple[int, list[StatusRow]]:
                # All copies of a message share its send time, so they expire with it. A message
                # still pending at that age was acknowledged by no device: its envelopes expired,
                # or went with a removed device or a deleted account.
                count = store.expire_envelopes(conn, cutoff, EXPIRY_BATCH)
                failed = store.settle_messages(
                    conn, store.pending_before(conn, cutoff, EXPIRY_BATCH), store.FAILED, now
                )
                reason = "not delivered: no device of the recipient received it in time"
                statuses = _statuses_for(conn, failed, store.FAILED, now, ids, reason)
                store.delete_settled_messages(conn, now - IDEMPOTENCY_RETENTION)
                return max(count, len(failed)), statuses

            count, statuses = await self._db.write(job)
            self._notify_statuses(statuses)
            total += count
            if count < EXPIRY_BATCH:
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


_Row = TypeVar("_Row", EnvelopeRow, StatusRow)


@dataclass
class _Position:
    """How far a stream has sent; envelope and status ids both grow in commit order."""

    envelope: int = 0
    status: int = 0

    def past(self, event: Envelopes | Statuses) -> Envelopes | Statuses:
        if isinstance(event, Envelopes):
            self.envelope = event.envelopes[-1].envelope_id
        else:
            self.status = event.statuses[-1].status_id
        return event


class _Draft(NamedTuple):
    """A send with its rows made, waiting for the writer to admit it."""

    request: SendRequest
    message: store.MessageRow
    envelopes: list[EnvelopeRow]


class _Repeat(Exception):
    """A retried request_id: answer with the first result, store nothing."""

    def __init__(self, receipt: SendReceipt) -> None:
        self.receipt = receipt


def _admit(
    conn: sqlite3.Connection,
    caller: Principal,
    draft: _Draft,
    previous_messages: dict[str, store.MessageRow],
    devices: dict[str, dict[int, int] | None],
) -> None:
    """Check one send inside the write transaction; raise if it must not be stored."""
    r = draft.request
    previous = None if r.online_only else previous_messages.get(r.request_id)
    if previous is not None:
        if previous.request_hash != draft.message.request_hash:
            raise InvalidArgument(
                f"request_id {r.request_id} was already used for a different message; "
                "use a fresh request_id for a new message"
            )
        raise _Repeat(SendReceipt(previous.message_id, previous.server_ts, True))
    to_self = r.recipient_account_id == caller.account_id
    if r.recipient_account_id not in devices:
        exists = to_self or account_store.get_account(conn, r.recipient_account_id) is not None
        devices[r.recipient_account_id] = (
            store.device_registrations(conn, r.recipient_account_id) if exists else None
        )
    registrations = devices[r.recipient_account_id]
    if registrations is None:
        raise NotFound(f"no account {r.recipient_account_id}")
    if to_self:
        registrations = {d: reg for d, reg in registrations.items() if d != caller.device_id}
    _check_devices(conn, r, registrations, caller.device_id if to_self else None)


def _check_devices(
    conn: sqlite3.Connection,
    r: SendRequest,
    registrations: dict[int, int],
    sender_device: int | None,
) -> None:
    """Raise MismatchedDevicesError unless ``r`` covers exactly ``registrations``.

    ``sender_device`` is the sending device on a send to one's own account (never a receiver
    there, with keys or without), else None.
    """
    given = {c.device_id: c.registration_id for c in r.copies}
    if given == registrations:
        return
    missing = sorted(set(registrations) - set(given))
    extra = sorted(set(given) - set(registrations))
    stale = sorted(d for d, reg in given.items() if d in registrations and registrations[d] != reg)
    if missing or extra or stale:
        # Only on the error path: which "extra" devices exist but cannot receive yet.
        existing = {d.device_id for d in account_store.list_devices(conn, r.recipient_account_id)}
        existing.discard(sender_device or 0)
        raise MismatchedDevicesError(
            r.recipient_account_id,
            missing,
            extra,
            stale,
            without_keys=[d for d in extra if d in existing],
            own_account=sender_device is not None,
        )


def _statuses_for(
    conn: sqlite3.Connection,
    settled: list[store.MessageRow],
    state: int,
    now: float,
    ids: IdGenerator,
    reason: str,
) -> list[StatusRow]:
    return store.insert_statuses(
        conn,
        [
            StatusRow(
                status_id=ids.next(now),
                account_id=m.sender_account_id,
                device_id=m.sender_device_id,
                message_id=m.message_id,
                request_id=m.request_id,
                recipient_account_id=m.recipient_account_id,
                state=state,
                at=now,
                reason=reason,
            )
            for m in settled
        ],
    )
