"""Ceilings measured in the same run, each with the shape of the load Parley's figure carries.

* `grpc_ceilings`: a bare grpc.aio server (bench.echo_server) streaming the same writes as
  Parley's stream under load (BATCH envelopes of PAYLOAD_BYTES per write), and answering unary
  calls the size of a full SendMessages call, IN_FLIGHT at a time as the bench's senders do.
  Both count messages, not writes or calls, so they compare with delivered messages directly.
* `storage_ceiling`: what a delivered message costs the storage, and nothing else: the store's
  own SQL for its rows on the server's schema, BATCH messages per transaction, in the three
  transactions a delivery takes (send: message + envelope; ack: envelope deleted, message
  settled, status queued; status ack: status deleted), synchronous=FULL as the server runs.
  Only the transactions are timed. The server may still exceed it: its writer commits the
  jobs queued meanwhile together (one fsync for several of these transactions).
* `commit_latency`: the bare fsync'd commit of one row (WAL, synchronous=FULL) in the folder
  the servers' databases live in: the disk's own latency, the floor under any durable send.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from grpc import aio
from parley.v1 import messaging_pb2 as mpb

from bench.accounts import create_database, prefill_accounts
from bench.delivery import request_id, run_prefix
from bench.messaging_bench import IN_FLIGHT, Account, batches, temp_database
from bench.sizes import BATCH, PAYLOAD_BYTES
from bench.stats import latency_summary
from server.domain.ids import IdGenerator
from server.domain.model import EnvelopeRow, MessageRow, MessageState, StatusRow
from server.storage.database import connect
from server.storage.transaction import SqliteTransaction

T = TypeVar("T")
PENDING = int(MessageState.PENDING)
DELIVERED = int(MessageState.DELIVERED)


def _identity(b: bytes) -> bytes:
    return b


def grpc_ceilings(stream_writes: int, unary_calls: int) -> dict[str, float]:
    """Messages/s of the bare batched stream and of the SendMessages-sized unary echo."""
    with subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server"], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        try:
            return asyncio.run(_measure(port, stream_writes, unary_calls))
        finally:
            proc.terminate()
            proc.wait(10)


async def _measure(port: int, stream_writes: int, unary_calls: int) -> dict[str, float]:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.unary_stream(
            "/bench.Echo/Stream",
            request_serializer=_identity,
            response_deserializer=mpb.ReceiveMessagesResponse.FromString,
        )
        unary = channel.unary_unary(
            "/bench.Echo/Unary",
            request_serializer=mpb.SendMessagesRequest.SerializeToString,
            response_deserializer=mpb.SendMessagesResponse.FromString,
        )
        async for _ in stream(struct.pack(">I", 10)):  # warm-up
            pass
        started = time.perf_counter()
        received = 0
        async for event in stream(struct.pack(">I", stream_writes)):
            received += len(event.envelopes.envelopes)
        stream_rate = received / (time.perf_counter() - started)

        # The same requests as the bench's senders make (random payloads, fresh request ids).
        anyone = Account(str(uuid.uuid4()), (), 1)
        work = batches(anyone, unary_calls * BATCH)
        await unary(work[0])

        async def caller() -> None:
            while work:
                await unary(work.pop())

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(IN_FLIGHT)))
        unary_rate = unary_calls * BATCH / (time.perf_counter() - started)
    return {"grpc_stream_msgs_per_s": stream_rate, "grpc_unary_msgs_per_s": unary_rate}


def storage_ceiling(messages: int) -> float:
    """Delivered messages/s at the storage level: BATCH per transaction, three transactions."""
    database = temp_database()
    try:
        create_database(database)
        sender, recipient = prefill_accounts(database, 2)
        conn = connect(database, synchronous="FULL")
        ids = IdGenerator(SqliteTransaction(conn).max_message_id())
        body = os.urandom(PAYLOAD_BYTES)
        prefix = run_prefix()
        elapsed = 0.0
        for first in range(0, messages, BATCH):
            elapsed += _deliver_batch(
                conn,
                ids,
                sender.account_id,
                recipient.account_id,
                body,
                prefix,
                first,
                min(BATCH, messages - first),
            )
        conn.close()
    finally:
        shutil.rmtree(database.parent, ignore_errors=True)
    return messages / elapsed


def _deliver_batch(
    conn: sqlite3.Connection,
    ids: IdGenerator,
    a: str,
    b: str,
    body: bytes,
    prefix: str,
    first: int,
    count: int,
) -> float:
    """The rows of messages `first`.. `first + count` from a to b (request ids in order, as
    the bench's senders make them), through send, ack and status ack; returns
    the seconds spent in the three transactions. The rows are made before the clock runs:
    the server makes them on its event loop while its writer thread commits other jobs, so
    only the SQL is the storage's cost."""
    tx = SqliteTransaction(conn)
    now = time.time()
    sent, envelopes = [], []
    for i in range(first, first + count):
        message_id = ids.block(now, 2)
        request = request_id(prefix, i)
        sent.append(MessageRow(message_id, a, 1, b, request, os.urandom(32), now, PENDING))
        envelopes.append(
            EnvelopeRow(message_id + 1, b, 1, message_id, a, 1, now, 0, 2, body, 0, "")
        )

    def send() -> None:
        tx.insert_messages(sent)
        tx.insert_envelopes(envelopes)

    def ack() -> list[StatusRow]:
        delivered = tx.delete_envelopes(b, 1, [e.envelope_id for e in envelopes])
        settled = tx.settle_messages(delivered, MessageState.DELIVERED, now)
        return tx.insert_statuses(
            [
                StatusRow(ids.next(now), a, 1, m.message_id, m.request_id, b, DELIVERED, now, "")
                for m in settled
            ]
        )

    started = time.perf_counter()
    _in_transaction(conn, send)
    statuses = _in_transaction(conn, ack)
    _in_transaction(conn, lambda: tx.delete_statuses(a, 1, [s.status_id for s in statuses]))
    return time.perf_counter() - started


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def commit_latency(samples: int, folder: Path | None = None) -> dict[str, Any]:
    """Latency of single-row commits (WAL, synchronous=FULL), one at a time, in `folder` (by
    default the temporary folder, where temp_database puts the servers' files): p50/p99/p99.9
    and the CDF."""
    with tempfile.TemporaryDirectory(dir=folder or tempfile.gettempdir()) as tmp:
        conn = connect(Path(tmp) / "commit.db", synchronous="FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        body = os.urandom(PAYLOAD_BYTES)
        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
            timings.append(time.perf_counter() - started)
        conn.close()
    return latency_summary(timings)
