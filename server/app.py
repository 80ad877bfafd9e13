"""Assemble the server: store, domain services, servicers, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from parley.v1 import (
    account_pb2,
    account_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    business_pb2,
    business_pb2_grpc,
    key_pb2,
    key_pb2_grpc,
    messaging_pb2,
    messaging_pb2_grpc,
)

from server import heap, watchdog
from server.config import Settings
from server.domain.accounts import AccountRegistry
from server.domain.admission import RULES
from server.domain.auth import Authenticator
from server.domain.billing import Cashier, PriceBook, PriceDesk
from server.domain.clock import Clock, SystemClock
from server.domain.codes import CodeSender, LogCodeSender, VerificationGate
from server.domain.consent import ConsentBook
from server.domain.ids import IdGenerator
from server.domain.keys import KeyDirectory
from server.domain.links import ChatLinkRule, ChatLinks
from server.domain.mailbox import Mailbox
from server.domain.metering import MeteringRule
from server.domain.operator import OperatorGate
from server.domain.pricing import PriceTable, PriceTableError, parse_toml
from server.domain.profiles import BusinessProfiles
from server.domain.replicas_model import STATUS_EVENTS, SUPPORT_QUEUE
from server.domain.sending import BusinessRule, SendingDesk
from server.domain.signals import Dispatcher
from server.domain.status_events import StatusEventFeed, StatusEventStreams
from server.domain.support import SupportDesk
from server.domain.templates import TemplateCatalog
from server.domain.usage import UsageReports
from server.http import HttpBindError, LandingPages
from server.rpc.account_servicer import OPEN_METHODS as ACCOUNT_OPEN_METHODS
from server.rpc.account_servicer import AccountServicer
from server.rpc.admin_servicer import AdminServicer
from server.rpc.billing_servicer import OPERATOR_METHODS as BILLING_OPERATOR_METHODS
from server.rpc.billing_servicer import BillingServicer
from server.rpc.business_servicer import BusinessServicer
from server.rpc.interceptors import ParleyInterceptor
from server.rpc.key_servicer import KeyServicer
from server.rpc.messaging_servicer import MessagingServicer
from server.rpc.reflection import enable_reflection
from server.storage.backend import Backend, is_postgres_url, open_backend

log = logging.getLogger("parley.server")

# grpcio-health-checking ships the asyncio servicer untyped, as `health.aio`.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
SERVICE_NAMES = (
    account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name,
    key_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name,
    business_pb2.DESCRIPTOR.services_by_name["BusinessService"].full_name,
    ADMIN_SERVICE,
    billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
)


# Seconds `stop` waits for the tasks of calls cancelled at the end of the grace period.
CANCELLED_CALLS_WAIT = 2.0
# Seconds between checks that a shared database (PostgreSQL) answers, for the health service.
PROBE_INTERVAL = 2.0
# Calls that arrived but that the application has not taken yet (grpc.aio takes them one at a
# time, as fast as the event loop turns): gRPC core's defaults (1,000, shedding at random up to
# 3,000) cancelled calls of a client firing more than a thousand at once, before any servicer
# or log line saw them (docs/architecture.md, "Calls in flight"). A queued call costs its
# request and a few KiB; its bytes are bounded by HTTP/2 flow control per connection.
PENDING_CALLS = 20_000
PENDING_CALLS_HARD_LIMIT = 40_000


class StartupError(Exception):
    """The server cannot start; the message is one line saying what is wrong and what to do."""


def _check_port(host: str, port: int) -> None:
    """Find out *why* a port cannot be bound before gRPC tries: gRPC only says "Failed to bind"
    (and prints its own error line). Like gRPC, succeed if any address of `host` binds."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {host}:{port}: {host!r} is not a known host name or address "
            f"({exc.strerror}); fix --host (0.0.0.0 listens on all interfaces)"
        ) from None
    first: OSError | None = None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(address)
            except OSError as exc:
                first = first or exc
                continue
            return
    if first is None:
        return
    if first.errno == errno.EADDRINUSE:
        reason = "the port is in use by another program (perhaps another parley-server)"
        fix = "stop it or choose another --port"
    elif first.errno == errno.EACCES:
        reason = "this user may not use the port (ports below 1024 need privileges)"
        fix = "choose a --port of 1024 or above"
    elif first.errno == errno.EADDRNOTAVAIL:
        reason = f"{host} is not an address of this machine"
        fix = "fix --host (0.0.0.0 listens on all interfaces)"
    else:
        reason, fix = str(first.strerror), "check --host and --port"
    raise StartupError(f"cannot listen on {host}:{port}: {reason}; {fix}")


