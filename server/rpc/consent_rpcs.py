"""BusinessService's consent RPCs: convert, one domain call, convert back.

A mixin of `server.rpc.business_servicer.BusinessServicer`, which passes the domain object as
`consent=` to its constructor and keeps it as `self._consent`.
"""

from __future__ import annotations

from typing import Any

from grpc import aio
from parley.v1 import business_pb2 as pb

from server.domain.consent import BusinessConsent, ConsentBook
from server.rpc.convert import timestamp
from server.rpc.interceptors import caller

Context = aio.ServicerContext[Any, Any]


def business_consent(view: BusinessConsent) -> pb.BusinessConsent:
    out = pb.BusinessConsent(
        business_account_id=view.business_account_id,
        phone_number=view.phone_number,
        blocked=view.blocked_at is not None,
    )
    if view.blocked_at is not None:
        out.blocked_at.CopyFrom(timestamp(view.blocked_at))
    for row in view.categories:
        item = out.categories.add(
            category=row.category,  # the proto enum's numbers
            opted_out=row.opted_out_at is not None,
            kind=row.kind,
            source=row.source,
            evidence=row.evidence,
        )
        if row.opted_in_at is not None:
            item.opted_in_at.CopyFrom(timestamp(row.opted_in_at))
        if row.opted_out_at is not None:
            item.opted_out_at.CopyFrom(timestamp(row.opted_out_at))
    return out


class ConsentRpcs:
    _consent: ConsentBook

    async def OptIn(self, request: pb.OptInRequest, context: Context) -> pb.OptInResponse:
        view = await self._consent.opt_in(caller(), request.business_account_id, request.categories)
        return pb.OptInResponse(business=business_consent(view))

    async def RecordOptIn(
        self, request: pb.RecordOptInRequest, context: Context
    ) -> pb.RecordOptInResponse:
        await self._consent.record_opt_in(
            caller(), request.phone_number, request.source, request.evidence, request.categories
        )
        return pb.RecordOptInResponse()

    async def OptOut(self, request: pb.OptOutRequest, context: Context) -> pb.OptOutResponse:
        view = await self._consent.opt_out(
            caller(), request.business_account_id, request.categories, request.all
        )
        return pb.OptOutResponse(business=business_consent(view))

    async def BlockAccount(
        self, request: pb.BlockAccountRequest, context: Context
    ) -> pb.BlockAccountResponse:
        block = await self._consent.block(caller(), request.account_id)
        return pb.BlockAccountResponse(blocked_at=timestamp(block.blocked_at))

    async def UnblockAccount(
        self, request: pb.UnblockAccountRequest, context: Context
    ) -> pb.UnblockAccountResponse:
        was_blocked = await self._consent.unblock(caller(), request.account_id)
        return pb.UnblockAccountResponse(was_blocked=was_blocked)

    async def ListMyBusinesses(
        self, request: pb.ListMyBusinessesRequest, context: Context
    ) -> pb.ListMyBusinessesResponse:
        views = await self._consent.my_businesses(caller())
        return pb.ListMyBusinessesResponse(businesses=[business_consent(v) for v in views])
