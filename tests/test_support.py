"""Live support over the wire: agents, conversations, the queue stream, and the support device
set the send's device check and GetPreKeyBundles enforce. Raw gRPC stubs on a live server
(the three-client story is in tests/test_support_story.py)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status
from parley.v1 import account_pb2 as apb
from parley.v1 import business_pb2 as bpb
from parley.v1 import business_pb2_grpc, key_pb2_grpc, messaging_pb2_grpc
from parley.v1 import key_pb2 as kpb
from parley.v1 import messaging_pb2 as mpb
from parley.v1 import support_pb2 as spb

from server.domain.support import QUEUE_PAGE
from tests.conftest import Device, LiveServer, ServerFactory, link, register
from tests.keys_helper import DeviceKeyMaker

SHOP = "+15550004444"
USER = "+15550005555"
OTHER = "+15550006666"
CODES = {SHOP: "444444", USER: "555555", OTHER: "666666"}
FAILED = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Shop:
    """A business with a primary device, agents A and B, and a device C that is no agent; a
    user and another person; every device with keys."""

    server: LiveServer
    primary: Device
    a: Device
    b: Device
    c: Device
    user: Device
    other: Device
    registrations: dict[tuple[str, int], int]

    def stub(self) -> business_pb2_grpc.BusinessServiceStub:
        return business_pb2_grpc.BusinessServiceStub(self.server.channel())

    def open(self, who: Device | None = None, topic: str = "refund") -> spb.SupportConversation:
        reply = self.stub().OpenSupportConversation(
            spb.OpenSupportConversationRequest(
                business_account_id=self.primary.account_id, topic=topic
            ),
            metadata=(who or self.user).metadata,
        )
        return reply.conversation

    def claim(self, agent: Device, cid: str) -> spb.SupportConversation:
        return (
            self.stub()
            .ClaimConversation(
                spb.ClaimConversationRequest(conversation_id=cid), metadata=agent.metadata
            )
            .conversation
        )

    def close(self, who: Device, cid: str) -> spb.SupportConversation:
        return (
            self.stub()
            .CloseConversation(
                spb.CloseConversationRequest(conversation_id=cid), metadata=who.metadata
            )
            .conversation
        )

    def transfer(self, who: Device, cid: str, to: int) -> spb.SupportConversation:
        return (
            self.stub()
            .TransferConversation(
                spb.TransferConversationRequest(conversation_id=cid, to_device_id=to),
                metadata=who.metadata,
            )
            .conversation
        )

    def send(self, devices: list[int]) -> mpb.SendMessageResponse:
        """The user's send to the business naming `devices`."""
        request = mpb.SendMessageRequest(
            request_id=str(uuid.uuid4()),
            recipient_account_id=self.primary.account_id,
            messages=[
                mpb.OutgoingMessage(
                    device_id=d,
                    registration_id=self.registrations[(self.primary.account_id, d)],
                    content_type=mpb.CONTENT_TYPE_WHISPER,
                    content=b"sealed",
                )
                for d in devices
            ],
        )
        messaging = messaging_pb2_grpc.MessagingServiceStub(self.server.channel())
        response: mpb.SendMessageResponse = messaging.SendMessage(
            request, metadata=self.user.metadata
        )
        return response


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    err = refused(call)
    assert isinstance(err, grpc.Call)
    return err.code(), err.details() or ""


@pytest.fixture
def shop(make_server: ServerFactory) -> Shop:
    server = make_server(test_numbers=CODES)
    primary = register(server, SHOP, apb.ACCOUNT_KIND_BUSINESS)
    a, b, c = (link(server, primary, name) for name in ("agent a", "agent b", "till"))
    user = register(server, USER)
    other = register(server, OTHER)
    registrations: dict[tuple[str, int], int] = {}
    for i, device in enumerate((primary, a, b, c, user, other)):
        maker = DeviceKeyMaker(registration_id=2000 + i)
        key_pb2_grpc.KeyServiceStub(server.channel()).UploadPreKeys(
            maker.first_upload(pre_keys=4, kyber=2), metadata=device.metadata
        )
        registrations[(device.account_id, device.device_id)] = maker.registration_id
    world = Shop(server, primary, a, b, c, user, other, registrations)
    for agent, name in ((a, "Ann"), (b, "Bob")):
        world.stub().SetAgent(
            spb.SetAgentRequest(device_id=agent.device_id, on=True, display_name=name),
            metadata=primary.metadata,
        )
    return world


