"""Time-ordered ids for messages, envelopes and delivery statuses.

An id is (milliseconds << 20) | sequence: new rows append at the right edge of every index
instead of landing on random pages, "older than the TTL" is a range of ids, and a stream's
position is one integer per kind. The generator starts above the largest id a backend holds
(`ReadTransaction.max_message_id`), so ids stay unique across restarts.
"""

from __future__ import annotations

import threading

SEQUENCE_BITS = 20  # a million ids per millisecond


class IdGenerator:
    """Unique, time-ordered 63-bit ids; strictly increasing even if the clock steps back."""

    def __init__(self, floor: int = 0) -> None:
        self._last = floor
        self._lock = threading.Lock()

    @staticmethod
    def floor(at: float) -> int:
        """The smallest id generated at or after time `at`."""
        return int(at * 1000) << SEQUENCE_BITS

    def next(self, now: float) -> int:
        return self.block(now, 1)

    def block(self, now: float, count: int) -> int:
        """Reserve `count` consecutive ids; return the first."""
        with self._lock:
            first = max(self._last + 1, int(now * 1000) << SEQUENCE_BITS)
            self._last = first + count - 1
            return first
