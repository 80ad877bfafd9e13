"""Time-ordered ids for messages, envelopes and delivery statuses.

An id is (milliseconds << 20) | (node << 14) | sequence: new rows append at the right edge of
every index instead of landing on random pages, "older than the TTL" is a range of ids, and
ids from different server processes never collide. `node` tells the processes writing one
database apart: 0 for SQLite's one process, a number the PostgreSQL backend claims for each
replica while it runs (an advisory lock, so a crashed replica's number is free again). The
generator starts above the largest id a backend holds (`ReadTransaction.max_message_id`), so
ids stay unique across restarts.

Ids are not stream positions: two processes' ids interleave by clock, not by commit. Streams
go by each device's own positions (ports guarantee 15).
"""

from __future__ import annotations

import threading

from server.domain.replicas_model import NODE_BITS, NODES

SEQUENCE_BITS = 20  # below the milliseconds: the node, then the sequence within the node
_COUNTER_BITS = SEQUENCE_BITS - NODE_BITS  # 16,384 ids per millisecond and node
_COUNTER_SPAN = 1 << _COUNTER_BITS


class IdGenerator:
    """Unique, time-ordered 63-bit ids; strictly increasing even if the clock steps back."""

    def __init__(self, floor: int = 0, node: int = 0) -> None:
        if not 0 <= node < NODES:
            raise ValueError(f"node must be in 0..{NODES - 1}, not {node}")
        self.node = node
        self._last = floor
        self._lock = threading.Lock()

    @staticmethod
    def floor(at: float) -> int:
        """The smallest id generated at or after time `at`."""
        return int(at * 1000) << SEQUENCE_BITS

    def next(self, now: float) -> int:
        return self.block(now, 1)

    def many(self, now: float, count: int) -> list[int]:
        """`count` ids in increasing order, in as few blocks as the span allows (a batch's
        rows take one lock, not one per row)."""
        out: list[int] = []
        while len(out) < count:
            n = min(count - len(out), _COUNTER_SPAN)
            first = self.block(now, n)
            out.extend(range(first, first + n))
        return out

    def block(self, now: float, count: int) -> int:
        """Reserve `count` consecutive ids (at most 16,384); return the first."""
        if not 0 < count <= _COUNTER_SPAN:
            raise ValueError(f"a block holds 1 to {_COUNTER_SPAN} ids, not {count}")
        mine = self.node << _COUNTER_BITS
        with self._lock:
            first = max(self._last + 1, (int(now * 1000) << SEQUENCE_BITS) | mine)
            within = first & (_COUNTER_SPAN - 1)
            if (first >> _COUNTER_BITS) & (
                NODES - 1
            ) != self.node or within + count > _COUNTER_SPAN:
                # Past this node's range in this millisecond (or in another node's): the next
                # millisecond's range of this node.
                first = (((first >> SEQUENCE_BITS) + 1) << SEQUENCE_BITS) | mine
            self._last = first + count - 1
            return first