def _price_table(settings: Settings) -> tuple[PriceTable | None, str]:
    """The operator's --price-file, read and checked before anything starts (None: the shipped
    table): a mistake stops the server with one line naming the key, rather than the first
    priced message failing."""
    path = settings.price_file
    if path is None:
        return None, ""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise StartupError(f"cannot read --price-file {path} ({reason}); fix the path") from None
    try:
        return parse_toml(text), str(path)
    except PriceTableError as exc:
        raise StartupError(f"--price-file {path} is not a valid price table: {exc}") from None


def _read_pem(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read {flag} {path} ({exc.strerror}); fix the path") from None


async def _finish_cancelled_calls() -> None:
    """Let the tasks of the calls gRPC cancelled at the end of the grace period end.

    grpc.aio's `stop` returns once the C core has ended every call, but the Python task that
    ran a cancelled call sees its CancelledError only on a later turn of the event loop. If
    `asyncio.run` returns first, it cancels gRPC's task that waits on it, and gRPC logs that as
    an unhandled CancelledError with a traceback (one per open stream). Bounded, so a call that
    swallows its cancellation cannot hold the process up.
    """
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if others:
        await asyncio.wait(others, timeout=CANCELLED_CALLS_WAIT)


@dataclass
class ParleyServer:
    """A built, not yet started server. `port` is the bound port (useful with port 0)."""

    grpc_server: aio.Server
    port: int
    db: Backend
    health: Any  # AsyncHealthServicer
    settings: Settings
    mailbox: Mailbox
    support: SupportDesk
    links: ChatLinks
    landing: LandingPages | None = None
    # Woken by the money path after each commit that appended status events.
    status_feed: StatusEventFeed = field(default_factory=StatusEventFeed)
    # The HTTP listener's bound port, once started (None: no HTTP).
    http_port: int | None = None
    # Where other replicas' signals go (server.domain.signals), when replicas share the db.
    signals: Dispatcher | None = None
    # Told that the server stops, so the calls the grace period cuts are not logged as abnormal.
    interceptor: ParleyInterceptor | None = None
    # Gives free heap back to the system after a stream that buffered much ended.
    give_back: heap.GiveBack = field(default_factory=heap.GiveBack)
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    _health_updates: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _health_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def write_health_changed(self, writable: bool) -> None:
        """From the database's writer thread: report NOT_SERVING while writes fail on storage
        (a full disk, an I/O error), SERVING again once one commits. Load balancers and
        orchestrators then stop sending traffic that would only fail."""
        loop = self._loop

        def publish() -> None:
            task = loop.create_task(self._publish_health())
            self._health_updates.add(task)
            task.add_done_callback(self._health_updates.discard)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is asking
            loop.call_soon_threadsafe(publish)

    async def _probe_database(self) -> None:
        """While no write happens, health still follows the database: a replica whose
        PostgreSQL is unreachable reports NOT_SERVING within a probe interval."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            await self.db.probe()

    async def _publish_health(self) -> None:
        """Set every name to the state writes are in *now*: updates that overlap (a failure,
        then a commit a moment later) cannot leave an older state behind."""
        async with self._health_lock:
            await self._set_health(
                health_pb2.HealthCheckResponse.SERVING
                if self.db.writable
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )

    async def _set_health(self, status: Any) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.grpc_server.start()
        if self.landing is not None:
            try:
                self.http_port = await self.landing.start()
            except HttpBindError as exc:
                await self.grpc_server.stop(None)
                self.db.close()
                raise StartupError(str(exc)) from None
            if not self.settings.public_url:
                self.links.public_url = f"http://{self.settings.host}:{self.http_port}"
                if self.settings.host in ("0.0.0.0", "::", ""):
                    log.warning(
                        "chat links name %s, which no user can open: set --public-url to"
                        " the address users reach the landing pages at",
                        self.links.public_url,
                    )
            log.info(
                "landing pages on %s", self.links.public_url, extra={"http_port": self.http_port}
            )
        self.db.on_write_health(self.write_health_changed)
        self._background.append(
            asyncio.create_task(self.mailbox.run_expiry(self.settings.expiry_interval))
        )
        if self.settings.stall_warning_s:
            stall = watchdog.watch_loop(stall=self.settings.stall_warning_s)
            self._background.append(asyncio.create_task(stall))
        if self.db.shared and self.signals is not None:
            self._background.append(asyncio.create_task(self.db.listen(self.signals)))
            self._background.append(asyncio.create_task(self._probe_database()))
        await self._publish_health()
        log.info(
            "listening on %s:%d",
            self.settings.host,
            self.port,
            extra={"port": self.port, "tls": self.settings.tls_cert is not None},
        )

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, end open receive streams (UNAVAILABLE: reconnect), let in-flight
        calls finish for `grace` seconds, close the DB."""
        await self.health.enter_graceful_shutdown()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.mailbox.close_streams()
        self.support.close_streams()
        self.status_feed.close()
        if self.landing is not None:
            await self.landing.stop()
        if self.interceptor is not None:
            self.interceptor.stopping = True
        await self.grpc_server.stop(self.settings.shutdown_grace if grace is None else grace)
        await _finish_cancelled_calls()
        self.db.close()
        log.info("stopped")


def _in_background(refresh: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """`refresh()` as a task of the running loop, kept until it ends; a failure is logged (the
    next signal, or the next start, reads again)."""
    tasks: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("re-reading after a replica signal failed: %s", task.exception())

    def start() -> None:
        task = asyncio.get_running_loop().create_task(refresh())
        tasks.add(task)
        task.add_done_callback(done)

    return start


async def build_server(
    settings: Settings,
    *,
    clock: Clock | None = None,
    code_sender: CodeSender | None = None,
    verification_gate: VerificationGate | None = None,
) -> ParleyServer:
    clock = clock or SystemClock()
    _check_port(settings.host, settings.port)
    prices = _price_table(settings)
    if is_postgres_url(settings.database) and (
        settings.max_database_mb or settings.sqlite_synchronous != "FULL"
    ):
        log.warning(
            "--max-database-mb and --sqlite-synchronous are SQLite's; on PostgreSQL they do "
            "nothing (durability is PostgreSQL's synchronous_commit)"
        )
    db = open_backend(
        settings.database,
        synchronous=settings.sqlite_synchronous,
        max_bytes=settings.max_database_mb * 1024 * 1024,
        slow_write_s=settings.stall_warning_s,
    )
    try:
        return await _assemble(settings, db, clock, code_sender, verification_gate, prices)
    except BaseException:
        db.close()
        raise


async def _assemble(
    settings: Settings,
    db: Backend,
    clock: Clock,
    code_sender: CodeSender | None,
    verification_gate: VerificationGate | None,
    prices: tuple[PriceTable | None, str],
) -> ParleyServer:
    authenticator = Authenticator(db, clock)
    registry = AccountRegistry(
        db,
        clock,
        authenticator,
        code_sender or LogCodeSender(),
        settings.account_policy(),
        verification_gate,
        shared_limits=db.shared,
    )
    interceptor = ParleyInterceptor(
        authenticator,
        ACCOUNT_OPEN_METHODS,
        {
            ADMIN_SERVICE: OperatorGate(settings.admin_token),
            **dict.fromkeys(BILLING_OPERATOR_METHODS, OperatorGate(settings.admin_token)),
        },
    )
    server = aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.server.max_pending_requests", PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS_HARD_LIMIT),
        ],
    )
    account_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(registry), server)
    key_pb2_grpc.add_KeyServiceServicer_to_server(
        KeyServicer(KeyDirectory(db, clock, settings.key_policy(), shared_limits=db.shared)), server
    )
    # Billing's price book and status event feed come first: the send path prices messages
    # and wakes the status event streams.
    book = PriceBook(db, clock)
    await book.start(*prices)
    status_feed = StatusEventFeed()
    ids = IdGenerator(await db.read(lambda tx: tx.max_message_id()), node=db.node)
    sending_policy = settings.sending_policy()
    messaging_policy = settings.messaging_policy()
    give_back = heap.GiveBack(stream_buffer_bytes=messaging_policy.stream_buffer_bytes)
    mailbox = Mailbox(
        db,
        clock,
        messaging_policy,
        ids,
        (
            *RULES,
            ChatLinkRule(),
            BusinessRule(sending_policy, clock, shared=db if db.shared else None),
            MeteringRule(book, enabled=settings.billing),
        ),
        wake=status_feed.wake,
        shared=db.shared,
        released=give_back.released,
    )
    messaging_pb2_grpc.add_MessagingServiceServicer_to_server(MessagingServicer(mailbox), server)
    profiles = BusinessProfiles(db, clock)
    templates = TemplateCatalog(db, clock)
    sending = SendingDesk(db, clock, sending_policy)
    consent = ConsentBook(
        db,
        clock,
        settings.account_policy().test_numbers,
        after_signal=sending.review,
        on_block=mailbox.settlement.release_blocked,
    )
    support = SupportDesk(db, clock, messaging_policy.keepalive_interval)
    public_url = settings.public_url or f"http://{settings.host}:{settings.http_port or 0}"
    links = ChatLinks(db, clock, public_url, settings.account_policy().test_numbers)
    business_pb2_grpc.add_BusinessServiceServicer_to_server(
        BusinessServicer(
            profiles=profiles,
            templates=templates,
            consent=consent,
            sending=sending,
            support=support,
            links=links,
        ),
        server,
    )
    landing = (
        None
        if settings.http_port is None
        else LandingPages(links, settings.host, settings.http_port, lambda: db.writable)
    )
    admin_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(profiles=profiles, templates=templates), server
    )
    billing_pb2_grpc.add_BillingServiceServicer_to_server(
        BillingServicer(
            prices=PriceDesk(db, clock, book, billing=settings.billing),
            cashier=Cashier(db, clock, book),
            usage=UsageReports(db, clock, book),
            events=StatusEventStreams(db, status_feed, messaging_policy.keepalive_interval),
        ),
        server,
    )
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, (*SERVICE_NAMES, health.SERVICE_NAME))
    address = f"{settings.host}:{settings.port}"
    try:
        if settings.tls_cert and settings.tls_key:
            creds = grpc.ssl_server_credentials(
                [
                    (
                        _read_pem(settings.tls_key, "--tls-key"),
                        _read_pem(settings.tls_cert, "--tls-cert"),
                    )
                ]
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # taken between _check_port and now, or a reason only gRPC knows
        raise StartupError(
            f"cannot listen on {address}; check --host and --port (GRPC_VERBOSITY=debug shows "
            "gRPC's reason)"
        ) from None
    return ParleyServer(
        server, port, db, health_servicer, settings, mailbox, support, links, landing,
        status_feed=status_feed,
        interceptor=interceptor,
        give_back=give_back,
        signals=Dispatcher(
            db.node,
            mailbox.fanout,
            authenticator,
            {STATUS_EVENTS: status_feed, SUPPORT_QUEUE: support.notifier},
            _in_background(book.refresh),
        ),
    )  # fmt: skip


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    server = await build_server(settings)
    heap.settle()
    if settings.stall_warning_s:  # the process's collector: once, for the process
        watchdog.watch_collections(settings.stall_warning_s)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": settings.shutdown_grace})
    await server.stop()
