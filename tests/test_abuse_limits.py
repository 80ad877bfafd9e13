"""Abuse limits over a live server: verification codes per client address and across the server,
code guessing per address, the operator's verification gate, and prekey draining per account pair.

Several client addresses on one machine: Linux routes all of 127.0.0.0/8 to the loopback
interface, so a relay that connects to the server from 127.0.0.2 (or .3, ...) is, to the
server, another client, exactly as a remote one would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc, key_pb2_grpc
from parley.v1 import key_pb2 as kpb

from client.api import TextMessage
from client.crypto.session import SessionRecord
from server.domain.codes import ClientInfo
from server.domain.errors import PermissionDenied
from server.domain.ratelimit import Rate
from server.rpc.peer import client_address
from tests.client_helpers import closing, drain, registered
from tests.conftest import TEST_CODE, TEST_NUMBER, LiveServer, ServerFactory, register
from tests.keys_helper import DeviceKeyMaker
from tests.test_accounts import rpc_error

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def number(i: int) -> str:
    return f"+1415555{i:04d}"


class SourceRelay:
    """Relays TCP connections to `server` from the loopback source address `source`."""

    def __init__(self, server: LiveServer, source: str) -> None:
        self._upstream = ("127.0.0.1", server.port)
        self._source = source
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._start(self._accept)

    def _start(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self._upstream, source_address=(self._source, 0))
            with self._lock:
                self._sockets += [downstream, upstream]
            self._start(partial(self._pump, downstream, upstream))
            self._start(partial(self._pump, upstream, downstream))

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side or close() ended the connection

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        for thread in self._threads:
            thread.join(5)


class Clients:
    """AccountService stubs as seen from several client addresses of one machine."""

    def __init__(self, server: LiveServer) -> None:
        self._server = server
        self._relays: list[SourceRelay] = []
        self._channels: list[grpc.Channel] = []

    def accounts(self, source: str) -> account_pb2_grpc.AccountServiceStub:
        # Not "localhost", which may resolve to ::1: each client here has the address it names.
        target = f"127.0.0.1:{self._server.port}"
        if source != "127.0.0.1":
            relay = SourceRelay(self._server, source)
            self._relays.append(relay)
            target = relay.target
        channel = grpc.insecure_channel(target)
        self._channels.append(channel)
        return account_pb2_grpc.AccountServiceStub(channel)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        for relay in self._relays:
            relay.close()


@pytest.fixture
def clients() -> Iterator[Callable[[LiveServer], Clients]]:
    made: list[Clients] = []

    def make(server: LiveServer) -> Clients:
        made.append(Clients(server))
        return made[-1]

    yield make
    for c in made:
        c.close()


def retry_after(err: grpc.Call) -> int:
    """The google.rpc.RetryInfo delay of a RESOURCE_EXHAUSTED status, in seconds."""
    assert err.code() == EXHAUSTED, err.details()
    trailers = dict(err.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    assert f"try again in {retry.retry_delay.seconds} s" in (err.details() or "")
    return int(retry.retry_delay.seconds)


def start(stub: account_pb2_grpc.AccountServiceStub, phone: str) -> str:
    return stub.StartVerification(apb.StartVerificationRequest(phone_number=phone)).verification_id


def complete(
    stub: account_pb2_grpc.AccountServiceStub, vid: str, code: str
) -> apb.CompleteVerificationResponse:
    return stub.CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=vid,
            code=code,
            device_name="phone",
            account_kind=apb.ACCOUNT_KIND_PERSON,
        )
    )


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:203.0.113.7:5678", "203.0.113.7"),
        ("ipv6:[2001:db8:1:2:3:4:5:6]:5678", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2:ffff::1%5D:443", "2001:db8:1:2::/64"),  # gRPC's encoded form
        ("ipv6:%5B::1%5D:40018", "::/64"),
        ("ipv6:[::ffff:198.51.100.4]:5678", "198.51.100.4"),  # a dual-stack listener
        ("ipv6:[fe80::1%25eth0]:5678", "fe80::/64"),
        ("unix:/run/parley.sock", "unix"),
        ("unix-abstract:parley", "unix-abstract"),
        ("garbage", "unknown"),
    ],
)
def test_client_address_of_every_peer_form(peer: str, key: str) -> None:
    assert client_address(peer) == key


def test_codes_per_client_address(
    make_server: ServerFactory, clients: Callable[[LiveServer], Clients]
) -> None:
    server = make_server(verification_ip_rate=Rate(3, 3600))
    net = clients(server)
    here, there = net.accounts("127.0.0.1"), net.accounts("127.0.0.2")
    for i in range(3):  # three different numbers from one address
        start(here, number(i))
    err = rpc_error(lambda: start(here, number(3)))
    assert "verification codes requested from your address" in (err.details() or "")
    assert "limit 3 per 3600 s" in (err.details() or "")
    assert 1 <= retry_after(err) <= 1200
    assert server.sender.sent == 3
    # The operator's test numbers send no code and stay exempt.
    for _ in range(5):
        start(here, TEST_NUMBER)
    # Another client address is not affected, even for the number refused above.
    start(there, number(3))
    assert server.sender.sent == 4
    # The address's budget refills with time.
    server.clock.advance(1200)
    start(here, number(4))
    rpc_error(lambda: start(here, number(5)))


def test_global_ceiling_across_client_addresses(
    make_server: ServerFactory, clients: Callable[[LiveServer], Clients]
) -> None:
    server = make_server(
        verification_ip_rate=Rate(2, 3600),
        verification_global_rate=Rate(4, 3600),
        verification_rate=Rate(1, 3600),
    )
    net = clients(server)
    stubs = [net.accounts(f"127.0.0.{i}") for i in (1, 2, 3)]
    for i in range(4):  # two addresses, two numbers each: within every per-address limit
        start(stubs[i // 2], number(i))
    err = rpc_error(lambda: start(stubs[2], number(4)))
    assert "verification codes sent by this server to all numbers" in (err.details() or "")
    assert 1 <= retry_after(err) <= 900
    assert server.sender.sent == 4
    start(stubs[2], TEST_NUMBER)  # no code sent: not counted, not refused
    # The ceiling refills; the refused number's own budget (one an hour) was not spent by the
    # refusal, so it gets its code now, long before its own hour is up.
    server.clock.advance(900)
    start(stubs[2], number(4))
    assert server.sender.sent == 5


def test_code_guessing_is_limited_per_client_address(
    make_server: ServerFactory, clients: Callable[[LiveServer], Clients]
) -> None:
    server = make_server(verification_attempt_ip_rate=Rate(3, 900))
    net = clients(server)
    guesser, other = net.accounts("127.0.0.1"), net.accounts("127.0.0.3")
    vids = {number(i): start(other, number(i)) for i in range(4)}
    codes = server.sender.codes
    # A correct code gives its attempt back: registering never counts against the address.
    for _ in range(4):
        complete(guesser, start(guesser, TEST_NUMBER), TEST_CODE)
    # Each verification allows five wrong codes, but the address gets three across all of them.
    for i in range(3):
        err = rpc_error(partial(complete, guesser, vids[number(i)], wrong(codes[number(i)])))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = rpc_error(lambda: complete(guesser, vids[number(3)], wrong(codes[number(3)])))
    assert "failed verification attempts from your address" in (err.details() or "")
    assert 1 <= retry_after(err) <= 300
    # Refused before any code is compared: even the right one waits.
    err = rpc_error(lambda: complete(guesser, vids[number(3)], codes[number(3)]))
    assert err.code() == EXHAUSTED
    # Another address completes; the refused guess did not cost the verification an attempt.
    done = complete(other, vids[number(3)], codes[number(3)])
    assert done.device_id == 1
    server.clock.advance(300)  # one attempt back, well within the codes' 600 s of life
    err = rpc_error(lambda: complete(guesser, vids[number(0)], wrong(codes[number(0)])))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "3 attempt(s) left" in (err.details() or "")


class ProofOfWorkGate:
    """What an operator might plug in: a code only for callers that present a proof."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, ClientInfo]] = []

    async def check(self, phone_number: str, client: ClientInfo) -> None:
        self.seen.append((phone_number, client))
        if client.metadata.get("x-proof-of-work") != "solved":
            raise PermissionDenied("solve the puzzle first and send it as x-proof-of-work")


