"""The click-to-chat calls of :class:`client.api.ParleyClient`: make, list and delete chat
links, open one (what a user sees before the chat starts), start the chat it offers, and the
number-link setting.

A mixin of ``ParleyClient`` (it uses the client's channel and its ``send``), kept in its own
module as the consent calls are. A link is named by its URL (``https://.../c/CODE``,
``https://.../p/DIGITS?text=...``), its deep link (``parley://chat?code=CODE``) or its bare code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from grpc import aio
from parley.v1 import business_pb2_grpc
from parley.v1 import chat_links_pb2 as lpb

from client.consent_api import _unary

if TYPE_CHECKING:
    from client.api import ParleyClient, SentMessage


class ChatLinkUsageError(ValueError):
    """Something that is not a chat link, a deep link or a code (nothing was sent)."""


@dataclass(frozen=True)
class ChatLink:
    code: str
    url: str
    prefilled_text: str
    label: str
    created_at: float
    opens: int
    chats_started: int


@dataclass(frozen=True)
class NewChatLink:
    link: ChatLink
    qr_png: bytes
    qr_svg: bytes


@dataclass(frozen=True)
class OpenedLink:
    """What a link opens: whom the chat is with, and how it starts."""

    account_id: str
    business: bool
    verified_name: str
    about: str
    prefilled_text: str
    code: str  # "" for a number link


@dataclass(frozen=True)
class LinkSettings:
    number_links: bool
    number_link_url: str
    number_link_opens: int


@dataclass(frozen=True)
class LinkTarget:
    """A parsed link: a code, or a number with its text."""

    code: str = ""
    phone_number: str = ""
    text: str = ""


def parse_link(link: str) -> LinkTarget:
    """``https://host/c/CODE``, ``https://host/p/DIGITS?text=...``, ``parley://chat?code=CODE``
    (or ``?phone=...&text=...``), or a bare code."""
    link = link.strip()
    if "://" not in link:
        if not link or "/" in link:
            raise ChatLinkUsageError(
                f"{link!r} is not a chat link: give its URL (https://.../c/CODE) or its code"
            )
        return LinkTarget(code=link)
    parts = urlsplit(link)
    query = parse_qs(parts.query)

    def first(name: str) -> str:
        return query.get(name, [""])[0]

    if parts.scheme == "parley":
        if first("code"):
            return LinkTarget(code=first("code"))
        if first("phone"):
            return LinkTarget(phone_number=first("phone"), text=first("text"))
    elif parts.scheme in ("http", "https"):
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) >= 2 and segments[-2] == "c":
            return LinkTarget(code=segments[-1])
        if len(segments) >= 2 and segments[-2] == "p":
            return LinkTarget(phone_number="+" + segments[-1], text=first("text"))
    raise ChatLinkUsageError(
        f"{link!r} is not a chat link: expected .../c/CODE, .../p/NUMBER or parley://chat?code="
    )


def _link(m: lpb.ChatLink) -> ChatLink:
    return ChatLink(
        code=m.code,
        url=m.url,
        prefilled_text=m.prefilled_text,
        label=m.label,
        created_at=m.created_at.seconds + m.created_at.nanos / 1e9,
        opens=m.opens,
        chats_started=m.chats_started,
    )


def _settings(m: lpb.ChatLinkSettings) -> LinkSettings:
    return LinkSettings(m.number_links, m.number_link_url, m.number_link_opens)


class ChatLinkCalls:
    """Click-to-chat calls of a :class:`client.api.ParleyClient` (mixed into it)."""

    _channel: aio.Channel

    @cached_property
    def _links_stub(self) -> business_pb2_grpc.BusinessServiceAsyncStub:
        return business_pb2_grpc.BusinessServiceStub(self._channel)

    def _links_client(self) -> ParleyClient:
        return self  # type: ignore[return-value]  # only ever mixed into ParleyClient

    async def create_chat_link(self, prefilled_text: str = "", label: str = "") -> NewChatLink:
        """A new link to this account, with its QR code as PNG and SVG."""
        reply = await _unary(
            self._links_stub.CreateChatLink(
                lpb.CreateChatLinkRequest(prefilled_text=prefilled_text, label=label),
                metadata=self._links_client()._metadata(),
            )
        )
        return NewChatLink(_link(reply.link), reply.qr_png, reply.qr_svg)

    async def chat_links(self) -> list[ChatLink]:
        """This account's links with their open and chat-started counters."""
        reply = await _unary(
            self._links_stub.ListChatLinks(
                lpb.ListChatLinksRequest(), metadata=self._links_client()._metadata()
            )
        )
        return [_link(m) for m in reply.links]

    async def delete_chat_link(self, code_or_url: str) -> None:
        target = parse_link(code_or_url)
        if not target.code:
            raise ChatLinkUsageError("a number link cannot be deleted: turn it off instead")
        await _unary(
            self._links_stub.DeleteChatLink(
                lpb.DeleteChatLinkRequest(code=target.code),
                metadata=self._links_client()._metadata(),
            )
        )

    async def open_chat_link(self, link: str) -> OpenedLink:
        """Whom ``link`` opens a chat with (the server counts one open, not who opened it)."""
        target = parse_link(link)
        reply = await _unary(
            self._links_stub.ResolveChatLink(
                lpb.ResolveChatLinkRequest(
                    code=target.code, phone_number=target.phone_number, text=target.text
                ),
                metadata=self._links_client()._metadata(),
            )
        )
        return OpenedLink(
            reply.account_id,
            reply.business,
            reply.verified_name,
            reply.about,
            reply.prefilled_text,
            reply.code,
        )

    async def start_chat(self, opened: OpenedLink, text: str | None = None) -> SentMessage:
        """Send the chat's first message (the prefilled text unless ``text`` is given),
        carrying the link's code so a business's entry window opens."""
        message = opened.prefilled_text if text is None else text
        if not message:
            raise ChatLinkUsageError("the link has no prefilled text: say what to send")
        return await self._links_client().send(
            opened.account_id, message, chat_link_code=opened.code
        )

    async def chat_link_settings(self) -> LinkSettings:
        reply = await _unary(
            self._links_stub.GetChatLinkSettings(
                lpb.GetChatLinkSettingsRequest(), metadata=self._links_client()._metadata()
            )
        )
        return _settings(reply.settings)

    async def set_number_links(self, enabled: bool) -> LinkSettings:
        """Whether ``/p/<our number>`` links open a chat with us."""
        reply = await _unary(
            self._links_stub.SetChatLinkSettings(
                lpb.SetChatLinkSettingsRequest(number_links=enabled),
                metadata=self._links_client()._metadata(),
            )
        )
        return _settings(reply.settings)
