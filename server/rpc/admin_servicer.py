"""AdminService: the operator's reviews. The interceptor has checked the operator token
(`server.domain.operator`) before any method here runs; `operator()` is that proof."""

from __future__ import annotations

from typing import Any

from grpc import aio
from parley.v1 import admin_pb2 as pb
from parley.v1 import admin_pb2_grpc

from server.domain.profiles import BusinessProfiles
from server.domain.templates import TemplateCatalog
from server.rpc.directory_convert import profile_to_proto, template_to_proto
from server.rpc.interceptors import operator

Context = aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, *, profiles: BusinessProfiles, templates: TemplateCatalog) -> None:
        self._profiles = profiles
        self._templates = templates

    async def ListPendingReviews(
        self, request: pb.ListPendingReviewsRequest, context: Context
    ) -> pb.ListPendingReviewsResponse:
        names = await self._profiles.pending(operator(), request.page_size)
        templates = await self._templates.pending(operator(), request.page_size)
        return pb.ListPendingReviewsResponse(
            names=[profile_to_proto(v) for v in names],
            templates=[template_to_proto(t) for t in templates],
        )

    async def ReviewBusinessName(
        self, request: pb.ReviewBusinessNameRequest, context: Context
    ) -> pb.ReviewBusinessNameResponse:
        view = await self._profiles.review_name(
            operator(), request.account_id, request.decision, request.reason,
            request.display_name,
        )  # fmt: skip
        return pb.ReviewBusinessNameResponse(profile=profile_to_proto(view))

    async def ReviewTemplate(
        self, request: pb.ReviewTemplateRequest, context: Context
    ) -> pb.ReviewTemplateResponse:
        row = await self._templates.review(
            operator(), request.template_id, request.decision, request.reason
        )
        return pb.ReviewTemplateResponse(template=template_to_proto(row))
