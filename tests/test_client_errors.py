"""Typed errors: what the server refuses reaches an app as a ParleyError subclass with the
status code, the server's message and the decoded google.rpc details."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc import aio
from parley.v1 import messaging_pb2 as mpb
from parley.v1 import messaging_pb2_grpc

from client.api import ParleyClient
from client.errors import (
    InvalidArgument,
    MismatchedDevices,
    NotFound,
    ParleyError,
    RateLimited,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from server.domain.ratelimit import Rate
from tests.client_helpers import closing, linked, new_client, registered
from tests.conftest import LiveServer, ServerFactory

ALICE = "+14155550123"
BOB = "+442079460123"


def test_refusals_are_typed_with_the_servers_message(server: LiveServer, tmp_path: Path) -> None:
    async def body() -> None:
        stranger = await new_client(server, tmp_path / "stranger")
        alice = await registered(server, tmp_path / "alice", ALICE)
        laptop = await linked(server, alice, tmp_path / "laptop")
        try:
            with pytest.raises(InvalidArgument) as bad:
                await stranger.request_code("555")
            assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "E.164" in bad.value.message and str(bad.value).startswith("invalid argument: ")
            # The gRPC error stays reachable for whoever needs the raw call.
            assert isinstance(bad.value.__cause__, aio.AioRpcError)
            with pytest.raises(NotFound) as missing:
                await alice.send("+14155550199", "hello?")
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
            await alice.remove_device(laptop.device_id)
            with pytest.raises(Unauthenticated):
                await laptop.devices()
        finally:
            for c in (stranger, alice, laptop):
                await c.close()

    asyncio.run(body())


def test_a_rate_limit_says_when_to_come_back(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server(verification_rate=Rate(1, 60))

    async def body() -> None:
        async with await new_client(server, tmp_path / "p") as client:
            await client.request_code(ALICE)
            with pytest.raises(RateLimited) as limited:
                await client.request_code(ALICE)
            assert limited.value.retry_after is not None and 1 <= limited.value.retry_after <= 60
            assert limited.value.status is not None  # the google.rpc.Status it came from

    asyncio.run(body())


def test_a_mismatched_device_list_carries_the_three_lists(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        laptop = await linked(server, bob, tmp_path / "bob-laptop")

        async def check() -> None:
            # What an app on the raw stubs does: from_rpc_error on the stub's exception.
            messaging = messaging_pb2_grpc.MessagingServiceStub(alice._channel)
            request = mpb.SendMessageRequest(
                request_id="5f0c6c1e-8c1a-4b7e-9a51-2c1f0d6e8b7a",
                recipient_account_id=bob.account_id,
                messages=[
                    mpb.OutgoingMessage(
                        device_id=7,
                        registration_id=1,
                        content_type=mpb.CONTENT_TYPE_WHISPER,
                        content=b"x",
                    ),
                    mpb.OutgoingMessage(
                        device_id=1,
                        registration_id=bob.identity.registration_id,
                        content_type=mpb.CONTENT_TYPE_WHISPER,
                        content=b"x",
                    ),
                ],
            )
            with pytest.raises(aio.AioRpcError) as raw:
                await messaging.SendMessage(request, metadata=alice._metadata())
            error = from_rpc_error(raw.value)
            assert isinstance(error, MismatchedDevices) and isinstance(error, ParleyError)
            assert error.code == grpc.StatusCode.FAILED_PRECONDITION
            assert error.missing == (laptop.device_id,) and error.extra == (7,)
            assert error.stale == () and error.detail.account_id == bob.account_id

        await closing([alice, bob, laptop], check)

    asyncio.run(body())


def test_no_server_is_unavailable(tmp_path: Path) -> None:
    async def body() -> None:
        async with ParleyClient.open(tmp_path / "p", server="localhost:1") as client:
            with pytest.raises(Unavailable):
                await client.request_code(ALICE)

    asyncio.run(body())
