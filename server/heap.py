"""How the server's process runs Python's cyclic garbage collector.

With CPython's defaults (a young collection every 700 net container allocations, a full one
when the survivors have grown by a quarter) a busy server spends a tenth of its time in the
collector, and more on a business's sends than on a person's: a batch of 500 messages keeps
tens of thousands of rows, drafts and protobuf wrappers alive until its commit, so nearly
every batch triggers young collections that find nothing to free, and their survivors push a
full collection through the whole heap (the module objects, descriptors and compiled SQL of a
started server included) about once a second, each a 20-60 ms pause on every call in flight.
Measured on the bench's sends: 1.0-1.5 s of collection per 10 s of load.

Almost nothing the hot path allocates is in a reference cycle: reference counting frees it
when the batch ends. So, once the server is built:
* everything alive then (imports, descriptors, the app's objects, which live as long as the
  process) is frozen out of the collector's sight (`gc.freeze`): a full collection no longer
  walks it;
* a young collection waits for `YOUNG` net allocations, more than one batch keeps alive, so a
  batch that frees what it allocated never triggers one.
Cycles are still collected (exceptions with their tracebacks, closed streams); they wait a
little longer, bounded by `YOUNG` objects, a few MiB at most.

The allocator under Python gets one setting too. glibc serves a block of 128 KiB or more
from its own mapping, unmapped when freed, but it raises that threshold to the size of every
such block freed, up to 32 MiB: after the first large envelope is freed, the next ones come
from the shared heap, where a buffer still alive pins the freed space around it. A stalled
reader's 8 MiB of 256 KiB envelopes then kept 20-27 MiB of the process resident after its
stream had ended. Fixing the threshold at glibc's initial 128 KiB keeps every large buffer
(envelopes, request and response messages) in its own mapping, given back when freed; a
mapping costs a few microseconds, per batch of small messages or per large envelope.

What is smaller than that threshold still comes from the heaps glibc keeps per thread (gRPC's
frames and reads, SQLite's pages, the rows of a batch), and glibc gives a heap's free space
back to the system only from its top. A stalled reader's stream moves tens of MiB through
those heaps; once it ended, the space freed between blocks still alive stayed resident (18 MiB
in one clean-clone CI run; about 6 MiB in each of three threads' heaps when reproduced).
`GiveBack` returns it (`malloc_trim`) a moment after a stream that held a large buffer ends:
rare, and a few milliseconds on a worker thread, where returning it on a timer would also run
under load, when the freed space is about to be used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import platform
from collections.abc import Callable

from server.domain.messaging_policy import MessagingPolicy

# Net container allocations between two young collections; CPython's default is 700.
YOUNG = 50_000
# Young collections per middle one, and middle ones per full one (CPython: 10 and 10).
MIDDLE = 20
FULL = 10

# glibc's mallopt parameter M_MMAP_THRESHOLD, and the size it is fixed at (its initial value).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024

# A stream that buffered at least this share of its --stream-buffer-bytes (a reader that had
# fallen well behind) has the process give free heap space back once it ended ...
GIVE_BACK_SHARE = 0.25
# ... this long after: gRPC frees the call's own memory once its handler has returned.
GIVE_BACK_DELAY = 1.0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library the process already runs on, when it is glibc (not a search for one:
    find_library runs ldconfig, ~2 ms); None for others, which keep their own rules."""
    return ctypes.CDLL(None) if platform.libc_ver()[0] == "glibc" else None


def map_large_blocks() -> bool:
    """Serve every block of MMAP_THRESHOLD or more from its own mapping, for good; True when
    the C library is glibc and took the setting."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def give_back() -> bool:
    """Return the free space of every heap of the process to the system (glibc's
    `malloc_trim`); True when some was returned."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


class GiveBack:
    """Calls `give_back` a moment after a large buffer was let go, on a worker thread; streams
    that end in the same moment share one call."""

    def __init__(
        self,
        *,
        stream_buffer_bytes: int = MessagingPolicy.stream_buffer_bytes,
        delay: float = GIVE_BACK_DELAY,
        trim: Callable[[], bool] = give_back,
    ) -> None:
        self._at_least = stream_buffer_bytes * GIVE_BACK_SHARE
        self._delay = delay
        self._trim = trim
        self._due: asyncio.TimerHandle | None = None
        self.calls = 0  # how many times the heap was given back: for tests and operators

    def released(self, peak_bytes: int) -> None:
        """A stream ended that had buffered up to `peak_bytes`: schedule a give-back if that
        was large and none is due yet. Called on the event loop."""
        if peak_bytes < self._at_least or self._due is not None:
            return
        self._due = asyncio.get_running_loop().call_later(self._delay, self._start)

    def _start(self) -> None:
        self._due = None
        self.calls += 1
        # malloc_trim holds each heap's lock while it walks it: not on the event loop's thread.
        with contextlib.suppress(RuntimeError):  # the process is ending: its heap goes anyway
            asyncio.get_running_loop().run_in_executor(None, self._trim)


def settle() -> None:
    """Collect what start-up left behind, freeze the rest, and space collections out; called
    once the server is built, before it takes calls."""
    map_large_blocks()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, FULL)
