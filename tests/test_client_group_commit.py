"""The client's group commit and its decoded sessions: writes that wait for a shared commit,
a failed commit that lets nothing out, commits spaced while sends are in flight, and session
records decoded once and dropped whenever the row may have changed under them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

from client import group_commit
from client.api import TextMessage
from client.crypto import SessionRecord
from client.group_commit import GroupCommit
from client.store import DB_FILENAME, ClientStore
from server.domain.clock import ManualClock
from tests.client_helpers import closing, drain, registered
from tests.conftest import LiveServer

PEER = "0b7a4c1e-3f9d-4e55-9a51-2c1f0d6e8b7a"
ALICE = "+14155550123"
BOB = "+442079460123"


class Record:
    """A stand-in for SessionRecord: its bytes, and how many times any was decoded."""

    decoded = 0

    def __init__(self, value: bytes) -> None:
        self.value = value

    def to_bytes(self) -> bytes:
        return self.value

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        cls.decoded += 1
        return cls(data)


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return tmp_path / "profile"


@pytest.fixture
def store(profile: Path) -> Iterator[ClientStore]:
    with ClientStore.open_profile(profile, clock=ManualClock().now) as opened:
        yield opened


def committed_texts(profile: Path) -> list[str]:
    """The history as another connection sees it: committed rows only."""
    conn = sqlite3.connect(profile / DB_FILENAME)
    try:
        return [r[0] for r in conn.execute("SELECT text FROM messages ORDER BY id")]
    finally:
        conn.close()


def add(store: ClientStore, text: str) -> None:
    store.add_message(
        incoming=True,
        peer_account_id=PEER,
        sender_account_id=PEER,
        sender_device_id=1,
        timestamp_ms=1,
        text=text,
    )


def test_waiting_writes_commit_together_and_a_failing_block_rolls_back_alone(
    store: ClientStore, profile: Path
) -> None:
    with store.transaction(durable=False):
        add(store, "first")
    assert store.pending and committed_texts(profile) == []
    with pytest.raises(RuntimeError), store.transaction(durable=False):
        add(store, "failed")
        raise RuntimeError("this block fails")
    with store.transaction(durable=False):
        add(store, "second")
    assert committed_texts(profile) == []
    store.commit()
    assert not store.pending
    assert committed_texts(profile) == ["first", "second"]


def test_a_durable_transaction_commits_the_writes_waiting_before_it(
    store: ClientStore, profile: Path
) -> None:
    with store.transaction(durable=False):
        add(store, "waiting")
    with store.transaction():
        add(store, "durable")
    assert not store.pending
    assert committed_texts(profile) == ["waiting", "durable"]


def test_a_saved_session_is_handed_back_without_decoding_until_another_connection_writes(
    store: ClientStore, profile: Path
) -> None:
    Record.decoded = 0
    saved = Record(b"state 1")
    with store.transaction():
        store.save_session(PEER, 1, saved)
    assert store.session(PEER, 1, Record) is saved
    assert Record.decoded == 0
    # Another process on the same profile (``parley listen``) advances the session.
    with ClientStore.open_profile(profile, clock=ManualClock().now) as other:
        other.store_session(PEER, 1, b"state 2")
    fresh = store.session(PEER, 1, Record)
    assert fresh is not None and fresh.value == b"state 2" and Record.decoded == 1
    assert store.session(PEER, 1, Record) is fresh and Record.decoded == 1
    store.delete_session(PEER, 1)
    assert store.session(PEER, 1, Record) is None


def test_a_rollback_drops_the_decoded_sessions_it_may_have_changed(store: ClientStore) -> None:
    with store.transaction():
        store.save_session(PEER, 1, Record(b"committed"))
    with pytest.raises(RuntimeError), store.transaction(durable=False):
        record = store.session(PEER, 1, Record)
        assert record is not None
        record.value = b"changed in memory, never saved"
        raise RuntimeError("the step failed after changing the record")
    again = store.session(PEER, 1, Record)
    assert again is not None and again.value == b"committed"


def test_writers_of_the_same_moment_share_one_commit(store: ClientStore, profile: Path) -> None:
    commits = GroupCommit(store)

    async def writer(i: int) -> None:
        with store.transaction(durable=False):
            add(store, f"message {i}")
        await commits.wait()
        assert f"message {i}" in committed_texts(profile)  # on disk when wait returns

    async def body() -> None:
        await asyncio.gather(*(writer(i) for i in range(10)))

    asyncio.run(body())
    assert commits.commits == 1
    assert sorted(committed_texts(profile)) == sorted(f"message {i}" for i in range(10))


def test_a_failed_commit_fails_every_waiter_and_keeps_none_of_their_writes(
    store: ClientStore, profile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = GroupCommit(store)

    def broken_disk(self: ClientStore) -> None:
        self._conn.execute("ROLLBACK")  # what ClientStore.commit does when COMMIT fails
        raise sqlite3.OperationalError("disk I/O error")

    async def writer(i: int) -> None:
        with store.transaction(durable=False):
            add(store, f"message {i}")
        await commits.wait()

    async def body() -> list[BaseException | None]:
        return await asyncio.gather(*(writer(i) for i in range(3)), return_exceptions=True)

    monkeypatch.setattr(ClientStore, "commit", broken_disk)
    results = asyncio.run(body())
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    assert committed_texts(profile) == [] and not store.pending


def test_commits_are_spaced_while_sends_are_in_flight_and_immediate_otherwise(
    store: ClientStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def commit_times(busy: bool) -> list[float]:
        commits = GroupCommit(store, lambda: busy)
        loop = asyncio.get_running_loop()
        times = []
        for text in ("one", "two"):
            with store.transaction(durable=False):
                add(store, text)
            await asyncio.wait_for(commits.wait(), 5.0)
            times.append(loop.time())
        return times

    monkeypatch.setattr(group_commit, "BUSY_INTERVAL", 0.2)
    first, second = asyncio.run(commit_times(busy=True))
    assert second - first >= 0.2
    # Not busy: no interval, however long it is (wait_for would time out after 5 s).
    monkeypatch.setattr(group_commit, "BUSY_INTERVAL", 30.0)
    asyncio.run(commit_times(busy=False))


def test_concurrent_sends_share_commits_and_a_failed_commit_lets_no_ciphertext_out(
    server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a live server: 20 sends at once take fewer commits than sends and one decode of
    the session; a send whose commit fails raises and leaves nothing for Bob, and the next
    send still decrypts (the session in memory was dropped with the rollback)."""

    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)

        async def run() -> None:
            await alice.send(BOB, "hello")  # the session is set up
            decodes = 0
            decode = SessionRecord.from_bytes

            def counted(data: bytes) -> SessionRecord:
                nonlocal decodes
                decodes += 1
                return decode(data)

            real_commit = ClientStore.commit
            commits = 0

            def counted_commit(self: ClientStore) -> None:
                nonlocal commits
                commits += self.pending
                real_commit(self)

            monkeypatch.setattr(SessionRecord, "from_bytes", counted)
            monkeypatch.setattr(ClientStore, "commit", counted_commit)
            texts = [f"message {i}" for i in range(20)]
            await asyncio.gather(*(alice.send(BOB, t) for t in texts))
            assert 0 < commits < len(texts)
            assert decodes == 0  # the session saved by the first send, handed back
            got = await drain(bob)
            assert sorted(e.text for e in got if isinstance(e, TextMessage)) == sorted(
                ["hello", *texts]
            )

            def broken_disk(self: ClientStore) -> None:
                self._conn.execute("ROLLBACK")
                raise sqlite3.OperationalError("disk I/O error")

            monkeypatch.setattr(ClientStore, "commit", broken_disk)
            with pytest.raises(sqlite3.OperationalError):
                await alice.send(BOB, "lost with the disk")
            monkeypatch.setattr(ClientStore, "commit", real_commit)
            assert await drain(bob) == []
            await alice.send(BOB, "after the disk came back")
            after = [e.text for e in await drain(bob) if isinstance(e, TextMessage)]
            assert after == ["after the disk came back"]
            history = [m.text for m in alice.store.messages(bob.account_id)]
            assert "lost with the disk" not in history and history[-1] == after[0]

        await closing([alice, bob], run)

    asyncio.run(body())
