"""BusinessService's click-to-chat RPCs: convert, one domain call, convert back.

A mixin of `server.rpc.business_servicer.BusinessServicer`, which passes the domain object as
`links=` to its constructor and keeps it as `self._links`.
"""

from __future__ import annotations

from typing import Any

from grpc import aio
from parley.v1 import chat_links_pb2 as pb

from server.domain.links import ChatLinks, LinkView, SettingsView
from server.rpc.convert import timestamp
from server.rpc.interceptors import caller

Context = aio.ServicerContext[Any, Any]


def link_to_proto(view: LinkView) -> pb.ChatLink:
    r = view.row
    return pb.ChatLink(
        code=r.code,
        url=view.url,
        prefilled_text=r.prefilled_text,
        label=r.label,
        created_at=timestamp(r.created_at),
        opens=r.opens,
        chats_started=r.chats_started,
    )


def settings_to_proto(view: SettingsView) -> pb.ChatLinkSettings:
    return pb.ChatLinkSettings(
        number_links=view.number_links,
        number_link_url=view.number_link_url,
        number_link_opens=view.number_link_opens,
    )


class ChatLinkRpcs:
    _links: ChatLinks

    async def CreateChatLink(
        self, request: pb.CreateChatLinkRequest, context: Context
    ) -> pb.CreateChatLinkResponse:
        new = await self._links.create(caller(), request.prefilled_text, request.label)
        return pb.CreateChatLinkResponse(
            link=link_to_proto(new.link), qr_png=new.png, qr_svg=new.svg
        )

    async def ListChatLinks(
        self, request: pb.ListChatLinksRequest, context: Context
    ) -> pb.ListChatLinksResponse:
        views = await self._links.list_own(caller())
        return pb.ListChatLinksResponse(links=[link_to_proto(v) for v in views])

    async def DeleteChatLink(
        self, request: pb.DeleteChatLinkRequest, context: Context
    ) -> pb.DeleteChatLinkResponse:
        await self._links.delete(caller(), request.code)
        return pb.DeleteChatLinkResponse()

    async def ResolveChatLink(
        self, request: pb.ResolveChatLinkRequest, context: Context
    ) -> pb.ResolveChatLinkResponse:
        r = await self._links.resolve(caller(), request.code, request.phone_number, request.text)
        return pb.ResolveChatLinkResponse(
            account_id=r.account_id,
            business=r.business,
            verified_name=r.verified_name,
            about=r.about,
            prefilled_text=r.prefilled_text,
            code=r.code,
        )

    async def GetChatLinkSettings(
        self, request: pb.GetChatLinkSettingsRequest, context: Context
    ) -> pb.GetChatLinkSettingsResponse:
        view = await self._links.settings(caller())
        return pb.GetChatLinkSettingsResponse(settings=settings_to_proto(view))

    async def SetChatLinkSettings(
        self, request: pb.SetChatLinkSettingsRequest, context: Context
    ) -> pb.SetChatLinkSettingsResponse:
        view = await self._links.set_settings(caller(), request.number_links)
        return pb.SetChatLinkSettingsResponse(settings=settings_to_proto(view))
