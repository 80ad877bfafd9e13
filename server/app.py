"""Assemble the server: store, domain services, servicers, health and reflection."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from parley.v1 import (
    account_pb2,
    account_pb2_grpc,
    key_pb2,
    key_pb2_grpc,
    messaging_pb2,
    messaging_pb2_grpc,
)

from server.config import Settings
from server.domain.accounts import AccountRegistry
from server.domain.auth import Authenticator
from server.domain.clock import Clock, SystemClock
from server.domain.codes import CodeSender, LogCodeSender
from server.domain.keys import KeyDirectory
from server.domain.messaging import Mailbox
from server.rpc.account_servicer import OPEN_METHODS as ACCOUNT_OPEN_METHODS
from server.rpc.account_servicer import AccountServicer
from server.rpc.interceptors import ParleyInterceptor
from server.rpc.key_servicer import KeyServicer
from server.rpc.messaging_servicer import MessagingServicer
from server.rpc.reflection import enable_reflection
from server.storage.database import Database
from server.storage.messages import IdGenerator

log = logging.getLogger("parley.server")

# grpcio-health-checking ships the asyncio servicer untyped, as `health.aio`.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

SERVICE_NAMES = (
    account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name,
    key_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name,
)


@dataclass
class ParleyServer:
    """A built, not yet started server. `port` is the bound port (useful with port 0)."""

    grpc_server: aio.Server
    port: int
    db: Database
    health: Any  # AsyncHealthServicer
    settings: Settings
    mailbox: Mailbox
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await self.grpc_server.start()
        self._background.append(
            asyncio.create_task(self.mailbox.run_expiry(self.settings.expiry_interval))
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "listening on %s:%d",
            self.settings.host,
            self.port,
            extra={"port": self.port, "tls": self.settings.tls_cert is not None},
        )

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish for `grace` seconds, close the DB."""
        await self.health.enter_graceful_shutdown()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.grpc_server.stop(self.settings.shutdown_grace if grace is None else grace)
        self.db.close()
        log.info("stopped")


async def build_server(
    settings: Settings, *, clock: Clock | None = None, code_sender: CodeSender | None = None
) -> ParleyServer:
    clock = clock or SystemClock()
    db = Database(settings.database, synchronous=settings.sqlite_synchronous)
    authenticator = Authenticator(db, clock)
    registry = AccountRegistry(
        db, clock, authenticator, code_sender or LogCodeSender(), settings.account_policy()
    )
    server = aio.server(
        interceptors=[ParleyInterceptor(authenticator, ACCOUNT_OPEN_METHODS)],
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    account_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(registry), server)
    key_pb2_grpc.add_KeyServiceServicer_to_server(
        KeyServicer(KeyDirectory(db, clock, settings.key_policy())), server
    )
    ids = await db.read(IdGenerator.for_database)
    mailbox = Mailbox(db, clock, settings.messaging_policy(), ids)
    authenticator.on_revoke(mailbox.disconnect)
    messaging_pb2_grpc.add_MessagingServiceServicer_to_server(MessagingServicer(mailbox), server)
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, (*SERVICE_NAMES, health.SERVICE_NAME))
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls_cert and settings.tls_key:
            creds = grpc.ssl_server_credentials(
                [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except Exception:
        db.close()
        raise
    return ParleyServer(server, port, db, health_servicer, settings, mailbox)


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    server = await build_server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": settings.shutdown_grace})
    await server.stop()
