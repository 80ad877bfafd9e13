"""Business directory: row types, enums and the storage operations profiles and templates need.

Kept apart from `server.domain.model` and `server.domain.ports` so the directory is one
self-contained area: `DirectoryTransaction` is the general `Transaction` plus these operations,
and `DirectoryStore` a `Store` whose jobs get one (the SQLite `Database` is both, checked by
mypy where the app hands it over).

What every backend must guarantee here, on top of `server.domain.ports`:

D1. `save_profile` applies the name-review rule in the same statement that writes the row
    (an upsert): a display name equal to the submitted one keeps its review, one equal to the
    last approved name is approved again, any other goes to PENDING. The approved name
    (`verified_name`) is written only by `review_name`. So a profile update racing a review can
    neither lose an approval nor approve a name nobody reviewed.
D2. `review_name` and `review_template` are conditional UPDATEs (`status = PENDING`): of two
    concurrent reviews of one item exactly one applies; the other gets None/False.
D3. `insert_template` keeps UNIQUE (business, name, language) and reports a conflict by
    returning False (`ON CONFLICT DO NOTHING`), never by an exception.
D4. An APPROVED template's name, language, category and content never change: the backend
    refuses such an UPDATE (SQLite: a trigger), whatever code asks.
D5. Lookups are indexed: profile and template by primary key, a business's templates by the
    (business, name, language) unique index, and the review queues by partial indexes on
    PENDING rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, TypeVar

from server.domain.ports import ReadTransaction, Transaction

T = TypeVar("T")


class ReviewStatus(IntEnum):
    """proto `ReviewStatus`."""

    PENDING = 1
    APPROVED = 2
    REJECTED = 3


class ReviewDecision(IntEnum):
    """proto `ReviewDecision`."""

    APPROVE = 1
    REJECT = 2


class BusinessVertical(IntEnum):
    """proto `BusinessVertical` (0 = not set)."""

    UNSPECIFIED = 0
    OTHER = 1
    AUTOMOTIVE = 2
    BEAUTY = 3
    APPAREL = 4
    EDUCATION = 5
    ENTERTAINMENT = 6
    EVENT_PLANNING = 7
    FINANCE = 8
    GROCERY = 9
    GOVERNMENT = 10
    HOTEL = 11
    HEALTH = 12
    NONPROFIT = 13
    PROFESSIONAL_SERVICES = 14
    RETAIL = 15
    TRAVEL = 16
    RESTAURANT = 17


class PauseReason:
    """Why a template is paused (stored as text; empty = not paused)."""

    NONE = ""
    BUSINESS = "business"
    QUALITY = "quality"


@dataclass(frozen=True)
class ProfileFields:
    """What a business says about itself (validated by `server.domain.profiles`)."""

    display_name: str
    about: str = ""
    description: str = ""
    address: str = ""
    email: str = ""
    websites: tuple[str, ...] = ()
    vertical: BusinessVertical = BusinessVertical.UNSPECIFIED


@dataclass(frozen=True)
class ProfileRow:
    account_id: str
    fields: ProfileFields  # display_name: the name submitted last
    name_status: ReviewStatus
    name_reason: str
    verified_name: str  # the last approved name, "" if none was approved yet
    name_submitted_at: float
    updated_at: float


@dataclass(frozen=True)
class TemplateContent:
    header: str
    body: str
    footer: str
    buttons: tuple[str, ...]


@dataclass(frozen=True)
class TemplateRow:
    template_id: str
    business_account_id: str
    name: str
    language: str
    category: int  # a MessageCategory: MARKETING, UTILITY or AUTHENTICATION
    content: TemplateContent
    parameter_count: int
    status: ReviewStatus
    reason: str
    pause_reason: str  # a PauseReason; "" when not paused
    created_at: float
    reviewed_at: float | None

    @property
    def paused(self) -> bool:
        return self.pause_reason != PauseReason.NONE


class DirectoryReads(Protocol):
    def get_profile(self, account_id: str) -> ProfileRow | None: ...
    def pending_names(self, limit: int) -> list[ProfileRow]:
        """Profiles whose submitted name is PENDING, oldest submission first (D5)."""
        ...

    def get_template(self, template_id: str) -> TemplateRow | None: ...
    def find_template(
        self, business_account_id: str, name: str, language: str
    ) -> TemplateRow | None: ...
    def list_templates(self, business_account_id: str) -> list[TemplateRow]: ...
    def pending_templates(self, limit: int) -> list[TemplateRow]:
        """PENDING templates, oldest first (D5)."""
        ...


class DirectoryWrites(Protocol):
    def save_profile(self, account_id: str, fields: ProfileFields, at: float) -> ProfileRow:
        """Create or replace the profile, applying the name-review rule atomically (D1)."""
        ...

    def review_name(
        self,
        account_id: str,
        status: ReviewStatus,
        reason: str,
        expected_name: str | None,
    ) -> ProfileRow | None:
        """Set the review of a PENDING name (only if it is still `expected_name`, when given);
        None when nothing was pending (D2)."""
        ...

    def insert_template(self, row: TemplateRow) -> bool:
        """Insert unless (business, name, language) is taken; False then (D3)."""
        ...

    def review_template(
        self, template_id: str, status: ReviewStatus, reason: str, at: float
    ) -> TemplateRow | None:
        """Review a PENDING template; None when it is not pending (D2)."""
        ...

    def set_template_pause(
        self, template_id: str, expected: str, pause_reason: str
    ) -> TemplateRow | None:
        """Change an APPROVED template's pause from `expected` to `pause_reason`; None when it
        is not approved or its pause is no longer `expected` (a conditional UPDATE)."""
        ...

    def pause_templates(self, business_account_id: str, pause_reason: str) -> int:
        """Pause, for `pause_reason`, every APPROVED template of the business that is not
        paused; return how many changed."""
        ...

    def lift_template_pauses(self, business_account_id: str, pause_reason: str) -> int:
        """Unpause the business's templates paused for `pause_reason`; return how many."""
        ...


class DirectoryReadTransaction(ReadTransaction, DirectoryReads, Protocol):
    """A read transaction with the directory's reads."""


class DirectoryTransaction(Transaction, DirectoryReads, DirectoryWrites, Protocol):
    """A write transaction with the directory's operations."""


class DirectoryStore(Protocol):
    async def write(self, fn: Callable[[DirectoryTransaction], T]) -> T: ...
    async def read(self, fn: Callable[[DirectoryReadTransaction], T]) -> T: ...
