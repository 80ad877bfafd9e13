"""A real `parley-server` process over loopback, its accounts, and send-to-receive latency.

The server runs in its own process (its own interpreter and GIL) on a temporary SQLite file with
the default durability (synchronous=FULL); the clients run in this process with grpc.aio.
Delivered throughput (with the DELIVERED status back at the sender) is `bench.delivery`'s.

* `latency`: one sender offers single sends on a SendMessageStream at a fixed rate; the
  receiver, in another process, measures send-to-receive latency on the shared monotonic clock.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import sqlite3
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from grpc import aio
from parley.v1 import account_pb2 as apb
from parley.v1 import (
    account_pb2_grpc,
    admin_pb2_grpc,
    billing_pb2_grpc,
    business_pb2_grpc,
    key_pb2_grpc,
    messaging_pb2_grpc,
)
from parley.v1 import admin_pb2 as adm
from parley.v1 import billing_pb2 as blpb
from parley.v1 import business_pb2 as bpb
from parley.v1 import messaging_pb2 as mpb

from bench.sizes import BATCH, PAYLOAD_BYTES
from bench.stats import latency_summary
from server import watchdog
from tests import tools
from tests.keys_helper import DeviceKeyMaker

TEST_CODE = "123456"
IN_FLIGHT = 4
ACK_INTERVAL = 0.05


def test_number(i: int) -> str:
    return f"+1555{i:07d}"


@dataclass
class Server:
    port: int
    database: Path | str  # a SQLite file or a postgresql:// URL
    pid: int = 0
    log: Path | None = None  # its JSON log lines (stderr)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


# The limits of every bench server: the load generators send far past a client's rates.
LOAD_FLAGS = ("--send-rate", "100000000/60s", "--bundle-rate", "100000/60s")


@contextmanager
def server_process(database: Path | str, accounts: int, *extra: str) -> Iterator[Server]:
    """A real `parley-server` process on loopback with `accounts` test numbers."""
    numbers = ",".join(f"{test_number(i)}={TEST_CODE}" for i in range(accounts))
    log = Path(tempfile.mkdtemp(prefix="parley-bench-log-")) / "server.log"
    with tools.server_process(
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--database",
        str(database),
        *LOAD_FLAGS,
        *extra,
        env={"PARLEY_TEST_NUMBERS": numbers},
        log=log,
    ) as (proc, port):
        try:
            yield Server(port, database, proc.pid, log)
        finally:
            shutil.rmtree(log.parent, ignore_errors=True)


@dataclass
class Account:
    account_id: str
    metadata: tuple[tuple[str, str], ...]
    registration_id: int


async def register(
    channel: aio.Channel, i: int, kind: apb.AccountKind.ValueType = apb.ACCOUNT_KIND_PERSON
) -> Account:
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    started = await accounts.StartVerification(
        apb.StartVerificationRequest(phone_number=test_number(i))
    )
    done = await accounts.CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=started.verification_id,
            code=TEST_CODE,
            device_name="bench",
            account_kind=kind,
        )
    )
    metadata = (("authorization", f"Bearer {done.auth_token}"),)
    maker = DeviceKeyMaker(registration_id=1 + i)
    await key_pb2_grpc.KeyServiceStub(channel).UploadPreKeys(
        maker.first_upload(pre_keys=1, kyber=1), metadata=metadata
    )
    return Account(done.account_id, metadata, maker.registration_id)


def send_request(to: Account, content: bytes, template_id: str = "") -> mpb.SendMessageRequest:
    return mpb.SendMessageRequest(
        business=mpb.BusinessMetadata(template_id=template_id),
        request_id=str(uuid.uuid4()),
        recipient_account_id=to.account_id,
        messages=[
            mpb.OutgoingMessage(
                device_id=1,
                registration_id=to.registration_id,
                content_type=mpb.CONTENT_TYPE_WHISPER,
                content=content,
            )
        ],
        client_timestamp_ms=int(time.time() * 1000),
    )


def batches(to: Account, count: int, template_id: str = "") -> list[mpb.SendMessagesRequest]:
    """The server path's input, made before the clock starts: pre-encrypted (random) payloads."""
    return [
        mpb.SendMessagesRequest(
            requests=[
                send_request(to, os.urandom(PAYLOAD_BYTES), template_id)
                for _ in range(min(BATCH, count - first))
            ]
        )
        for first in range(0, count, BATCH)
    ]


@dataclass
class Pair:
    sender: Account
    receiver: Account


