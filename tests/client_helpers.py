"""Helpers for the reference-client tests: real clients against a LiveServer, no mocks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from client.api import Event, ParleyClient, QueueEmpty
from tests.conftest import LiveServer

T = TypeVar("T")


async def new_client(server: LiveServer, profile: Path) -> ParleyClient:
    """An unregistered client on ``profile`` that shares the server's manual clock."""
    return ParleyClient.open(profile, server=server.target, clock=server.clock)


async def registered(
    server: LiveServer, profile: Path, phone: str, *, business: bool = False
) -> ParleyClient:
    """A client registered through StartVerification + CompleteVerification, keys uploaded."""
    client = await new_client(server, profile)
    verification_id = await client.request_code(phone)
    code = server.settings.test_numbers.get(phone) or server.sender.codes[phone]
    await client.register(phone, verification_id, code, business=business)
    return client


async def linked(server: LiveServer, primary: ParleyClient, profile: Path) -> ParleyClient:
    """A second device of ``primary``'s account, linked with a linking code."""
    client = await new_client(server, profile)
    await client.link(await primary.create_linking_code(), device_name="laptop")
    return client


async def drain(client: ParleyClient) -> list[Event]:
    """Every event up to the queue_empty marker (which is left out)."""
    return [e async for e in client.receive(until_empty=True) if not isinstance(e, QueueEmpty)]


async def closing(clients: list[ParleyClient], body: Callable[[], Awaitable[T]]) -> T:
    try:
        return await body()
    finally:
        for c in clients:
            await c.close()
