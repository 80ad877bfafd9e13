"""Token-bucket rate limits, keyed (per phone number, per caller...).

Where the buckets live depends on the deployment:
* One process (SQLite): in memory. Limits protect this process, and a restart only forgives a
  few requests; a database write per check would cost the hot path a commit for nothing.
* Several replicas on one database (PostgreSQL): in the database (`rate_buckets`), so a client
  gets one budget whichever replica it reaches, and a restart forgives nothing. Each take is
  one row, read and written under its row lock (ports guarantee 16): concurrent replicas
  never hand out the same token twice.
The arithmetic is the same for both (`refill`).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from server.domain.clock import Clock
from server.domain.errors import ResourceExhausted
from server.domain.ports import Transaction

T = TypeVar("T")

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


class Buckets(Protocol):
    """A database whose transactions keep buckets (ports.LimitWrites), for shared limits."""

    async def write(self, fn: Callable[[Transaction], T]) -> T: ...


class RateLimiter:
    def __init__(
        self, rate: Rate, clock: Clock, what: str, *, shared: Buckets | None = None
    ) -> None:
        """`shared`: keep the buckets in this database (replicas), not in memory; they are
        named by `what`, so two limiters must not share a description."""
        self.rate = rate
        self._clock = clock
        self._what = what
        self.shared = shared
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)
        self._lock = threading.Lock()
        self._calls = 0
        # The rate's figures as `check` uses them: it runs for every message a business sends.
        self._capacity = float(rate.count)
        self._per_token = rate.period / rate.count

    async def take(self, key: str, cost: int = 1) -> None:
        """Take `cost` tokens for `key` or raise ResourceExhausted with the wait until then."""
        if self.shared is None:
            self.check(key, cost)
            return
        self._not_too_many(cost)
        now = self._clock.now()
        wait = await self.shared.write(lambda tx: self._move(tx, key, -cost, now))
        if wait > 0:
            raise self._refusal(wait)

    def take_up_to(self, tx: Transaction, key: str, wanted: int) -> Grant:
        """As many of `wanted` tokens as `key` has now, at once, inside a write transaction
        the caller runs anyway (a send job): one bucket read and write for a whole batch
        instead of one per message. Shared tokens go with the job's commit and come back if
        it rolls back; the caller gives back what it did not use (`give_back_in`)."""
        now = self._clock.now()
        if self.shared is None:
            with self._lock:
                self._count_call(now)
                tokens, updated = self._buckets.get(key) or (self._capacity, now)
                granted, tokens, wait = share(
                    self._capacity, self._per_token, tokens, updated, now, wanted
                )
                self._buckets[key] = (tokens, now)
            return Grant(granted, wait)
        name, capacity, per_token = self._bucket()
        held, updated = tx.lock_bucket(name, key, capacity, now)
        granted, held, wait = share(capacity, per_token, held, updated, now, wanted)
        tx.store_bucket(name, key, held, now, now + _FORGET_AFTER_PERIODS * self.rate.period)
        return Grant(granted, wait)

    def give_back_in(self, tx: Transaction, key: str, cost: int) -> None:
        """Return unused tokens of `take_up_to` in the same transaction."""
        if self.shared is None:
            self.refund(key, cost)
        else:
            self._move(tx, key, cost, self._clock.now())

    def refusal(self, grant: Grant) -> ResourceExhausted:
        """What a request gets when the tokens of `grant` are used up."""
        return self._refusal(grant.wait)

    async def give_back(self, key: str, cost: int = 1) -> None:
        """`refund`, wherever the buckets are."""
        if self.shared is None:
            self.refund(key, cost)
            return
        now = self._clock.now()
        await self.shared.write(lambda tx: self._move(tx, key, cost, now))

    def _move(self, tx: Transaction, key: str, tokens: int, now: float) -> float:
        """Add `tokens` (negative: take) to the database bucket if it can go that low; the
        wait before it could (0: done). The row stays locked until `tx` ends."""
        name, capacity, per_token = self._bucket()
        held, updated = tx.lock_bucket(name, key, capacity, now)
        held, wait = refill(capacity, per_token, held, updated, now, max(0, -tokens))
        if wait == 0:
            held = min(capacity, held + tokens)
        tx.store_bucket(name, key, held, now, now + _FORGET_AFTER_PERIODS * self.rate.period)
        return wait

    def _bucket(self) -> tuple[str, float, float]:
        """(name, capacity, seconds per token) of this limiter's shared buckets."""
        return self._what, self._capacity, self._per_token

    def _not_too_many(self, cost: int) -> None:
        if cost > self.rate.count:
            raise ResourceExhausted(
                f"{cost} {self._what} at once exceed the limit of {self.rate.count} per "
                f"{self.rate.period:g} s; send smaller batches"
            )

    def _refusal(self, wait: float) -> ResourceExhausted:
        return ResourceExhausted(
            f"too many {self._what} (limit {self.rate.count} per "
            f"{self.rate.period:g} s); try again in {max(1, math.ceil(wait))} s",
            retry_after=wait,
        )

    def check(self, key: str, cost: int = 1) -> None:
        """`take` from the in-memory buckets (a limiter that is not shared)."""
        capacity = self._capacity
        if cost > capacity:
            self._not_too_many(cost)
        now = self._clock.now()
        with self._lock:
            self._count_call(now)
            tokens, updated = self._buckets.get(key) or (capacity, now)
            tokens, wait = refill(capacity, self._per_token, tokens, updated, now, cost)
            if wait > 0:
                self._buckets[key] = (tokens, now)
                raise self._refusal(wait)
            self._buckets[key] = (tokens - cost, now)

    def refund(self, key: str, cost: int = 1) -> None:
        """Give back tokens taken by `check` for a request that turned out not to count."""
        now = self._clock.now()
        with self._lock:
            tokens, updated = self._buckets.get(key) or (self._capacity, now)
            tokens = min(self._capacity, tokens + (now - updated) / self._per_token + cost)
            self._buckets[key] = (tokens, now)

    def _count_call(self, now: float) -> None:
        """Forget the buckets idle long enough to be full again, every _SWEEP_EVERY calls
        (under the lock)."""
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        horizon = self.rate.period * _FORGET_AFTER_PERIODS
        for key in [k for k, (_, t) in self._buckets.items() if now - t > horizon]:
            del self._buckets[key]