def cpu_seconds(pids: Sequence[int], children_of: Sequence[int] = ()) -> float:
    """CPU time (user + system) so far of `pids` and of the children of `children_of` (the
    backends of a PostgreSQL postmaster), from /proc: where the time of a run went."""
    tick = os.sysconf("SC_CLK_TCK")
    wanted = set(pids)
    parents = set(children_of)
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        pid, ppid = int(entry.name), int(fields[1])
        if pid in wanted or pid in parents or ppid in parents:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _receive_latencies(
    target: str, metadata: tuple[tuple[str, str], ...], count: int, pipe: Connection
) -> None:
    """The receiving device, in its own process: latency = arrival - the send time in the payload.

    Acks are not on the latency path: like a client, it sends them in batches (at most every
    ACK_INTERVAL). time.monotonic() is the system-wide monotonic clock, shared by processes.
    """

    async def main() -> list[float]:
        latencies: list[float] = []
        async with aio.insecure_channel(target) as channel:
            messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
            pending: list[int] = []
            acks: list[asyncio.Future[mpb.AcknowledgeMessagesResponse]] = []
            last_ack = time.monotonic()
            call = messaging.ReceiveMessages(mpb.ReceiveMessagesRequest(), metadata=metadata)
            async for event in call:
                now = time.monotonic()
                if event.HasField("queue_empty"):
                    pipe.send("ready")
                    continue
                for e in event.envelopes.envelopes:
                    latencies.append(now - struct.unpack(">d", e.content[:8])[0])
                    pending.append(e.envelope_id)
                if pending and (len(pending) >= BATCH or now - last_ack >= ACK_INTERVAL):
                    acks.append(
                        asyncio.ensure_future(
                            messaging.AcknowledgeMessages(
                                mpb.AcknowledgeMessagesRequest(envelope_ids=list(pending)),
                                metadata=metadata,
                            )
                        )
                    )
                    pending.clear()
                    last_ack = now
                if len(latencies) >= count:
                    break
            await asyncio.gather(*acks)
            call.cancel()
        return latencies

    async def watched() -> tuple[list[float], float]:
        """The latencies, and how late this process's own event loop ran a 5 ms timer at
        most: a receiver held up (its collector, its CPU) adds to every latency meanwhile."""
        late = [0.0]

        def seen(lateness: float) -> None:
            late[0] = max(late[0], lateness)

        # The server's watcher, logging nothing (stall 0), every lateness kept.
        ticker = asyncio.ensure_future(watchdog.watch_loop(tick=0.005, stall=0, seen=seen))
        try:
            return await main(), late[0]
        finally:
            ticker.cancel()

    pipe.send(asyncio.run(watched()))


async def latency(server: Server, pair: Pair, rate: float, seconds: float) -> dict[str, Any]:
    """Send-to-receive latency (p50/p99/p99.9 in ms, and its CDF) of sends offered one by one
    at `rate` per second for `seconds`.

    The sender keeps one SendMessageStream open (a stream message per send); the receiver runs
    in another process, as another device would. Each send is stamped with the moment it was
    due, not the moment it went out: a sender held back (by flow control, or by a busy core)
    does not hide that wait from the figure.
    """
    count = int(rate * seconds)
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    receiver = context.Process(
        target=_receive_latencies, args=(server.target, pair.receiver.metadata, count, theirs)
    )
    receiver.start()
    try:
        if not ours.poll(60) or ours.recv() != "ready":
            raise RuntimeError("the receiving process did not start")
        async with aio.insecure_channel(server.target) as channel:
            messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
            sends = messaging.SendMessageStream(metadata=pair.sender.metadata)  # type: ignore[call-arg]
            failures: list[str] = []

            async def results() -> None:
                async for response in sends:
                    if response.result.code != 0:
                        failures.append(response.result.message)

            reader = asyncio.ensure_future(results())
            start = time.monotonic()
            padding = os.urandom(PAYLOAD_BYTES - 8)
            late = 0.0  # how far behind its schedule the sender itself fell, at most
            for i in range(count):
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    late = max(late, -delay)
                stamp = struct.pack(">d", due)
                request = send_request(pair.receiver, stamp + padding)
                await sends.write(mpb.SendMessageStreamRequest(request=request))
            await sends.done_writing()
            await reader
        if failures:
            raise RuntimeError(f"{len(failures)} sends failed: {failures[0]}")
        if not ours.poll(60):
            raise RuntimeError("the receiving process did not get every message")
        latencies, receiver_late = ours.recv()
    finally:
        receiver.join(10)
        if receiver.is_alive():
            receiver.kill()
    return {
        **latency_summary(latencies),
        "offered_per_s": rate,
        "sender_late_max_ms": late * 1e3,
        "receiver_loop_late_max_ms": receiver_late * 1e3,
        "server_warnings": warnings_in(server.log),
    }


# What the server logs when something held it up (server.watchdog, server.storage.database).
STALL_LOGS = ("slow write", "slow checkpoint", "event loop blocked", "garbage collection")


