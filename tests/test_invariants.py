"""Invariants that must hold with concurrent writers, not only behind one writer thread.

Each test plays the other writer inside one transaction: it writes what a second replica would
have committed between a read and a write, or calls a storage method twice without re-reading,
and checks that the conditional write (ports guarantees 11-13) refuses or absorbs it. The
storage tests run on their own connection to the live server's database file and roll back.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import grpc
import psycopg
import pytest
from parley.v1 import account_pb2 as apb

from server.domain.accounts import register_number
from server.domain.auth import Principal, hash_token
from server.domain.clock import ManualClock
from server.domain.errors import AlreadyExists, FailedPrecondition
from server.domain.keys import KeyDirectory, KeyPolicy, Upload
from server.domain.model import (
    AccountKind,
    AccountRow,
    DeviceKeys,
    DeviceRow,
    KeyCounts,
    SignedKey,
)
from server.storage.database import Database
from server.storage.postgres.connection import PgConnection, configure
from server.storage.postgres.transaction import PostgresTransaction
from server.storage.transaction import SqliteTransaction
from tests.conftest import LiveServer, ServerFactory, link, register
from tests.keys_helper import DeviceKeyMaker

AnyTransaction = SqliteTransaction | PostgresTransaction

T = TypeVar("T")
ALICE = "+14155550123"
RACED = "+14155550177"


@contextmanager
def transaction(server: LiveServer, *, commit: bool = False) -> Iterator[AnyTransaction]:
    """A write transaction on the server's database, beside the server's own writers."""
    if not server.on_sqlite:
        with psycopg.connect(str(server.settings.database), autocommit=True) as raw:
            configure(raw)
            raw.execute("BEGIN")
            try:
                yield PostgresTransaction(PgConnection(raw))
            except BaseException:
                raw.execute("ROLLBACK")
                raise
            raw.execute("COMMIT" if commit else "ROLLBACK")
        return
    conn = sqlite3.connect(server.sqlite_file, isolation_level=None, timeout=10)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield SqliteTransaction(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT" if commit else "ROLLBACK")
    finally:
        conn.close()


def device_count(tx: AnyTransaction, account_id: str) -> int:
    row = tx.connection.execute(
        "SELECT device_count FROM accounts WHERE account_id = ?", (account_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- 1. the device limit -----------------------------------------------------------------------


def test_insert_device_refuses_past_the_limit_without_re_reading(server: LiveServer) -> None:
    """Guarantee 11: two inserts in one transaction, neither reading the count, stop at max."""
    alice = register(server, ALICE)
    account = alice.account_id
    with transaction(server) as tx:
        assert device_count(tx, account) == 1

        def device(device_id: int) -> DeviceRow:
            return DeviceRow(account, device_id, f"d{device_id}", 0.0, 0.0)

        assert tx.insert_device(device(2), hash_token("t2"), 2)
        assert not tx.insert_device(device(3), hash_token("t3"), 2)
        assert [d.device_id for d in tx.list_devices(account)] == [1, 2]
        assert device_count(tx, account) == 2
        # Removing gives the slot back once; removing a device that is gone gives nothing.
        assert tx.delete_device(account, 2)
        assert not tx.delete_device(account, 2)
        assert device_count(tx, account) == 1
        assert tx.insert_device(device(3), hash_token("t3"), 2)
        # Re-registration resets the count with the devices.
        assert tx.delete_all_devices(account) == 2
        assert device_count(tx, account) == 0


def test_link_refusal_is_unchanged_and_slots_come_back(make_server: ServerFactory) -> None:
    server = make_server(max_devices=2)
    primary = register(server, ALICE)
    laptop = link(server, primary)
    with pytest.raises(grpc.RpcError) as err:
        link(server, primary, "tablet")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == (
        "the account already has 2 devices, the most allowed; remove one first"
    )
    server.accounts().RemoveDevice(
        apb.RemoveDeviceRequest(device_id=laptop.device_id), metadata=primary.metadata
    )
    assert link(server, primary, "tablet").device_id == 3
    # Registering again replaces every device: the count starts over from the new primary.
    again = register(server, ALICE)
    assert link(server, again, "watch").device_id == 4
    with transaction(server) as tx:
        assert device_count(tx, again.account_id) == 2


# -- 2. the identity key -----------------------------------------------------------------------


def _keys(account_id: str, identity: bytes, registration_id: int, spk: int) -> DeviceKeys:
    signed = SignedKey(spk, b"spk%d" % spk, b"sig")
    return DeviceKeys(
        account_id, 1, identity, registration_id, signed, 0.0, SignedKey(1, b"k", b"s")
    )


def test_put_device_keys_never_replaces_another_identity(server: LiveServer) -> None:
    """Guarantee 12: the upsert's update is conditional on the identity on file."""
    alice = register(server, ALICE)
    account = alice.account_id
    with transaction(server) as tx:
        assert tx.put_device_keys(_keys(account, b"identity-a", 7, 1))
        assert not tx.put_device_keys(_keys(account, b"identity-b", 7, 2))
        assert not tx.put_device_keys(_keys(account, b"identity-a", 8, 3))
        on_file = tx.get_device_keys(account, 1)
        assert on_file == _keys(account, b"identity-a", 7, 1)  # nothing changed
        # The same identity updates the rest (a rotated signed prekey).
        assert tx.put_device_keys(_keys(account, b"identity-a", 7, 4))
        rotated = tx.get_device_keys(account, 1)
        assert rotated is not None and rotated.signed_pre_key.key_id == 4


