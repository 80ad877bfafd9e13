"""The server's heap settings (server.heap): start-up's objects frozen out of full
collections, young collections spaced beyond what one batch keeps alive, large blocks in their
own mappings, and free heap space given back after a large buffer was let go."""

from __future__ import annotations

import asyncio
import gc
import platform
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from server import heap
from tests.tools import REPO

# About what a batch of 500 messages keeps alive until its commit: rows, drafts, wrappers.
BATCH_OBJECTS = 20_000


@pytest.fixture
def restored() -> Iterator[None]:
    """Give the test process its own collector settings back afterwards."""
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def collections_during_a_batch() -> int:
    """How many collections keeping BATCH_OBJECTS containers alive, then dropping them, runs."""
    runs = 0

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal runs
        runs += phase == "start"

    gc.callbacks.append(count)
    try:
        batch = [{"row": i} for i in range(BATCH_OBJECTS)]
        del batch
    finally:
        gc.callbacks.remove(count)
    return runs


@pytest.mark.usefixtures("restored")
def test_settle_freezes_what_start_up_left_and_spaces_collections() -> None:
    gc.set_threshold(700, 10, 10)  # CPython's defaults: a batch runs dozens of collections
    assert collections_during_a_batch() >= BATCH_OBJECTS // 700 - 1
    kept = [{"alive": i} for i in range(1_000)]  # like the app's objects after start-up
    gc.unfreeze()
    heap.settle()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (heap.YOUNG, heap.MIDDLE, heap.FULL)
    gc.collect()
    assert collections_during_a_batch() == 0
    # Cycles are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def _printed(script: str, mode: str) -> list[str]:
    """The words `script` prints, run with `mode` in a fresh interpreter: the heap measured is
    one the test process's own allocations never touched."""
    return subprocess.run(
        [sys.executable, "-c", script, mode],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout.split()  # fmt: skip


MAPPED_CHUNKS = """
import ctypes, sys
from server import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)  # the C library the process runs on, as server.heap loads it
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert heap.map_large_blocks()
first = bytes(1024 * 1024)  # mapped; freeing it raises glibc's threshold unless it is fixed
del first
before = libc.mallinfo2()
envelopes = [bytes(256 * 1024) for _ in range(32)]  # a stalled reader's 8 MiB
after = libc.mallinfo2()
print(after.hblks - before.hblks, after.arena - before.arena)
"""

ENVELOPE = 256 * 1024


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the mmap threshold is glibc's (mallopt)"
)
def test_large_blocks_stay_in_their_own_mappings() -> None:
    """After map_large_blocks, 256 KiB envelopes never grow the shared heap, even after a larger
    block was freed: each is mapped on its own (given back to the system when freed) unless free
    heap space already fits it, which glibc reuses first (how much there is after start-up
    depends on the process's paths and environment: one clean clone had one envelope's worth).
    With glibc's sliding threshold they all came from the shared heap, which grew by their size,
    and there a stalled reader's buffer kept 20-27 MiB resident after its end."""

    mapped, grown = map(int, _printed(MAPPED_CHUNKS, "fixed"))
    assert grown < ENVELOPE
    assert mapped >= 24
    mapped, grown = map(int, _printed(MAPPED_CHUNKS, "glibc's default"))
    assert mapped == 0
    assert grown >= 24 * ENVELOPE


def test_give_back_runs_once_a_moment_after_a_large_buffer_was_let_go() -> None:
    """Small streams schedule nothing; large ones that end in the same moment share one call,
    made on a worker thread after the delay; a later one schedules another."""
    threads: list[str] = []

    def trim() -> bool:
        threads.append(threading.current_thread().name)
        return True

    async def run() -> None:
        give = heap.GiveBack(stream_buffer_bytes=4000, delay=0.05, trim=trim)
        give.released(999)  # below the bar
        await asyncio.sleep(0.1)
        assert give.calls == 0
        give.released(1000)
        give.released(5000)  # the same moment: the call already due covers it
        assert give.calls == 0  # not yet: gRPC frees the call's memory after the handler
        await asyncio.sleep(0.15)
        assert give.calls == 1
        give.released(1000)
        await asyncio.sleep(0.15)
        assert give.calls == 2

    asyncio.run(run())
    assert len(threads) == 2
    assert threading.main_thread().name not in threads


def test_a_give_back_due_while_the_loop_shuts_down_is_skipped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio.run shuts the worker threads down before the loop closes, and a timer can
    still fire then: no "Exception in callback" at a server's end."""

    async def run() -> None:
        give = heap.GiveBack(stream_buffer_bytes=4, delay=0.0, trim=lambda: True)
        await asyncio.get_running_loop().shutdown_default_executor()
        give.released(10)
        await asyncio.sleep(0.05)
        assert give.calls == 1

    with caplog.at_level("ERROR", logger="asyncio"):
        asyncio.run(run())
    assert not caplog.records


FRAGMENTED = """
import ctypes, sys, threading
from pathlib import Path
from server import heap

def anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError

def churn() -> None:
    # A thread's heap: 32 MiB of small blocks, then all freed but one block per MiB and the
    # last one, so glibc cannot give the free space back from the heap's top.
    blocks = [ctypes.create_string_buffer(4000) for _ in range(8192)]
    kept = blocks[::256] + blocks[-1:]
    del blocks
    before = anon()
    returned = heap.give_back() if sys.argv[1] == "give back" else False
    print(before - anon(), returned, len(kept))

thread = threading.Thread(target=churn)
thread.start()
thread.join()
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_give_back_returns_a_thread_s_free_heap_space_to_the_system() -> None:
    """Space freed between blocks still alive stays resident until give_back (malloc_trim)
    returns it: how a stalled reader's stream kept 18 MiB after it ended."""

    returned, said, _ = _printed(FRAGMENTED, "give back")
    assert int(returned) > 16 * 1024 * 1024 and said == "True"
    kept, _, _ = _printed(FRAGMENTED, "keep")
    assert int(kept) < 1024 * 1024
