"""Admission: whether a send may be stored (or, online-only, delivered), decided by rules.

A send becomes a `Draft` on the event loop (its ids and rows made there, so the writer thread
runs SQL only). Inside the write job, every rule of `RULES` looks at each draft in turn and
either refuses it (raises a `DomainError`), answers it without storing anything (raises
`Answered`: a retried request_id, an empty probe), or lets it pass, returning *deferred writes*
(a window to open, a counter to bump, later a reservation). A draft's deferred writes are
applied only after every rule passed it, in the same transaction that stores its envelopes,
so a refused send leaves nothing behind. They are applied once every draft of the job was
checked, so a rule that counts keeps its own tally in the job (`SendJob.memo`/`remember`): a
later send of the same batch must see what an earlier one counted. Rules read through a
`ReadTransaction`: they cannot write except by returning deferred writes.

Rules kept here, and what enforces each one with concurrent writers (several replicas):
1. A revoked sender stores nothing (auth rule 2): `CredentialRule` checks the credential once
   per job, in the job's own transaction, so no revocation commits between check and write.
2. A retried request_id returns the first result and stores nothing; a reused request_id with
   another body is refused (`IdempotencyRule`, one indexed lookup per batch). With concurrent
   writers UNIQUE (sender_account_id, request_id) enforces it: `insert_messages` skips a row
   that lost the race (ON CONFLICT DO NOTHING, ports guarantee 3), the job is rolled back whole
   (`RequestIdRace`) and run again, and the second run finds the winner's row.
3. A send to an account that does not exist is refused NOT_FOUND (`RecipientRule`, a primary
   key lookup).
4. A send's device list is exactly the recipient's devices that can receive (have published
   keys), with their current registration ids; a send to one's own account covers every
   device but the sender (`DeviceListRule`, one indexed lookup per recipient and job).
   Otherwise MismatchedDevicesError says which devices are missing, extra, stale or without
   keys. A device added concurrently is caught by the recipient on its next send (the list is
   read in the same transaction as the write; its foreign key drops envelopes of a device
   removed concurrently). While the sender has a live-support conversation with a business
   open, the expected list shrinks to that conversation's device set (the primary device and
   the assigned agent's, `server.domain.support`): a send to the business's other devices is
   refused with the set in the MismatchedDevices detail (`support_devices`); one more probe
   of an index per business recipient and job, read in the same transaction as the write, so
   a claim or transfer committed concurrently is seen by the next send.
5. A send to an account that blocked the sender is refused PERMISSION_DENIED, saying only
   that "the recipient does not accept messages from you" (`BlockRule`, one primary-key probe
   per recipient and job). PERMISSION_DENIED, not FAILED_PRECONDITION: nothing the sender can
   change makes the send acceptable (it is the recipient's decision, not a state the sender
   can fix and retry), and a client must not retry it. Sends to one's own account are never
   blocked. A block committed concurrently is seen by the next job (the probe reads the same
   transaction as the write); a retried request_id of a send stored before the block still
   gets its first result (rule 2 runs first), and a blocked sender learns nothing of the
   recipient's devices (this rule runs before rule 4).
6. An empty send to one's own account is a probe ("I know of no other device"): once the device
   rule agreed, it is answered, not stored, and later rules (limits, billing) never see it
   (`ProbeRule`).
7. A send carrying `chat_link_code` names a live chat link of its recipient; to a business
   it opens the 72-hour entry window and counts the chat started
   (`server.domain.links.ChatLinkRule`, added by the app before the business rule).
8. A business's send follows the sending rules (template, window, consent, limits, quality)
   and a person's message to a business opens the customer-service window
   (`server.domain.sending.BusinessRule`, added by the app with its settings). It is the last
   rule, so its counters move only for a send that is admitted, and it may *stamp* the draft:
   the category and template it decided replace the client's in the stored rows.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

from server.domain import validation
from server.domain.auth import Principal, ensure_current
from server.domain.consent import BLOCKED_MESSAGE
from server.domain.errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from server.domain.ids import IdGenerator
from server.domain.messaging_policy import MessagingPolicy
from server.domain.model import (
    AccountKind,
    ContentType,
    EnvelopeRow,
    MessageCategory,
    MessageRow,
    MessageState,
)
from server.domain.ports import ReadTransaction, Transaction
from server.domain.support_model import support_device_set

CONTENT_TYPES = frozenset(ContentType)
CATEGORIES = frozenset(MessageCategory)
# Template names are ids chosen by the business: 512 bytes is far more than any needs.
MAX_TEMPLATE_NAME = 512
# Plain ints for the hot path: rows hold ints, which a backend binds faster than an IntEnum.
_PENDING = int(MessageState.PENDING)
_SYNC = int(MessageState.SYNC)
# Runs of one send job before a request_id race is reported (rule 2): the second run sees
# the row that won, so a third is needed only if the same request_id races again.
RACE_ATTEMPTS = 3

T = TypeVar("T")


class Copy(NamedTuple):
    """The ciphertext for one recipient device."""

    device_id: int
    registration_id: int
    content_type: int
    content: bytes


class SendRequest(NamedTuple):
    """One send as the servicer decoded it (a tuple: made for every message of a batch, and a
    frozen dataclass's constructor costs twice as much)."""

    request_id: str
    recipient_account_id: str
    copies: Sequence[Copy]
    client_ts_ms: int = 0
    online_only: bool = False
    category: int = MessageCategory.UNSPECIFIED
    template_name: str = ""
    template_id: str = ""
    # The chat link the chat was started from (server.domain.links): checked, never stored.
    chat_link_code: str = ""

    def fingerprint(self) -> bytes:
        """Digest of the body, to tell a retry from a reused request_id."""
        parts = [
            self.recipient_account_id.encode(),
            struct.pack(">Q?I", self.client_ts_ms, self.online_only, self.category),
            self.template_name.encode(),
        ]
        if self.template_id:  # only then: digests of sends stored before it existed still match
            parts.append(self.template_id.encode())
        if self.chat_link_code:  # the same
            parts.append(b"link:" + self.chat_link_code.encode())
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
        support_devices: list[int] | None = None,
        outside_support: list[int] | None = None,
    ):
        without_keys = without_keys or []
        outside_support = outside_support or []
        gone = [d for d in extra if d not in without_keys and d not in outside_support]
        parts = []
        if missing:
            parts.append(f"missing devices {missing} (fetch their prekey bundles and add them)")
        if gone:
            parts.append(f"extra devices {gone} (they no longer exist: drop their sessions)")
        if stale:
            parts.append(f"stale devices {stale} (re-registered: fetch new bundles)")
        if without_keys:
            parts.append(_without_keys_message(without_keys, own_account))
        if outside_support:
            parts.append(_support_set_message(outside_support, support_devices or []))
        if len(parts) == 1 and (without_keys or outside_support):
            message = parts[0]
        else:
            message = "the device list does not match the recipient's devices: " + "; ".join(parts)
        super().__init__(message)
        self.account_id = account_id
        self.missing = missing
        self.extra = extra
        self.stale = stale
        self.without_keys = without_keys
        # The expected set when a live-support conversation limits it (else empty), and the
        # devices the send named that exist but are outside it.
        self.support_devices = support_devices or []
        self.outside_support = outside_support


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


