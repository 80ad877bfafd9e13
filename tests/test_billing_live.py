"""Metered delivery over a live server, through the RPCs a business and its users call: a send
the balance cannot cover is refused, the first ack captures and nothing after it charges again,
expiry and a block release the price, free messages cost nothing and still show (with the
reason) in the events and the usage report, a price change prices each message by the table in
force when it was sent, and a top-up counts once per reference."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import grpc
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import billing_pb2 as bpb
from parley.v1 import billing_pb2_grpc, business_pb2_grpc
from parley.v1 import business_pb2 as bzpb
from parley.v1 import messaging_pb2 as mpb

from server.app import ParleyServer
from tests.conftest import LiveServer, ServerFactory, register
from tests.keys_helper import DeviceKeyMaker
from tests.test_keys import keys
from tests.test_messaging import Member, Stream, failure, member, send_request, stub
from tests.test_metering import PRICES

ADMIN = "billing-live-admin"
OPERATOR = (("authorization", f"Bearer {ADMIN}"),)
SHOP, ANA, BEN = "+14155550190", "+4915112345690", "+14155550191"
CODES = {SHOP: "190190", ANA: "290290", BEN: "191191"}
DAY = 86_400.0


def business_member(server: LiveServer, phone: str) -> Member:
    """A business account's primary device with published keys."""
    device = register(server, phone, apb.ACCOUNT_KIND_BUSINESS)
    maker = DeviceKeyMaker(registration_id=1000 + device.device_id)
    keys(server).UploadPreKeys(maker.first_upload(pre_keys=1, kyber=1), metadata=device.metadata)
    return Member(device, maker.registration_id)


class World:
    def __init__(self, make_server: ServerFactory, tmp_path: Path) -> None:
        table = tmp_path / "prices.toml"
        table.write_text(PRICES)
        self.server = make_server(
            admin_token=ADMIN, billing=True, price_file=table, test_numbers=CODES
        )
        self.shop = business_member(self.server, SHOP)
        self.ana = member(self.server, ANA)
        self.ben = member(self.server, BEN)
        self.ben2 = member(self.server, BEN, self.ben.device)
        self.billing = billing_pb2_grpc.BillingServiceStub(self.server.channel())
        self.messaging = stub(self.server)

    def top_up(self, micros: int, reference: str) -> bpb.TopUpResponse:
        return self.billing.TopUp(
            bpb.TopUpRequest(
                business_account_id=self.shop.device.account_id,
                amount_micros=micros,
                reference=reference,
            ),
            metadata=OPERATOR,
        )

    def write_to_shop(self, user: Member) -> None:
        """The user writes: the shop may answer free-form for 24 h (a SERVICE reply)."""
        self.messaging.SendMessage(send_request([self.shop], b"hi"), metadata=user.device.metadata)

    def reply(self, *to: Member) -> mpb.SendMessageResponse:
        return self.messaging.SendMessage(
            send_request(list(to), b"reply"), metadata=self.shop.device.metadata
        )

    def ack_all(self, who: Member) -> int:
        envelopes = Stream(self.server, who).until_empty()
        if not envelopes:
            return 0
        self.messaging.AcknowledgeMessages(
            mpb.AcknowledgeMessagesRequest(envelope_ids=[e.envelope_id for e in envelopes]),
            metadata=who.device.metadata,
        )
        return len(envelopes)

    def balance(self) -> tuple[int, int]:
        b = self.billing.GetBalance(bpb.GetBalanceRequest(), metadata=self.shop.device.metadata)
        return b.available_micros, b.reserved_micros

    def events(self) -> list[bpb.StatusEvent]:
        call = self.billing.StreamStatusEvents(
            bpb.StreamStatusEventsRequest(), metadata=self.shop.device.metadata, timeout=20
        )
        out = []
        for item in call:
            if item.HasField("caught_up"):
                break
            if item.HasField("event"):
                out.append(item.event)
        call.cancel()  # type: ignore[no-untyped-call]
        return out

    def of(self, message_id: int) -> list[bpb.StatusEvent]:
        return [e for e in self.events() if e.message_id == message_id]

    def captures(self) -> list[int]:
        entries = self.billing.ListLedgerEntries(
            bpb.ListLedgerEntriesRequest(page_size=1000), metadata=self.shop.device.metadata
        ).entries
        return [e.message_id for e in entries if e.kind == bpb.LEDGER_ENTRY_KIND_CAPTURE]


@pytest.fixture
def world(make_server: ServerFactory, tmp_path: Path) -> World:
    return World(make_server, tmp_path)


def test_a_send_the_balance_cannot_cover_is_refused(world: World) -> None:
    world.write_to_shop(world.ana)
    world.top_up(15_000, "wire-1")
    err = failure(lambda: world.reply(world.ana))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith(
        "insufficient balance: need 0.02 USD, available 0.015 USD (SERVICE to DE: 0.02 USD)"
    )
    assert world.balance() == (15_000, 0) and world.events() == []


