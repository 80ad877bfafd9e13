"""Crash test of metering: SIGKILL the server again and again while a business sends and a user
acknowledges.

After each restart, from the database the dead server left and from the business's event
stream: the ledger reconciles (available + reserved = top-ups - captures, reserved = what the
pending charges hold), no message is charged twice, every delivered billable message is charged
exactly once and no other one is, and the status event stream resumes from the client's cursor
with no gap and no duplicate, each message's events in order.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc import aio
from parley.v1 import account_pb2 as apb
from parley.v1 import (
    account_pb2_grpc,
    billing_pb2_grpc,
    key_pb2_grpc,
    messaging_pb2_grpc,
)
from parley.v1 import billing_pb2 as bpb
from parley.v1 import messaging_pb2 as mpb

from tests.keys_helper import DeviceKeyMaker
from tests.test_crash import free_port
from tests.test_metering import ALL_BILLABLE
from tests.tools import server_process

KILLS = 5
BATCH = 25
ADMIN = "crash-operator-token"
SHOP, USER = "+14155550170", "+14155550171"
NUMBERS = {SHOP: "170170", USER: "171171"}
# Free-form replies cost a cent everywhere, so every message the test sends is billable.
PRICES = ALL_BILLABLE
Metadata = tuple[tuple[str, str], ...]


@contextmanager
def server(database: Path, port: int, prices: Path) -> Iterator[subprocess.Popen[bytes]]:
    numbers = ",".join(f"{n}={c}" for n, c in NUMBERS.items())
    with server_process(
        "--host", "127.0.0.1", "--port", str(port), "--database", str(database),
        "--send-rate", "1000000/60s", "--business-send-rate", "1000000/60s",
        "--admin-token", ADMIN, "--price-file", str(prices), "--billing", "on",
        env={"PARLEY_TEST_NUMBERS": numbers},
    ) as (proc, _):  # fmt: skip
        yield proc


async def register(channel: aio.Channel, number: str, kind: int) -> tuple[str, Metadata, int]:
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    started = await accounts.StartVerification(apb.StartVerificationRequest(phone_number=number))
    done = await accounts.CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=started.verification_id,
            code=NUMBERS[number],
            device_name="d",
            account_kind=kind,  # type: ignore[arg-type]
        )
    )
    metadata = (("authorization", f"Bearer {done.auth_token}"),)
    maker = DeviceKeyMaker()
    await key_pb2_grpc.KeyServiceStub(channel).UploadPreKeys(
        maker.first_upload(pre_keys=1, kyber=1), metadata=metadata
    )
    return done.account_id, metadata, maker.registration_id


def _send(to: str, registration_id: int) -> mpb.SendMessageRequest:
    return mpb.SendMessageRequest(
        request_id=str(uuid.uuid4()),
        recipient_account_id=to,
        messages=[
            mpb.OutgoingMessage(
                device_id=1,
                registration_id=registration_id,
                content_type=mpb.CONTENT_TYPE_WHISPER,
                content=b"ciphertext",
            )
        ],
    )


class Books:
    """What the business's client saw: its event stream, resumed from its own cursor."""

    def __init__(self) -> None:
        self.cursor = 0
        self.sequences: list[int] = []
        self.kinds: dict[int, list[int]] = {}

    async def follow(self, channel: aio.Channel, metadata: Metadata, stop: asyncio.Event) -> None:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        call = stub.StreamStatusEvents(
            bpb.StreamStatusEventsRequest(cursor=self.cursor), metadata=metadata
        )
        try:
            async for item in call:
                if item.HasField("event"):
                    e = item.event
                    self.sequences.append(e.sequence)
                    self.kinds.setdefault(e.message_id, []).append(e.kind)
                    self.cursor = e.sequence
                elif stop.is_set():
                    return
        except aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
        finally:
            call.cancel()


def check_the_books(database: Path) -> dict[str, int]:
    """The invariants, read from the file the killed server left."""
    db = sqlite3.connect(database)
    try:
        (topped,) = db.execute(
            "SELECT coalesce(sum(amount), 0) FROM ledger WHERE kind = 1"
        ).fetchone()
        (captured,) = db.execute(
            "SELECT coalesce(sum(amount), 0) FROM ledger WHERE kind = 3"
        ).fetchone()
        available, reserved = db.execute("SELECT available, reserved FROM balances").fetchone()
        assert available + reserved == topped - captured
        (held,) = db.execute(
            "SELECT coalesce(sum(amount), 0) FROM charges WHERE state = 0"
        ).fetchone()
        assert reserved == held
        twice = db.execute(
            "SELECT message_id FROM ledger WHERE kind = 3 GROUP BY message_id HAVING count(*) > 1"
        ).fetchall()
        assert not twice, f"charged twice: {twice}"
        wrong = db.execute(
            "SELECT m.message_id, m.state, c.state, (SELECT count(*) FROM ledger l"
            "  WHERE l.message_id = m.message_id AND l.kind = 3) AS captures"
            " FROM messages m JOIN charges c ON c.message_id = m.message_id"
            " WHERE (m.state = 1) != (captures = 1) OR (m.state = 1) != (c.state = 1)"
        ).fetchall()
        assert not wrong, f"delivered and charged disagree: {wrong[:5]}"
        (delivered,) = db.execute("SELECT count(*) FROM messages WHERE state = 1").fetchone()
        return {"delivered": int(delivered), "captured": int(captured)}
    finally:
        db.close()