def test_only_the_primary_device_sets_agents(shop: Shop) -> None:
    stub = shop.stub()

    def set_agent(who: Device, device_id: int, on: bool = True, name: str = "Cy") -> Any:
        return stub.SetAgent(
            spb.SetAgentRequest(device_id=device_id, on=on, display_name=name),
            metadata=who.metadata,
        )

    code, message = code_of(lambda: set_agent(shop.a, shop.c.device_id))
    assert code == DENIED and "primary device" in message
    code, message = code_of(lambda: set_agent(shop.user, shop.user.device_id))
    assert code == FAILED and "business accounts" in message
    code, message = code_of(lambda: set_agent(shop.primary, 99))
    assert code == NOT_FOUND and "device 99" in message
    assert code_of(lambda: set_agent(shop.primary, shop.c.device_id, name=""))[0] == INVALID
    assert code_of(lambda: set_agent(shop.primary, 0))[0] == INVALID
    # Any device of the business lists the agents (an agent picks a transfer target).
    listed = stub.ListAgents(spb.ListAgentsRequest(), metadata=shop.c.metadata).agents
    assert [(x.device_id, x.display_name) for x in listed] == [(2, "Ann"), (3, "Bob")]
    renamed = set_agent(shop.primary, shop.a.device_id, name="Annie").agents
    assert [x.display_name for x in renamed] == ["Annie", "Bob"]
    assert (
        code_of(lambda: stub.ListAgents(spb.ListAgentsRequest(), metadata=shop.user.metadata))[0]
        == FAILED
    )
    # An agent holding a conversation cannot be turned off until it hands it on.
    cid = shop.open().conversation_id
    shop.claim(shop.a, cid)
    code, message = code_of(lambda: set_agent(shop.primary, shop.a.device_id, on=False))
    assert code == FAILED and "transfer or close" in message
    shop.close(shop.a, cid)
    assert [x.device_id for x in set_agent(shop.primary, shop.a.device_id, on=False).agents] == [3]


def test_one_open_conversation_per_pair_and_it_opens_the_window(shop: Shop) -> None:
    stub = shop.stub()
    first = stub.OpenSupportConversation(
        spb.OpenSupportConversationRequest(business_account_id=shop.primary.account_id, topic="x"),
        metadata=shop.user.metadata,
    )
    again = stub.OpenSupportConversation(
        spb.OpenSupportConversationRequest(business_account_id=shop.primary.account_id, topic="y"),
        metadata=shop.user.metadata,
    )
    assert first.created and not again.created
    assert again.conversation.conversation_id == first.conversation.conversation_id
    assert again.conversation.topic == "x" and again.conversation.state == spb.SUPPORT_STATE_WAITING
    assert list(first.conversation.device_ids) == [1]
    # Opening counts as the user contacting the business: the 24-hour window is open.
    window = stub.GetConversationWindow(
        bpb.GetConversationWindowRequest(user_account_id=shop.user.account_id),
        metadata=shop.primary.metadata,
    )
    assert window.open

    def open_with(business: str, who: Device = shop.other, topic: str = "") -> Any:
        return stub.OpenSupportConversation(
            spb.OpenSupportConversationRequest(business_account_id=business, topic=topic),
            metadata=who.metadata,
        )

    code, message = code_of(lambda: open_with(shop.user.account_id))
    assert code == FAILED and "not a business" in message
    code, message = code_of(lambda: open_with(shop.primary.account_id, shop.a))
    assert code == FAILED and "your own account" in message
    assert code_of(lambda: open_with(str(uuid.uuid4())))[0] == NOT_FOUND
    assert code_of(lambda: open_with("nope"))[0] == INVALID
    code, message = code_of(lambda: open_with(shop.primary.account_id, topic="t" * 201))
    assert code == INVALID and "at most 200" in message
    stub.BlockAccount(
        bpb.BlockAccountRequest(account_id=shop.other.account_id), metadata=shop.primary.metadata
    )
    assert code_of(lambda: open_with(shop.primary.account_id))[0] == DENIED