def _upload(maker: DeviceKeyMaker) -> Upload:
    """The domain's form of `maker`'s first upload (what the key servicer converts it to)."""
    first = maker.first_upload()

    def signed(k: object) -> SignedKey:
        return SignedKey(k.key_id, k.public_key, k.signature)  # type: ignore[attr-defined]

    return Upload(
        identity_key=first.identity_key,
        registration_id=first.registration_id,
        signed_pre_key=signed(first.signed_pre_key),
        pre_keys=[(k.key_id, k.public_key) for k in first.pre_keys],
        kyber_pre_keys=[signed(k) for k in first.kyber_pre_keys],
        last_resort_kyber=signed(first.last_resort_kyber_pre_key),
    )


class UploadedMeanwhile(SqliteTransaction):
    """Plays another replica: its first upload, with another identity, commits right after
    this upload read that the device had no keys yet."""

    def __init__(self, connection: sqlite3.Connection, theirs: DeviceKeys) -> None:
        super().__init__(connection)
        self.theirs = theirs
        self.raced = False

    def get_device_keys(self, account_id: str, device_id: int) -> DeviceKeys | None:
        seen = super().get_device_keys(account_id, device_id)
        if not self.raced:
            self.raced = True
            assert seen is None
            assert super().put_device_keys(self.theirs)
        return seen


class RacingStore:
    """The real database, each write job running on a transaction made by `racer` (one that
    plays another replica's write at some point of the job)."""

    def __init__(
        self, db: Database, racer: Callable[[sqlite3.Connection], SqliteTransaction]
    ) -> None:
        self.db = db
        self.racer = racer
        self.last: SqliteTransaction | None = None

    async def write(self, fn: Callable[[SqliteTransaction], T]) -> T:
        def run(tx: SqliteTransaction) -> T:
            self.last = self.racer(tx.connection)
            return fn(self.last)

        return await self.db.write(run)

    async def read(self, fn: Callable[[SqliteTransaction], T]) -> T:
        return await self.db.read(fn)


ACCOUNT = "0b1f8a52-6f0e-4c55-9d7e-1a2b3c4d5e6f"
TOKEN = hash_token("t")


def upload_racing(
    tmp_path: Path,
    racer: Callable[[sqlite3.Connection], SqliteTransaction],
    first: Upload | None,
    upload: Upload,
) -> tuple[Exception | None, SqliteTransaction | None, DeviceKeys | None]:
    """Upload `upload` (after `first`, uploaded without a race) for a fresh device, its job
    running on `racer`; return what it raised, the racing transaction and the keys on file."""

    async def run(
        db: Database,
    ) -> tuple[Exception | None, SqliteTransaction | None, DeviceKeys | None]:
        def setup(tx: SqliteTransaction) -> None:
            tx.insert_account(AccountRow(ACCOUNT, ALICE, AccountKind.PERSON, 0.0))
            tx.insert_device(DeviceRow(ACCOUNT, 1, "phone", 0.0, 0.0), TOKEN, 6)

        await db.write(setup)
        caller = Principal(ACCOUNT, 1, TOKEN)
        if first is not None:
            await KeyDirectory(db, ManualClock(), KeyPolicy()).upload(caller, first)
        store = RacingStore(db, racer)
        raised: Exception | None = None
        try:
            await KeyDirectory(store, ManualClock(), KeyPolicy()).upload(caller, upload)
        except Exception as exc:  # returned to the test to inspect
            raised = exc
        return raised, store.last, await db.read(lambda tx: tx.get_device_keys(ACCOUNT, 1))

    db = Database(tmp_path / "race.db")
    try:
        return asyncio.run(run(db))
    finally:
        db.close()


