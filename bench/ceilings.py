"""Bare ceilings measured in the same run: gRPC stream and unary echo, raw SQLite insert+delete."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from grpc import aio

from server.storage.database import connect


def _identity(b: bytes) -> bytes:
    return b


def grpc_ceilings(stream_messages: int = 60_000, unary_calls: int = 6_000) -> dict[str, float]:
    """Messages/s of one server stream of small messages, and unary echo calls/s (4 in flight)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    try:
        return asyncio.run(_measure(port, stream_messages, unary_calls))
    finally:
        proc.terminate()
        proc.wait(10)


async def _measure(port: int, stream_messages: int, unary_calls: int) -> dict[str, float]:
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.unary_stream(
            "/bench.Echo/Stream", request_serializer=_identity, response_deserializer=_identity
        )
        unary = channel.unary_unary(
            "/bench.Echo/Unary", request_serializer=_identity, response_deserializer=_identity
        )
        async for _ in stream(struct.pack(">I", 1000)):  # warm-up
            pass
        started = time.perf_counter()
        received = 0
        async for _ in stream(struct.pack(">I", stream_messages)):
            received += 1
        stream_rate = received / (time.perf_counter() - started)

        async def caller(n: int) -> None:
            for _ in range(n):
                await unary(b"ping")

        started = time.perf_counter()
        await asyncio.gather(*(caller(unary_calls // 4) for _ in range(4)))
        unary_rate = unary_calls / (time.perf_counter() - started)
    return {"grpc_stream_msgs_per_s": stream_rate, "grpc_unary_calls_per_s": unary_rate}


def sqlite_ceiling(rows: int = 40_000, batch: int = 100, synchronous: str = "FULL") -> float:
    """Insert+delete pairs/s of 256-byte rows, `batch` per transaction, WAL at `synchronous`."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(Path(tmp) / "raw.db", synchronous=synchronous)
        conn.execute(
            "CREATE TABLE e (id INTEGER PRIMARY KEY, account TEXT, device INTEGER, body BLOB)"
        )
        body = os.urandom(256)
        started = time.perf_counter()
        for first in range(1, rows + 1, batch):
            ids = range(first, min(first + batch, rows + 1))
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO e VALUES (?, ?, ?, ?)", [(i, "account", 1, body) for i in ids]
            )
            conn.execute("COMMIT")
        for first in range(1, rows + 1, batch):
            ids = range(first, min(first + batch, rows + 1))
            conn.execute("BEGIN")
            conn.executemany("DELETE FROM e WHERE id = ?", [(i,) for i in ids])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
        conn.close()
    return rows / elapsed
