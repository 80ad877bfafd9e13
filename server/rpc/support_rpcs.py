"""BusinessService's live-support RPCs: convert, one domain call, convert back.

A mixin of `server.rpc.business_servicer.BusinessServicer`, which passes the domain object as
`support=` to its constructor and keeps it as `self._support`. WatchSupportQueue is a server
stream: the interceptor holds a Lease on its credential, so it ends UNAUTHENTICATED the moment
the device is removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from grpc import aio
from parley.v1 import support_pb2 as pb

from server.domain.support import ConversationView, SupportDesk
from server.domain.support_model import AgentRow, EventRow
from server.rpc.convert import feed_responses, timestamp
from server.rpc.interceptors import caller

Context = aio.ServicerContext[Any, Any]


def agent_to_proto(row: AgentRow) -> pb.Agent:
    return pb.Agent(
        device_id=row.device_id, display_name=row.display_name, since=timestamp(row.since)
    )


def conversation_to_proto(view: ConversationView) -> pb.SupportConversation:
    r = view.row
    return pb.SupportConversation(
        conversation_id=r.conversation_id,
        business_account_id=r.business_account_id,
        user_account_id=r.user_account_id,
        topic=r.topic,
        state=cast(pb.SupportState.ValueType, r.state),
        agent_device_id=r.agent_device_id,
        agent_display_name=view.agent_display_name,
        opened_at=timestamp(r.opened_at),
        updated_at=timestamp(r.updated_at),
        device_ids=view.device_ids,
    )


def event_to_proto(e: EventRow) -> pb.SupportQueueEvent:
    return pb.SupportQueueEvent(
        sequence=e.sequence,
        kind=cast(pb.SupportEventKind.ValueType, e.kind),
        conversation_id=e.conversation_id,
        user_account_id=e.user_account_id,
        topic=e.topic,
        agent_device_id=e.agent_device_id,
        agent_display_name=e.agent_display_name,
        from_agent_device_id=e.from_agent_device_id,
        closed_by=e.closed_by,
        at=timestamp(e.at),
    )


class SupportRpcs:
    _support: SupportDesk

    async def SetAgent(self, request: pb.SetAgentRequest, context: Context) -> pb.SetAgentResponse:
        agents = await self._support.set_agent(
            caller(), request.device_id, request.on, request.display_name
        )
        return pb.SetAgentResponse(agents=[agent_to_proto(a) for a in agents])

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        agents = await self._support.list_agents(caller())
        return pb.ListAgentsResponse(agents=[agent_to_proto(a) for a in agents])

    async def OpenSupportConversation(
        self, request: pb.OpenSupportConversationRequest, context: Context
    ) -> pb.OpenSupportConversationResponse:
        view, created = await self._support.open(
            caller(), request.business_account_id, request.topic
        )
        return pb.OpenSupportConversationResponse(
            conversation=conversation_to_proto(view), created=created
        )

    async def GetSupportConversation(
        self, request: pb.GetSupportConversationRequest, context: Context
    ) -> pb.GetSupportConversationResponse:
        view = await self._support.get(
            caller(), request.conversation_id, request.business_account_id,
            request.user_account_id,
        )  # fmt: skip
        return pb.GetSupportConversationResponse(conversation=conversation_to_proto(view))

    async def WatchSupportQueue(
        self, request: pb.WatchSupportQueueRequest, context: Context
    ) -> AsyncIterator[pb.WatchSupportQueueResponse]:
        async for response in feed_responses(
            self._support.watch(caller(), request.cursor),
            lambda e: pb.WatchSupportQueueResponse(event=event_to_proto(e)),
            lambda cursor: pb.WatchSupportQueueResponse(
                caught_up=pb.SupportQueueCaughtUp(cursor=cursor)
            ),
            lambda: pb.WatchSupportQueueResponse(keep_alive=pb.SupportQueueKeepAlive()),
        ):
            yield response

    async def ClaimConversation(
        self, request: pb.ClaimConversationRequest, context: Context
    ) -> pb.ClaimConversationResponse:
        view = await self._support.claim(caller(), request.conversation_id)
        return pb.ClaimConversationResponse(conversation=conversation_to_proto(view))

    async def TransferConversation(
        self, request: pb.TransferConversationRequest, context: Context
    ) -> pb.TransferConversationResponse:
        view = await self._support.transfer(caller(), request.conversation_id, request.to_device_id)
        return pb.TransferConversationResponse(conversation=conversation_to_proto(view))

    async def CloseConversation(
        self, request: pb.CloseConversationRequest, context: Context
    ) -> pb.CloseConversationResponse:
        view = await self._support.close(caller(), request.conversation_id)
        return pb.CloseConversationResponse(conversation=conversation_to_proto(view))
