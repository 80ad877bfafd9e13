"""The sending rules as a business sees them, for :class:`client.api.ParleyClient`.

``client.sending`` (a :class:`SendingCalls`) asks, as a BUSINESS account, when its 24-hour
customer-service window with a user closes (``window``) and what its messaging limit, usage
and quality rating are (``status``). Replies are the ``parley.v1`` messages
(``GetConversationWindowResponse``, ``GetBusinessStatusResponse``, documented in
docs/api-reference.md); refusals raise :class:`client.errors.ParleyError` subclasses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from grpc import aio
from parley.v1 import business_pb2 as bpb
from parley.v1 import business_pb2_grpc

from client.api import _rpc

Metadata = tuple[tuple[str, str], ...]


class BusinessServiceCalls:
    """What a group of BusinessService calls needs from the client: the stub, the device's
    call metadata and the resolver of phone numbers (shared by `SendingCalls` and
    `client.support_api.SupportCalls`)."""

    def __init__(
        self,
        channel: aio.Channel,
        metadata: Callable[[], Metadata],
        resolve: Callable[[str], Awaitable[str]],
    ) -> None:
        self._stub = business_pb2_grpc.BusinessServiceStub(channel)
        self._metadata = metadata
        self._resolve = resolve


class SendingCalls(BusinessServiceCalls):
    async def window(self, user: str) -> bpb.GetConversationWindowResponse:
        """The customer-service window with `user` (a phone number or an account id)."""
        request = bpb.GetConversationWindowRequest(user_account_id=await self._resolve(user))
        return await _rpc(self._stub.GetConversationWindow(request, metadata=self._metadata()))

    async def status(self) -> bpb.GetBusinessStatusResponse:
        """This business's tier, usage in the rolling 24 h, quality and promotion."""
        return await _rpc(
            self._stub.GetBusinessStatus(bpb.GetBusinessStatusRequest(), metadata=self._metadata())
        )
