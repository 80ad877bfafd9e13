"""The domain's way into storage: a transaction interface, implemented by each backend.

The domain never sees a connection or SQL. A service hands a function to `Store.write` (or
`Store.read`); the backend runs it inside one transaction and passes it a `Transaction` (or a
`ReadTransaction`) whose methods are the operations below. The SQLite backend
(`server.storage.transaction.SqliteTransaction`) implements them today; a PostgreSQL backend
implements the same protocols.

What every backend must guarantee, because the domain's invariants rest on it (the modules that
keep each invariant cite these by name):

1. A `write` function's effects commit together or not at all, and the caller hears its result
   only after the commit is durable. A function may run more than once (a retried group
   commit); it touches nothing but the transaction it is given.
2. Every lookup below is served by an index: a primary key, a unique constraint or
   `(account_id, device_id, id)`; none scans a table.
3. `insert_messages` keeps UNIQUE (sender_account_id, request_id): a conflicting row is not
   inserted (`ON CONFLICT DO NOTHING`) and is reported by the count it returns, never by an
   exception, so a concurrent writer's send of the same request_id cannot be stored twice.
4. `settle_messages` moves only rows still PENDING (`state = PENDING` in the UPDATE's WHERE):
   of two concurrent settlements of one message, exactly one returns it.
5. `take_pre_key`, `take_kyber_pre_key` and `take_linking_code` delete the row they return
   (DELETE ... RETURNING): a one-time key or code is handed out once, however many writers.
6. `allocate_device_id` is one conditional UPDATE ... RETURNING of the account's counter, so
   device ids are never handed out twice.
7. `add_verification_attempt` and `complete_verification` are conditional UPDATEs
   (`attempts < max`, `completed = 0`): of concurrent guesses at one code, no more than the
   allowed number are counted, and one correct code registers once.

Guarantees 8-10 (consent: upserts on unique keys, indexed opt-outs and blocks) are listed in
`server.domain.consent_model`; S1-S4 (the sending rules' upserts and indexed reads) in
`server.domain.sending_model`; U1-U4 (live support) in `server.domain.support_model`; L1-L4
(click-to-chat) in `server.domain.links_model`; B1-B4 (billing's conditional balance updates
and once-only ledger keys) in `server.domain.billing_model`; R1-R2 (the usage report's
indexed reads) in `server.domain.usage_model`. Accounts and keys continue here:

11. `insert_device` takes one of the account's device slots with one conditional UPDATE of the
    account's device count (`device_count < max`) before it inserts, in the same transaction,
    and reports a refusal by its result; `delete_device` gives the slot back only when it
    deleted the row, `delete_all_devices` resets the count. The count is never read first, so
    no interleaving of writers, nor two inserts in one transaction, exceeds the limit.
12. `put_device_keys` is one upsert whose update is conditional on the row's identity key and
    registration id (`ON CONFLICT ... DO UPDATE ... WHERE` the stored ones equal the new ones);
    a row on file with another identity is left unchanged and reported by the result, so a
    concurrent upload with another identity can never replace the one on file.
13. `insert_account` is `INSERT ... ON CONFLICT (phone_number) DO NOTHING` and reports by its
    result whether it created the account: of two concurrent registrations of a new number,
    the loser learns the number is taken without an exception, and re-registers it.
14. `add_pre_keys` and `add_kyber_pre_keys` skip key ids on file (`ON CONFLICT DO NOTHING`)
    without an exception, and a later read in the same transaction sees the key that won, so
    the domain compares what is on file after its inserts: an id taken concurrently with other
    key bytes is refused, never silently dropped.
15. `insert_envelopes` and `insert_statuses` number each device's rows from a counter of the
    device (`device_streams`), bumped by one upsert per device that holds the counter's row
    until commit: a concurrent writer to the same device waits, then numbers its rows after
    these. So a device's positions grow in commit order with any number of writers, and a
    stream that has sent up to position p has seen every committed row at or below p: reading
    "past p" never skips a row that commits late. (Ids are not enough: they are taken before
    the transaction, by whichever process sends.)
16. `lock_bucket` creates the bucket's row if missing (`ON CONFLICT DO NOTHING`), then reads
    it locked (`FOR UPDATE` on PostgreSQL) until the transaction that then writes it back
    (`store_bucket`) ends: concurrent takes from one bucket, on any replica, are serialised by
    the row, so no token is handed out twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from server.domain.billing_model import BillingReads, BillingWrites
from server.domain.consent_model import ConsentReads, ConsentWrites
from server.domain.links_model import LinkReads, LinkWrites
from server.domain.model import (
    AccountRow,
    DeviceKeys,
    DeviceRow,
    EnvelopeRow,
    KeyCounts,
    MessageRow,
    SignedKey,
    StatusRow,
    VerificationRow,
)
from server.domain.sending_model import SendingReads, SendingWrites
from server.domain.support_model import SupportReads, SupportWrites
from server.domain.usage_model import UsageReads

T = TypeVar("T")


class AccountReads(Protocol):
    def get_verification(self, verification_id: str) -> VerificationRow | None: ...
    def get_account(self, account_id: str) -> AccountRow | None: ...
    def get_account_by_phone(self, phone_number: str) -> AccountRow | None: ...
    def list_devices(self, account_id: str) -> list[DeviceRow]: ...
    def device_for_token(self, token_hash: bytes) -> DeviceRow | None: ...
    def holds_credential(self, account_id: str, device_id: int, token_hash: bytes) -> bool:
        """Whether `token_hash` is still the credential of that device (one key probe)."""
        ...


class AccountWrites(Protocol):
    def insert_verification(self, row: VerificationRow) -> None: ...
    def add_verification_attempt(self, verification_id: str, max_attempts: int) -> int | None:
        """Count one wrong guess unless `max_attempts` are counted already (one conditional
        UPDATE, guarantee 7); return the new count, None when none was left."""
        ...

    def complete_verification(self, verification_id: str) -> bool:
        """Mark it used unless it already was (one conditional UPDATE, guarantee 7)."""
        ...

    def delete_verifications_expired_before(self, before: float) -> int: ...
    def insert_account(self, row: AccountRow) -> bool:
        """Create the account unless its number has one; whether it did (guarantee 13)."""
        ...

    def delete_account(self, account_id: str) -> bool:
        """Delete the account and everything that references it."""
        ...

    def allocate_device_id(self, account_id: str) -> int:
        """The account's next unused device id (guarantee 6)."""
        ...

    def insert_device(self, row: DeviceRow, token_hash: bytes, max_devices: int) -> bool:
        """Insert the device unless the account has `max_devices` already; whether it did
        (guarantee 11)."""
        ...

    def delete_device(self, account_id: str, device_id: int) -> bool:
        """Delete the device and free its slot; whether it existed (guarantee 11)."""
        ...

    def delete_all_devices(self, account_id: str) -> int:
        """Delete every device and reset the account's device count (guarantee 11)."""
        ...

    def touch_device(self, account_id: str, device_id: int, at: float) -> None: ...
    def insert_linking_code(self, code_hash: bytes, account_id: str, expires_at: float) -> None: ...

    def take_linking_code(self, code_hash: bytes) -> tuple[str, float] | None:
        """Remove a linking code, return (account_id, expires_at) (guarantee 5)."""
        ...

    def delete_linking_codes_expired_before(self, before: float) -> int: ...