def test_sigkill_during_billed_sends_and_acks(tmp_path: Path) -> None:
    database = tmp_path / "billing-crash.db"
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    port = free_port()
    target = f"127.0.0.1:{port}"
    books = Books()
    seen: list[dict[str, int]] = []
    ids: dict[str, tuple[str, Metadata, int]] = {}

    async def setup() -> None:
        async with aio.insecure_channel(target) as channel:
            ids["shop"] = await register(channel, SHOP, apb.ACCOUNT_KIND_BUSINESS)
            ids["user"] = await register(channel, USER, apb.ACCOUNT_KIND_PERSON)
            await billing_pb2_grpc.BillingServiceStub(channel).TopUp(
                bpb.TopUpRequest(
                    business_account_id=ids["shop"][0],
                    amount_micros=10_000_000_000,
                    reference="crash-test",
                ),
                metadata=(("authorization", f"Bearer {ADMIN}"),),
            )

    async def load(proc: subprocess.Popen[bytes], sends_before_kill: int) -> None:
        shop, shop_md, shop_reg = ids["shop"]
        user, user_md, user_reg = ids["user"]
        async with aio.insecure_channel(target) as channel:
            messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
            # The user writes: the window opens, so the shop may reply free-form.
            await messaging.SendMessage(_send(shop, shop_reg), metadata=user_md)
            stop = asyncio.Event()
            following = asyncio.ensure_future(books.follow(channel, shop_md, stop))
            acking = asyncio.ensure_future(_ack_forever(channel, user_md))
            sent = 0
            try:
                while proc.poll() is None:
                    batch = [_send(user, user_reg) for _ in range(BATCH)]
                    try:
                        await messaging.SendMessages(
                            mpb.SendMessagesRequest(requests=batch), metadata=shop_md
                        )
                    except aio.AioRpcError:
                        break
                    sent += BATCH
                    if sent >= sends_before_kill:
                        proc.send_signal(signal.SIGKILL)
            finally:
                stop.set()
                for task in (following, acking):
                    task.cancel()
                await asyncio.gather(following, acking, return_exceptions=True)

    with server(database, port, prices):
        asyncio.run(setup())
    for round_ in range(KILLS):
        with server(database, port, prices) as proc:
            asyncio.run(load(proc, 150 + 50 * round_))
            proc.wait(10)
        seen.append(check_the_books(database))
    # A last, clean run: the stream resumes from the cursor and brings what the kills cut off.
    with server(database, port, prices):

        async def catch_up() -> None:
            async with aio.insecure_channel(target) as channel:
                stop = asyncio.Event()
                stop.set()  # return at the caught_up marker
                await books.follow(channel, ids["shop"][1], stop)

        asyncio.run(catch_up())
    final = check_the_books(database)
    assert final["delivered"] > 0 and final["captured"] == final["delivered"] * 10_000
    assert books.sequences == list(range(1, len(books.sequences) + 1)), "a gap or a duplicate"
    for kinds in books.kinds.values():
        assert kinds[0] == bpb.STATUS_EVENT_KIND_SENT and len(kinds) <= 2, kinds
    assert (
        sum(1 for k in books.kinds.values() if bpb.STATUS_EVENT_KIND_DELIVERED in k)
        == (final["delivered"])
    )
    assert [s["delivered"] for s in seen] == sorted(s["delivered"] for s in seen)


async def _ack_forever(channel: aio.Channel, md: Metadata) -> None:
    messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
    call = messaging.ReceiveMessages(mpb.ReceiveMessagesRequest(), metadata=md)
    try:
        async for event in call:
            envelopes = event.envelopes.envelopes
            if envelopes:
                await messaging.AcknowledgeMessages(
                    mpb.AcknowledgeMessagesRequest(envelope_ids=[e.envelope_id for e in envelopes]),
                    metadata=md,
                )
    except aio.AioRpcError:
        return
