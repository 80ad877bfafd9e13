"""What holds the whole process up, logged when it does: a blocked event loop, a long garbage
collection. Together with the database's slow-write log (`server.storage.database`, rule 9)
they tell a latency spike's cause: the disk, the writer's jobs, the event loop, the collector,
or none of them (then it was outside the process: the machine, the network, the client).

Both are cheap enough to run always: the loop is looked at every `TICK_S` (one timer), and the
collector reports each collection (one every YOUNG net allocations, server.heap), timed only
when it starts and ends.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# How often the loop's timer is due.
TICK_S = 0.05
# By default (`--stall-warning-ms`), how late the loop's timer may run, and how long a
# collection or a database write (`server.storage.database` rule 9) may take, before it is
# logged: an event loop that could not run a due callback for this long held every call up
# that long, and so does a collection (a full one over a large heap; server.heap keeps them
# rare and small); for a write it is ten times a large group commit under full load.
STALL_S = 0.1


async def watch_loop(
    tick: float = TICK_S, stall: float = STALL_S, seen: Callable[[float], None] | None = None
) -> None:
    """Log each time this loop ran a due timer more than `stall` seconds late (0: never), and
    hand every lateness to `seen` (a client that keeps its worst); until cancelled."""
    while True:
        due = time.monotonic() + tick
        await asyncio.sleep(tick)
        late = time.monotonic() - due
        if seen is not None:
            seen(late)
        if stall and late > stall:
            log.warning(
                "event loop blocked: a timer ran %.0f ms late (every call waited as long)",
                late * 1e3,
                extra={"loop_late_ms": round(late * 1e3, 1)},
            )


def watch_collections(slow: float = STALL_S) -> Callable[[], None]:
    """Log garbage collections longer than `slow` seconds; returns what stops watching."""
    started = [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        if took > slow:
            log.warning(
                "garbage collection of generation %d took %.0f ms (%d objects collected)",
                info.get("generation", -1), took * 1e3, info.get("collected", 0),
                extra={"gc_ms": round(took * 1e3, 1), "generation": info.get("generation", -1)},
            )  # fmt: skip

    gc.callbacks.append(on_collection)
    return lambda: gc.callbacks.remove(on_collection)
