"""The server's collector settings (server.heap): start-up's objects frozen out of full
collections, young collections spaced beyond what one batch keeps alive."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from server import heap

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
