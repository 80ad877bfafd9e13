"""Time-ordered request ids (client/request_ids.py): what the reference client sends."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest

from client.request_ids import time_ordered_request_id
from tests.client_helpers import closing, registered
from tests.conftest import LiveServer

ALICE = "+14155550123"
BOB = "+442079460123"


def test_a_uuid7_carries_its_millisecond_and_grows_across_milliseconds() -> None:
    ms = 1_795_930_275_147
    ids = [time_ordered_request_id(ms + i, os.urandom(10)) for i in range(200)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert [u.int >> 80 for u in parsed] == [ms + i for i in range(200)]
    assert ids == sorted(ids)  # the text sorts like the value: what the index sees
    # The random part is random: same millisecond, different ids.
    assert time_ordered_request_id(ms, os.urandom(10)) != time_ordered_request_id(
        ms, os.urandom(10)
    )
    # Every random bit lands: all-ones randomness gives all-ones outside the fixed fields.
    full = uuid.UUID(time_ordered_request_id(0, b"\xff" * 10)).int
    assert full == (0x7 << 76) | (0xFFF << 64) | (0b10 << 62) | ((1 << 62) - 1)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="10 random bytes"):
        time_ordered_request_id(1, b"short")
    with pytest.raises(ValueError, match="48 bits"):
        time_ordered_request_id(1 << 48, os.urandom(10))


def test_the_reference_client_sends_time_ordered_request_ids(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)

        async def run() -> None:
            for i in range(3):
                server.clock.advance(1.0)  # the clients share the server's manual clock
                await alice.send(BOB, f"hello {i}")

        await closing([alice, bob], run)

    asyncio.run(body())
    rows = server.sql("SELECT request_id FROM messages ORDER BY message_id")
    assert len(rows) == 3
    ids = [uuid.UUID(r[0]) for r in rows]
    assert all(u.version == 7 for u in ids)
    # Each carries the millisecond it was made at (the clock stepped a second between sends).
    now_ms = int(server.clock.now() * 1000)
    assert [u.int >> 80 for u in ids] == [now_ms - 2000, now_ms - 1000, now_ms]
