"""The process watchdog (server.watchdog): a blocked event loop and a long collection are
logged; an idle loop and quick collections are not."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from server import watchdog


def test_a_blocked_event_loop_is_logged_with_how_long(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        watcher = asyncio.create_task(watchdog.watch_loop(tick=0.02, stall=0.1))
        await asyncio.sleep(0.1)  # idle: on time
        time.sleep(0.3)  # noqa: ASYNC251 - the point: a callback that holds the loop
        await asyncio.sleep(0.05)
        watcher.cancel()

    with caplog.at_level("WARNING", logger="server.watchdog"):
        asyncio.run(run())
    stalls = [r for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert len(stalls) == 1
    assert 200 <= stalls[0].loop_late_ms < 1000  # type: ignore[attr-defined]


def test_a_long_collection_is_logged_and_watching_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = watchdog.watch_collections(slow=0.0)  # every collection is "long"
    try:
        with caplog.at_level("WARNING", logger="server.watchdog"):
            gc.collect()
    finally:
        stop()
    (record,) = [r for r in caplog.records if "garbage collection" in r.getMessage()]
    assert record.generation == 2  # type: ignore[attr-defined]
    caplog.clear()
    gc.collect()
    assert not caplog.records
    stop_quick = watchdog.watch_collections()  # the default: a full collection here is quick
    try:
        with caplog.at_level("WARNING", logger="server.watchdog"):
            gc.collect(0)
    finally:
        stop_quick()
    assert not caplog.records
