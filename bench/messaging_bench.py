"""Messaging throughput and latency against a real `parley-server` process over loopback.

The server runs in its own process (its own interpreter and GIL) on a temporary SQLite file with
the default durability (synchronous=FULL); the clients run in this process with grpc.aio.

* `throughput`: delivered messages/s, counting sent → committed → streamed → acknowledged: every
  sender sends batches (SendMessages, 100 per call, a few calls in flight) to its receiver,
  which streams and acknowledges in batches; the clock stops at the last acknowledgement.
* `latency`: one sender offers single SendMessage calls at a fixed rate; send-to-receive latency
  is measured on the shared monotonic clock.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
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

from tests import tools
from tests.keys_helper import DeviceKeyMaker

TEST_CODE = "123456"
PAYLOAD_BYTES = 256
BATCH = 500
IN_FLIGHT = 4
ACK_INTERVAL = 0.05


def test_number(i: int) -> str:
    return f"+1555{i:07d}"


@dataclass
class Server:
    port: int
    database: Path | str  # a SQLite file or a postgresql:// URL
    pid: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def server_process(database: Path | str, accounts: int, *extra: str) -> Iterator[Server]:
    """A real `parley-server` process on loopback with `accounts` test numbers."""
    numbers = ",".join(f"{test_number(i)}={TEST_CODE}" for i in range(accounts))
    with tools.server_process(
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--database",
        str(database),
        "--send-rate",
        "100000000/60s",
        "--bundle-rate",
        "100000/60s",
        *extra,
        env={"PARLEY_TEST_NUMBERS": numbers},
    ) as (proc, port):
        yield Server(port, database, proc.pid)


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


async def _sender(channel: aio.Channel, me: Account, work: list[mpb.SendMessagesRequest]) -> None:
    messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
    queue = list(reversed(work))

    async def worker() -> None:
        while queue:
            reply = await messaging.SendMessages(queue.pop(), metadata=me.metadata)
            bad = [r for r in reply.results if r.code != 0]
            if bad:
                raise RuntimeError(f"send failed: {bad[0].message}")

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


async def _receiver(channel: aio.Channel, me: Account, count: int, ready: asyncio.Event) -> None:
    messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
    call = messaging.ReceiveMessages(mpb.ReceiveMessagesRequest(), metadata=me.metadata)
    received = 0
    acks: list[asyncio.Task[mpb.AcknowledgeMessagesResponse]] = []
    async for event in call:
        if event.HasField("queue_empty"):
            ready.set()
            continue
        envelopes = event.envelopes.envelopes
        if not envelopes:
            continue
        received += len(envelopes)
        acks.append(
            asyncio.ensure_future(
                messaging.AcknowledgeMessages(
                    mpb.AcknowledgeMessagesRequest(envelope_ids=[e.envelope_id for e in envelopes]),
                    metadata=me.metadata,
                )
            )
        )
        if received >= count:
            break
    await asyncio.gather(*acks)
    call.cancel()


@dataclass
class Pair:
    sender: Account
    receiver: Account


async def delivered_per_second(
    server: Server, pairs: Sequence[Pair], per_pair: int, template_id: str = ""
) -> float:
    """Delivered (acknowledged) messages per second across all pairs (sent from `template_id`
    when given: the senders are then a business)."""
    return await delivered_per_second_across([server], pairs, per_pair, template_id)


async def delivered_per_second_across(
    servers: Sequence[Server], pairs: Sequence[Pair], per_pair: int, template_id: str = ""
) -> float:
    """`delivered_per_second` with the pairs spread over several replicas of one database,
    round-robin: pair i sends and receives through replica i mod n, as a load balancer that
    balances connections would place them."""
    channels = [aio.insecure_channel(s.target) for s in servers]
    try:
        work = [batches(p.receiver, per_pair, template_id) for p in pairs]
        readies = [asyncio.Event() for _ in pairs]
        on = [channels[i % len(channels)] for i in range(len(pairs))]
        receivers = [
            asyncio.ensure_future(_receiver(ch, p.receiver, per_pair, r))
            for ch, p, r in zip(on, pairs, readies, strict=True)
        ]
        await asyncio.gather(*(r.wait() for r in readies))
        started = time.perf_counter()
        await asyncio.gather(
            *(_sender(ch, p.sender, w) for ch, p, w in zip(on, pairs, work, strict=True))
        )
        await asyncio.gather(*receivers)
        return len(pairs) * per_pair / (time.perf_counter() - started)
    finally:
        for ch in channels:
            await ch.close(None)


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

    pipe.send(asyncio.run(main()))


async def latency(server: Server, pair: Pair, rate: float, seconds: float) -> dict[str, float]:
    """p50/p99 send-to-receive latency (ms) of sends offered one by one at `rate` per second.

    The sender keeps one SendMessageStream open (a stream message per send); the receiver runs
    in another process, as another device would.
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
            for i in range(count):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                stamp = struct.pack(">d", time.monotonic())
                request = send_request(pair.receiver, stamp + padding)
                await sends.write(mpb.SendMessageStreamRequest(request=request))
            await sends.done_writing()
            await reader
        if failures:
            raise RuntimeError(f"{len(failures)} sends failed: {failures[0]}")
        if not ours.poll(60):
            raise RuntimeError("the receiving process did not get every message")
        latencies = sorted(ours.recv())
    finally:
        receiver.join(10)
        if receiver.is_alive():
            receiver.kill()
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "offered_per_s": rate,
    }


BENCH_ADMIN_TOKEN = "bench-operator-token"


async def business_pair(server: Server, first: int) -> tuple[Pair, str]:
    """A business with an approved UTILITY template, and a user opted in to UTILITY: the pair
    and the template id (the server must run with --admin-token BENCH_ADMIN_TOKEN)."""
    async with aio.insecure_channel(server.target) as channel:
        shop = await register(channel, first, apb.ACCOUNT_KIND_BUSINESS)
        user = await register(channel, first + 1)
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
        await admin_pb2_grpc.AdminServiceStub(channel).ReviewTemplate(
            adm.ReviewTemplateRequest(
                template_id=template_id, decision=adm.REVIEW_DECISION_APPROVE
            ),
            metadata=(("authorization", f"Bearer {BENCH_ADMIN_TOKEN}"),),
        )
        await business.OptIn(
            bpb.OptInRequest(
                business_account_id=shop.account_id, categories=[mpb.MESSAGE_CATEGORY_UTILITY]
            ),
            metadata=user.metadata,
        )
        # Every template send is billed (UTILITY outside the window): its price is reserved on
        # send and captured on the ack, so the business needs money for the whole run.
        await billing_pb2_grpc.BillingServiceStub(channel).TopUp(
            blpb.TopUpRequest(
                business_account_id=shop.account_id,
                amount_micros=1_000_000 * 1_000_000,
                reference="bench",
            ),
            metadata=(("authorization", f"Bearer {BENCH_ADMIN_TOKEN}"),),
        )
    return Pair(shop, user), template_id


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