def test_upload_that_loses_a_race_to_another_identity_is_refused(tmp_path: Path) -> None:
    """The snapshot said "no keys yet"; the conditional write finds the other identity and the
    upload is refused with the usual message."""
    theirs = _keys(ACCOUNT, b"their-identity", 9, 1)
    raised, racer, on_file = upload_racing(
        tmp_path,
        lambda conn: UploadedMeanwhile(conn, theirs),
        None,
        _upload(DeviceKeyMaker()),
    )
    assert isinstance(racer, UploadedMeanwhile) and racer.raced
    assert isinstance(raised, FailedPrecondition)
    assert str(raised) == (
        "this device already has a different identity key; register the number "
        "(or link the device) again to publish a new identity"
    )
    # The refused job rolled back whole (the other replica's write played inside it too), so
    # no identity at all is on file: the refused upload never half-succeeded.
    assert on_file is None


class SameKeyIdMeanwhile(SqliteTransaction):
    """Plays another upload of the same device: after this upload's checks, a one-time key
    with another public key is stored under an id this upload uses."""

    def __init__(self, connection: sqlite3.Connection, key_id: int) -> None:
        super().__init__(connection)
        self.key_id = key_id
        self.raced = False

    def count_keys(self, account_id: str, device_id: int) -> KeyCounts:
        if not self.raced:
            self.raced = True
            self.add_pre_keys(account_id, device_id, [(self.key_id, b"\x05" + b"\x01" * 32)])
        return super().count_keys(account_id, device_id)


def test_one_time_key_id_taken_meanwhile_is_refused_not_dropped(tmp_path: Path) -> None:
    """Rule 3 of keys: the comparison reads what is on file after the inserts, so a key id
    taken by a concurrent upload is AlreadyExists instead of a silently skipped key."""
    maker = DeviceKeyMaker()
    more = maker.pre_keys(2)
    upload = Upload(pre_keys=[(k.key_id, k.public_key) for k in more])
    raised, racer, _ = upload_racing(
        tmp_path,
        lambda conn: SameKeyIdMeanwhile(conn, more[0].key_id),
        _upload(maker),
        upload,
    )
    assert isinstance(racer, SameKeyIdMeanwhile) and racer.raced
    assert isinstance(raised, AlreadyExists)
    assert f"key id {more[0].key_id} is already on file with another key" in str(raised)


# -- 3. registering one new number twice at once ----------------------------------------------


class LostTheRace(SqliteTransaction):
    """Plays the other replica: its registration of the number commits right after this one's
    lookup found the number free, so this one's insert finds the number taken."""

    def __init__(self, connection: sqlite3.Connection, winner: AccountRow) -> None:
        super().__init__(connection)
        self.winner = winner
        self.raced = False

    def get_account_by_phone(self, phone_number: str) -> AccountRow | None:
        seen = super().get_account_by_phone(phone_number)
        if not self.raced:
            self.raced = True
            assert seen is None  # the number really was new when the loser looked
            assert super().insert_account(self.winner)
            assert super().insert_device(
                DeviceRow(self.winner.account_id, 1, "winner", 0.0, 0.0), hash_token("w"), 6
            )
        return seen


@pytest.mark.sqlite_only  # the racing writer is a subclass of the SQLite transaction
def test_registration_that_loses_the_race_reregisters(server: LiveServer) -> None:
    """Guarantee 13: the loser's insert is ON CONFLICT DO NOTHING, it re-reads, and takes the
    re-registration path: the winner's account id, its devices replaced, never INTERNAL."""
    register(server, ALICE)  # the server is running with other data
    winner = AccountRow("7c9e6679-7425-40de-944b-e07fc1f90ae7", RACED, AccountKind.PERSON, 0.0)
    with transaction(server, commit=True) as plain:
        assert isinstance(plain, SqliteTransaction)
        tx = LostTheRace(plain.connection, winner)
        creds = register_number(tx, RACED, AccountKind.PERSON, "loser", "loser-token", 1.0, 6)
    assert tx.raced
    assert creds.account_id == winner.account_id and creds.reregistered
    # The loser's token is the credential of device 1 of the winner's account, over RPC.
    metadata = (("authorization", "Bearer loser-token"),)
    account = server.accounts().GetAccount(apb.GetAccountRequest(), metadata=metadata).account
    assert account.account_id == winner.account_id
    assert list(account.device_ids) == [1]
    devices = server.accounts().ListDevices(apb.ListDevicesRequest(), metadata=metadata).devices
    assert [d.name for d in devices] == ["loser"]


@pytest.mark.sqlite_only  # the racing writer is a subclass of the SQLite transaction
def test_racing_registration_with_another_kind_is_refused_cleanly(server: LiveServer) -> None:
    """The loser that asked for another kind than the winner's gets the usual refusal."""
    winner = AccountRow("7c9e6679-7425-40de-944b-e07fc1f90ae8", RACED, AccountKind.BUSINESS, 0.0)
    with transaction(server) as plain:
        assert isinstance(plain, SqliteTransaction)
        tx = LostTheRace(plain.connection, winner)
        with pytest.raises(FailedPrecondition, match="registered as a business account"):
            register_number(tx, RACED, AccountKind.PERSON, "loser", "t", 1.0, 6)
