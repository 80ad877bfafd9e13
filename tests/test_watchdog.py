"""The process watchdog (server.watchdog): a blocked event loop and a long collection are
logged; an idle loop and quick collections are not."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from server import watchdog
from server.app import ParleyServer
from tests.conftest import ServerFactory


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


def test_the_threshold_is_a_setting_and_zero_turns_the_warnings_off() -> None:
    from server import config

    assert config.load([], environ={}).stall_warning_ms == 100
    assert config.load(["--stall-warning-ms", "20"], environ={}).stall_warning_ms == 20
    assert config.load([], environ={"PARLEY_STALL_WARNING_MS": "0"}).stall_warning_ms == 0
    with pytest.raises(SystemExit, match="--stall-warning-ms must be 0"):
        config.load(["--stall-warning-ms", "-1"], environ={})


def test_a_server_logs_its_own_blocked_event_loop(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher runs in every started server, at its setting: a callback that holds the
    server's loop for 300 ms is logged; a server with the setting at 0 logs nothing."""

    async def block(parts: ParleyServer) -> None:
        time.sleep(0.3)  # noqa: ASYNC251 - the point: the server's loop is held
        await asyncio.sleep(0.2)  # the watcher's timer runs, late

    for setting, logged in ((50, True), (0, False)):
        server = make_server(stall_warning_ms=setting)
        caplog.clear()
        with caplog.at_level("WARNING", logger="server.watchdog"):
            server.run(block)
        stalls = [r for r in caplog.records if "event loop blocked" in r.getMessage()]
        assert bool(stalls) == logged, (setting, [r.getMessage() for r in stalls])
        assert all(r.loop_late_ms >= 50 for r in stalls)  # type: ignore[attr-defined]
