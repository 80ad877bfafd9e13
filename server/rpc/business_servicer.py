"""BusinessService: convert, one domain call, convert back.

The servicer is assembled from one mixin per area of the service (profiles and templates here,
consent in `consent_rpcs`, the sending rules' in `sending_rpcs`), so each area's RPCs live
beside each other and areas do not share lines.
"""

from __future__ import annotations

from typing import Any

from grpc import aio
from parley.v1 import business_pb2 as bpb
from parley.v1 import business_pb2_grpc

from server.domain.consent import ConsentBook
from server.domain.links import ChatLinks
from server.domain.profiles import BusinessProfiles
from server.domain.sending import SendingDesk
from server.domain.support import SupportDesk
from server.domain.templates import TemplateCatalog
from server.rpc.chat_link_rpcs import ChatLinkRpcs
from server.rpc.consent_rpcs import ConsentRpcs
from server.rpc.directory_convert import (
    content_from_proto,
    profile_fields_from_proto,
    profile_to_proto,
    template_to_proto,
)
from server.rpc.interceptors import caller
from server.rpc.sending_rpcs import SendingRpcs
from server.rpc.support_rpcs import SupportRpcs

Context = aio.ServicerContext[Any, Any]


class ProfileRpcs:
    _profiles: BusinessProfiles

    async def GetBusinessProfile(
        self, request: bpb.GetBusinessProfileRequest, context: Context
    ) -> bpb.GetBusinessProfileResponse:
        view = await self._profiles.get(caller(), request.account_id)
        return bpb.GetBusinessProfileResponse(profile=profile_to_proto(view))

    async def UpdateBusinessProfile(
        self, request: bpb.UpdateBusinessProfileRequest, context: Context
    ) -> bpb.UpdateBusinessProfileResponse:
        view = await self._profiles.update(caller(), profile_fields_from_proto(request.fields))
        return bpb.UpdateBusinessProfileResponse(profile=profile_to_proto(view))


class TemplateRpcs:
    _templates: TemplateCatalog

    async def CreateTemplate(
        self, request: bpb.CreateTemplateRequest, context: Context
    ) -> bpb.CreateTemplateResponse:
        row = await self._templates.create(
            caller(),
            request.name,
            request.language,
            request.category,
            content_from_proto(request.content),
        )
        return bpb.CreateTemplateResponse(template=template_to_proto(row))

    async def ListTemplates(
        self, request: bpb.ListTemplatesRequest, context: Context
    ) -> bpb.ListTemplatesResponse:
        rows = await self._templates.list_own(caller())
        return bpb.ListTemplatesResponse(templates=[template_to_proto(r) for r in rows])

    async def GetTemplate(
        self, request: bpb.GetTemplateRequest, context: Context
    ) -> bpb.GetTemplateResponse:
        row = await self._templates.get(
            caller(), request.template_id, request.business_account_id, request.name,
            request.language,
        )  # fmt: skip
        return bpb.GetTemplateResponse(template=template_to_proto(row))

    async def PauseTemplate(
        self, request: bpb.PauseTemplateRequest, context: Context
    ) -> bpb.PauseTemplateResponse:
        row = await self._templates.pause(caller(), request.template_id)
        return bpb.PauseTemplateResponse(template=template_to_proto(row))

    async def UnpauseTemplate(
        self, request: bpb.UnpauseTemplateRequest, context: Context
    ) -> bpb.UnpauseTemplateResponse:
        row = await self._templates.unpause(caller(), request.template_id)
        return bpb.UnpauseTemplateResponse(template=template_to_proto(row))


class BusinessServicer(
    ProfileRpcs,
    TemplateRpcs,
    ConsentRpcs,
    SendingRpcs,
    SupportRpcs,
    ChatLinkRpcs,
    business_pb2_grpc.BusinessServiceServicer,
):
    def __init__(
        self,
        *,
        profiles: BusinessProfiles,
        templates: TemplateCatalog,
        consent: ConsentBook,
        sending: SendingDesk,
        support: SupportDesk,
        links: ChatLinks,
    ) -> None:
        self._profiles = profiles
        self._templates = templates
        self._consent = consent
        self._sending = sending
        self._support = support
        self._links = links
