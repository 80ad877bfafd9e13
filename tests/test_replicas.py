"""Several replicas on one PostgreSQL database: what one replica commits, the others see.

Two servers share one database (and, in process, one clock). A device's stream may be open on
replica A while its messages are sent through replica B: B's commit signals A (LISTEN/NOTIFY,
server.domain.signals), and A's stream re-reads the database from its position. One live stream
per device holds across replicas, a removed device is refused everywhere, one-time prekeys are
handed out once, and a replica killed under load loses no acknowledged send.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.v1 import account_pb2 as apb
from parley.v1 import billing_pb2 as bpb
from parley.v1 import billing_pb2_grpc, messaging_pb2_grpc
from parley.v1 import messaging_pb2 as mpb
from psycopg import conninfo

from server.domain.clock import ManualClock
from server.domain.ratelimit import Rate
from tests.conftest import LiveServer, ServerFactory, register
from tests.keys_helper import DeviceKeyMaker
from tests.test_billing_live import ADMIN, ANA, BEN, CODES, OPERATOR, SHOP, business_member
from tests.test_billing_rpc import ADMIN_TOKEN as RPC_ADMIN
from tests.test_billing_rpc import OPERATOR as RPC_OPERATOR
from tests.test_billing_rpc import SHIPPED_TOML
from tests.test_crash import (
    NUMBERS,
    Receiver,
    free_port,
    request,
    resend_missing,
    send_all,
)
from tests.test_crash import register as register_async
from tests.test_keys import assert_handed_out_once, fetch_concurrently, keys
from tests.test_messaging import ALICE, BOB, Member, Stream, ack, member, send_request, stub
from tests.test_metering import PRICES
from tests.tools import REPO, server_process

pytestmark = pytest.mark.postgres_only

Pair = tuple[LiveServer, LiveServer]


@pytest.fixture
def replicas(postgres_url: str, make_server: ServerFactory) -> Pair:
    """Replicas A and B on one database (postgres_url first: it outlives the servers)."""
    clock = ManualClock()
    return (
        make_server(database=postgres_url, clock=clock),
        make_server(database=postgres_url, clock=clock),
    )


def refused(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert isinstance(info.value, grpc.Call)
    code = info.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


def test_a_stream_on_a_receives_what_is_sent_through_b(replicas: Pair) -> None:
    a, b = replicas
    alice, bob = member(b, ALICE), member(a, BOB)
    stream = Stream(a, bob, timeout=10)
    assert stream.until_empty() == []
    sent = [
        stub(b).SendMessage(
            send_request([bob], f"via B {i}".encode()), metadata=alice.device.metadata
        )
        for i in range(3)
    ]
    # Live, on A, in order: B's commit signalled A (well within the 5 s poll).
    started = time.monotonic()
    got = stream.envelopes(3)
    assert [e.content for e in got] == [b"via B 0", b"via B 1", b"via B 2"]
    assert [e.message_id for e in got] == [s.message_id for s in sent]
    assert time.monotonic() - started < 3
    # The ack on A reaches Alice's stream on B as a delivery status.
    alice_stream = Stream(b, alice, timeout=10)
    assert alice_stream.until_empty() == []
    assert ack(a, bob, got).acknowledged_envelopes == 3
    statuses = alice_stream.statuses(3)
    assert {s.message_id for s in statuses} == {s.message_id for s in sent}
    assert {s.state for s in statuses} == {mpb.DELIVERY_STATE_DELIVERED}
    stream.close()
    alice_stream.close()


def test_concurrent_senders_on_both_replicas_reach_one_stream_once_each(replicas: Pair) -> None:
    """Positions grow in commit order per device, so a live stream skips nothing even when
    two replicas commit for the same device at the same moment."""
    a, b = replicas
    alice, carol, bob = member(a, ALICE), member(b, "+14155550199"), member(a, BOB)
    stream = Stream(b, bob, timeout=20)
    assert stream.until_empty() == []

    def send(server: LiveServer, who: Member, n: int) -> None:
        sender = stub(server)
        for i in range(n):
            sender.SendMessage(
                send_request([bob], f"{server.port}-{i}".encode()), metadata=who.device.metadata
            )

    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(send, a, alice, 40), pool.submit(send, b, carol, 40)]
        for job in jobs:
            job.result()
    got = stream.envelopes(80)
    contents = [e.content for e in got]
    assert len(contents) == len(set(contents)) == 80
    stream.close()


def test_a_second_stream_on_b_ends_the_one_on_a(replicas: Pair) -> None:
    a, b = replicas
    alice, bob = member(a, ALICE), member(a, BOB)
    first = Stream(a, bob)
    assert first.until_empty() == []
    second = Stream(b, bob)
    assert second.until_empty() == []
    assert refused(first.next) == grpc.StatusCode.ABORTED
    stub(a).SendMessage(send_request([bob], b"to the second"), metadata=alice.device.metadata)
    assert [e.content for e in second.envelopes(1)] == [b"to the second"]
    second.close()


def test_a_device_removed_via_a_is_refused_on_b(replicas: Pair) -> None:
    a, b = replicas
    alice = member(a, ALICE)
    bob = member(a, BOB)
    laptop = member(a, BOB, primary=bob.device)
    # B knows the laptop: its credential is in B's cache, its stream open on B.
    account = b.accounts().GetAccount(apb.GetAccountRequest(), metadata=laptop.device.metadata)
    assert list(account.account.device_ids) == [1, 2]
    stream = Stream(b, laptop)
    assert stream.until_empty() == []
    a.accounts().RemoveDevice(
        apb.RemoveDeviceRequest(device_id=laptop.device.device_id), metadata=bob.device.metadata
    )
    # A write on B is refused at once: it re-checks the credential in its own transaction.
    write = stub(b).SendMessage
    assert (
        refused(lambda: write(send_request([alice], b"x"), metadata=laptop.device.metadata))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    # The stream on B ends, and B's cache forgets the credential (the REVOKE signal).
    assert refused(stream.next) == grpc.StatusCode.UNAUTHENTICATED
    get = b.accounts().GetAccount
    assert (
        refused(lambda: get(apb.GetAccountRequest(), metadata=laptop.device.metadata))
        == grpc.StatusCode.UNAUTHENTICATED
    )


def test_two_replicas_never_hand_out_the_same_prekey(replicas: Pair) -> None:
    a, b = replicas
    bob = register(a, BOB)
    fetchers = [register(a if i % 2 else b, f"+1415555{i:04d}") for i in range(6)]
    keys(a).UploadPreKeys(
        DeviceKeyMaker().first_upload(pre_keys=20, kyber=20), metadata=bob.metadata
    )
    stubs = [keys(a if i % 2 else b) for i in range(6)]
    results = fetch_concurrently(stubs, fetchers, bob.account_id, calls=60, threads=24)
    assert_handed_out_once(results, one_time=20)


# -- SIGKILL one replica under load ------------------------------------------------------------

MESSAGES = 3000
KILL_AFTER_ACKED = 900


def test_sigkill_replica_a_under_load_b_delivers_every_acknowledged_send(
    postgres_url: str,
) -> None:
    """Alice sends through A while Bob's stream is open on B; A is killed mid-load. Every send
    A acknowledged reaches Bob exactly once through B, and retrying the rest through B with the
    same request ids completes the set without a duplicate."""
    numbers = ",".join(f"{n}={c}" for n, c in NUMBERS.items())
    common = ("--host", "127.0.0.1", "--database", postgres_url, "--send-rate", "1000000/60s")
    env = {"PARLEY_TEST_NUMBERS": numbers}
    request_ids = [str(uuid.uuid4()) for _ in range(MESSAGES)]
    acked: set[int] = set()
    receiver = Receiver()
    with (
        server_process(*common, "--port", str(free_port()), env=env) as (proc_a, port_a),
        server_process(*common, "--port", str(free_port()), env=env) as (_, port_b),
    ):

        async def main() -> None:
            async with (
                aio.insecure_channel(f"127.0.0.1:{port_a}") as via_a,
                aio.insecure_channel(f"127.0.0.1:{port_b}") as via_b,
            ):
                _, alice_md, _ = await register_async(via_a, "+15550000001")
                bob, bob_md, bob_reg = await register_async(via_b, "+15550000002")
                stop = asyncio.Event()
                receiving = asyncio.ensure_future(receiver.drain(via_b, bob_md, stop=stop))
                sending = messaging_pb2_grpc.MessagingServiceStub(via_a)
                await send_all(
                    sending, alice_md, bob, bob_reg, request_ids, acked, proc_a, KILL_AFTER_ACKED
                )
                assert proc_a.wait(10) == -signal.SIGKILL
                assert KILL_AFTER_ACKED <= len(acked) < MESSAGES, "the kill came too late"
                # Every acknowledged send reaches Bob through B, live.
                expected = {f"payload-{i:05d}".encode() for i in acked}
                deadline = time.monotonic() + 30
                while not expected <= set(receiver.by_envelope.values()):
                    assert time.monotonic() < deadline, "acknowledged sends never arrived"
                    await asyncio.sleep(0.05)
                # The rest, retried through B with the same request ids.
                retry = messaging_pb2_grpc.MessagingServiceStub(via_b)
                await resend_missing(retry, alice_md, bob, bob_reg, request_ids, acked)
                deadline = time.monotonic() + 30
                while len(receiver.by_envelope) < MESSAGES:
                    assert time.monotonic() < deadline, f"{len(receiver.by_envelope)} arrived"
                    await asyncio.sleep(0.05)
                stop.set()
                receiving.cancel()
                delivered = list(receiver.by_envelope.values())
                assert len(delivered) == len(set(delivered)) == MESSAGES, "a message twice"

        asyncio.run(main())


def test_a_status_event_stream_on_b_follows_sends_through_a(
    postgres_url: str, make_server: ServerFactory, tmp_path: Path
) -> None:
    """A business's status events committed by replica A reach its stream on replica B at
    once (a FEED signal), not after a keep-alive interval."""
    table = tmp_path / "prices.toml"
    table.write_text(PRICES)
    clock = ManualClock()
    common = {"admin_token": ADMIN, "billing": True, "price_file": table, "test_numbers": CODES}
    a = make_server(database=postgres_url, clock=clock, **common)
    b = make_server(database=postgres_url, clock=clock, **common)
    shop, ana = business_member(a, SHOP), member(a, ANA)
    billing_pb2_grpc.BillingServiceStub(a.channel()).TopUp(
        bpb.TopUpRequest(
            business_account_id=shop.device.account_id, amount_micros=10**9, reference="r1"
        ),
        metadata=OPERATOR,
    )
    stub(a).SendMessage(send_request([shop], b"hi"), metadata=ana.device.metadata)
    events = billing_pb2_grpc.BillingServiceStub(b.channel()).StreamStatusEvents(
        bpb.StreamStatusEventsRequest(), metadata=shop.device.metadata, timeout=20
    )
    items = iter(events)
    assert next(items).HasField("caught_up")
    sent = stub(a).SendMessage(send_request([ana], b"reply"), metadata=shop.device.metadata)
    started = time.monotonic()
    item = next(items)
    assert item.HasField("event") and item.event.message_id == sent.message_id
    assert item.event.kind == bpb.STATUS_EVENT_KIND_SENT
    assert time.monotonic() - started < 3
    events.cancel()  # type: ignore[no-untyped-call]


def test_rate_limits_are_shared_by_replicas_and_survive_a_restart(
    postgres_url: str, make_server: ServerFactory
) -> None:
    """Two codes per number per hour: two through A, then B refuses the third, and so does B
    after a restart; an hour later either sends one again."""
    clock = ManualClock()
    limits = {"verification_rate": Rate(2, 3600)}
    a = make_server(database=postgres_url, clock=clock, **limits)
    b = make_server(database=postgres_url, clock=clock, **limits)
    number = "+14155550142"

    def start(server: LiveServer) -> apb.StartVerificationResponse:
        return server.accounts().StartVerification(
            apb.StartVerificationRequest(phone_number=number)
        )

    start(a)
    start(a)
    assert refused(lambda: start(b)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    b.restart()
    assert refused(lambda: start(b)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    clock.advance(3600)
    assert start(b).verification_id


def test_a_business_send_rate_is_shared_and_a_batch_gives_back_its_unused_tokens(
    postgres_url: str, make_server: ServerFactory
) -> None:
    """3 sends/s for a business, its buckets in the database: a batch through A takes the
    tokens of its three messages in its transaction and gives back the one refused before the
    rate (Ana never wrote); B then has one token left, not zero, and refuses the next."""
    clock = ManualClock()
    common = {"admin_token": ADMIN, "test_numbers": CODES, "business_send_rate": Rate(3, 1.0)}
    a = make_server(database=postgres_url, clock=clock, **common)
    b = make_server(database=postgres_url, clock=clock, **common)
    shop, ben, ana = business_member(a, SHOP), member(a, BEN), member(b, ANA)
    stub(a).SendMessage(send_request([shop], b"hi"), metadata=ben.device.metadata)
    results = (
        stub(a)
        .SendMessages(
            mpb.SendMessagesRequest(
                requests=[send_request([to], b"reply") for to in (ben, ana, ben)]
            ),
            metadata=shop.device.metadata,
        )
        .results
    )
    failed = grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert [r.code for r in results] == [0, failed, 0], results

    def reply(server: LiveServer) -> object:
        return stub(server).SendMessage(
            send_request([ben], b"reply"), metadata=shop.device.metadata
        )

    reply(b)  # the token A gave back
    assert refused(lambda: reply(b)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused(lambda: reply(a)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    clock.advance(1)
    reply(a)


def test_run_cluster_starts_replicas_that_share_one_database(tmp_path: Path) -> None:
    """`make run-cluster` (python -m server.cluster): two replicas on a throwaway PostgreSQL;
    a message sent through one reaches a stream on the other; Ctrl-C stops everything and
    deletes the throwaway database."""
    numbers = [arg for n, c in NUMBERS.items() for arg in ("--test-number", f"{n}={c}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cluster", "--port", "0", "--host", "127.0.0.1", "--",
         *numbers],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    ports: list[int] = []
    data_dir = ""
    for line in proc.stdout:
        if "throwaway PostgreSQL in" in line:
            data_dir = line.rsplit(" ", 1)[-1].strip()
        if "listening on" in line:
            ports.append(int(line.split("listening on ")[1].split(" ")[0].rsplit(":", 1)[1]))
        if "running" in line:
            break
    try:
        assert len(ports) == 2 and data_dir

        async def talk() -> None:
            async with (
                aio.insecure_channel(f"127.0.0.1:{ports[0]}") as one,
                aio.insecure_channel(f"127.0.0.1:{ports[1]}") as two,
            ):
                _, alice_md, _ = await register_async(one, "+15550000001")
                bob, bob_md, bob_reg = await register_async(two, "+15550000002")
                await messaging_pb2_grpc.MessagingServiceStub(one).SendMessage(
                    request(7, str(uuid.uuid4()), bob, bob_reg), metadata=alice_md
                )
                receiver = Receiver()
                await receiver.drain(two, bob_md)
                assert list(receiver.by_envelope.values()) == [b"payload-00007"]

        asyncio.run(talk())
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        proc.stdout.close()
    assert not Path(data_dir).exists()


def test_health_follows_the_database(postgres_url: str, make_server: ServerFactory) -> None:
    """NOT_SERVING while PostgreSQL refuses the replica (its sessions ended, new ones refused),
    SERVING again once it takes connections, with no write in between."""
    server = make_server(database=postgres_url)
    health = health_pb2_grpc.HealthStub(server.channel()).Check

    def status() -> int:
        return int(health(health_pb2.HealthCheckRequest(), timeout=10).status)

    def until(wanted: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while status() != wanted:
            assert time.monotonic() < deadline, f"health never became {wanted}"
            time.sleep(0.2)

    assert status() == health_pb2.HealthCheckResponse.SERVING
    dbname = conninfo.conninfo_to_dict(postgres_url)["dbname"]
    admin_url = postgres_url.replace(f"/{dbname}?", "/postgres?")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (dbname,),
        )
        try:
            until(health_pb2.HealthCheckResponse.NOT_SERVING, 30)
        finally:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    until(health_pb2.HealthCheckResponse.SERVING, 30)


def test_a_price_table_set_through_a_is_in_force_on_b(
    postgres_url: str, make_server: ServerFactory
) -> None:
    """The price book is cached per replica; a PRICES signal makes B read the new version."""
    clock = ManualClock()
    common = {"admin_token": RPC_ADMIN, "billing": True}
    a = make_server(database=postgres_url, clock=clock, **common)
    b = make_server(database=postgres_url, clock=clock, **common)
    person = register(b, "+14155550177")
    on_b = billing_pb2_grpc.BillingServiceStub(b.channel())
    assert (
        on_b.GetPriceList(bpb.GetPriceListRequest(), metadata=person.metadata).current.version == 1
    )
    request = bpb.SetPriceTableRequest(toml=SHIPPED_TOML.replace('DE = "0.0890"', 'DE = "0.0700"'))
    request.effective_at.FromSeconds(int(clock.now()) + 60)
    billing_pb2_grpc.BillingServiceStub(a.channel()).SetPriceTable(request, metadata=RPC_OPERATOR)
    deadline = time.monotonic() + 3
    while not on_b.GetPriceList(bpb.GetPriceListRequest(), metadata=person.metadata).HasField(
        "next"
    ):
        assert time.monotonic() < deadline, "B never saw the new price table"
        time.sleep(0.05)
    clock.advance(60)
    listing = on_b.GetPriceList(bpb.GetPriceListRequest(), metadata=person.metadata)
    assert listing.current.version == 2


def test_two_replicas_never_overdraw_a_balance_nor_capture_twice(
    postgres_url: str, make_server: ServerFactory, tmp_path: Path
) -> None:
    """A balance for exactly ten replies, twenty sent at once through two replicas: ten are
    reserved, ten refused, never a negative balance; then Ben's two devices acknowledge
    everything at once on different replicas: each message is captured exactly once."""
    table = tmp_path / "prices.toml"
    table.write_text(PRICES)
    clock = ManualClock()
    common = {"admin_token": ADMIN, "billing": True, "price_file": table, "test_numbers": CODES}
    a = make_server(database=postgres_url, clock=clock, **common)
    b = make_server(database=postgres_url, clock=clock, **common)
    shop, ben = business_member(a, SHOP), member(a, BEN)
    ben2 = member(b, BEN, ben.device)
    stub(a).SendMessage(send_request([shop], b"hi"), metadata=ben.device.metadata)
    billing = billing_pb2_grpc.BillingServiceStub(a.channel())
    billing.TopUp(
        bpb.TopUpRequest(
            business_account_id=shop.device.account_id, amount_micros=100_000, reference="r1"
        ),
        metadata=OPERATOR,
    )

    def reply(server: LiveServer) -> int | grpc.StatusCode:
        try:
            return int(
                stub(server)
                .SendMessage(send_request([ben, ben2], b"reply"), metadata=shop.device.metadata)
                .message_id
            )
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            code = exc.code()
            assert code == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            assert "insufficient balance" in (exc.details() or "")
            return code

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(reply, [a, b] * 10))
    sent = [o for o in outcomes if isinstance(o, int)]
    assert len(sent) == 10 and outcomes.count(grpc.StatusCode.FAILED_PRECONDITION) == 10

    def balance() -> tuple[int, int]:
        got = billing.GetBalance(bpb.GetBalanceRequest(), metadata=shop.device.metadata)
        return got.available_micros, got.reserved_micros

    assert balance() == (0, 100_000)

    def ack_all(server: LiveServer, who: Member) -> None:
        envelopes = Stream(server, who).until_empty()
        ack(server, who, envelopes)

    with ThreadPoolExecutor(2) as pool:
        for job in [pool.submit(ack_all, a, ben), pool.submit(ack_all, b, ben2)]:
            job.result()
    assert balance() == (0, 0)
    entries = billing.ListLedgerEntries(
        bpb.ListLedgerEntriesRequest(page_size=1000), metadata=shop.device.metadata
    ).entries
    captured = [e.message_id for e in entries if e.kind == bpb.LEDGER_ENTRY_KIND_CAPTURE]
    assert sorted(captured) == sorted(sent)
