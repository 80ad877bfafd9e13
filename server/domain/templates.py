"""Message templates: what a business may send to start a conversation, reviewed first.

A template is created PENDING; the operator approves or rejects it (with a reason). Its
category is the one the operator approved and can never change afterwards (directory_model
D4): no silent recategorisation, and a new wording is a new template (name or language), so a
template id always means the same approved text. The later send rules read a template by id
in one primary-key lookup: business, category, status, paused.

Limits follow WhatsApp's: name lowercase [a-z0-9_] up to 512, body up to 1024 characters with
parameters {{1}}..{{n}} numbered without gaps, header and footer up to 60 (no parameters), up
to 10 quick-reply buttons of up to 25 characters.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from server.domain import validation
from server.domain.auth import Principal
from server.domain.clock import Clock
from server.domain.directory_model import (
    DirectoryReadTransaction,
    DirectoryStore,
    DirectoryTransaction,
    PauseReason,
    ReviewStatus,
    TemplateContent,
    TemplateRow,
)
from server.domain.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from server.domain.model import MessageCategory
from server.domain.operator import Operator
from server.domain.profiles import as_business, page_size, require_business_kind, review, text

MAX_NAME = 512
MAX_BODY = 1024
MAX_HEADER = 60
MAX_FOOTER = 60
MAX_BUTTONS = 10
MAX_BUTTON = 25
TEMPLATE_CATEGORIES = (
    MessageCategory.MARKETING,
    MessageCategory.UTILITY,
    MessageCategory.AUTHENTICATION,
)
_NAME = re.compile(r"[a-z0-9_]+")
# en, pt_BR, zh_Hant_TW: a language, then optional script/region parts.
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Za-z0-9]{2,8}){0,2}")
_PARAMETER = re.compile(r"\{\{([^{}]*)\}\}")
_NUMBER = re.compile(r"[1-9][0-9]{0,2}")


def template_name(value: str) -> str:
    if not value:
        raise InvalidArgument("name is required: lowercase letters, digits and '_'")
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"name is {len(value)} characters long; at most {MAX_NAME}")
    if not _NAME.fullmatch(value):
        raise InvalidArgument(
            f"name {value[:64]!r} may contain only lowercase letters a-z, digits and '_', "
            "e.g. order_shipped"
        )
    return value


def language(value: str) -> str:
    if not _LANGUAGE.fullmatch(value):
        raise InvalidArgument(f"language {value[:32]!r} is not a language tag like en, de or pt_BR")
    return value


def category(value: int) -> MessageCategory:
    if value not in TEMPLATE_CATEGORIES:
        raise InvalidArgument(
            f"category {value} is not a template category; use MESSAGE_CATEGORY_MARKETING, "
            "MESSAGE_CATEGORY_UTILITY or MESSAGE_CATEGORY_AUTHENTICATION"
        )
    return MessageCategory(value)


def parameter_count(body: str) -> int:
    """The number n of parameters {{1}}..{{n}} in `body`; InvalidArgument for a malformed
    placeholder or a gap in the numbering."""
    numbers: set[int] = set()
    for match in _PARAMETER.finditer(body):
        inner = match.group(1)
        if not _NUMBER.fullmatch(inner):
            raise InvalidArgument(
                f"body has the placeholder {match.group(0)[:40]!r}; parameters are written "
                "{{1}}, {{2}}, ... (a number from 1, no spaces)"
            )
        numbers.add(int(inner))
    stripped = _PARAMETER.sub("", body)
    if "{{" in stripped or "}}" in stripped:
        raise InvalidArgument(
            "body has an unbalanced '{{' or '}}'; parameters are written {{1}}, {{2}}, ..."
        )
    if numbers and numbers != set(range(1, max(numbers) + 1)):
        missing = sorted(set(range(1, max(numbers) + 1)) - numbers)
        raise InvalidArgument(
            f"body parameters must be numbered 1..n without gaps; missing "
            f"{', '.join(f'{{{{{m}}}}}' for m in missing)}"
        )
    return len(numbers)


def _plain(value: str, *, field: str, limit: int) -> str:
    text(value, field=field, limit=limit)
    if "{{" in value or "}}" in value:
        raise InvalidArgument(f"{field} may not contain parameters; put them in the body")
    return value


def content(header: str, body: str, footer: str, buttons: Sequence[str]) -> TemplateContent:
    if not body.strip():
        raise InvalidArgument(f"content.body is required (at most {MAX_BODY} characters)")
    text(body, field="content.body", limit=MAX_BODY, multiline=True)
    _plain(header, field="content.header", limit=MAX_HEADER)
    _plain(footer, field="content.footer", limit=MAX_FOOTER)
    if len(buttons) > MAX_BUTTONS:
        raise InvalidArgument(f"{len(buttons)} buttons given; at most {MAX_BUTTONS}")
    for i, button in enumerate(buttons):
        if not button.strip():
            raise InvalidArgument(f"content.buttons[{i}] is empty; give it a label")
        _plain(button, field=f"content.buttons[{i}]", limit=MAX_BUTTON)
    return TemplateContent(header, body, footer, tuple(buttons))


def _not_found(template_id: str) -> NotFound:
    return NotFound(
        f"template {template_id} not found (or not approved, and not yours); check the id"
    )


class TemplateCatalog:
    def __init__(self, db: DirectoryStore, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def create(
        self,
        caller: Principal,
        name: str,
        language_tag: str,
        category_number: int,
        body: TemplateContent,
    ) -> TemplateRow:
        row = TemplateRow(
            template_id=str(uuid.uuid4()),
            business_account_id=caller.account_id,
            name=template_name(name),
            language=language(language_tag),
            category=category(category_number),
            content=content(body.header, body.body, body.footer, body.buttons),
            parameter_count=parameter_count(body.body),
            status=ReviewStatus.PENDING,
            reason="",
            pause_reason=PauseReason.NONE,
            created_at=self._clock.now(),
            reviewed_at=None,
        )

        def job(tx: DirectoryTransaction) -> TemplateRow:
            if not tx.insert_template(row):
                raise AlreadyExists(
                    f"a template named {row.name!r} in language {row.language!r} exists "
                    "already; templates are never edited: choose a new name (e.g. "
                    f"{row.name}_v2) or another language"
                )
            return row

        return await self._db.write(as_business(caller, "create templates", job))

    async def list_own(self, caller: Principal) -> list[TemplateRow]:
        def job(tx: DirectoryReadTransaction) -> list[TemplateRow]:
            require_business_kind(tx, caller.account_id, "have templates")
            return tx.list_templates(caller.account_id)

        return await self._db.read(job)

    async def get(
        self,
        caller: Principal,
        template_id: str,
        business_account_id: str,
        name: str,
        language_tag: str,
    ) -> TemplateRow:
        """By id, or by (business, name, language); hidden unless approved or the caller's."""
        if template_id:
            tid = validation.uuid_string(template_id, field="template_id")
            row = await self._db.read(lambda tx: tx.get_template(tid))
            shown = tid
        elif business_account_id or name or language_tag:
            business = validation.uuid_string(business_account_id, field="business_account_id")
            key = (business, template_name(name), language(language_tag))
            row = await self._db.read(lambda tx: tx.find_template(*key))
            shown = f"{key[1]!r} ({key[2]}) of business {business}"
        else:
            raise InvalidArgument(
                "name the template: template_id, or business_account_id with name and language"
            )
        if row is None or (
            row.status != ReviewStatus.APPROVED and row.business_account_id != caller.account_id
        ):
            raise _not_found(shown)
        return row

    async def _set_pause(
        self, caller: Principal, template_id: str, expected: str, new: str
    ) -> TemplateRow:
        tid = validation.uuid_string(template_id, field="template_id")

        def job(tx: DirectoryTransaction) -> TemplateRow:
            row = tx.get_template(tid)
            if row is None or row.business_account_id != caller.account_id:
                raise _not_found(tid)
            if row.status != ReviewStatus.APPROVED:
                raise FailedPrecondition(
                    f"template {tid} is {row.status.name}; only an APPROVED template can be "
                    "paused or unpaused"
                )
            if row.pause_reason == new:
                return row  # already as asked: pausing twice is not an error
            if row.pause_reason == PauseReason.QUALITY:
                raise FailedPrecondition(
                    f"template {tid} is paused because the business's quality rating is low; "
                    "it is unpaused when the quality recovers, not by request"
                )
            changed = tx.set_template_pause(tid, expected, new)
            if changed is None:  # another writer changed it since the read: say so
                raise FailedPrecondition(
                    f"template {tid} changed while pausing it; read it again and retry"
                )
            return changed

        return await self._db.write(as_business(caller, "pause or unpause templates", job))

    async def pause(self, caller: Principal, template_id: str) -> TemplateRow:
        return await self._set_pause(caller, template_id, PauseReason.NONE, PauseReason.BUSINESS)

    async def unpause(self, caller: Principal, template_id: str) -> TemplateRow:
        return await self._set_pause(caller, template_id, PauseReason.BUSINESS, PauseReason.NONE)

    async def pause_all_for_quality(self, business_account_id: str) -> int:
        """Pause every approved template of the business because its quality turned RED (the
        quality rule calls this); return how many were paused. Templates the business paused
        itself stay paused for that reason, so lifting the quality pause leaves them paused."""
        return await self._db.write(
            lambda tx: tx.pause_templates(business_account_id, PauseReason.QUALITY)
        )

    async def lift_quality_pause(self, business_account_id: str) -> int:
        """Unpause the templates paused for quality (the quality rule calls this on recovery)."""
        return await self._db.write(
            lambda tx: tx.lift_template_pauses(business_account_id, PauseReason.QUALITY)
        )

    # -- the operator's side --------------------------------------------------------------

    async def pending(self, operator: Operator, limit: int) -> list[TemplateRow]:
        size = page_size(limit)
        return await self._db.read(lambda tx: tx.pending_templates(size))

    async def review(
        self, operator: Operator, template_id: str, decision: int, reason: str
    ) -> TemplateRow:
        tid = validation.uuid_string(template_id, field="template_id")
        status, reason = review(decision, reason)
        now = self._clock.now()

        def job(tx: DirectoryTransaction) -> TemplateRow:
            reviewed = tx.review_template(tid, status, reason, now)
            if reviewed is not None:
                return reviewed
            row = tx.get_template(tid)
            if row is None:
                raise NotFound(
                    f"template {tid} not found; list pending ones with ListPendingReviews"
                )
            raise FailedPrecondition(
                f"template {tid} was already reviewed ({row.status.name}); a reviewed template "
                "is final — the business creates a new one to change it"
            )

        return await self._db.write(job)