def refill(
    capacity: float, per_token: float, tokens: float, updated: float, now: float, cost: int
) -> tuple[float, float]:
    """A bucket's tokens at `now`, and the wait before `cost` of them are there (0: now). The
    one token-bucket arithmetic, for memory and database buckets alike."""
    tokens = min(capacity, tokens + max(0.0, now - updated) / per_token)
    return tokens, 0.0 if tokens >= cost else (cost - tokens) * per_token


def share(
    capacity: float, per_token: float, tokens: float, updated: float, now: float, wanted: int
) -> tuple[int, float, float]:
    """(tokens granted, tokens left, wait before the next one: 0 when all were granted) when
    `wanted` tokens are asked for at once and as many as there are are taken."""
    tokens, _ = refill(capacity, per_token, tokens, updated, now, 0)
    granted = min(wanted, int(tokens))
    tokens -= granted
    return granted, tokens, 0.0 if granted == wanted else (1.0 - tokens) * per_token


class Grant:
    """Tokens taken together for a batch (`RateLimiter.take_up_to`), handed out one by one:
    `held` are left; past them a request waits `wait` seconds for the next token."""

    __slots__ = ("held", "wait")

    def __init__(self, held: int, wait: float) -> None:
        self.held = held
        self.wait = wait


async def take_all(checks: Iterable[tuple[RateLimiter, str]]) -> None:
    """Take a token from every (limiter, key), or from none: the first refusal gives back the
    tokens already taken, so a request refused by one limit does not use up the others (a
    server-wide ceiling that refuses must not also spend the asker's per-number budget)."""
    taken: list[tuple[RateLimiter, str]] = []
    try:
        for limiter, key in checks:
            await limiter.take(key)
            taken.append((limiter, key))
    except ResourceExhausted:
        for limiter, key in taken:
            await limiter.give_back(key)
        raise
