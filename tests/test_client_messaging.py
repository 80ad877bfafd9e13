"""Reference client end to end through the real MessagingService: PQXDH + Double Ratchet both
ways, ciphertext-only server storage, device-list repair, sync copies, trust on first use on
receive, receipts and typing, and no double display of a redelivered envelope."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from client.api import (
    DeliveryUpdate,
    Event,
    IdentityChanged,
    ParleyClient,
    QueueEmpty,
    ReceiptEvent,
    SyncedMessage,
    TextMessage,
    TypingEvent,
)
from client.crypto import SessionRecord
from client.store import UntrustedIdentityError
from tests.client_helpers import drain, linked, registered
from tests.conftest import LiveServer

ALICE = "+14155550123"
BOB = "+442079460123"


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextMessage)]


def server_bytes(server: LiveServer) -> bytes:
    """Everything the server has written: the database file and its WAL and shared memory (or
    every row of a PostgreSQL database)."""
    if not server.on_sqlite:
        return repr(server.all_rows()).encode()
    base = Path(server.sqlite_file)
    return b"".join(
        p.read_bytes() for p in (base, Path(f"{base}-wal"), Path(f"{base}-shm")) if p.exists()
    )


def test_two_clients_talk_both_ways_and_the_server_sees_only_ciphertext(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        try:
            secrets = [f"attack at dawn {i} \N{SNOWMAN}" for i in range(6)]
            sent = await alice.send(BOB, secrets[0])
            assert sent.recipient_account_id == bob.account_id and sent.device_ids == (1,)
            await alice.send(BOB, secrets[1])
            # Both envelopes are stored now, encrypted: neither plaintext is on the server.
            stored = server_bytes(server)
            assert bob.account_id.encode() in stored  # we are reading the right files
            assert not any(s.encode() in stored for s in secrets)
            got = await drain(bob)
            assert texts(got) == secrets[:2]
            first = next(e for e in got if isinstance(e, TextMessage))
            assert first.sender_account_id == alice.account_id and first.sender_device_id == 1
            # Bob's first message used one one-time EC and one one-time Kyber prekey: gone.
            assert bob.store.count_one_time_pre_keys() == 99
            assert bob.store.count_one_time_kyber_pre_keys() == 99
            # Replies and further rounds ratchet on; each side decrypts in order.
            await bob.send(alice.account_id, secrets[2])
            await bob.send(ALICE, secrets[3])
            reply = await drain(alice)
            assert texts(reply) == secrets[2:4]
            # Bob answered, so Alice's session stops sending PreKeySignalMessages.
            raw = alice.store.load_session(bob.account_id, 1)
            assert raw is not None
            session = SessionRecord.from_bytes(raw).current
            assert session is not None and session.pending_pre_key is None
            # Alice learns her first two messages were delivered (first device ack).
            delivered = [e for e in reply if isinstance(e, DeliveryUpdate)]
            assert {e.message_id for e in delivered} >= {sent.message_id}
            assert all(e.delivered for e in delivered)
            await alice.send(BOB, secrets[4])
            assert texts(await drain(bob)) == [secrets[4]]
            await bob.send(ALICE, secrets[5])
            assert texts(await drain(alice)) == [secrets[5]]
            # The history shows the whole conversation on both sides, nothing twice.
            assert [m.text for m in alice.store.messages(bob.account_id)] == secrets
            assert [m.text for m in bob.store.messages(alice.account_id)] == secrets
            assert [m.incoming for m in bob.store.messages()] == [
                True,
                True,
                False,
                False,
                True,
                False,
            ]
            stored = server_bytes(server)
            assert not any(s.encode() in stored for s in secrets)
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(body())


def test_missing_extra_and_stale_devices_are_repaired_by_the_client(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        laptop: ParleyClient | None = None
        try:
            assert (await alice.send(BOB, "one")).device_ids == (1,)
            assert texts(await drain(bob)) == ["one"]
            # Missing: Bob links a laptop; Alice's session list only knows device 1.
            laptop = await linked(server, bob, tmp_path / "bob-laptop")
            sent = await alice.send(BOB, "two")
            assert sent.device_ids == (1, 2)
            assert texts(await drain(bob)) == ["two"]
            assert texts(await drain(laptop)) == ["two"]
            # Extra: the laptop is unlinked; Alice still has a session with it.
            await bob.remove_device(2)
            sent = await alice.send(BOB, "three")
            assert sent.device_ids == (1,)
            assert alice.store.session_devices(bob.account_id) == [1]
            assert texts(await drain(bob)) == ["three"]
            # Stale: Bob re-registers (new registration id and a new identity key). The client
            # fetches the new bundle, and trust on first use stops the send...
            await bob.close()
            bob = await registered(server, tmp_path / "bob-reinstalled", BOB)
            with pytest.raises(UntrustedIdentityError):
                await alice.send(BOB, "four")
            # ...until Alice accepts the new key; then the message goes to the new install.
            assert alice.trust_identity(bob.account_id) == [1]
            sent = await alice.send(BOB, "four")
            assert sent.device_ids == (1,)
            assert texts(await drain(bob)) == ["four"]
        finally:
            for c in (alice, bob, laptop):
                if c is not None:
                    await c.close()

    asyncio.run(body())


def test_a_sent_message_shows_on_all_of_the_senders_devices(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        laptop = await linked(server, alice, tmp_path / "alice-laptop")
        bob = await registered(server, tmp_path / "bob", BOB)
        try:
            sent = await alice.send(BOB, "sent from the phone")
            assert sent.synced_device_ids == (2,)
            synced = await drain(laptop)
            copies = [e for e in synced if isinstance(e, SyncedMessage)]
            assert len(copies) == 1
            assert copies[0].destination_account_id == bob.account_id
            assert copies[0].text == "sent from the phone"
            assert copies[0].timestamp_ms == sent.timestamp_ms
            assert copies[0].sender_device_id == 1
            history = laptop.store.messages(bob.account_id)
            assert [(m.text, m.incoming) for m in history] == [("sent from the phone", False)]
            # And the other way: the laptop sends, the phone gets the copy; Bob's reply
            # reaches both of Alice's devices.
            sent = await laptop.send(BOB, "sent from the laptop")
            assert sent.synced_device_ids == (1,)
            assert texts(await drain(bob)) == ["sent from the phone", "sent from the laptop"]
            phone_events = await drain(alice)
            assert [e.text for e in phone_events if isinstance(e, SyncedMessage)] == [
                "sent from the laptop"
            ]
            assert (await bob.send(ALICE, "to both")).device_ids == (1, 2)
            assert texts(await drain(alice)) == ["to both"]
            assert texts(await drain(laptop)) == ["to both"]
        finally:
            for c in (alice, laptop, bob):
                await c.close()

    asyncio.run(body())


def test_a_changed_sender_identity_holds_its_messages_until_trusted(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        try:
            await bob.send(ALICE, "hello")
            assert texts(await drain(alice)) == ["hello"]
            await bob.close()
            bob = await registered(server, tmp_path / "bob-reinstalled", BOB)
            await bob.send(ALICE, "it is really me")
            await bob.send(ALICE, "promise")
            events = await drain(alice)
            assert texts(events) == []
            changed = [e for e in events if isinstance(e, IdentityChanged)]
            assert len(changed) == 1 and changed[0].sender_account_id == bob.account_id
            assert "trust_identity" in changed[0].reason
            # Not acknowledged: the envelopes wait on the server.
            assert texts(await drain(alice)) == []
            assert alice.trust_identity(bob.account_id) == [1]
            assert texts(await drain(alice)) == ["it is really me", "promise"]
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(body())


@pytest.mark.sqlite_only  # restores a copy of the file
def test_a_redelivered_envelope_is_not_shown_twice(server: LiveServer, tmp_path: Path) -> None:
    """Crash between commit and acknowledgement, as the server sees it: the server's database
    is rolled back to before Bob's ack, so the envelopes come again on Bob's next stream."""
    before_ack = tmp_path / "before-ack.db"

    async def send_and_snapshot() -> tuple[ParleyClient, ParleyClient]:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        await alice.send(BOB, "only once, please")
        await alice.send(BOB, "me too")
        with (
            sqlite3.connect(server.sqlite_file) as src,
            sqlite3.connect(before_ack) as dst,
        ):
            src.backup(dst)
        assert texts(await drain(bob)) == ["only once, please", "me too"]
        await alice.close()
        await bob.close()
        return alice, bob

    asyncio.run(send_and_snapshot())
    server.stop()
    db = Path(server.sqlite_file)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(before_ack, db)
    server.start()

    def queued_for_bob() -> int:
        # Read-only peek at the server's queue, to be sure the test really redelivers.
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM envelopes").fetchone()[0])

    async def receive_again() -> None:
        bob = ParleyClient.open(tmp_path / "bob", server=server.target, clock=server.clock)
        try:
            assert queued_for_bob() == 2
            events = [e async for e in bob.receive(until_empty=True)]
            assert texts(events) == [] and isinstance(events[-1], QueueEmpty)
            assert queued_for_bob() == 0
            # They were acknowledged this time: the queue is empty for good.
            assert [e async for e in bob.receive(until_empty=True)] == [QueueEmpty()]
            assert [m.text for m in bob.store.messages()] == ["only once, please", "me too"]
        finally:
            await bob.close()

    asyncio.run(receive_again())


def test_receipts_and_typing_indicators(server: LiveServer, tmp_path: Path) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        try:
            sent = await alice.send(BOB, "did you read this?")
            assert texts(await drain(bob)) == ["did you read this?"]
            await bob.send_receipt(ALICE, [sent.timestamp_ms], read=True)
            receipts = [e for e in await drain(alice) if isinstance(e, ReceiptEvent)]
            assert len(receipts) == 1 and receipts[0].read
            assert receipts[0].timestamps_ms == (sent.timestamp_ms,)
            # Typing is online-only: nobody listening, nothing stored.
            assert not await bob.send_typing(ALICE)
            # With Alice's stream open, it arrives at once.
            events: asyncio.Queue[Event] = asyncio.Queue()

            async def listen() -> None:
                async for event in alice.receive():
                    await events.put(event)

            task = asyncio.create_task(listen())
            try:
                assert isinstance(await asyncio.wait_for(events.get(), 10), QueueEmpty)
                assert await bob.send_typing(ALICE, started=True)
                typing = await asyncio.wait_for(events.get(), 10)
                assert isinstance(typing, TypingEvent) and typing.started
                assert typing.sender_account_id == bob.account_id
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(body())


def test_a_first_message_built_on_a_rotated_signed_prekey_still_decrypts(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        try:
            # Alice fetches Bob's bundle, then Bob rotates before her first message arrives.
            assert await alice.start_sessions(BOB) == [1]
            server.clock.advance(8 * 24 * 3600)
            assert await bob.rotate_signed_prekey()
            await alice.send(BOB, "sent on last week's bundle")
            assert texts(await drain(bob)) == ["sent on last week's bundle"]
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(body())


def test_concurrent_first_sends_to_a_peer_set_its_session_up_once(
    server: LiveServer, tmp_path: Path
) -> None:
    """Ten sends to a peer with no session yet, all at once: one bundle fetch (one one-time
    prekey of the peer spent), every message delivered, in one session."""

    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        try:
            sent = [f"at once {i}" for i in range(10)]
            await asyncio.gather(*(alice.send(BOB, text) for text in sent))
            got = texts(await drain(bob))
            assert sorted(got) == sorted(sent)
            # Each fetch would have spent one of Bob's one-time prekeys (and Kyber prekeys).
            assert bob.store.count_one_time_pre_keys() == 99
            assert bob.store.count_one_time_kyber_pre_keys() == 99
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(body())
