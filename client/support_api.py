"""Live support for :class:`client.api.ParleyClient`: agents, conversations, the queue.

``client.support`` (a :class:`SupportCalls`) is used from both sides. A user opens a support
conversation with a business (``open``) and reads its state (``status``). A business's primary
device makes devices agents (``set_agent``); agents list each other (``agents``), watch the
queue (``queue``), and ``claim``, ``transfer`` and ``close`` conversations.

Replies are the ``parley.v1`` messages (``SupportConversation``, ``Agent``,
``SupportQueueEvent``, documented in docs/api-reference.md); refusals raise
:class:`client.errors.ParleyError` subclasses. The messages themselves are ordinary end-to-end
messages sent with ``ParleyClient.send``: while a conversation is open the server accepts the
user's messages to the business only for the primary device and the assigned agent's, and the
client follows that set by itself (see ``ParleyClient._fix_devices``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from parley.v1 import support_pb2 as spb

from client.api import _rpc
from client.feeds import follow_feed
from client.sending_api import BusinessServiceCalls


class SupportCalls(BusinessServiceCalls):
    # -- users ----------------------------------------------------------------------------

    async def open(self, business: str, topic: str = "") -> spb.OpenSupportConversationResponse:
        """Open a support conversation with `business` (a phone number or an account id), or
        get the one already open (``created`` says which)."""
        request = spb.OpenSupportConversationRequest(
            business_account_id=await self._resolve(business), topic=topic
        )
        return await _rpc(self._stub.OpenSupportConversation(request, metadata=self._metadata()))

    async def status(self, business: str) -> spb.SupportConversation:
        """Our latest support conversation with `business`: its state, agent and topic."""
        request = spb.GetSupportConversationRequest(
            business_account_id=await self._resolve(business)
        )
        reply = await _rpc(self._stub.GetSupportConversation(request, metadata=self._metadata()))
        return reply.conversation

    # -- the business ---------------------------------------------------------------------

    async def set_agent(self, device_id: int, on: bool, display_name: str = "") -> list[spb.Agent]:
        """Make one of our devices an agent (or rename it), or stop it; primary device only."""
        request = spb.SetAgentRequest(device_id=device_id, on=on, display_name=display_name)
        reply = await _rpc(self._stub.SetAgent(request, metadata=self._metadata()))
        return list(reply.agents)

    async def agents(self) -> list[spb.Agent]:
        reply = await _rpc(
            self._stub.ListAgents(spb.ListAgentsRequest(), metadata=self._metadata())
        )
        return list(reply.agents)

    async def conversation(
        self, *, conversation_id: str = "", user: str = ""
    ) -> spb.SupportConversation:
        """A conversation of our queue, by id or by user (a phone number or an account id)."""
        request = spb.GetSupportConversationRequest(
            conversation_id=conversation_id,
            user_account_id=await self._resolve(user) if user else "",
        )
        reply = await _rpc(self._stub.GetSupportConversation(request, metadata=self._metadata()))
        return reply.conversation

    async def claim(self, conversation_id: str) -> spb.SupportConversation:
        request = spb.ClaimConversationRequest(conversation_id=conversation_id)
        reply = await _rpc(self._stub.ClaimConversation(request, metadata=self._metadata()))
        return reply.conversation

    async def transfer(self, conversation_id: str, to_device_id: int) -> spb.SupportConversation:
        request = spb.TransferConversationRequest(
            conversation_id=conversation_id, to_device_id=to_device_id
        )
        reply = await _rpc(self._stub.TransferConversation(request, metadata=self._metadata()))
        return reply.conversation

    async def close(self, conversation_id: str) -> spb.SupportConversation:
        """Close a conversation (the user, its agent or the primary device)."""
        request = spb.CloseConversationRequest(conversation_id=conversation_id)
        reply = await _rpc(self._stub.CloseConversation(request, metadata=self._metadata()))
        return reply.conversation

    def queue(
        self, cursor: int = 0, *, follow: bool = False
    ) -> AsyncIterator[spb.SupportQueueEvent]:
        """The queue's events after `cursor`, in order. Without `follow` it stops once the
        backlog is read; with it, it goes on with live events until the caller stops reading
        (keep-alives are not passed on). Resume later from the last event's ``sequence``."""
        request = spb.WatchSupportQueueRequest(cursor=cursor)
        return follow_feed(
            lambda: self._stub.WatchSupportQueue(request, metadata=self._metadata()),
            spb.SupportQueueEvent,
            follow=follow,
        )