def test_verification_gate_refuses_with_its_own_status(
    make_server: ServerFactory, clients: Callable[[LiveServer], Clients]
) -> None:
    gate = ProofOfWorkGate()
    server = make_server(verification_gate=gate, verification_rate=Rate(1, 3600))
    stub = clients(server).accounts("127.0.0.1")
    err = rpc_error(lambda: start(stub, number(1)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == "solve the puzzle first and send it as x-proof-of-work"
    assert server.sender.sent == 0
    ((phone, client),) = gate.seen
    assert phone == number(1) and client.address == "127.0.0.1"
    assert "authorization" not in client.metadata
    # The refusal did not use up the number's one code an hour; the proof lets it through.
    proof = (("x-proof-of-work", "solved"),)
    stub.StartVerification(apb.StartVerificationRequest(phone_number=number(1)), metadata=proof)
    assert server.sender.sent == 1
    # Test numbers send no code: the gate is not asked.
    start(stub, TEST_NUMBER)
    assert len(gate.seen) == 2


def keys(server: LiveServer) -> key_pb2_grpc.KeyServiceStub:
    return key_pb2_grpc.KeyServiceStub(server.channel())


def test_bundle_fetches_are_limited_per_account_pair(make_server: ServerFactory) -> None:
    server = make_server(bundle_pair_rate=Rate(3, 3600))
    alice, mallory, bob, carol = (register(server, number(i)) for i in range(4))
    for target in (bob, carol):
        keys(server).UploadPreKeys(
            DeviceKeyMaker().first_upload(pre_keys=20), metadata=target.metadata
        )
    to_bob = kpb.GetPreKeyBundlesRequest(account_id=bob.account_id)
    for _ in range(3):
        keys(server).GetPreKeyBundles(to_bob, metadata=mallory.metadata)
    err = rpc_error(lambda: keys(server).GetPreKeyBundles(to_bob, metadata=mallory.metadata))
    assert "prekey bundle requests for this account" in (err.details() or "")
    assert 1 <= retry_after(err) <= 1200
    # Other callers reach Bob, and Mallory reaches other accounts.
    keys(server).GetPreKeyBundles(to_bob, metadata=alice.metadata)
    to_carol = kpb.GetPreKeyBundlesRequest(account_id=carol.account_id)
    keys(server).GetPreKeyBundles(to_carol, metadata=mallory.metadata)
    count = keys(server).GetPreKeyCount(kpb.GetPreKeyCountRequest(), metadata=bob.metadata)
    assert count.count.pre_key_count == 20 - 4
    server.clock.advance(1200)
    keys(server).GetPreKeyBundles(to_bob, metadata=mallory.metadata)


def test_sessions_start_after_one_time_keys_are_drained(server: LiveServer, tmp_path: Path) -> None:
    """Many callers together can still drain Bob's one-time keys (each within its pair limit):
    the signed prekey and the last-resort Kyber key keep first contact possible."""
    per_pair = server.settings.bundle_pair_rate.count
    drainers = [register(server, number(i)) for i in range(4)]

    async def body() -> None:
        bob = await registered(server, tmp_path / "bob", number(100))
        carol = await registered(server, tmp_path / "carol", number(101))

        async def conversation() -> None:
            uploaded = await bob.prekey_count()
            assert uploaded.pre_key_count <= per_pair * len(drainers)
            request = kpb.GetPreKeyBundlesRequest(account_id=bob.account_id)
            stub = keys(server)
            taken: list[int] = []
            for drainer in drainers:
                for _ in range(per_pair):
                    bundle = stub.GetPreKeyBundles(request, metadata=drainer.metadata).bundles[0]
                    if bundle.HasField("pre_key"):
                        taken.append(bundle.pre_key.key_id)
                err = rpc_error(partial(stub.GetPreKeyBundles, request, metadata=drainer.metadata))
                assert err.code() == EXHAUSTED
            assert len(set(taken)) == len(taken) == uploaded.pre_key_count
            drained = await bob.prekey_count()
            assert drained.pre_key_count == drained.kyber_pre_key_count == 0

            await carol.send(number(100), "hello on the last-resort key")
            raw = carol.store.load_session(bob.account_id, 1)
            assert raw is not None
            state = SessionRecord.from_bytes(raw).current
            assert state is not None and state.pending_pre_key is not None
            assert state.pending_pre_key.pre_key_id is None  # no one-time EC key was left
            assert state.pending_pre_key.kyber_pre_key_id == drained.last_resort_kyber_pre_key_id

            got = [e for e in await drain(bob) if isinstance(e, TextMessage)]
            assert [(e.text, e.sender_account_id) for e in got] == [
                ("hello on the last-resort key", carol.account_id)
            ]
            await bob.send(carol.account_id, "and back")
            back = [e for e in await drain(carol) if isinstance(e, TextMessage)]
            assert [(e.text, e.sender_account_id) for e in back] == [("and back", bob.account_id)]

        await closing([bob, carol], conversation)

    asyncio.run(body())
