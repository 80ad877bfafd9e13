"""BusinessService's sending-rules RPCs: the window and the status a business asks about."""

from __future__ import annotations

from typing import Any

from grpc import aio
from parley.v1 import business_pb2 as bpb

from server.domain.sending import BusinessStatus, SendingDesk
from server.rpc.convert import timestamp
from server.rpc.interceptors import caller

Context = aio.ServicerContext[Any, Any]


def status_to_proto(s: BusinessStatus) -> bpb.GetBusinessStatusResponse:
    out = bpb.GetBusinessStatusResponse(
        tier=s.tier + 1,
        limit=s.limit or 0,
        used_24h=s.used_24h,
        used_7d=s.used_7d,
        quality=int(s.rating.quality),  # type: ignore[arg-type]
        quality_reason=s.rating.reason,
        blocks_7d=s.rating.blocks,
        opt_outs_7d=s.rating.opt_outs,
        promotion=s.promotion,
        tiers=[n or 0 for n in s.tiers],
        marketing_per_user=s.marketing_per_user,
        send_rate_per_second=s.send_rate.count / s.send_rate.period,
    )
    if s.next_slot_at is not None:
        out.next_slot_at.CopyFrom(timestamp(s.next_slot_at))
    return out


class SendingRpcs:
    _sending: SendingDesk

    async def GetConversationWindow(
        self, request: bpb.GetConversationWindowRequest, context: Context
    ) -> bpb.GetConversationWindowResponse:
        view = await self._sending.window(caller(), request.user_account_id)
        out = bpb.GetConversationWindowResponse(
            user_account_id=view.user_account_id, open=view.open
        )
        if view.opened_at is not None and view.closes_at is not None:
            out.opened_at.CopyFrom(timestamp(view.opened_at))
            out.closes_at.CopyFrom(timestamp(view.closes_at))
        if view.entry_opened_at is not None and view.entry_closes_at is not None:
            out.entry.open = view.entry_open
            out.entry.opened_at.CopyFrom(timestamp(view.entry_opened_at))
            out.entry.closes_at.CopyFrom(timestamp(view.entry_closes_at))
        out.open_window = int(view.kind)  # type: ignore[assignment]
        return out

    async def GetBusinessStatus(
        self, request: bpb.GetBusinessStatusRequest, context: Context
    ) -> bpb.GetBusinessStatusResponse:
        return status_to_proto(await self._sending.status(caller()))
