"""Bearer tokens: issue them, keep only their hash, and turn a presented token into a device.

Tokens carry 256 random bits, so a plain SHA-256 is a safe and fast lookup key (no slow password
hash is needed: there is nothing to brute-force). Lookups are cached in memory; every revocation
goes through `forget_*`, and a generation counter stops a lookup that raced a revocation from
re-caching a revoked token.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from server.domain.clock import Clock
from server.domain.errors import Unauthenticated
from server.storage import accounts as store
from server.storage.database import Database

TOKEN_BYTES = 32
# last_seen_at is kept to the hour: finer would cost a write per call and tell more than needed.
LAST_SEEN_RESOLUTION = 3600.0


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: one device of one account."""

    account_id: str
    device_id: int

    @property
    def is_primary(self) -> bool:
        return self.device_id == PRIMARY_DEVICE_ID


PRIMARY_DEVICE_ID = 1


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._generation = 0
        self._on_revoke: list[Callable[[str, int | None], None]] = []

    def on_revoke(self, listener: Callable[[str, int | None], None]) -> None:
        """Call `listener(account_id, device_id or None for all)` when credentials are revoked,
        so that whatever a device has open (its message stream) ends at once, not at its next
        call."""
        self._on_revoke.append(listener)

    async def authenticate(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <auth_token>' with "
                "the token from CompleteVerification or LinkDevice"
            )
        token_hash = hash_token(token)
        cached = self._cache.get(token_hash)
        if cached is None:
            generation = self._generation
            row = await self._db.read(lambda c: store.device_for_token(c, token_hash))
            if row is None:
                raise Unauthenticated(
                    "the auth token is not valid (revoked, re-registered or mistyped); "
                    "register or link this device again"
                )
            cached = (Principal(row.account_id, row.device_id), row.last_seen_at)
            if generation == self._generation:
                self._cache[token_hash] = cached
        principal, last_seen = cached
        now = self._clock.now()
        if now - last_seen >= LAST_SEEN_RESOLUTION:
            seen = now - now % LAST_SEEN_RESOLUTION
            await self._db.write(
                lambda c: store.touch_device(c, principal.account_id, principal.device_id, seen)
            )
            if token_hash in self._cache:
                self._cache[token_hash] = (principal, seen)
        return principal

    def forget_device(self, account_id: str, device_id: int) -> None:
        """Call after a device's token was revoked in the store."""
        self._generation += 1
        for key in [
            k
            for k, (p, _) in self._cache.items()
            if p.account_id == account_id and p.device_id == device_id
        ]:
            del self._cache[key]
        for listener in self._on_revoke:
            listener(account_id, device_id)

    def forget_account(self, account_id: str) -> None:
        """Call after all of an account's tokens were revoked in the store."""
        self._generation += 1
        for key in [k for k, (p, _) in self._cache.items() if p.account_id == account_id]:
            del self._cache[key]
        for listener in self._on_revoke:
            listener(account_id, None)
