"""Token-bucket rate limits, keyed (per phone number, per caller...).

In memory on purpose: limits protect this process, and losing them on restart only forgives a
few requests. A multi-replica deployment would move the buckets to the shared store.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from server.domain.clock import Clock
from server.domain.errors import ResourceExhausted

_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
# Buckets untouched for this many refill periods are full again and can be forgotten.
_FORGET_AFTER_PERIODS = 2
_SWEEP_EVERY = 1024


@dataclass(frozen=True)
class Rate:
    """`count` requests per `period` seconds, with bursts up to `count`."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse "5/h", "30/min", "10/60s", "100/1.5m"."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|m|min|h|d)?\s*", text)
        if not m or int(m.group(1)) <= 0:
            raise ValueError(f"rate {text!r} must look like '5/h', '30/min' or '10/60s'")
        amount = float(m.group(2)) if m.group(2) else 1.0
        unit = _UNITS[m.group(3) or "s"]
        if amount <= 0:
            raise ValueError(f"rate {text!r} has an empty period")
        return cls(int(m.group(1)), amount * unit)

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


class RateLimiter:
    def __init__(self, rate: Rate, clock: Clock, what: str) -> None:
        self.rate = rate
        self._clock = clock
        self._what = what
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)
        self._lock = threading.Lock()
        self._calls = 0

    def check(self, key: str, cost: int = 1) -> None:
        """Take `cost` tokens for `key` or raise ResourceExhausted with the wait until then."""
        if cost > self.rate.count:
            raise ResourceExhausted(
                f"{cost} {self._what} at once exceed the limit of {self.rate.count} per "
                f"{self.rate.period:g} s; send smaller batches"
            )
        now = self._clock.now()
        per_token = self.rate.period / self.rate.count
        with self._lock:
            self._calls += 1
            if self._calls % _SWEEP_EVERY == 0:
                self._sweep(now)
            tokens, updated = self._buckets.get(key, (float(self.rate.count), now))
            tokens = min(float(self.rate.count), tokens + (now - updated) / per_token)
            if tokens < cost:
                wait = (cost - tokens) * per_token
                self._buckets[key] = (tokens, now)
                raise ResourceExhausted(
                    f"too many {self._what} (limit {self.rate.count} per "
                    f"{self.rate.period:g} s); try again in {max(1, math.ceil(wait))} s",
                    retry_after=wait,
                )
            self._buckets[key] = (tokens - cost, now)

    def refund(self, key: str, cost: int = 1) -> None:
        """Give back tokens taken by `check` for a request that turned out not to count."""
        now = self._clock.now()
        per_token = self.rate.period / self.rate.count
        with self._lock:
            tokens, updated = self._buckets.get(key, (float(self.rate.count), now))
            tokens = min(float(self.rate.count), tokens + (now - updated) / per_token + cost)
            self._buckets[key] = (tokens, now)

    def _sweep(self, now: float) -> None:
        horizon = self.rate.period * _FORGET_AFTER_PERIODS
        for key in [k for k, (_, t) in self._buckets.items() if now - t > horizon]:
            del self._buckets[key]


def take_all(checks: Iterable[tuple[RateLimiter, str]]) -> None:
    """Take a token from every (limiter, key), or from none: the first refusal gives back the
    tokens already taken, so a request refused by one limit does not use up the others (a
    server-wide ceiling that refuses must not also spend the asker's per-number budget)."""
    taken: list[tuple[RateLimiter, str]] = []
    try:
        for limiter, key in checks:
            limiter.check(key)
            taken.append((limiter, key))
    except ResourceExhausted:
        for limiter, key in taken:
            limiter.refund(key)
        raise
