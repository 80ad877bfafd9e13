"""Business profiles and the operator's review of their display names.

A BUSINESS account describes itself (name, about, description, address, e-mail, websites,
vertical). Users must be able to trust the name a business shows, so the display name is
reviewed by the operator: a new or changed name is PENDING until approved or rejected, and
until then the last approved name stays the one shown as verified (directory_model D1). A
business cannot launder a name through a quick edit, and a rejection always says why.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from server.domain import validation
from server.domain.auth import Principal, ensure_current
from server.domain.clock import Clock
from server.domain.directory_model import (
    BusinessVertical,
    DirectoryReadTransaction,
    DirectoryStore,
    DirectoryTransaction,
    ProfileFields,
    ProfileRow,
    ReviewDecision,
    ReviewStatus,
)
from server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from server.domain.model import AccountKind
from server.domain.operator import Operator
from server.domain.ports import ReadTransaction

T = TypeVar("T")
MAX_DISPLAY_NAME = 64
MAX_ABOUT = 139
MAX_DESCRIPTION = 512
MAX_ADDRESS = 256
MAX_EMAIL = 128
MAX_WEBSITES = 2
MAX_WEBSITE = 256
MAX_REASON = 512
MAX_PAGE = 200
DEFAULT_PAGE = 50
# A practical e-mail form: local part, '@', a domain with a dot; no spaces.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_FORBIDDEN = ("Cc", "Cf", "Cs", "Co", "Cn")


def text(value: str, *, field: str, limit: int, multiline: bool = False) -> str:
    """`value` if it fits `limit` characters and has no control or invisible formatting
    characters (line breaks allowed when `multiline`); else InvalidArgument saying which."""
    if len(value) > limit:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; at most {limit} are allowed"
        )
    for ch in value:
        if multiline and ch == "\n":
            continue
        if unicodedata.category(ch) in _FORBIDDEN:
            allowed = " (line breaks are allowed)" if multiline else ""
            raise InvalidArgument(
                f"{field} contains the control or invisible character U+{ord(ch):04X}; "
                f"remove it{allowed}"
            )
    return value


def _email(value: str) -> str:
    text(value, field="email", limit=MAX_EMAIL)
    if value and not _EMAIL.fullmatch(value):
        raise InvalidArgument(
            f"email {value[:64]!r} is not an e-mail address like support@example.com"
        )
    return value


def _website(value: str, index: int) -> str:
    field = f"websites[{index}]"
    text(value, field=field, limit=MAX_WEBSITE)
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host, parts = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host or " " in value:
        raise InvalidArgument(
            f"{field} {value[:64]!r} is not an http:// or https:// URL with a host, "
            "like https://example.com"
        )
    return value


def validate_fields(fields: ProfileFields) -> ProfileFields:
    """Every field checked; the first problem is reported with how to fix it."""
    if not fields.display_name.strip():
        raise InvalidArgument(
            f"display_name is required (1-{MAX_DISPLAY_NAME} characters): the name users see"
        )
    if fields.display_name != fields.display_name.strip():
        raise InvalidArgument("display_name must not start or end with white space")
    text(fields.display_name, field="display_name", limit=MAX_DISPLAY_NAME)
    text(fields.about, field="about", limit=MAX_ABOUT)
    text(fields.description, field="description", limit=MAX_DESCRIPTION, multiline=True)
    text(fields.address, field="address", limit=MAX_ADDRESS)
    _email(fields.email)
    if len(fields.websites) > MAX_WEBSITES:
        raise InvalidArgument(
            f"{len(fields.websites)} websites given; at most {MAX_WEBSITES} are allowed"
        )
    for i, site in enumerate(fields.websites):
        _website(site, i)
    return fields


def vertical(number: int) -> BusinessVertical:
    try:
        return BusinessVertical(number)
    except ValueError:
        raise InvalidArgument(
            f"vertical {number} is not a known BusinessVertical; use one of "
            f"{', '.join(v.name for v in BusinessVertical)}"
        ) from None


def review(decision: int, reason: str) -> tuple[ReviewStatus, str]:
    """The status a decision sets and its checked reason (a rejection must give one)."""
    if decision == ReviewDecision.APPROVE:
        return ReviewStatus.APPROVED, text(reason, field="reason", limit=MAX_REASON)
    if decision == ReviewDecision.REJECT:
        if not reason.strip():
            raise InvalidArgument("a rejection needs a reason the business can act on; set reason")
        return ReviewStatus.REJECTED, text(reason, field="reason", limit=MAX_REASON)
    raise InvalidArgument("decision is required: REVIEW_DECISION_APPROVE or REVIEW_DECISION_REJECT")


def page_size(value: int) -> int:
    if value == 0:
        return DEFAULT_PAGE
    if value > MAX_PAGE:
        raise InvalidArgument(f"page_size {value} is too large; at most {MAX_PAGE}")
    return value


@dataclass(frozen=True)
class ProfileView:
    """A profile as one reader may see it: `shown_name` is the approved name when there is one
    (else the submitted one, not verified); `with_review`: the submitted name's review is shown,
    which only the business itself and the operator see (a rejection reason is theirs)."""

    row: ProfileRow
    shown_name: str
    name_verified: bool
    with_review: bool


def view(row: ProfileRow, *, with_review: bool) -> ProfileView:
    if row.verified_name:
        return ProfileView(row, row.verified_name, True, with_review)
    return ProfileView(row, row.fields.display_name, False, with_review)


def as_business(
    caller: Principal, what: str, job: Callable[[DirectoryTransaction], T]
) -> Callable[[DirectoryTransaction], T]:
    """`job`, run only if `caller`'s credential is still valid (as `auth.as_caller`) and its
    account is a BUSINESS account; `what` completes "only business accounts can ..."."""

    def guarded(tx: DirectoryTransaction) -> T:
        ensure_current(tx, caller)
        require_business_kind(tx, caller.account_id, what)
        return job(tx)

    return guarded


def require_business_kind(tx: ReadTransaction, account_id: str, what: str) -> None:
    """Raise FailedPrecondition unless the account is a BUSINESS account."""
    account = tx.get_account(account_id)
    if account is None or account.kind != AccountKind.BUSINESS:
        raise FailedPrecondition(
            f"only business accounts can {what}; register a business account "
            "(CompleteVerification with account_kind ACCOUNT_KIND_BUSINESS, or "
            "`parley register --business`)"
        )


class BusinessProfiles:
    def __init__(self, db: DirectoryStore, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def get(self, caller: Principal, account_id: str) -> ProfileView:
        account_id = validation.uuid_string(account_id, field="account_id")

        def job(tx: DirectoryReadTransaction) -> ProfileRow:
            row = tx.get_profile(account_id)
            if row is None:
                raise NotFound(
                    f"business {account_id} has no profile (not a business account, or it "
                    "has not set one up with UpdateBusinessProfile yet)"
                )
            return row

        row = await self._db.read(job)
        return view(row, with_review=row.account_id == caller.account_id)

    async def update(self, caller: Principal, fields: ProfileFields) -> ProfileView:
        fields = validate_fields(fields)
        now = self._clock.now()

        def job(tx: DirectoryTransaction) -> ProfileRow:
            return tx.save_profile(caller.account_id, fields, now)

        row = await self._db.write(as_business(caller, "have a business profile", job))
        return view(row, with_review=True)

    # -- the operator's side --------------------------------------------------------------

    async def pending(self, operator: Operator, limit: int) -> list[ProfileView]:
        size = page_size(limit)
        rows = await self._db.read(lambda tx: tx.pending_names(size))
        return [view(r, with_review=True) for r in rows]

    async def review_name(
        self,
        operator: Operator,
        account_id: str,
        decision: int,
        reason: str,
        expected_name: str = "",
    ) -> ProfileView:
        account_id = validation.uuid_string(account_id, field="account_id")
        status, reason = review(decision, reason)

        def job(tx: DirectoryTransaction) -> ProfileRow:
            reviewed = tx.review_name(account_id, status, reason, expected_name or None)
            if reviewed is not None:
                return reviewed
            row = tx.get_profile(account_id)
            if row is None:
                raise NotFound(f"business {account_id} has no profile to review")
            if row.name_status != ReviewStatus.PENDING:
                raise FailedPrecondition(
                    f"the display name {row.fields.display_name!r} of business {account_id} "
                    f"was already reviewed ({row.name_status.name}); nothing is pending — list "
                    "what waits with ListPendingReviews"
                )
            raise FailedPrecondition(
                f"the pending display name of business {account_id} is now "
                f"{row.fields.display_name!r}, not {expected_name!r}; review the current name"
            )

        return view(await self._db.write(job), with_review=True)


def fields_from(
    display_name: str,
    about: str,
    description: str,
    address: str,
    email: str,
    websites: Sequence[str],
    vertical_number: int,
) -> ProfileFields:
    """ProfileFields from wire values (an unknown vertical is InvalidArgument)."""
    return ProfileFields(
        display_name, about, description, address, email, tuple(websites), vertical(vertical_number)
    )
