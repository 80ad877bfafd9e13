"""Click-to-chat: links that open a chat with an account, their QR codes, the entry window.

Any account (person or business) makes links: an unguessable code behind
`<public URL>/c/<code>`, with a prefilled text for the opener's first message. A number link,
`<public URL>/p/<digits>?text=...`, needs no code; it resolves only when the account allows it
(on by default for businesses, which publish their number anyway; off for persons, so nobody's
number becomes a public link without their consent).

Rules kept here, and what enforces each with concurrent writers (`links_model` L1-L4):
1. **Counters, never openers.** Opening a link (the landing page, ResolveChatLink) bumps the
   link's `opens` and writes nothing else (L1): not the opener's account, address or time.
   A chat started from the link bumps `chats_started`; the entry window it opens names the
   business and the user, never the link, so no row ties the user to the link they used.
2. **The 72-hour entry window.** A message to a business that carries the code of one of
   that business's links (`SendMessageRequest.chat_link_code`, cleartext) opens the window
   of (business, sender) for 72 hours from that message, unless one is still open: one
   conditional upsert (L2), and only the writer whose upsert opened it counts the chat, so
   a chat start is counted once per user per window however many messages carry the code.
   The sending rules (`server.domain.sending`) treat an open entry window like the 24-hour
   customer-service window; the billing rules read it by (business, user).
   To a person, the code is checked the same way and each message carrying it counts a chat
   (no per-user row is kept for persons; the reference client carries it on the first message
   only).
3. A code that is not a live link of the recipient refuses the send FAILED_PRECONDITION (the
   client resolved a link that was deleted since, or sent it to the wrong account): it can
   send again without the code. The code is checked and dropped: never stored, never
   delivered (the opener's client may say which link it came from inside the encrypted
   content, where only the business reads it).
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import segno

from server.domain import validation
from server.domain.auth import Principal, as_caller, ensure_current, typeable_secret
from server.domain.clock import Clock
from server.domain.directory_model import (
    DirectoryReadTransaction,
    DirectoryStore,
    DirectoryTransaction,
)
from server.domain.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from server.domain.links_model import LinkRow, LinkSettingsRow
from server.domain.model import AccountKind, AccountRow
from server.domain.ports import ReadTransaction, Transaction

if TYPE_CHECKING:  # admission imports nothing of this module; only its types are needed here
    from server.domain.admission import DeferredWrite, Draft, SendJob

MAX_PREFILLED_CHARS = 140
MAX_LABEL_CHARS = 64
# 12 random bytes: 96 bits, 16 URL-safe characters. Guessing one of a billion live links
# still takes ~2^66 tries.
CODE_BYTES = 12
CODE_PATTERN = re.compile(r"[A-Za-z0-9_-]{16}")
# Links per account: plenty for every poster, ad and shop window a business runs; a bound on
# what one account can make the server store.
MAX_LINKS = 200
ENTRY_WINDOW = 72 * 3600.0
# QR: error correction M (15 % of the symbol may be damaged: a printed poster), 10 pixels a
# module, the 4-module quiet zone the standard asks for.
QR_ERROR = "m"
QR_SCALE = 10


def new_code() -> str:
    return typeable_secret(CODE_BYTES)


def check_code(code: str, *, field: str = "code") -> str:
    if not code:
        raise InvalidArgument(f"{field} is required: the part of the link after /c/")
    if not CODE_PATTERN.fullmatch(code):
        shown = code if len(code) <= 32 else code[:32] + "…"
        raise InvalidArgument(
            f"{field} {shown!r} is not a chat link code: 16 characters of A-Z, a-z, 0-9, '-'"
            " and '_', as after /c/ in the link"
        )
    return code


def _text(value: str, *, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; at most {limit} are allowed"
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Co") and ch != "\n" for ch in value):
        raise InvalidArgument(f"{field} must not contain control characters (newlines are fine)")
    return value


def prefilled_text(value: str, *, field: str = "prefilled_text") -> str:
    return _text(value, field=field, limit=MAX_PREFILLED_CHARS)


def qr_png(url: str) -> bytes:
    out = io.BytesIO()
    segno.make(url, error=QR_ERROR, micro=False).save(out, kind="png", scale=QR_SCALE)
    return out.getvalue()


def qr_svg(url: str) -> bytes:
    out = io.BytesIO()
    segno.make(url, error=QR_ERROR, micro=False).save(
        out, kind="svg", scale=QR_SCALE, title="QR code of " + url
    )
    return out.getvalue()


def qr_terminal(url: str) -> str:
    """The QR code drawn with Unicode half blocks, for a terminal."""
    out = io.StringIO()
    segno.make(url, error=QR_ERROR, micro=False).terminal(out=out, compact=True)
    return out.getvalue()


# -- views ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkView:
    row: LinkRow
    url: str


@dataclass(frozen=True)
class NewLink:
    link: LinkView
    png: bytes
    svg: bytes


@dataclass(frozen=True)
class Resolution:
    """What the opener of a link sees: whom the chat is with and how it starts."""

    account_id: str
    business: bool
    verified_name: str  # "" for a person or a business not approved yet
    about: str
    prefilled_text: str
    code: str  # "" for a number link


@dataclass(frozen=True)
class SettingsView:
    number_links: bool
    number_link_url: str
    number_link_opens: int


def number_links_allowed(account: AccountRow, settings: LinkSettingsRow | None) -> bool:
    if settings is not None and settings.number_links is not None:
        return settings.number_links
    return account.kind == AccountKind.BUSINESS


def _resolution(
    tx: DirectoryReadTransaction, account: AccountRow, text: str, code: str
) -> Resolution:
    if account.kind != AccountKind.BUSINESS:
        return Resolution(account.account_id, False, "", "", text, code)
    profile = tx.get_profile(account.account_id)
    name = profile.verified_name if profile else ""
    about = profile.fields.about if profile else ""
    return Resolution(account.account_id, True, name, about, text, code)


class ChatLinks:
    """CreateChatLink ... SetChatLinkSettings, and the landing page's reads.

    `public_url` is the base of every link; the app sets it once the HTTP listener has its
    port when the operator did not configure one."""

    def __init__(
        self,
        db: DirectoryStore,
        clock: Clock,
        public_url: str,
        test_numbers: Collection[str] = (),
    ) -> None:
        self._db = db
        self._clock = clock
        self.public_url = public_url.rstrip("/")
        self._test_numbers = test_numbers

    def url(self, code: str) -> str:
        return f"{self.public_url}/c/{code}"

    def number_url(self, phone_number: str) -> str:
        return f"{self.public_url}/p/{phone_number.lstrip('+')}"

    async def create(self, caller: Principal, text: str, label: str) -> NewLink:
        text = prefilled_text(text)
        label = _text(label.strip(), field="label", limit=MAX_LABEL_CHARS)
        row = LinkRow(new_code(), caller.account_id, text, label, self._clock.now(), 0, 0)

        def job(tx: Transaction) -> None:
            if not tx.insert_link(row, MAX_LINKS):
                raise ResourceExhausted(
                    f"you have {MAX_LINKS} chat links, the most an account may have; delete"
                    " some you no longer use (DeleteChatLink)"
                )

        await self._db.write(as_caller(caller, job))
        url = self.url(row.code)
        return NewLink(LinkView(row, url), qr_png(url), qr_svg(url))

    async def list_own(self, caller: Principal) -> list[LinkView]:
        rows = await self._db.read(lambda tx: tx.links_of(caller.account_id))
        return [LinkView(r, self.url(r.code)) for r in rows]

    async def delete(self, caller: Principal, code: str) -> None:
        code = check_code(code)

        def job(tx: Transaction) -> None:
            if not tx.delete_link(caller.account_id, code):
                raise NotFound(
                    f"you have no chat link {code}; ListChatLinks shows yours (was it deleted"
                    " already?)"
                )

        await self._db.write(as_caller(caller, job))

    async def resolve(
        self, caller: Principal | None, code: str, phone_number: str, text: str
    ) -> Resolution:
        """Whom the link opens a chat with; counts one open (rule 1). `caller` is None for the
        landing page, which anyone may open."""
        if bool(code) == bool(phone_number):
            raise InvalidArgument(
                "give either code (a /c/<code> link) or phone_number (a /p/<number> link),"
                " not both and not neither"
            )
        if code:
            code = check_code(code)
            if text:
                raise InvalidArgument(
                    "text goes with phone_number only: a code link has its own prefilled text"
                )
        else:
            phone_number = validation.phone_number(phone_number, allow=self._test_numbers)
            text = prefilled_text(text, field="text")

        def job(tx: DirectoryTransaction) -> Resolution:
            if caller is not None:
                ensure_current(tx, caller)
            return self._open_code(tx, code) if code else self._open_number(tx, phone_number, text)

        return await self._db.write(job)

    @staticmethod
    def _open_code(tx: DirectoryTransaction, code: str) -> Resolution:
        row = tx.count_open(code)
        account = None if row is None else tx.get_account(row.account_id)
        if row is None or account is None:
            raise NotFound(
                f"no chat link {code}: it was deleted, or the link is mistyped; ask whoever"
                " shared it for a new one"
            )
        return _resolution(tx, account, row.prefilled_text, code)

    @staticmethod
    def _open_number(tx: DirectoryTransaction, phone_number: str, text: str) -> Resolution:
        account = tx.get_account_by_phone(phone_number)
        if account is None or not number_links_allowed(
            account, tx.link_settings(account.account_id)
        ):
            # The same answer whether or not the number is on Parley.
            raise NotFound(
                f"no account takes chats from a number link at {phone_number}; ask its owner"
                " for a chat link (/c/...)"
            )
        tx.count_number_link_open(account.account_id)
        return _resolution(tx, account, text, "")

    async def link_for_qr(self, code: str) -> str:
        """The URL of a live link (for its QR image: no open counted)."""
        code = check_code(code)
        row = await self._db.read(lambda tx: tx.get_link(code))
        if row is None:
            raise NotFound(f"no chat link {code}")
        return self.url(code)

    async def settings(self, caller: Principal) -> SettingsView:
        def read(tx: ReadTransaction) -> SettingsView:
            return self._settings_view(tx, caller.account_id, tx.link_settings(caller.account_id))

        return await self._db.read(read)

    async def set_settings(self, caller: Principal, number_links: bool) -> SettingsView:
        def job(tx: Transaction) -> SettingsView:
            row = tx.set_number_links(caller.account_id, number_links)
            return self._settings_view(tx, caller.account_id, row)

        return await self._db.write(as_caller(caller, job))

    def _settings_view(
        self, tx: ReadTransaction, account_id: str, row: LinkSettingsRow | None
    ) -> SettingsView:
        account = tx.get_account(account_id)
        if account is None:
            raise NotFound("your account no longer exists")
        return SettingsView(
            number_links_allowed(account, row),
            self.number_url(account.phone_number),
            row.number_link_opens if row else 0,
        )


# -- the send's rule ------------------------------------------------------------------------


class OpenEntryWindow(NamedTuple):
    business: str
    user: str
    at: float
    code: str

    def apply(self, tx: Transaction) -> None:
        if tx.open_entry_window(self.business, self.user, self.at, self.at + ENTRY_WINDOW):
            tx.count_chat_started(self.code)


class CountChatStarted(NamedTuple):
    code: str

    def apply(self, tx: Transaction) -> None:
        tx.count_chat_started(self.code)


class ChatLinkRule:
    """Admission rule for `chat_link_code` (rules 2-3 above): before the business rule, so the
    entry window its deferred write opens is the business's to read from the next send on."""

    def prepare(self, job: SendJob, drafts: Sequence[Draft]) -> None:
        pass

    def check(self, draft: Draft, job: SendJob) -> Sequence[DeferredWrite]:
        r = draft.request
        code = r.chat_link_code
        if not code:
            return ()
        if draft.to_self:
            raise InvalidArgument(
                "chat_link_code goes on the first message to the link's account, not on a"
                " copy to your own devices; leave it empty here"
            )
        if r.online_only:
            raise InvalidArgument(
                "chat_link_code goes on a stored message (the chat's first), not on an"
                " online-only one; leave it empty here"
            )
        check_code(code, field="chat_link_code")
        link = job.memo("link", code, lambda: job.tx.get_link(code))
        if link is None or link.account_id != r.recipient_account_id:
            raise FailedPrecondition(
                f"chat_link_code {code} is not a live chat link of the recipient (deleted, or"
                " another account's); send the message without chat_link_code"
            )
        now = draft.message.server_ts
        if job.account_kind(r.recipient_account_id) == AccountKind.BUSINESS:
            return (OpenEntryWindow(r.recipient_account_id, job.caller.account_id, now, code),)
        return (CountChatStarted(code),)


def entry_window_open(tx: ReadTransaction, business: str, user: str, now: float) -> float | None:
    """When the pair's entry window closes, if it is open at `now`; else None."""
    row = tx.entry_window(business, user)
    return row.closes_at if row is not None and row.opened_at <= now < row.closes_at else None
