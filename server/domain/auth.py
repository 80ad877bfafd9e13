"""Bearer tokens: issue them, keep only their hash, and turn a presented token into a device.

Tokens carry 256 random bits, so a plain SHA-256 is a safe and fast lookup key (no slow password
hash is needed: there is nothing to brute-force). Lookups are cached in memory; every revocation
goes through `forget_*`, and a generation counter stops a lookup that raced a revocation from
re-caching a revoked token.

Rules kept here:
1. A revoked credential has no authority from the moment its revocation commits: unary calls
   are refused at their next authentication; long-lived calls hold a `Lease`, which revocation
   ends at once (the call's task is interrupted and the call ends UNAUTHENTICATED).
2. Writes made on a caller's behalf re-check the credential inside their own transaction
   (`Principal.token_hash`, see `ports.AccountReads.holds_credential`), so a call that
   authenticated just before a revocation cannot write after it. A re-registered number gets
   device 1 again, but with a new token: the old one can never act as the new owner.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from server.domain.clock import Clock
from server.domain.errors import Unauthenticated
from server.domain.ports import ReadTransaction, Store, Transaction

TOKEN_BYTES = 32
# last_seen_at is kept to the hour: finer would cost a write per call and tell more than needed.
LAST_SEEN_RESOLUTION = 3600.0


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: one device of one account."""

    account_id: str
    device_id: int
    # The credential the caller presented: writes check it still belongs to this device.
    token_hash: bytes = field(default=b"", compare=False, repr=False)

    @property
    def is_primary(self) -> bool:
        return self.device_id == PRIMARY_DEVICE_ID


PRIMARY_DEVICE_ID = 1


@dataclass(eq=False)
class Lease:
    """The authority of one long-lived call (a stream), ended at once by revocation.

    Revocation cancels the call's task, but only while that task runs Parley's own code: a
    cancellation that landed inside gRPC's write of a response would end the call as CANCELLED
    instead of UNAUTHENTICATED. While `exposed` is False (the call is handing a response to
    gRPC), revocation only sets `revoked`, and the call checks it as soon as gRPC returns.
    """

    principal: Principal
    task: asyncio.Task[Any] | None
    revoked: bool = False
    exposed: bool = True

    def revoke(self) -> None:
        if self.revoked:
            return
        self.revoked = True
        if self.task is not None and self.exposed:
            self.task.cancel()

    def check(self) -> None:
        """Raise Unauthenticated if the credential behind this call was revoked."""
        if self.revoked:
            raise Unauthenticated(REVOKED_MESSAGE)


REVOKED_MESSAGE = (
    "this device's credentials were revoked while the call was open (the device was removed, "
    "or its account was deleted or registered again); register or link this device again"
)


T = TypeVar("T")


def as_caller(caller: Principal, job: Callable[[Transaction], T]) -> Callable[[Transaction], T]:
    """`job`, run only if `caller`'s credential is still valid in the same transaction.

    Every write an authenticated caller asks for goes through this (rule 2): the check and the
    write commit together, so no revocation can fall between them.
    """

    def guarded(tx: Transaction) -> T:
        ensure_current(tx, caller)
        return job(tx)

    return guarded


def ensure_current(tx: ReadTransaction, caller: Principal) -> None:
    """Raise Unauthenticated unless `caller`'s credential is still its device's."""
    if not caller.token_hash or not tx.holds_credential(
        caller.account_id, caller.device_id, caller.token_hash
    ):
        raise Unauthenticated(REVOKED_MESSAGE)


def typeable_secret(nbytes: int) -> str:
    """``secrets.token_urlsafe(nbytes)`` that never begins with "-".

    People paste these tokens and codes into command lines (``parley link --code CODE``,
    ``parley chat-link delete CODE``), where a leading "-" reads as an option and the command
    fails. One draw in 64 began with it. Drawing again costs 0.02 bits of the first
    character and nothing of the rest."""
    while True:
        text = secrets.token_urlsafe(nbytes)
        if not text.startswith("-"):
            return text


def new_token() -> str:
    return typeable_secret(TOKEN_BYTES)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    def __init__(self, db: Store, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._generation = 0
        self._leases: dict[str, set[Lease]] = {}  # account id -> open leases

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
            row = await self._db.read(lambda tx: tx.device_for_token(token_hash))
            if row is None:
                raise Unauthenticated(
                    "the auth token is not valid (revoked, re-registered or mistyped); "
                    "register or link this device again"
                )
            cached = (Principal(row.account_id, row.device_id, token_hash), row.last_seen_at)
            if generation == self._generation:
                self._cache[token_hash] = cached
        principal, last_seen = cached
        now = self._clock.now()
        if now - last_seen >= LAST_SEEN_RESOLUTION:
            seen = now - now % LAST_SEEN_RESOLUTION
            await self._db.write(
                lambda tx: tx.touch_device(principal.account_id, principal.device_id, seen)
            )
            if token_hash in self._cache:
                self._cache[token_hash] = (principal, seen)
        return principal

    def lease(self, principal: Principal) -> Lease:
        """Hold `principal`'s authority for the current task until `release`; see `Lease`."""
        lease = Lease(principal, asyncio.current_task())
        self._leases.setdefault(principal.account_id, set()).add(lease)
        return lease

    def release(self, lease: Lease) -> None:
        leases = self._leases.get(lease.principal.account_id)
        if leases is not None:
            leases.discard(lease)
            if not leases:
                del self._leases[lease.principal.account_id]

    def forget_device(self, account_id: str, device_id: int) -> None:
        """Call after a device's token was revoked in the store."""
        self._forget(account_id, device_id)

    def forget_account(self, account_id: str) -> None:
        """Call after all of an account's tokens were revoked in the store."""
        self._forget(account_id, None)

    def _forget(self, account_id: str, device_id: int | None) -> None:
        self._generation += 1
        for key in [
            k
            for k, (p, _) in self._cache.items()
            if p.account_id == account_id and device_id in (None, p.device_id)
        ]:
            del self._cache[key]
        for lease in list(self._leases.get(account_id, ())):
            if device_id in (None, lease.principal.device_id):
                lease.revoke()
