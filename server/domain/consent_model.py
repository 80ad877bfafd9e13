"""Consent's row types, enums and storage operations (opt-ins, opt-outs, blocks).

Kept apart from `server.domain.model` and `server.domain.ports` so that the consent area stays
one module the backends implement (`server.storage.consent`), mixed into the transaction
protocols in `server.domain.ports`.

Consent is keyed by the user's **phone number**, not the account id: a business records an
opt-in for a number that may have no account yet (RecordOptIn), and it must apply once the
number registers without any copying at registration. The number is as stable as the account
id (re-registering a number keeps its account), and deleting the account deletes its consents
(a trigger of migration 6). Blocks are between two accounts and keyed by account ids.

What every backend guarantees here (on top of `server.domain.ports`):
8. Each consent write is one upsert on the primary key (user_phone, business_account_id,
   category), so concurrent or repeated calls leave one row; the conditions that protect the
   user (a business assertion never replaces a user-verified opt-in nor lifts an opt-out; a
   repeated opt-out keeps its first time) are in the upsert's WHERE/COALESCE, not read first.
9. A block is one INSERT ... ON CONFLICT DO NOTHING on (blocker, blocked): a repeated block
   keeps its first time; `is_blocked` is one primary-key probe.
10. Opt-outs and blocks are indexed by (business, time), so the quality rating counts those of
    the last days with a range scan of an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple, Protocol


class OptInKind(IntEnum):
    """Who recorded an opt-in (proto `OptInKind`)."""

    NONE = 0
    USER_VERIFIED = 1
    BUSINESS_ASSERTED = 2


class OptInSource(IntEnum):
    """Where a business-asserted opt-in was given (proto `OptInSource`)."""

    UNSPECIFIED = 0
    WEBSITE = 1
    APP = 2
    IN_STORE = 3
    PHONE_CALL = 4
    PAPER_FORM = 5
    OTHER = 6


class ConsentRow(NamedTuple):
    """One user's consent to one business for one category."""

    user_phone: str
    business_account_id: str
    category: int  # a MessageCategory
    kind: int  # an OptInKind
    source: int  # an OptInSource
    evidence: str
    opted_in_at: float | None
    opted_out_at: float | None  # not None: opted out, whatever the opt-in says


class BlockRow(NamedTuple):
    blocker_account_id: str
    blocked_account_id: str
    blocked_at: float


class ConsentReads(Protocol):
    def consents_of(self, user_phone: str) -> list[ConsentRow]:
        """Every consent row of a number (a primary-key prefix range), by business, category."""
        ...

    def consent(
        self, user_phone: str, business_account_id: str, category: int
    ) -> ConsentRow | None:
        """One row by its primary key."""
        ...

    def get_block(self, blocker_account_id: str, blocked_account_id: str) -> BlockRow | None:
        """The block of `blocked` by `blocker`, if any (one primary-key probe, guarantee 9)."""
        ...

    def blocks_by(self, blocker_account_id: str) -> list[BlockRow]:
        """Every block the account made (a primary-key prefix range)."""
        ...


class ConsentWrites(Protocol):
    def opt_in_by_user(
        self, user_phone: str, business_account_id: str, categories: Sequence[int], at: float
    ) -> None:
        """Upsert user-verified opt-ins; lifts an opt-out of those categories (guarantee 8)."""
        ...

    def opt_in_by_business(
        self,
        user_phone: str,
        business_account_id: str,
        categories: Sequence[int],
        source: int,
        evidence: str,
        at: float,
    ) -> None:
        """Upsert business-asserted opt-ins, changing no row that is user-verified or opted
        out (guarantee 8)."""
        ...

    def opt_out(
        self, user_phone: str, business_account_id: str, categories: Sequence[int], at: float
    ) -> None:
        """Upsert opt-outs, keeping the time of an earlier one still in force (guarantee 8)."""
        ...

    def block(self, blocker_account_id: str, blocked_account_id: str, at: float) -> BlockRow:
        """Record the block unless it exists; return the block in force (guarantee 9)."""
        ...

    def unblock(self, blocker_account_id: str, blocked_account_id: str) -> bool:
        """Delete the block; whether there was one."""
        ...
