"""The server's collector settings (server.heap): start-up's objects frozen out of full
collections, young collections spaced beyond what one batch keeps alive."""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
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
before = libc.mallinfo2().hblks
envelopes = [bytes(256 * 1024) for _ in range(8)]
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the mmap threshold is glibc's (mallopt)"
)
@pytest.mark.parametrize(("mode", "mapped"), [("fixed", 8), ("glibc's default", 0)])
def test_large_blocks_stay_in_their_own_mappings(mode: str, mapped: int) -> None:
    """After map_large_blocks, a 256 KiB envelope is mapped on its own (given back to the system
    when freed) even after a larger block was freed; with glibc's sliding threshold it came from
    the shared heap, where a stalled reader's buffer kept 20-27 MiB resident after its end."""
    out = subprocess.run(
        [sys.executable, "-c", MAPPED_CHUNKS, mode],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    assert int(out) == mapped
