"""The full path: the reference client encrypts, the server relays, the reference client
decrypts, persists and acknowledges (client.api.ParleyClient on both ends).

The sender's app sends up to IN_FLIGHT messages at once, as a chat app's outbox does when the
user (or a bot) writes faster than the network answers: each `send` encrypts with the one
session and commits it to the sender's SQLite store before the ciphertext leaves (the sends
of a moment share one commit, client/group_commit.py), and the client streams the queued
sends on one SendMessageStream. The receiver decrypts and commits a
stream batch in one transaction and acknowledges it on its ReceiveMessageStream. Both clients
run in this one process (one core), the server in another. The clock stops when the receiver
has shown the last message.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.messaging_bench import TEST_CODE, Server, test_number
from client.api import ParleyClient, TextMessage

MESSAGES = 1_000
IN_FLIGHT = 64  # the client's own bound on unanswered sends (client/outbox.py)


async def _client(server: Server, profile: Path, index: int) -> ParleyClient:
    client = ParleyClient.open(profile, server=server.target)
    verification = await client.request_code(test_number(index))
    await client.register(test_number(index), verification, TEST_CODE)
    return client


async def _run(server: Server, count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        alice = await _client(server, Path(tmp) / "alice", 0)
        bob = await _client(server, Path(tmp) / "bob", 1)
        try:
            received = 0
            ready = asyncio.Event()
            done = asyncio.Event()

            async def receive() -> None:
                nonlocal received
                ready.set()
                async for event in bob.receive():
                    if isinstance(event, TextMessage):
                        received += 1
                        if received >= count:
                            done.set()
                            return

            receiver = asyncio.ensure_future(receive())
            await ready.wait()
            started = time.perf_counter()
            slots = asyncio.Semaphore(IN_FLIGHT)

            async def send(i: int) -> None:
                async with slots:
                    await alice.send(bob.account_id, f"message {i:05d} " + "x" * 200)

            await asyncio.gather(*(send(i) for i in range(count)))
            await asyncio.wait_for(done.wait(), 120)
            elapsed = time.perf_counter() - started
            await receiver
            return count / elapsed
        finally:
            await alice.close()
            await bob.close()


def run(server: Server, count: int = MESSAGES) -> float:
    return asyncio.run(_run(server, count))
