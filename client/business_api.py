"""Business profiles, templates and the operator's reviews, for :class:`client.api.ParleyClient`.

``client.business`` (a :class:`BusinessCalls`) acts as the registered device: read any
business's profile and approved templates, and — on a BUSINESS account — update its own
profile and create, list, pause and unpause its templates. ``client.admin(token)`` (an
:class:`AdminCalls`) is the operator's side, authenticated with the server's ``--admin-token``
instead of a device token: list what waits for review and approve or reject it.

Replies are the ``parley.v1`` messages themselves (``BusinessProfile``, ``Template``), whose
fields are documented in docs/api-reference.md. Refusals raise :class:`client.errors.ParleyError`
subclasses, as every other call of the client does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from grpc import aio
from parley.v1 import admin_pb2 as adm
from parley.v1 import admin_pb2_grpc, business_pb2_grpc
from parley.v1 import business_pb2 as bpb
from parley.v1 import messaging_pb2 as mpb

from client.api import _rpc

Metadata = tuple[tuple[str, str], ...]

CATEGORIES = {
    "marketing": mpb.MESSAGE_CATEGORY_MARKETING,
    "utility": mpb.MESSAGE_CATEGORY_UTILITY,
    "authentication": mpb.MESSAGE_CATEGORY_AUTHENTICATION,
}
VERTICALS = {
    name.removeprefix("BUSINESS_VERTICAL_").lower(): number
    for name, number in bpb.BusinessVertical.items()
    if number
}


class BusinessCalls:
    """BusinessService as one device (see the module docstring)."""

    def __init__(self, channel: aio.Channel, metadata: Callable[[], Metadata]) -> None:
        self._stub = business_pb2_grpc.BusinessServiceStub(channel)
        self._metadata = metadata

    async def profile(self, account_id: str) -> bpb.BusinessProfile:
        reply = await _rpc(
            self._stub.GetBusinessProfile(
                bpb.GetBusinessProfileRequest(account_id=account_id), metadata=self._metadata()
            )
        )
        return reply.profile

    async def update_profile(self, fields: bpb.BusinessProfileFields) -> bpb.BusinessProfile:
        """Replace this business's profile; a changed display name goes to review."""
        reply = await _rpc(
            self._stub.UpdateBusinessProfile(
                bpb.UpdateBusinessProfileRequest(fields=fields), metadata=self._metadata()
            )
        )
        return reply.profile

    async def create_template(
        self,
        name: str,
        language: str,
        category: mpb.MessageCategory.ValueType,
        body: str,
        *,
        header: str = "",
        footer: str = "",
        buttons: Sequence[str] = (),
    ) -> bpb.Template:
        reply = await _rpc(
            self._stub.CreateTemplate(
                bpb.CreateTemplateRequest(
                    name=name,
                    language=language,
                    category=category,
                    content=bpb.TemplateContent(
                        header=header, body=body, footer=footer, buttons=buttons
                    ),
                ),
                metadata=self._metadata(),
            )
        )
        return reply.template

    async def templates(self) -> list[bpb.Template]:
        reply = await _rpc(
            self._stub.ListTemplates(bpb.ListTemplatesRequest(), metadata=self._metadata())
        )
        return list(reply.templates)

    async def template(
        self,
        template_id: str = "",
        *,
        business_account_id: str = "",
        name: str = "",
        language: str = "",
    ) -> bpb.Template:
        """By id, or by business, name and language."""
        reply = await _rpc(
            self._stub.GetTemplate(
                bpb.GetTemplateRequest(
                    template_id=template_id,
                    business_account_id=business_account_id,
                    name=name,
                    language=language,
                ),
                metadata=self._metadata(),
            )
        )
        return reply.template

    async def pause_template(self, template_id: str) -> bpb.Template:
        reply = await _rpc(
            self._stub.PauseTemplate(
                bpb.PauseTemplateRequest(template_id=template_id), metadata=self._metadata()
            )
        )
        return reply.template

    async def unpause_template(self, template_id: str) -> bpb.Template:
        reply = await _rpc(
            self._stub.UnpauseTemplate(
                bpb.UnpauseTemplateRequest(template_id=template_id), metadata=self._metadata()
            )
        )
        return reply.template


class AdminCalls:
    """AdminService as the operator, with the server's admin token."""

    def __init__(self, channel: aio.Channel, admin_token: str) -> None:
        self._stub = admin_pb2_grpc.AdminServiceStub(channel)
        self._metadata: Metadata = (("authorization", f"Bearer {admin_token}"),)

    async def pending(self, page_size: int = 0) -> adm.ListPendingReviewsResponse:
        return await _rpc(
            self._stub.ListPendingReviews(
                adm.ListPendingReviewsRequest(page_size=page_size), metadata=self._metadata
            )
        )

    async def review_name(
        self, account_id: str, approve: bool, reason: str = "", *, display_name: str = ""
    ) -> bpb.BusinessProfile:
        reply = await _rpc(
            self._stub.ReviewBusinessName(
                adm.ReviewBusinessNameRequest(
                    account_id=account_id,
                    decision=_decision(approve),
                    reason=reason,
                    display_name=display_name,
                ),
                metadata=self._metadata,
            )
        )
        return reply.profile

    async def review_template(
        self, template_id: str, approve: bool, reason: str = ""
    ) -> bpb.Template:
        reply = await _rpc(
            self._stub.ReviewTemplate(
                adm.ReviewTemplateRequest(
                    template_id=template_id, decision=_decision(approve), reason=reason
                ),
                metadata=self._metadata,
            )
        )
        return reply.template


def _decision(approve: bool) -> adm.ReviewDecision.ValueType:
    return adm.REVIEW_DECISION_APPROVE if approve else adm.REVIEW_DECISION_REJECT
