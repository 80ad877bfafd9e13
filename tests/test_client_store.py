"""The client's SQLite store on its own: schema versions, transactions, trust on first use,
one-time key bookkeeping and the processed-envelope table."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.store import (
    DB_FILENAME,
    LATEST_VERSION,
    MIGRATIONS,
    ClientStore,
    Connection,
    SchemaTooNewError,
    UntrustedIdentityError,
)
from server.domain.clock import ManualClock

ACCOUNT = "0b7a4c1e-3f9d-4e55-9a51-2c1f0d6e8b7a"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Iterator[ClientStore]:
    with ClientStore.open_profile(tmp_path / "profile", clock=clock.now) as opened:
        yield opened


def test_a_new_profile_is_migrated_to_the_latest_schema_in_wal_mode(
    store: ClientStore, tmp_path: Path
) -> None:
    store.close()
    conn = sqlite3.connect(tmp_path / "profile" / DB_FILENAME)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_a_profile_from_a_newer_client_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "newer.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="newer than this client supports"):
        ClientStore(path, clock=clock.now)


def test_a_failed_transaction_leaves_nothing_behind(store: ClientStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.store_session(ACCOUNT, 1, b"state")
        with store.transaction():
            store.mark_processed(7)
        raise RuntimeError("crash before commit")
    assert store.load_session(ACCOUNT, 1) is None and not store.is_processed(7)
    # A failing inner block rolls back alone.
    with store.transaction():
        store.store_session(ACCOUNT, 1, b"state")
        with pytest.raises(RuntimeError), store.transaction():
            store.mark_processed(7)
            raise RuntimeError("inner")
    assert store.load_session(ACCOUNT, 1) == b"state" and not store.is_processed(7)


def test_trust_on_first_use(store: ClientStore) -> None:
    first, second = b"\x05" + b"\x01" * 32, b"\x05" + b"\x02" * 32
    store.check_identity(ACCOUNT, 1, first)
    store.check_identity(ACCOUNT, 1, first)
    store.check_identity(ACCOUNT, 2, second)  # another device has its own key
    with pytest.raises(UntrustedIdentityError) as info:
        store.check_identity(ACCOUNT, 1, second)
    assert info.value.identity_key == second
    # The message says what to do, naming the peer by account id until it is a contact.
    assert info.value.who == ACCOUNT and f"trust_identity({ACCOUNT!r})" in str(info.value)
    store.save_contact("+15550001234", ACCOUNT)
    with pytest.raises(UntrustedIdentityError) as info:
        store.check_identity(ACCOUNT, 1, second)
    assert info.value.who == "+15550001234" and "safety_number('+15550001234')" in str(info.value)
    store.record_pending_identity(ACCOUNT, 1, second)
    assert store.identity(ACCOUNT, 1) == first  # refused keys are not trusted silently
    assert store.pending_identities(ACCOUNT) == {1: second}
    assert store.trust_pending(ACCOUNT) == [1]
    store.check_identity(ACCOUNT, 1, second)
    assert store.pending_identities(ACCOUNT) == {}
    assert store.identities(ACCOUNT) == {1: second, 2: second}


def test_key_ids_count_up_never_repeat_and_skip_zero(store: ClientStore) -> None:
    assert store.allocate_key_ids("ec", 3, first=0xFFFFFFFE) == [0xFFFFFFFE, 0xFFFFFFFF, 1]
    assert store.allocate_key_ids("ec", 2, first=12345) == [2, 3]
    assert store.allocate_key_ids("kyber", 1, first=10) == [10]


def test_used_one_time_keys_go_and_the_last_resort_key_stays(store: ClientStore) -> None:
    store.add_one_time_pre_keys([(1, b"a" * 32), (2, b"b" * 32)])
    store.add_kyber_pre_keys([(5, b"k" * 64)], last_resort=False)
    store.add_kyber_pre_keys([(6, b"l" * 64)], last_resort=True)
    store.remove_one_time_pre_key(1)
    store.remove_one_time_kyber_pre_key(5)
    store.remove_one_time_kyber_pre_key(6)
    assert store.one_time_pre_key(1) is None and store.one_time_pre_key(2) == b"b" * 32
    assert store.kyber_pre_key(5) is None
    assert store.kyber_pre_key(6) == (b"l" * 64, True)


def test_processed_envelope_ids_are_pruned_by_age(store: ClientStore, clock: ManualClock) -> None:
    store.mark_processed(1)
    clock.advance(100)
    store.mark_processed(2)
    assert store.prune_processed(50) == 1
    assert not store.is_processed(1) and store.is_processed(2)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_profile_is_private_whatever_the_umask(tmp_path: Path, clock: ManualClock) -> None:
    old = os.umask(0)  # SQLite alone would create 0666 files under this umask
    try:
        with ClientStore.open_profile(tmp_path / "profile", clock=clock.now) as store:
            store.save_contact("+15550001234", ACCOUNT)  # a write: the -wal and -shm exist
            directory = tmp_path / "profile"
            db = directory / DB_FILENAME
            side = [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm")]
            assert all(p.exists() for p in side)
            assert _mode(directory) == 0o700
            assert [_mode(p) for p in (db, *side)] == [0o600, 0o600, 0o600]
    finally:
        os.umask(old)


def test_an_exposed_profile_is_opened_with_a_warning(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "profile"
    ClientStore.open_profile(directory, clock=clock.now).close()
    with caplog.at_level(logging.WARNING, "parley.client"):
        ClientStore.open_profile(directory, clock=clock.now).close()
    assert caplog.records == []  # private: nothing to say
    os.chmod(directory, 0o755)
    os.chmod(directory / DB_FILENAME, 0o644)
    with caplog.at_level(logging.WARNING, "parley.client"):
        ClientStore.open_profile(directory, clock=clock.now).close()
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"chmod 700 {directory}" in m and "mode 0755" in m for m in messages)
    assert any(f"chmod 600 {directory / DB_FILENAME}" in m for m in messages)
    # The warning is advice: the modes are left as the owner set them.
    assert _mode(directory) == 0o755


def test_a_version_1_profile_keeps_its_server_as_a_plaintext_connection(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].script.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO local_identity VALUES (1, ?, 7, ?, 1, 'token', 'example.org:50051', '', 0)",
        (b"\x01" * 32, ACCOUNT),
    )
    conn.close()
    with ClientStore(path, clock=clock.now) as store:
        assert store.connection() == Connection("example.org:50051", False, None)
        assert store.pending_verification() is None and store.holds_state()