def _support_set_message(outside: list[int], expected: list[int]) -> str:
    return (
        f"devices {outside} are outside the support device set {expected}: while your live-support"
        " conversation with this business is open, your messages go to its primary device and"
        " the assigned agent's device only; leave the others out (keep their sessions)"
    )


# -- drafts, jobs, rules ---------------------------------------------------------------------


_new = tuple.__new__


# (category, template name, template id): the business metadata of a message's rows.
Stamp = tuple[int, str, str]
# Templates whose stamp an admission remembers (`Admission.draft`); past this many it starts
# over, so a business that sends many templates costs a bounded amount of memory.
MAX_KNOWN_TEMPLATES = 10_000


class Draft(NamedTuple):
    """A send with its rows made, waiting for the rules inside a job. `stamp` is the business
    metadata the rows were made with when it was predicted (`Admission.draft`), else None:
    the rows then hold the request's own."""

    request: SendRequest
    message: MessageRow
    envelopes: list[EnvelopeRow]
    stamp: Stamp | None = None

    @property
    def to_self(self) -> bool:
        return self.request.recipient_account_id == self.message.sender_account_id

    def with_business(self, category: int, template_name: str, template_id: str) -> Draft:
        """The draft with the business metadata the rules decided (the server's category and
        the template's name and id), in the message row and every envelope."""
        # Built from slices with tuple.__new__, not `_replace` (a dict round trip) nor the
        # named constructor (a Python-level call): this runs for every business message.
        stamp = (category, template_name, template_id)
        return _new(
            Draft,
            (
                self.request,
                _new(MessageRow, self.message[:8] + stamp[:2]),
                [_new(EnvelopeRow, e[:10] + stamp + e[13:]) for e in self.envelopes],
                stamp,
            ),
        )