def test_the_first_ack_captures_once_whatever_else_acks(world: World) -> None:
    world.write_to_shop(world.ben)
    world.top_up(1_000_000, "wire-1")
    sent = [world.reply(world.ben, world.ben2).message_id for _ in range(10)]
    assert world.balance() == (900_000, 100_000)
    # Both of Ben's devices acknowledge everything at the same moment, then again.
    threads = [threading.Thread(target=world.ack_all, args=(m,)) for m in (world.ben, world.ben2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    world.ack_all(world.ben)
    world.ack_all(world.ben2)
    assert world.balance() == (900_000, 0)
    assert sorted(world.captures()) == sorted(sent)
    for m in sent:
        kinds = [e.kind for e in world.of(m)]
        assert kinds == [bpb.STATUS_EVENT_KIND_SENT, bpb.STATUS_EVENT_KIND_DELIVERED]
    delivered = world.of(sent[0])[1].pricing
    assert (delivered.billable, delivered.amount_micros, delivered.currency) == (
        True,
        10_000,
        "USD",
    )
    assert delivered.ledger_entry_id != 0


def _expire(server: LiveServer) -> None:
    server.clock.advance(30 * DAY + 1)

    async def run(parts: ParleyServer) -> int:
        return await parts.mailbox.expire()

    server.run(run)


def test_expiry_and_a_block_release_the_price(world: World) -> None:
    world.write_to_shop(world.ana)
    world.top_up(100_000, "wire-1")
    expiring = world.reply(world.ana).message_id
    assert world.balance() == (80_000, 20_000)
    _expire(world.server)
    assert world.balance() == (100_000, 0)
    assert [e.kind for e in world.of(expiring)] == [
        bpb.STATUS_EVENT_KIND_SENT, bpb.STATUS_EVENT_KIND_EXPIRED,
    ]  # fmt: skip
    world.write_to_shop(world.ana)  # 30 days later: she writes again
    blocked = world.reply(world.ana).message_id
    business_pb2_grpc.BusinessServiceStub(world.server.channel()).BlockAccount(
        bzpb.BlockAccountRequest(account_id=world.shop.device.account_id),
        metadata=world.ana.device.metadata,
    )
    assert world.balance() == (100_000, 0)
    failed = world.of(blocked)[1]
    assert failed.kind == bpb.STATUS_EVENT_KIND_FAILED
    assert failed.reason == "not delivered: the recipient does not accept messages from you"
    assert world.ack_all(world.ana) == 0, "a blocked business's message is not delivered"
    assert world.captures() == []


def test_free_messages_cost_nothing_and_still_show_with_the_reason(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # The shipped table: a SERVICE reply inside the customer-service window is free.
    server = make_server(admin_token=ADMIN, billing=True, test_numbers=CODES)
    shop = business_member(server, SHOP)
    ana = member(server, ANA)
    messaging = stub(server)
    messaging.SendMessage(send_request([shop], b"hi"), metadata=ana.device.metadata)
    sent = messaging.SendMessage(send_request([ana], b"free"), metadata=shop.device.metadata)
    envelopes = Stream(server, ana).until_empty()
    messaging.AcknowledgeMessages(
        mpb.AcknowledgeMessagesRequest(envelope_ids=[e.envelope_id for e in envelopes]),
        metadata=ana.device.metadata,
    )
    billing = billing_pb2_grpc.BillingServiceStub(server.channel())
    call = billing.StreamStatusEvents(
        bpb.StreamStatusEventsRequest(), metadata=shop.device.metadata, timeout=20
    )
    events = []
    for item in call:
        if item.HasField("caught_up"):
            break
        events.append(item.event)
    call.cancel()  # type: ignore[no-untyped-call]
    assert [(e.message_id, e.kind) for e in events] == [
        (sent.message_id, bpb.STATUS_EVENT_KIND_SENT),
        (sent.message_id, bpb.STATUS_EVENT_KIND_DELIVERED),
    ]
    pricing = events[1].pricing
    assert (pricing.billable, pricing.amount_micros, pricing.free_reason) == (
        False, 0, bpb.FREE_REASON_SERVICE_WINDOW,
    )  # fmt: skip
    report = billing.GetUsageReport(
        bpb.GetUsageReportRequest(group_by=bpb.USAGE_GROUPING_CATEGORY),
        metadata=shop.device.metadata,
    )
    (row,) = report.rows
    assert (row.key, row.delivered, row.free_service_window, row.charged_micros) == (
        "SERVICE", 1, 1, 0,
    )  # fmt: skip
    assert report.reconciled


def test_a_price_change_prices_each_message_by_the_table_in_force_when_sent(
    world: World,
) -> None:
    world.write_to_shop(world.ana)
    world.top_up(1_000_000, "wire-1")
    before = world.reply(world.ana).message_id
    noon = int(world.server.clock.now()) + 3600
    world.billing.SetPriceTable(
        bpb.SetPriceTableRequest(
            toml=PRICES.replace('DE = "0.02"', 'DE = "0.03"'),
            effective_at={"seconds": noon},  # type: ignore[arg-type]
        ),
        metadata=OPERATOR,
    )
    world.server.clock.advance(3600)
    after = world.reply(world.ana).message_id
    world.ack_all(world.ana)  # both delivered after the change
    charged = {e.message_id: e.pricing.amount_micros for e in world.events() if e.kind == 2}
    assert charged == {before: 20_000, after: 30_000}


def test_a_top_up_counts_once_per_reference(world: World) -> None:
    first = world.top_up(5_000_000, "wire-7")
    again = world.top_up(9_000_000, "wire-7")
    assert first.applied and not again.applied and again.entry == first.entry
    assert world.balance() == (5_000_000, 0)


def test_requests_ids_make_retries_free(world: World) -> None:
    """A retried send (same request_id) reserves nothing more."""
    world.write_to_shop(world.ana)
    world.top_up(100_000, "wire-1")
    request = send_request([world.ana], b"once", request_id=str(uuid.uuid4()))
    first = world.messaging.SendMessage(request, metadata=world.shop.device.metadata)
    second = world.messaging.SendMessage(request, metadata=world.shop.device.metadata)
    assert first.message_id == second.message_id
    assert world.balance() == (80_000, 20_000)
