"""Template messages, sans IO: the checks and the rendering both ends of a conversation share.

A business message in a paid category (MARKETING, UTILITY, AUTHENTICATION) must be made from a
template the operator approved: its plaintext (a ``parley.v1.TemplateMessage``) carries only the
template's id, its language and the values of its ``{{n}}`` parameters, never free text, and the
envelope's cleartext ``BusinessMetadata`` names the template and its category. The server checks
the cleartext (it never sees the text); the **recipient's client** closes the gap with the checks
of this module: it shows a template message only when the template it names

- is known and APPROVED (an unknown template is fetched once with GetTemplate before refusing),
- belongs to the sender (a business cannot borrow another's approved wording),
- is the one the envelope names (``template_id``, or ``template_name`` when the server relayed no
  id) — so the category the server checked is the category of the text shown,
- has the envelope's category (a MARKETING template cannot travel at the UTILITY price),
- is in the language the message says, with exactly ``parameter_count`` parameters, each 1 to
  :data:`MAX_PARAMETER_LENGTH` characters on one line;

and it refuses free text (a ``DataMessage``) whose envelope claims a template category. The
sender's client runs :func:`check_parameters` before encrypting, so an honest business learns of
a bad parameter at once instead of from a refused message.

Everything here is a pure function of a :class:`TemplateRecord` (what GetTemplate returned), a
``TemplateMessage`` and the envelope's :class:`EnvelopeLabel`: no network, no store, no clock,
so every refusal is unit-tested on its own (tests/test_templates.py) and the receive path of
:mod:`client.api` only fetches, caches and calls.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from parley.v1 import business_pb2 as bpb
from parley.v1 import content_pb2 as cpb
from parley.v1 import messaging_pb2 as mpb

MAX_PARAMETER_LENGTH: Final = 256
"""Characters per parameter value: room for a name, an order number, a date or a link, not
for a letter (a parameter is a blank in approved text, not a way around the review)."""
TEMPLATE_CATEGORIES: Final = frozenset(
    {
        mpb.MESSAGE_CATEGORY_MARKETING,
        mpb.MESSAGE_CATEGORY_UTILITY,
        mpb.MESSAGE_CATEGORY_AUTHENTICATION,
    }
)
"""The categories only a template may carry; free-form business replies are SERVICE."""
_PLACEHOLDER = re.compile(r"\{\{([1-9][0-9]{0,2})\}\}")


class Refusal(enum.StrEnum):
    """Why a template message (or a business's free text) is not shown."""

    UNKNOWN_TEMPLATE = "unknown_template"
    NOT_APPROVED = "not_approved"
    OTHER_BUSINESS = "other_business"
    TEMPLATE_MISMATCH = "template_mismatch"
    CATEGORY_MISMATCH = "category_mismatch"
    LANGUAGE_MISMATCH = "language_mismatch"
    PARAMETER_COUNT = "parameter_count"
    PARAMETER_INVALID = "parameter_invalid"
    FREE_TEXT = "free_text"


class TemplateRefused(Exception):
    """A check failed; ``reason`` says which, the message says what was wrong."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def category_name(category: int) -> str:
    """``utility`` for MESSAGE_CATEGORY_UTILITY; ``none`` for an unset category."""
    if category == mpb.MESSAGE_CATEGORY_UNSPECIFIED:
        return "none"
    try:
        return mpb.MessageCategory.Name(category).removeprefix("MESSAGE_CATEGORY_").lower()  # type: ignore[arg-type]
    except ValueError:
        return f"unknown ({category})"


@dataclass(frozen=True)
class TemplateRecord:
    """What the client knows of a template (GetTemplate's answer, cached in the store)."""

    template_id: str
    business_account_id: str
    name: str
    language: str
    category: int
    status: int
    """``parley.v1.ReviewStatus``."""
    paused: bool
    parameter_count: int
    body: str
    header: str = ""
    footer: str = ""
    buttons: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, t: bpb.Template) -> TemplateRecord:
        c = t.content
        return cls(
            template_id=t.template_id,
            business_account_id=t.business_account_id,
            name=t.name,
            language=t.language,
            category=t.category,
            status=t.status,
            paused=t.paused,
            parameter_count=t.parameter_count,
            body=c.body,
            header=c.header,
            footer=c.footer,
            buttons=tuple(c.buttons),
        )

    @property
    def approved(self) -> bool:
        return self.status == bpb.REVIEW_STATUS_APPROVED


@dataclass(frozen=True)
class EnvelopeLabel:
    """The envelope's cleartext ``BusinessMetadata``: what the server saw and checked."""

    category: int = mpb.MESSAGE_CATEGORY_UNSPECIFIED
    template_id: str = ""
    template_name: str = ""

    @classmethod
    def from_proto(cls, envelope: mpb.Envelope) -> EnvelopeLabel:
        b = envelope.business
        return cls(b.category, b.template_id, b.template_name)


@dataclass(frozen=True)
class Rendered:
    """A template filled in: the parts a client lays out, and :attr:`text` for a plain view."""

    body: str
    header: str = ""
    footer: str = ""
    buttons: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """Header, body and footer on their own lines, then the buttons as ``[label]``."""
        parts = [p for p in (self.header, self.body, self.footer) if p]
        if self.buttons:
            parts.append(" ".join(f"[{b}]" for b in self.buttons))
        return "\n".join(parts)


def check_parameters(record: TemplateRecord, parameters: Sequence[str]) -> None:
    """Exactly ``record.parameter_count`` values, each 1 to :data:`MAX_PARAMETER_LENGTH`
    characters, on one line, without control characters.

    One line because a parameter fills a blank in approved text: line breaks and tabs would let
    it lay out a message of its own around the approved wording.

    Raises:
        TemplateRefused: PARAMETER_COUNT or PARAMETER_INVALID.
    """
    if len(parameters) != record.parameter_count:
        raise TemplateRefused(
            Refusal.PARAMETER_COUNT,
            f"template {record.name!r} takes {record.parameter_count} parameter(s)"
            f" ({{{{1}}}}..), {len(parameters)} given",
        )
    for number, value in enumerate(parameters, 1):
        if not value.strip():
            raise TemplateRefused(
                Refusal.PARAMETER_INVALID, f"parameter {{{{{number}}}}} is empty; give it a value"
            )
        if len(value) > MAX_PARAMETER_LENGTH:
            raise TemplateRefused(
                Refusal.PARAMETER_INVALID,
                f"parameter {{{{{number}}}}} is {len(value)} characters long;"
                f" at most {MAX_PARAMETER_LENGTH}",
            )
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise TemplateRefused(
                Refusal.PARAMETER_INVALID,
                f"parameter {{{{{number}}}}} contains a line break, tab or other control"
                " character; a parameter is one line of text",
            )


def render(record: TemplateRecord, parameters: Sequence[str]) -> Rendered:
    """The approved text with ``{{n}}`` replaced by ``parameters[n-1]``, in one pass: a value
    that itself contains ``{{2}}`` is shown as it is, never substituted again. Call
    :func:`check_parameters` first (a placeholder without a value is left as it is)."""

    def fill(match: re.Match[str]) -> str:
        index = int(match.group(1)) - 1
        return parameters[index] if index < len(parameters) else match.group(0)

    return Rendered(
        body=_PLACEHOLDER.sub(fill, record.body),
        header=record.header,
        footer=record.footer,
        buttons=record.buttons,
    )


def check_template_message(
    record: TemplateRecord | None,
    message: cpb.TemplateMessage,
    *,
    sender_account_id: str,
    label: EnvelopeLabel,
) -> Rendered:
    """Every check a recipient makes before showing a template message (see the module
    docstring), then the rendering. ``record`` is the template ``message.template_id`` names,
    None when the server does not know it (or will not show it: not approved).

    Raises:
        TemplateRefused: the first check that failed.
    """
    if record is None or record.template_id != message.template_id:
        raise TemplateRefused(
            Refusal.UNKNOWN_TEMPLATE,
            f"template {message.template_id or '(none)'} is unknown to the server"
            " (never approved, or deleted)",
        )
    if record.business_account_id != sender_account_id:
        raise TemplateRefused(
            Refusal.OTHER_BUSINESS,
            f"template {record.name!r} belongs to business {record.business_account_id},"
            f" not to the sender {sender_account_id}",
        )
    if not record.approved:
        raise TemplateRefused(
            Refusal.NOT_APPROVED, f"template {record.name!r} is not approved by the operator"
        )
    if label.template_id and label.template_id != record.template_id:
        raise TemplateRefused(
            Refusal.TEMPLATE_MISMATCH,
            f"the envelope names template {label.template_id} but the message is made from"
            f" {record.template_id} ({record.name!r})",
        )
    if label.template_name != record.name and (label.template_name or not label.template_id):
        named = repr(label.template_name) if label.template_name else "no template"
        raise TemplateRefused(
            Refusal.TEMPLATE_MISMATCH,
            f"the envelope names {named} but the message is made from {record.name!r}",
        )
    if label.category != record.category:
        raise TemplateRefused(
            Refusal.CATEGORY_MISMATCH,
            f"the envelope says category {category_name(label.category)} but template"
            f" {record.name!r} is {category_name(record.category)}",
        )
    if message.language != record.language:
        raise TemplateRefused(
            Refusal.LANGUAGE_MISMATCH,
            f"the message says language {message.language!r} but template {record.name!r}"
            f" is {record.language!r}",
        )
    check_parameters(record, message.parameters)
    return render(record, message.parameters)


def check_free_text(label: EnvelopeLabel) -> None:
    """Free text (a ``DataMessage``) is shown only outside the template categories: a person's
    message (no category) or a business's SERVICE reply.

    Raises:
        TemplateRefused: FREE_TEXT, when the envelope claims MARKETING, UTILITY or
            AUTHENTICATION — text no operator reviewed, sent under a template's category.
    """
    if label.category in TEMPLATE_CATEGORIES:
        raise TemplateRefused(
            Refusal.FREE_TEXT,
            f"free text sent as category {category_name(label.category)}: that category is"
            " only for messages made from an approved template",
        )