@dataclass(eq=False)
class SendJob:
    """One job's view for the rules: the sender, a read view of the transaction, and caches
    that live as long as the job (a batch sends to few recipients: look each up once)."""

    caller: Principal
    tx: ReadTransaction
    _memo: dict[tuple[str, Hashable], object] = field(default_factory=dict)
    # message id -> (category, template name, template id) a rule decided for that draft.
    stamps: dict[int, Stamp] = field(default_factory=dict)
    _caller_kind: int | None = field(default=-1, init=False)  # -1: not read yet
    _at_end: list[Callable[[], None]] = field(default_factory=list, init=False)

    def memo(self, kind: str, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()` once per job for (kind, key): per-job caches of the rules."""
        try:
            return self._memo[kind, key]  # type: ignore[return-value]
        except KeyError:
            value = self._memo[kind, key] = compute()
            return value

    def at_end(self, fn: Callable[[], None]) -> None:
        """Call `fn` once every draft was checked, in the job's transaction: a rule that took
        something for the whole job at once (a batch of rate tokens) gives back the unused."""
        self._at_end.append(fn)

    def finish(self) -> None:
        """Run what the rules asked for with `at_end`, in the order they asked."""
        for fn in self._at_end:
            fn()

    def remember(self, kind: str, key: Hashable, value: object) -> None:
        """Replace what `memo` holds for (kind, key): a rule that asked for a write which
        changes a memoised read keeps the memo true for the job's later drafts."""
        self._memo[kind, key] = value

    def account_kind(self, account_id: str) -> int | None:
        """The account's kind, None if there is no such account (one primary-key probe per
        account and job)."""

        def load() -> int | None:
            account = self.tx.get_account(account_id)
            return None if account is None else account.kind

        return self.memo("kind", account_id, load)

    def caller_kind(self) -> int | None:
        """The sender's account kind: `account_kind` of the caller, asked by several rules for
        every draft, so kept in a field."""
        kind = self._caller_kind
        if kind == -1:
            kind = self._caller_kind = self.account_kind(self.caller.account_id)
        return kind

    def recipient_devices(self, account_id: str) -> dict[int, int] | None:
        """device id -> registration id of the account's receiving devices, None if there is
        no such account (one primary-key probe and one indexed read per recipient and job)."""

        def load() -> dict[int, int] | None:
            exists = (
                account_id == self.caller.account_id or self.account_kind(account_id) is not None
            )
            return self.tx.device_registrations(account_id) if exists else None

        return self.memo("devices", account_id, load)

    def support_devices(self, account_id: str) -> tuple[int, ...] | None:
        """The devices of business `account_id` the sender's messages may reach while the
        sender has a live-support conversation with it open; None when none is open (every
        device). One probe of an index per business recipient and job; none for persons."""

        def load() -> tuple[int, ...] | None:
            if self.account_kind(account_id) != AccountKind.BUSINESS:
                return None
            return support_device_set(self.tx, account_id, self.caller.account_id)

        return self.memo("support", account_id, load)

    def stamp(self, draft: Draft, category: int, template_name: str, template_id: str) -> None:
        """Set the business metadata stored with `draft` once it is admitted."""
        self.stamps[draft.message.message_id] = (category, template_name, template_id)


class DeferredWrite(Protocol):
    """A write a rule asks for, applied only once every rule passed the draft."""

    def apply(self, tx: Transaction) -> None: ...


class BatchedWrite(DeferredWrite, Protocol):
    """A deferred write whose kind applies a whole job's writes at once (`apply_many`: a few
    statements for the batch instead of a few per message). Applied after the job's other
    writes, in draft order, in the same transaction."""

    @classmethod
    def apply_many(cls, tx: Transaction, writes: Sequence[BatchedWrite]) -> None: ...


class Answered(Exception):
    """A rule's answer that ends admission without storing: the send is done (a retry of a
    stored send, or a probe), and the remaining rules do not look at it."""

    def __init__(self, receipt: SendReceipt) -> None:
        self.receipt = receipt


class RequestIdRace(Exception):
    """Another writer stored one of the job's request_ids after the idempotency rule looked
    (rule 2): the job is rolled back whole and run again."""


class AdmissionRule(Protocol):
    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        """Once per job, before any draft: per-job checks and batched lookups. A DomainError
        refuses every draft of the job."""
        ...

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        """Refuse (DomainError), answer (Answered), or pass with deferred writes."""
        ...


NO_WRITES: tuple[DeferredWrite, ...] = ()


class CredentialRule:
    """Rule 1: the sender's credential is still its device's, checked once per job."""

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        ensure_current(job.tx, job.caller)

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        return NO_WRITES


class IdempotencyRule:
    """Rule 2: a retried request_id gets the first result; a reused one with another body is
    refused. The batch's request ids are looked up together, on the UNIQUE index."""

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        ids = [d.request.request_id for d in drafts if not d.request.online_only]
        job.memo("previous", "", lambda: job.tx.find_messages(job.caller.account_id, ids))

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        r = draft.request
        if r.online_only:
            return NO_WRITES
        previous_messages: dict[str, MessageRow] = job.memo("previous", "", dict)
        previous = previous_messages.get(r.request_id)
        if previous is None:
            return NO_WRITES
        if previous.request_hash != draft.message.request_hash:
            raise InvalidArgument(
                f"request_id {r.request_id} was already used for a different message; "
                "use a fresh request_id for a new message"
            )
        raise Answered(SendReceipt(previous.message_id, previous.server_ts, True))


class RecipientRule:
    """Rule 3: the recipient exists."""

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        if job.recipient_devices(draft.request.recipient_account_id) is None:
            raise NotFound(f"no account {draft.request.recipient_account_id}")
        return NO_WRITES


class BlockRule:
    """Rule 5: the recipient has not blocked the sender (cached per recipient and job)."""

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        if draft.to_self:
            return NO_WRITES
        recipient = draft.request.recipient_account_id
        sender = job.caller.account_id
        if job.memo("blocked", recipient, lambda: job.tx.get_block(recipient, sender) is not None):
            raise PermissionDenied(BLOCKED_MESSAGE)
        return NO_WRITES


class DeviceListRule:
    """Rule 4: the send covers exactly the recipient's receiving devices."""

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        r = draft.request
        receiving = job.recipient_devices(r.recipient_account_id) or {}
        registrations = receiving
        sender_device = job.caller.device_id if draft.to_self else None
        if sender_device is not None:
            registrations = {d: reg for d, reg in registrations.items() if d != sender_device}
        support = None if draft.to_self else job.support_devices(r.recipient_account_id)
        if support is not None:  # a live-support conversation: its device set only
            registrations = {d: reg for d, reg in registrations.items() if d in support}
        given = {c.device_id: c.registration_id for c in r.copies}
        if given == registrations:
            return NO_WRITES
        missing = sorted(set(registrations) - set(given))
        extra = sorted(set(given) - set(registrations))
        stale = sorted(
            d for d, reg in given.items() if d in registrations and registrations[d] != reg
        )
        outside = [d for d in extra if d in receiving] if support is not None else []
        # Only on the error path: which "extra" devices exist but cannot receive yet.
        existing = {d.device_id for d in job.tx.list_devices(r.recipient_account_id)}
        existing.discard(sender_device or 0)
        raise MismatchedDevicesError(
            r.recipient_account_id,
            missing,
            extra,
            stale,
            without_keys=[d for d in extra if d in existing and d not in receiving],
            own_account=sender_device is not None,
            support_devices=sorted(registrations) if support is not None else None,
            outside_support=outside,
        )


class ProbeRule:
    """Rule 6: an empty send (to one's own account, the only empty send validation lets
    through) that the device rule passed is answered "not stored"."""

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        if not draft.envelopes:
            m = draft.message
            raise Answered(SendReceipt(m.message_id, m.server_ts, False))
        return NO_WRITES


# The order matters: the credential before anything; a retry is answered before the rules that
# could have changed their mind since the first attempt; rules that only need a valid device
# list (and, later, the business rules and billing) come after the probe, so a probe or a retry
# never bumps a counter or reserves money.
RULES: tuple[AdmissionRule, ...] = (
    CredentialRule(),
    IdempotencyRule(),
    RecipientRule(),
    BlockRule(),
    DeviceListRule(),
    ProbeRule(),
)

# What a job says about each draft: a refusal, or the receipt and the envelopes to fan out.
Outcome = tuple[SendReceipt, list[EnvelopeRow]] | DomainError


class Admitted(NamedTuple):
    """A draft every rule passed, with the writes the rules asked for."""

    draft: Draft
    writes: list[DeferredWrite]


class Admission:
    """Validation on the event loop, then the rules inside the job that stores the sends."""

    def __init__(
        self, policy: MessagingPolicy, ids: IdGenerator, rules: Sequence[AdmissionRule] = RULES
    ) -> None:
        self.policy = policy
        self._ids = ids
        self.rules = tuple(rules)
        # template id -> the stamp a rule last gave a draft of it. An approved template's
        # category and name never change (server.domain.templates), so a draft's rows are
        # made with it, and a job rebuilds them only where a rule decided otherwise.
        self._known: dict[str, Stamp] = {}

    def validate(self, caller: Principal, r: SendRequest) -> None:
        """The checks that need no database: shape, sizes, enums."""
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
        if r.template_id and r.template_id not in self._known:  # known ids were checked
            validation.uuid_string(r.template_id, field="business.template_id")

    def draft(self, caller: Principal, r: SendRequest, now: float) -> Draft:
        """The send's rows, made on the event loop: ids come from one block, so envelope ids
        still grow in commit order (jobs run in the order they are queued)."""
        message_id = self._ids.block(now, 1 + len(r.copies))
        stamp = self._known.get(r.template_id) if r.template_id else None
        category, template_name, template_id = stamp or (r.category, r.template_name, r.template_id)
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
                category,
                template_name,
                template_id,
            )
            for k, c in enumerate(r.copies)
        ]
        message = MessageRow(
            message_id,
            caller.account_id,
            caller.device_id,
            r.recipient_account_id,
            r.request_id,
            r.fingerprint(),
            now,
            _SYNC if r.recipient_account_id == caller.account_id else _PENDING,
            category,
            template_name,
        )
        return Draft(r, message, envelopes, stamp)

    def _admit(self, job: SendJob, drafts: Sequence[Draft]) -> list[Admitted | Outcome]:
        """Run every rule on every draft: a refusal or an answer, or the draft with its
        deferred writes. Nothing is written here."""
        try:
            for rule in self.rules:
                rule.prepare(job, drafts)
        except DomainError as exc:
            return [exc] * len(drafts)
        out: list[Admitted | Outcome] = []
        for draft in drafts:
            writes: list[DeferredWrite] = []
            try:
                for rule in self.rules:
                    writes.extend(rule.check(draft, job))
            except DomainError as exc:
                out.append(exc)
                continue
            except Answered as answer:
                nothing: list[EnvelopeRow] = []
                out.append((answer.receipt, nothing))
                continue
            stamp = job.stamps.get(draft.message.message_id)
            if stamp != draft.stamp:  # the rows are remade only when the prediction missed
                if stamp is None:  # no rule stamped it: the request's own metadata
                    r = draft.request
                    draft = draft.with_business(r.category, r.template_name, r.template_id)
                else:
                    draft = draft.with_business(*stamp)
                    self._learn(draft.request.template_id, stamp)
            out.append(Admitted(draft, writes))
        job.finish()
        return out

    def _learn(self, template_id: str, stamp: Stamp) -> None:
        """Remember the stamp a rule gave a draft of `template_id`, for the next drafts."""
        if not template_id:
            return
        if len(self._known) >= MAX_KNOWN_TEMPLATES:
            self._known.clear()
        self._known[template_id] = stamp

    def store_job(
        self, caller: Principal, drafts: Sequence[Draft]
    ) -> Callable[[Transaction], list[Outcome]]:
        """The write job for sends that are stored: rules, deferred writes, then the rows."""

        def job(tx: Transaction) -> list[Outcome]:
            send_job = SendJob(caller, tx)
            out: list[Outcome] = []
            messages: list[MessageRow] = []
            envelopes: list[EnvelopeRow] = []
            batched: dict[type[BatchedWrite], list[BatchedWrite]] = {}
            # (outcome index, receipt, envelope count) of each draft that stores its envelopes
            stored: list[tuple[int, SendReceipt, int]] = []
            for item in self._admit(send_job, drafts):
                if not isinstance(item, Admitted):
                    out.append(item)
                    continue
                draft, writes = item
                for write in writes:
                    many = getattr(type(write), "apply_many", None)
                    if many is None:
                        write.apply(tx)
                    else:
                        batched.setdefault(type(write), []).append(write)  # type: ignore[arg-type]
                m = draft.message
                receipt = SendReceipt(m.message_id, m.server_ts, True)
                out.append((receipt, draft.envelopes))
                stored.append((len(out) - 1, receipt, len(draft.envelopes)))
                messages.append(m)
                envelopes.extend(draft.envelopes)
            for kind, group in batched.items():
                kind.apply_many(tx, group)
            if tx.insert_messages(messages) != len(messages):
                raise RequestIdRace()
            # The stored rows, with their stream positions, are what the streams are handed.
            placed = tx.insert_envelopes(envelopes)
            first = 0
            for i, receipt, count in stored:
                out[i] = (receipt, placed[first : first + count])
                first += count
            return out

        return job

    def online_job(
        self, caller: Principal, drafts: Sequence[Draft]
    ) -> Callable[[ReadTransaction], list[Outcome]]:
        """The read job for online-only sends: the same rules, nothing stored. Online-only
        content leaves no trace, so a rule must not ask for writes for it."""

        def job(tx: ReadTransaction) -> list[Outcome]:
            out: list[Outcome] = []
            for item in self._admit(SendJob(caller, tx), drafts):
                if not isinstance(item, Admitted):
                    out.append(item)
                    continue
                draft, writes = item
                if writes:
                    raise RuntimeError("an admission rule asked for writes for online-only content")
                m = draft.message
                out.append((SendReceipt(m.message_id, m.server_ts, False), draft.envelopes))
            return out

        return job


def race_refusal() -> Aborted:
    """What a send gets when its request_id raced another writer RACE_ATTEMPTS times."""
    return Aborted(
        "another send with the same request_id was being stored at the same moment; "
        "retry with the same request_id to get its result"
    )