class KeyReads(Protocol):
    def get_device_keys(self, account_id: str, device_id: int) -> DeviceKeys | None: ...
    def list_device_keys(self, account_id: str) -> list[DeviceKeys]: ...
    def existing_pre_keys(
        self, account_id: str, device_id: int, key_ids: Iterable[int]
    ) -> dict[int, bytes]: ...
    def existing_kyber_pre_keys(
        self, account_id: str, device_id: int, key_ids: Iterable[int]
    ) -> dict[int, bytes]: ...
    def count_keys(self, account_id: str, device_id: int) -> KeyCounts: ...


class KeyWrites(Protocol):
    def put_device_keys(self, keys: DeviceKeys) -> bool:
        """Store the keys unless the row on file has another identity key or registration
        id; whether they were stored (guarantee 12)."""
        ...

    def add_pre_keys(
        self, account_id: str, device_id: int, keys: Iterable[tuple[int, bytes]]
    ) -> None:
        """Store the one-time EC prekeys whose ids are free (guarantee 14)."""
        ...

    def add_kyber_pre_keys(
        self, account_id: str, device_id: int, keys: Iterable[SignedKey]
    ) -> None:
        """Store the one-time Kyber prekeys whose ids are free (guarantee 14)."""
        ...

    def take_pre_key(self, account_id: str, device_id: int) -> tuple[int, bytes] | None:
        """Remove and return the device's lowest-id one-time EC prekey (guarantee 5)."""
        ...

    def take_kyber_pre_key(self, account_id: str, device_id: int) -> SignedKey | None:
        """Remove and return the device's lowest-id one-time Kyber prekey (guarantee 5)."""
        ...