def race_claims(shop: Shop, cid: str, agents: tuple[Device, ...]) -> dict[int, object]:
    """Each agent claims `cid` from its own thread, released together by a barrier: device id
    -> the claimed conversation or the RpcError."""
    barrier = threading.Barrier(len(agents))
    outcomes: dict[int, object] = {}

    def claim(agent: Device) -> None:
        barrier.wait()
        try:
            outcomes[agent.device_id] = shop.claim(agent, cid)
        except grpc.RpcError as exc:
            outcomes[agent.device_id] = exc

    threads = [threading.Thread(target=claim, args=(x,)) for x in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_of_two_concurrent_claims_exactly_one_wins(shop: Shop) -> None:
    for _ in range(5):
        cid = shop.open().conversation_id
        outcomes = race_claims(shop, cid, (shop.a, shop.b))
        won = [d for d, o in outcomes.items() if isinstance(o, spb.SupportConversation)]
        lost = [o for o in outcomes.values() if isinstance(o, grpc.RpcError)]
        assert len(won) == 1 and len(lost) == 1, outcomes
        (loss,) = lost
        assert isinstance(loss, grpc.Call) and loss.code() == FAILED
        winner = {2: "'Ann' (device 2)", 3: "'Bob' (device 3)"}[won[0]]
        assert f"already claimed by agent {winner}" in (loss.details() or "")
        state = shop.stub().GetSupportConversation(
            spb.GetSupportConversationRequest(business_account_id=shop.primary.account_id),
            metadata=shop.user.metadata,
        )
        assert state.conversation.agent_device_id == won[0]
        shop.close(shop.user, cid)


def test_who_may_transfer_close_and_read(shop: Shop) -> None:
    cid = shop.open().conversation_id
    code, message = code_of(lambda: shop.claim(shop.c, cid))
    assert code == DENIED and "not an agent" in message
    code, message = code_of(lambda: shop.transfer(shop.a, cid, 3))
    assert code == FAILED and "waiting" in message
    claimed = shop.claim(shop.a, cid)
    assert claimed.agent_display_name == "Ann" and list(claimed.device_ids) == [1, 2]
    code, message = code_of(lambda: shop.transfer(shop.b, cid, 3))
    assert code == DENIED and "assigned to agent 'Ann' (device 2)" in message
    code, message = code_of(lambda: shop.transfer(shop.a, cid, shop.c.device_id))
    assert code == FAILED and "not an agent" in message
    assert code_of(lambda: shop.transfer(shop.a, cid, 42))[0] == NOT_FOUND
    assert code_of(lambda: shop.transfer(shop.a, cid, 2))[0] == FAILED
    assert code_of(lambda: shop.close(shop.b, cid))[0] == DENIED
    # The other person and the business's non-agent device learn nothing / are refused.
    get = shop.stub().GetSupportConversation
    assert (
        code_of(
            lambda: get(
                spb.GetSupportConversationRequest(conversation_id=cid), metadata=shop.other.metadata
            )
        )[0]
        == NOT_FOUND
    )
    assert (
        code_of(
            lambda: get(
                spb.GetSupportConversationRequest(conversation_id=cid), metadata=shop.c.metadata
            )
        )[0]
        == DENIED
    )
    assert (
        code_of(
            lambda: get(
                spb.GetSupportConversationRequest(
                    conversation_id=cid, business_account_id=shop.primary.account_id
                ),
                metadata=shop.user.metadata,
            )
        )[0]
        == INVALID
    )
    by_user = get(
        spb.GetSupportConversationRequest(user_account_id=shop.user.account_id),
        metadata=shop.b.metadata,
    ).conversation
    assert by_user.conversation_id == cid and by_user.agent_device_id == 2
    moved = shop.transfer(shop.primary, cid, 3)  # the primary device may move it too
    assert moved.agent_display_name == "Bob" and list(moved.device_ids) == [1, 3]
    assert code_of(lambda: shop.claim(shop.a, cid))[1].startswith(
        f"conversation {cid} is already claimed by agent 'Bob'"
    )
    closed = shop.close(shop.primary, cid)
    assert closed.state == spb.SUPPORT_STATE_CLOSED and not closed.device_ids
    code, message = code_of(lambda: shop.close(shop.user, cid))
    assert code == FAILED and "closed already" in message
    assert code_of(lambda: shop.claim(shop.b, cid))[0] == FAILED
    # Someone else's conversation id is NOT_FOUND for a business that is not its own.
    assert code_of(lambda: shop.claim(shop.a, str(uuid.uuid4())))[0] == NOT_FOUND


def mismatch(err: grpc.RpcError) -> mpb.MismatchedDevices:
    assert isinstance(err, grpc.Call) and err.code() == FAILED
    status = rpc_status.from_call(err)
    assert status is not None
    detail = mpb.MismatchedDevices()
    assert status.details[0].Unpack(detail)
    return detail


def test_sends_that_break_the_support_device_set_are_refused(shop: Shop) -> None:
    everyone = [1, 2, 3, 4]
    shop.send(everyone)  # no conversation: every device
    cid = shop.open().conversation_id
    err = refused(lambda: shop.send(everyone))
    detail = mismatch(err)
    assert list(detail.support_devices) == [1]
    assert list(detail.extra_devices) == [2, 3, 4] and not detail.missing_devices
    assert isinstance(err, grpc.Call)
    assert "outside the support device set [1]" in (err.details() or "")
    assert "no longer exist" not in (err.details() or "")  # they do: keep their sessions
    assert shop.send([1]).stored
    shop.claim(shop.a, cid)
    detail = mismatch(refused(lambda: shop.send([1])))
    assert list(detail.support_devices) == [1, 2] and list(detail.missing_devices) == [2]
    detail = mismatch(refused(lambda: shop.send([1, 2, 3])))
    assert list(detail.support_devices) == [1, 2] and list(detail.extra_devices) == [3]
    assert shop.send([1, 2]).stored
    # GetPreKeyBundles gives the same set: no other agent's one-time prekey is spent.
    keys = key_pb2_grpc.KeyServiceStub(shop.server.channel())

    def bundles(device_id: int, who: Device = shop.user) -> list[int]:
        reply = keys.GetPreKeyBundles(
            kpb.GetPreKeyBundlesRequest(account_id=shop.primary.account_id, device_id=device_id),
            metadata=who.metadata,
        )
        return [b.device_id for b in reply.bundles]

    assert bundles(0) == [1, 2]
    assert bundles(2) == [2]
    code, message = code_of(lambda: bundles(3))
    assert code == FAILED and "outside the support device set [1, 2]" in message
    assert bundles(0, shop.other) == everyone  # another user is not limited
    shop.transfer(shop.a, cid, 3)
    detail = mismatch(refused(lambda: shop.send([1, 2])))
    assert list(detail.missing_devices) == [3] and list(detail.extra_devices) == [2]
    assert bundles(0) == [1, 3]
    shop.close(shop.b, cid)
    assert shop.send(everyone).stored
    assert bundles(0) == everyone


class Watch:
    """A WatchSupportQueue stream read one message at a time."""

    def __init__(self, shop: Shop, who: Device, cursor: int = 0) -> None:
        self.call: Any = shop.stub().WatchSupportQueue(
            spb.WatchSupportQueueRequest(cursor=cursor), metadata=who.metadata, timeout=30
        )
        self._it: Iterator[spb.WatchSupportQueueResponse] = iter(self.call)

    def next(self) -> spb.WatchSupportQueueResponse:
        while True:
            message = next(self._it)
            if not message.HasField("keep_alive"):
                return message

    def events_until_caught_up(self) -> list[spb.SupportQueueEvent]:
        out = []
        while (message := self.next()).HasField("event"):
            out.append(message.event)
        assert message.HasField("caught_up")
        assert message.caught_up.cursor == (out[-1].sequence if out else message.caught_up.cursor)
        return out

    def close(self) -> None:
        self.call.cancel()


def test_the_queue_stream_is_ordered_and_resumes_without_gaps(shop: Shop) -> None:
    watch = Watch(shop, shop.a)
    assert watch.events_until_caught_up() == []
    cid = shop.open().conversation_id
    shop.claim(shop.a, cid)
    shop.transfer(shop.a, cid, 3)
    shop.close(shop.user, cid)
    second = shop.open(shop.other, topic="delivery").conversation_id
    live = [watch.next().event for _ in range(5)]
    kinds = [spb.SupportEventKind.Name(e.kind).removeprefix("SUPPORT_EVENT_KIND_") for e in live]
    assert kinds == ["OPENED", "CLAIMED", "TRANSFERRED", "CLOSED", "OPENED"]
    assert [e.sequence for e in live] == [1, 2, 3, 4, 5]
    assert live[2].from_agent_device_id == 2 and live[2].agent_display_name == "Bob"
    assert live[3].closed_by == "user" and live[4].conversation_id == second
    assert live[4].topic == "delivery"
    watch.close()
    # Resuming from any cursor gives exactly what followed it.
    for cursor in range(6):
        again = Watch(shop, shop.primary, cursor)
        assert [e.sequence for e in again.events_until_caught_up()] == list(range(cursor + 1, 6))
        again.close()


def test_who_may_watch_and_when_the_stream_ends(shop: Shop) -> None:
    code, message = code_of(lambda: Watch(shop, shop.c).next())
    assert code == DENIED and "not an agent" in message
    assert code_of(lambda: Watch(shop, shop.user).next())[0] == FAILED
    # A device that stops being an agent stops receiving.
    watch = Watch(shop, shop.b)
    watch.events_until_caught_up()
    shop.stub().SetAgent(
        spb.SetAgentRequest(device_id=shop.b.device_id, on=False), metadata=shop.primary.metadata
    )
    assert code_of(watch.next)[0] == DENIED
    # Removing the device ends its stream at once (its Lease).
    watch = Watch(shop, shop.a)
    watch.events_until_caught_up()
    shop.server.accounts().RemoveDevice(
        apb.RemoveDeviceRequest(device_id=shop.a.device_id), metadata=shop.primary.metadata
    )
    assert code_of(watch.next)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_a_backlog_longer_than_a_page_streams_whole_and_in_order(shop: Shop) -> None:
    """The stream reads the database a page (QUEUE_PAGE events) at a time: a longer backlog
    comes whole, in order, before caught_up, and a cursor inside it resumes exactly there."""
    rounds = QUEUE_PAGE // 2 + 5
    for _ in range(rounds):
        shop.close(shop.user, shop.open().conversation_id)
    total = 2 * rounds
    watch = Watch(shop, shop.primary)
    assert [e.sequence for e in watch.events_until_caught_up()] == list(range(1, total + 1))
    watch.close()
    resumed = Watch(shop, shop.a, QUEUE_PAGE - 1)
    got = [e.sequence for e in resumed.events_until_caught_up()]
    assert got == list(range(QUEUE_PAGE, total + 1))
    resumed.close()


def test_two_concurrent_opens_make_one_conversation(shop: Shop) -> None:
    barrier = threading.Barrier(2)
    replies: list[spb.OpenSupportConversationResponse] = []

    def open_one() -> None:
        barrier.wait()
        replies.append(
            shop.stub().OpenSupportConversation(
                spb.OpenSupportConversationRequest(business_account_id=shop.primary.account_id),
                metadata=shop.user.metadata,
            )
        )

    threads = [threading.Thread(target=open_one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.created for r in replies) == [False, True]
    assert len({r.conversation.conversation_id for r in replies}) == 1
    watch = Watch(shop, shop.primary)
    assert [spb.SupportEventKind.Name(e.kind) for e in watch.events_until_caught_up()] == [
        "SUPPORT_EVENT_KIND_OPENED"
    ]
    watch.close()