def warnings_in(log: Path | None, limit: int = 20) -> list[str]:
    """The first `limit` of the server's stall warnings in its log: where a latency spike's
    time went, if it went inside the server."""
    if log is None or not log.exists():
        return []
    found: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        msg = str(record.get("msg", ""))
        if msg.startswith(STALL_LOGS):
            found.append(f"{record.get('ts', '')} {msg}")
            if len(found) >= limit:
                break
    return found


BENCH_ADMIN_TOKEN = "bench-operator-token"


BUSINESS_FLAGS = (
    "--admin-token",
    BENCH_ADMIN_TOKEN,
    "--business-send-rate",
    "100000000/60s",
    "--business-tiers",
    "100000,unlimited",
)
"""A server for business sends: the operator token, and the business's rate and tier limits
raised (their defaults, 80/s and 250 new users a day, are policy, not the path's cost)."""


async def business_pair(server: Server, first: int) -> tuple[Pair, str]:
    """A business with an approved UTILITY template, and a user opted in to UTILITY: the pair
    and the template id (the server must run with BUSINESS_FLAGS)."""
    async with aio.insecure_channel(server.target) as channel:
        shop = await register(channel, first, apb.ACCOUNT_KIND_BUSINESS)
        user = await register(channel, first + 1)
        template_id = await ready_business(channel, shop, [user])
    return Pair(shop, user), template_id


async def ready_business(channel: aio.Channel, shop: Account, users: Sequence[Account]) -> str:
    """Make `shop` able to send a template to `users`: an approved UTILITY template (its id is
    returned), each user opted in to UTILITY, and money for every send of a run."""
    business = business_pb2_grpc.BusinessServiceStub(channel)
    created = await business.CreateTemplate(
        bpb.CreateTemplateRequest(
            name="bench_notice",
            language="en",
            category=mpb.MESSAGE_CATEGORY_UTILITY,
            content=bpb.TemplateContent(body="Your order {{1}} has shipped."),
        ),
        metadata=shop.metadata,
    )
    template_id = created.template.template_id
    operator = (("authorization", f"Bearer {BENCH_ADMIN_TOKEN}"),)
    await admin_pb2_grpc.AdminServiceStub(channel).ReviewTemplate(
        adm.ReviewTemplateRequest(template_id=template_id, decision=adm.REVIEW_DECISION_APPROVE),
        metadata=operator,
    )
    gate = asyncio.Semaphore(32)

    async def opt_in(user: Account) -> None:
        async with gate:
            await business.OptIn(
                bpb.OptInRequest(
                    business_account_id=shop.account_id,
                    categories=[mpb.MESSAGE_CATEGORY_UTILITY],
                ),
                metadata=user.metadata,
            )

    await asyncio.gather(*(opt_in(u) for u in users))
    # Every template send is billed (UTILITY outside the window): its price is reserved on
    # send and captured on the ack, so the business needs money for the whole run.
    await billing_pb2_grpc.BillingServiceStub(channel).TopUp(
        blpb.TopUpRequest(
            business_account_id=shop.account_id,
            amount_micros=1_000_000 * 1_000_000,
            reference="bench",
        ),
        metadata=operator,
    )
    return template_id


async def make_pairs(server: Server, n: int, first: int = 0) -> list[Pair]:
    async with aio.insecure_channel(server.target) as channel:
        accounts = [await register(channel, first + i) for i in range(2 * n)]
    return [Pair(accounts[2 * i], accounts[2 * i + 1]) for i in range(n)]


def prefill(database: Path, envelopes: int, recipient: Account, sender: Account) -> None:
    """Store `envelopes` undelivered messages for a parked recipient, straight into the file.

    Each is what a send leaves behind: a pending message row (with its random request id in the
    idempotency index) and its envelope. Written through the store's own SQL in large
    transactions (the send path would take minutes for a million); ids are time-ordered like
    the server's, older than anything sent later.
    """
    from server.domain.ids import IdGenerator
    from server.domain.model import EnvelopeRow, MessageRow, MessageState
    from server.storage.transaction import SqliteTransaction

    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    store = SqliteTransaction(conn)
    body = os.urandom(PAYLOAD_BYTES)
    ids = IdGenerator(store.max_message_id())
    now = time.time() - 3600
    chunk = 50_000
    for first in range(0, envelopes, chunk):
        messages, rows = [], []
        for _ in range(min(chunk, envelopes - first)):
            message_id = ids.block(now, 2)
            a, b, r = sender.account_id, recipient.account_id, str(uuid.uuid4())
            messages.append(
                MessageRow(message_id, a, 1, b, r, os.urandom(32), now, MessageState.PENDING)
            )
            rows.append(EnvelopeRow(message_id + 1, b, 1, message_id, a, 1, now, 0, 2, body, 0, ""))
        conn.execute("BEGIN")
        store.insert_messages(messages)
        store.insert_envelopes(rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def temp_database() -> Path:
    return Path(tempfile.mkdtemp(prefix="parley-bench-")) / "bench.db"
