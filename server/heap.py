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
"""

from __future__ import annotations

import ctypes
import gc
import platform

# Net container allocations between two young collections; CPython's default is 700.
YOUNG = 50_000
# Young collections per middle one, and middle ones per full one (CPython: 10 and 10).
MIDDLE = 20
FULL = 10

# glibc's mallopt parameter M_MMAP_THRESHOLD, and the size it is fixed at (its initial value).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def map_large_blocks() -> bool:
    """Serve every block of MMAP_THRESHOLD or more from its own mapping, for good; True when
    the C library is glibc and took the setting (other allocators keep their own rules)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    # The C library the process already runs on, not a search for one (find_library runs
    # ldconfig, ~2 ms of start-up).
    return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def settle() -> None:
    """Collect what start-up left behind, freeze the rest, and space collections out; called
    once the server is built, before it takes calls."""
    map_large_blocks()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, MIDDLE, FULL)