class MessageReads(Protocol):
    def max_message_id(self) -> int:
        """The largest message, envelope or status id stored (0 when none)."""
        ...

    def device_registrations(self, account_id: str) -> dict[int, int]:
        """device id -> registration id of the account's devices that can receive (have keys)."""
        ...

    def find_messages(
        self, sender_account_id: str, request_ids: Sequence[str]
    ) -> dict[str, MessageRow]:
        """The sender's messages among `request_ids`, by request id (one lookup for a batch)."""
        ...

    def envelopes_after(
        self, account_id: str, device_id: int, after_seq: int, limit: int, max_bytes: int
    ) -> list[EnvelopeRow]:
        """At most `limit` of the device's envelopes past stream position `after_seq`, in
        position order, stopping once `max_bytes` of content are read (at least one)."""
        ...

    def statuses_after(
        self, account_id: str, device_id: int, after_seq: int, limit: int
    ) -> list[StatusRow]: ...


class MessageWrites(Protocol):
    def insert_messages(self, rows: Sequence[MessageRow]) -> int:
        """Insert the rows whose (sender, request_id) is free; return how many (guarantee 3)."""
        ...

    def claim_stream(self, account_id: str, device_id: int) -> int:
        """The epoch of the device's stream opening now: higher than any earlier claim."""
        ...

    def insert_envelopes(self, rows: Sequence[EnvelopeRow]) -> list[EnvelopeRow]:
        """Insert the rows; return them, in the order given, with their stream positions
        (guarantee 15)."""
        ...

    def delete_envelopes(
        self, account_id: str, device_id: int, envelope_ids: Iterable[int]
    ) -> list[int]:
        """Delete the device's envelopes among `envelope_ids`; return their message ids."""
        ...

    def settle_messages(
        self, message_ids: Iterable[int], state: int, at: float
    ) -> list[MessageRow]:
        """Move the PENDING messages among `message_ids` to `state`; return those that moved
        (guarantee 4)."""
        ...

    def insert_statuses(self, rows: Sequence[StatusRow]) -> list[StatusRow]:
        """Queue statuses for the sending devices; return those whose device still exists, with
        their stream positions (guarantee 15)."""
        ...

    def delete_statuses(
        self, account_id: str, device_id: int, status_ids: Iterable[int]
    ) -> int: ...

    def delete_message_envelopes(self, message_ids: Sequence[int], max_copies: int) -> int:
        """Delete the queued envelopes of these messages, whichever devices they wait for (a
        message's envelopes have the ids just above its own, at most `max_copies` of them: a
        primary-key range each); how many."""
        ...

    def expire_envelopes(self, before_id: int, limit: int) -> int:
        """Delete up to `limit` envelopes with ids below `before_id`; return how many."""
        ...

    def pending_before(self, before_id: int, limit: int) -> list[int]:
        """Ids of up to `limit` PENDING messages sent before `before_id`."""
        ...

    def delete_settled_messages(self, before_id: int, limit: int) -> int:
        """Delete up to `limit` settled messages sent before `before_id` (their request ids are
        forgotten: the idempotency window is over); how many."""
        ...

    def expire_statuses(self, before_id: int, limit: int) -> int:
        """Delete up to `limit` delivery statuses queued before `before_id`, acknowledged by
        no device of their sender in time; how many."""
        ...

    def reclaim_free_pages(self) -> int:
        """Give free pages back to the file system when they are many (SQLite's incremental
        vacuum; PostgreSQL's autovacuum does this itself); how many were given back."""
        ...


class ReadTransaction(
    AccountReads,
    KeyReads,
    MessageReads,
    ConsentReads,
    SendingReads,
    SupportReads,
    LinkReads,
    BillingReads,
    UsageReads,
    Protocol,
):
    """What a read transaction offers: a consistent view, no writes."""


class LimitWrites(Protocol):
    """Shared rate limits (server.domain.ratelimit), for replicas on one database."""

    def lock_bucket(self, name: str, key: str, capacity: float, now: float) -> tuple[float, float]:
        """(tokens, updated at) of the bucket, created full if missing, its row locked until
        the transaction ends (guarantee 16)."""
        ...

    def store_bucket(
        self, name: str, key: str, tokens: float, now: float, forget_after: float
    ) -> None: ...
    def delete_full_buckets(self, now: float) -> int:
        """Forget buckets past their `forget_after` (full again: they would start full)."""
        ...


class Transaction(
    ReadTransaction,
    LimitWrites,
    AccountWrites,
    KeyWrites,
    MessageWrites,
    ConsentWrites,
    SendingWrites,
    SupportWrites,
    LinkWrites,
    BillingWrites,
    Protocol,
):
    """What a write transaction offers: every read, and the writes."""


class Store(Protocol):
    """A database the domain writes and reads through (guarantee 1)."""

    async def write(self, fn: Callable[[Transaction], T]) -> T: ...
    async def read(self, fn: Callable[[ReadTransaction], T]) -> T: ...
