"""The authorization matrix: every RPC x every kind of caller, table-driven.

Callers: no token, a malformed token, the owner (primary device), the owner's linked device,
another person, a removed device, the old token of a re-registered account, and the operator
(the server's admin token). Each request names the *owner's* resources (their account,
devices, envelopes) — or, for BusinessService and AdminService, those of a business account
of the world — so the matrix shows who may act on them. The operator's token opens
AdminService and BillingService's TopUp and SetPriceTable and nothing else; a device's token
opens everything but those.

RPCs come from the server's own descriptors (`tests.rpc_catalog`): for every RPC, the callers
without a valid credential are checked without any table; a new RPC must also get a row in
`SPECS` (a test fails until it has one), which says what the valid callers get.

Streams at the moment of revocation (both directions, for each way a credential is revoked)
are in tests/test_hardening.py.
"""

from __future__ import annotations

import queue
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from parley.v1 import account_pb2 as apb
from parley.v1 import (
    account_pb2_grpc,
    admin_pb2_grpc,
    billing_pb2_grpc,
    business_pb2_grpc,
    key_pb2_grpc,
    messaging_pb2_grpc,
)
from parley.v1 import admin_pb2 as adm
from parley.v1 import billing_pb2 as bipb
from parley.v1 import business_pb2 as bpb
from parley.v1 import chat_links_pb2 as lpb
from parley.v1 import key_pb2 as kpb
from parley.v1 import messaging_pb2 as mpb
from parley.v1 import support_pb2 as spb

from server.config import Settings
from server.domain.clock import ManualClock
from tests.conftest import Device, LiveServer, RecordingCodeSender, link, register
from tests.keys_helper import DeviceKeyMaker
from tests.rpc_catalog import Rpc, all_rpcs

OK = grpc.StatusCode.OK
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
# Test numbers enough for every cell's fresh world (a few accounts each), with room to grow.
NUMBER_COUNT = 10_000
NUMBERS = iter(f"+155502{i:05d}" for i in range(NUMBER_COUNT))
CALLERS = [
    "none",
    "malformed",
    "owner",
    "linked",
    "stranger",
    "removed",
    "re-registered",
    "operator",
]
INVALID_CALLERS = {"none", "malformed", "removed", "re-registered"}
ADMIN_TOKEN = "matrix-operator-token"
OPERATOR = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@dataclass
class World:
    """Fresh accounts for one cell of the matrix: calls may remove devices or delete accounts."""

    server: LiveServer
    owner: Device
    linked: Device
    stranger: Device
    removed: Device
    reregistered: Device
    registration_ids: dict[tuple[str, int], int]
    owner_envelope: int  # an envelope waiting for the owner's primary device
    business: Device | None = None  # a business whose display name waits for review
    template_id: str = ""  # the business's APPROVED template
    pending_template_id: str = ""  # and one waiting for review
    conversation_id: str = ""  # the owner's live-support conversation, once a request opened it
    chat_link: str = ""  # a chat link of the owner's, made on first use (_owner_link)

    def device(self, caller: str) -> Device | None:
        return {
            "owner": self.owner,
            "linked": self.linked,
            "stranger": self.stranger,
            "removed": self.removed,
            "re-registered": self.reregistered,
        }.get(caller)

    def metadata(self, caller: str) -> tuple[tuple[str, str], ...]:
        if caller == "none":
            return ()
        if caller == "malformed":
            return (("authorization", "Token abc"),)
        if caller == "operator":
            return OPERATOR
        device = self.device(caller)
        assert device is not None
        return device.metadata

    def messaging(self) -> messaging_pb2_grpc.MessagingServiceStub:
        return messaging_pb2_grpc.MessagingServiceStub(self.server.channel())

    def owner_devices(self) -> list[int]:
        reply = account_pb2_grpc.AccountServiceStub(self.server.channel()).ListDevices(
            apb.ListDevicesRequest(), metadata=self.owner.metadata
        )
        return [d.device_id for d in reply.devices]

    def pending_for_owner(self) -> list[int]:
        """Envelope ids the owner's primary device would receive now."""
        call = self.messaging().ReceiveMessages(
            mpb.ReceiveMessagesRequest(), metadata=self.owner.metadata, timeout=10
        )
        ids: list[int] = []
        for event in call:
            if event.HasField("queue_empty"):
                break
            ids.extend(e.envelope_id for e in event.envelopes.envelopes)
        call.cancel()  # type: ignore[no-untyped-call]
        return ids


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = Settings(
        host="localhost",
        port=0,
        database=tmp_path_factory.mktemp("authz") / "authz.db",
        test_numbers={f"+155502{i:05d}": "123456" for i in range(NUMBER_COUNT)},
        shutdown_grace=1.0,
        admin_token=ADMIN_TOKEN,
    )
    server = LiveServer(settings, ManualClock(), RecordingCodeSender())
    yield server
    server.stop()


def _with_keys(
    server: LiveServer, device: Device, registrations: dict[tuple[str, int], int]
) -> None:
    maker = DeviceKeyMaker(registration_id=1000 + len(registrations))
    key_pb2_grpc.KeyServiceStub(server.channel()).UploadPreKeys(
        maker.first_upload(pre_keys=2, kyber=2), metadata=device.metadata
    )
    registrations[(device.account_id, device.device_id)] = maker.registration_id


@pytest.fixture
def world(matrix_server: LiveServer) -> World:
    server = matrix_server
    registrations: dict[tuple[str, int], int] = {}
    owner = register(server, next(NUMBERS))
    linked = link(server, owner, "laptop")
    removed = link(server, owner, "old tablet")
    stranger = register(server, next(NUMBERS))
    for device in (owner, linked, stranger):
        _with_keys(server, device, registrations)
    accounts = account_pb2_grpc.AccountServiceStub(server.channel())
    accounts.RemoveDevice(
        apb.RemoveDeviceRequest(device_id=removed.device_id), metadata=owner.metadata
    )
    number = next(NUMBERS)
    reregistered = register(server, number)
    register(server, number)  # a new owner of the number: the first token is dead
    partial = World(server, owner, linked, stranger, removed, reregistered, registrations, 0)
    sent = partial.messaging().SendMessage(
        _send_to_owner(partial, "stranger"), metadata=stranger.metadata
    )
    assert sent.stored
    (envelope,) = partial.pending_for_owner()
    partial.owner_envelope = envelope
    _with_business(partial)
    return partial


def _with_business(w: World) -> None:
    """A business with a profile (name pending), an approved and a pending template."""
    business = register(w.server, next(NUMBERS), apb.ACCOUNT_KIND_BUSINESS)
    stub = business_pb2_grpc.BusinessServiceStub(w.server.channel())
    stub.UpdateBusinessProfile(
        bpb.UpdateBusinessProfileRequest(fields=bpb.BusinessProfileFields(display_name="Shop")),
        metadata=business.metadata,
    )
    ids = []
    for name in ("approved_one", "pending_one"):
        ids.append(
            stub.CreateTemplate(
                bpb.CreateTemplateRequest(
                    name=name,
                    language="en",
                    category=mpb.MESSAGE_CATEGORY_UTILITY,
                    content=bpb.TemplateContent(body="Order {{1}} shipped"),
                ),
                metadata=business.metadata,
            ).template.template_id
        )
    admin_pb2_grpc.AdminServiceStub(w.server.channel()).ReviewTemplate(
        adm.ReviewTemplateRequest(template_id=ids[0], decision=adm.REVIEW_DECISION_APPROVE),
        metadata=OPERATOR,
    )
    w.business, w.template_id, w.pending_template_id = business, ids[0], ids[1]


# -- requests naming the owner's resources ------------------------------------------------------


def _send_to_owner(w: World, caller: str) -> mpb.SendMessageRequest:
    """A valid send from `caller` to the owner's account (a self-send skips the sender)."""
    sender = w.device(caller)
    devices = [
        (w.owner.account_id, d)
        for d in (w.owner.device_id, w.linked.device_id)
        if sender is None or sender.account_id != w.owner.account_id or sender.device_id != d
    ]
    return mpb.SendMessageRequest(
        request_id=str(uuid.uuid4()),
        recipient_account_id=w.owner.account_id,
        messages=[
            mpb.OutgoingMessage(
                device_id=device,
                registration_id=w.registration_ids.get((account, device), 1),
                content_type=mpb.CONTENT_TYPE_WHISPER,
                content=b"sealed",
            )
            for account, device in devices
        ],
    )


Outcome = tuple[grpc.StatusCode, Any]


def _call(w: World, rpc: Rpc, request: Message, caller: str) -> Outcome:
    """Call `rpc` with `request` as `caller`: (status, the response or list of responses)."""
    channel = w.server.channel()
    path, ser = rpc.path, type(request).SerializeToString
    metadata = w.metadata(caller)
    output = _output_class(rpc)
    try:
        if rpc.client_streaming:
            requests: queue.Queue[Message | None] = queue.Queue()
            requests.put(request)
            requests.put(None)

            def feed() -> Iterator[Message]:
                while (item := requests.get()) is not None:
                    yield item

            call: Any = channel.stream_stream(path, ser, output.FromString)(
                feed(), metadata=metadata, timeout=10
            )
            return OK, list(call)
        if rpc.server_streaming:
            call = channel.unary_stream(path, ser, output.FromString)(
                request, metadata=metadata, timeout=10
            )
            out = []
            # Read up to the end of the backlog (ReceiveMessages' queue_empty, a feed's
            # caught_up): what follows is live and never ends by itself.
            ends = {"queue_empty", "caught_up"} & set(output.DESCRIPTOR.fields_by_name)
            for event in call:
                out.append(event)
                if any(event.HasField(name) for name in ends):
                    break
            call.cancel()
            return OK, out
        return OK, channel.unary_unary(path, ser, output.FromString)(
            request, metadata=metadata, timeout=10
        )
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code(), exc.details()


def _output_class(rpc: Rpc) -> Any:
    from tests.rpc_catalog import message_class

    return message_class(rpc.output)


# -- the table: what each valid caller gets -------------------------------------------------------

Check = Callable[[World, str, Outcome], None]


@dataclass(frozen=True)
class Spec:
    request: Callable[[World, str], Message]
    check: Check


def expect(codes: dict[str, grpc.StatusCode], then: Check | None = None) -> Check:
    """The status each valid caller gets (all three must be listed; "operator" too on
    AdminService), then a further check."""

    def check(w: World, caller: str, outcome: Outcome) -> None:
        assert outcome[0] == codes[caller], f"{caller}: {outcome}"
        if then is not None:
            then(w, caller, outcome)

    return check


ALL_OK = {"owner": OK, "linked": OK, "stranger": OK}
# Business RPCs acting as a business: the three valid callers are people.
NOT_BUSINESS = {k: grpc.StatusCode.FAILED_PRECONDITION for k in ALL_OK}
# AdminService, TopUp, SetPriceTable: only the operator.
OPERATOR_ONLY = {"owner": UNAUTH, "linked": UNAUTH, "stranger": UNAUTH, "operator": OK}
PRIMARY_ONLY = {"owner": OK, "linked": DENIED, "stranger": OK}  # the stranger acts on itself
SELF_INVALID_STRANGER_OK = {
    "owner": grpc.StatusCode.INVALID_ARGUMENT,
    "linked": grpc.StatusCode.INVALID_ARGUMENT,
    "stranger": OK,
}
SELF_INVALID_OTHERS_PERSON = {
    **SELF_INVALID_STRANGER_OK,
    "stranger": grpc.StatusCode.FAILED_PRECONDITION,
}


def _owner_untouched(w: World, caller: str, outcome: Outcome) -> None:
    if caller == "stranger":  # whatever it did, it did to its own account
        assert w.owner_devices() == [1, w.linked.device_id]
        assert w.pending_for_owner() == [w.owner_envelope]


def _account_view(w: World, caller: str, outcome: Outcome) -> None:
    account = outcome[1].account
    assert account.account_id == w.owner.account_id
    own = caller in ("owner", "linked")
    assert (account.phone_number == w.owner.phone_number) == own  # a number only to its owner


def _devices_of_caller(w: World, caller: str, outcome: Outcome) -> None:
    names = sorted(d.name for d in outcome[1].devices)
    assert names == (["phone"] if caller == "stranger" else ["laptop", "phone"])


def _removal(w: World, caller: str, outcome: Outcome) -> None:
    if caller == "owner":
        assert w.owner_devices() == [1]
    else:
        _owner_untouched(w, caller, outcome)


def _received(w: World, caller: str, outcome: Outcome) -> None:
    envelopes = [e.envelope_id for ev in outcome[1] for e in ev.envelopes.envelopes]
    if caller == "owner":
        assert envelopes == [w.owner_envelope]
    else:  # the linked device has its own copy; the stranger has nothing of the owner's
        assert w.owner_envelope not in envelopes


def _acknowledged_on_stream(w: World, caller: str, outcome: Outcome) -> None:
    """Only the owner's ack deletes the owner's envelope; nobody else receives it (the call
    ends at the half-close, so the owner may or may not have been sent its backlog first)."""
    received = [e.envelope_id for ev in outcome[1] for e in ev.envelopes.envelopes]
    if caller == "owner":
        assert w.pending_for_owner() == []
    else:
        assert w.owner_envelope not in received
        assert w.pending_for_owner() == [w.owner_envelope]


def _acknowledged(w: World, caller: str, outcome: Outcome) -> None:
    acked = outcome[1].acknowledged_envelopes
    assert acked == (1 if caller == "owner" else 0)
    if caller != "owner":
        assert w.pending_for_owner() == [w.owner_envelope]


def _business(w: World) -> Device:
    assert w.business is not None
    return w.business


def _business_untouched(w: World, caller: str, outcome: Outcome) -> None:
    """Nobody but the operator reviewed or paused anything of the business."""
    stub = business_pb2_grpc.BusinessServiceStub(w.server.channel())
    business = _business(w)
    profile = stub.GetBusinessProfile(
        bpb.GetBusinessProfileRequest(account_id=business.account_id), metadata=business.metadata
    ).profile
    templates = stub.ListTemplates(bpb.ListTemplatesRequest(), metadata=business.metadata)
    assert profile.name_review.status == bpb.REVIEW_STATUS_PENDING
    assert {t.name: (t.status, t.paused) for t in templates.templates} == {
        "approved_one": (bpb.REVIEW_STATUS_APPROVED, False),
        "pending_one": (bpb.REVIEW_STATUS_PENDING, False),
    }


def _reviewed(w: World, caller: str, outcome: Outcome) -> None:
    if caller != "operator":
        _business_untouched(w, caller, outcome)


def _sent(w: World, caller: str, outcome: Outcome) -> None:
    responses = outcome[1]
    if isinstance(responses, list):  # SendMessageStream
        assert [r.result.code for r in responses] == [0]
    elif isinstance(responses, mpb.SendMessagesResponse):
        assert [r.code for r in responses.results] == [0]
    else:
        assert responses.stored


def _no_businesses(outcome: Outcome) -> None:
    assert list(outcome[1].businesses) == []


def _owner_support(w: World) -> str:
    """A live-support conversation the owner opened with the business (its id)."""
    stub = business_pb2_grpc.BusinessServiceStub(w.server.channel())
    return stub.OpenSupportConversation(
        spb.OpenSupportConversationRequest(business_account_id=_business(w).account_id),
        metadata=w.owner.metadata,
    ).conversation.conversation_id


def _support_state(w: World, cid: str) -> int:
    stub = business_pb2_grpc.BusinessServiceStub(w.server.channel())
    return stub.GetSupportConversation(
        spb.GetSupportConversationRequest(conversation_id=cid), metadata=w.owner.metadata
    ).conversation.state


def _no_agents(w: World, caller: str, outcome: Outcome) -> None:
    stub = business_pb2_grpc.BusinessServiceStub(w.server.channel())
    listed = stub.ListAgents(spb.ListAgentsRequest(), metadata=_business(w).metadata)
    assert not listed.agents


def _own_support(w: World, caller: str, outcome: Outcome) -> None:
    """The caller opened its own conversation, as its own account."""
    user = w.device(caller)
    assert user is not None and outcome[1].conversation.user_account_id == user.account_id


def _support_still_open(w: World, caller: str, outcome: Outcome) -> None:
    cid = w.conversation_id
    closed = spb.SUPPORT_STATE_CLOSED
    assert (_support_state(w, cid) == closed) == (caller != "stranger")


def _support_request(w: World, make: Callable[[str], Message]) -> Message:
    w.conversation_id = _owner_support(w)
    return make(w.conversation_id)


NOT_FOUND_TO_STRANGER = {"owner": OK, "linked": OK, "stranger": grpc.StatusCode.NOT_FOUND}


# -- click-to-chat: the owner's link is the owner's account's, whichever of its devices asks --


def _links_stub(w: World) -> business_pb2_grpc.BusinessServiceStub:
    return business_pb2_grpc.BusinessServiceStub(w.server.channel())


def _owner_link(w: World) -> str:
    if not w.chat_link:
        w.chat_link = (
            _links_stub(w)
            .CreateChatLink(
                lpb.CreateChatLinkRequest(prefilled_text="hi"), metadata=w.owner.metadata
            )
            .link.code
        )
    return w.chat_link


def _owner_links(w: World) -> list[str]:
    reply = _links_stub(w).ListChatLinks(lpb.ListChatLinksRequest(), metadata=w.owner.metadata)
    return [link.code for link in reply.links]


def _links_seen(w: World, caller: str, outcome: Outcome) -> None:
    """The owner's devices list the owner's link; the stranger lists only its own (none)."""
    seen = [link.code for link in outcome[1].links]
    assert seen == ([] if caller == "stranger" else [w.chat_link]), (caller, seen)


def _link_created(w: World, caller: str, outcome: Outcome) -> None:
    """The link is the caller's account's: a stranger's link is not the owner's."""
    code = outcome[1].link.code
    assert (code in _owner_links(w)) == (caller != "stranger")


def _link_deleted(w: World, caller: str, outcome: Outcome) -> None:
    assert (w.chat_link in _owner_links(w)) == (caller == "stranger")


def _resolved_to_owner(w: World, outcome: Outcome) -> None:
    assert (outcome[1].account_id, outcome[1].prefilled_text) == (w.owner.account_id, "hi")


def _settings_off(outcome: Outcome) -> None:
    assert not outcome[1].settings.number_links


def _owner_number_links_off(w: World, caller: str, outcome: Outcome) -> None:
    """Number links are off for a person until the person turns them on."""
    reply = _links_stub(w).GetChatLinkSettings(
        lpb.GetChatLinkSettingsRequest(), metadata=w.owner.metadata
    )
    assert reply.settings.number_links == (caller != "stranger")


# -- billing: the business's money is the business's; the operator tops up and sets prices --

_SCHEDULED = iter(range(1, 1_000_000))


def _billing_stub(w: World) -> billing_pb2_grpc.BillingServiceStub:
    return billing_pb2_grpc.BillingServiceStub(w.server.channel())


def _business_balance(w: World) -> int:
    reply = _billing_stub(w).GetBalance(bipb.GetBalanceRequest(), metadata=_business(w).metadata)
    return reply.available_micros


def _topped_up(w: World, caller: str, outcome: Outcome) -> None:
    """Only the operator's call added money; nobody else's reached the business's balance."""
    assert _business_balance(w) == (7 if caller == "operator" else 0)
    if caller == "operator":
        assert outcome[1].applied and outcome[1].entry.amount_micros == 7


def _price_table_request(w: World, caller: str) -> bipb.SetPriceTableRequest:
    """The shipped table again, scheduled at a time no other cell uses (one version per
    effective time)."""
    request = bipb.SetPriceTableRequest(toml=_SHIPPED_TOML)
    request.effective_at.FromSeconds(int(w.server.clock.now()) + 3600 + next(_SCHEDULED))
    return request


def _table_scheduled(w: World, caller: str, outcome: Outcome) -> None:
    if caller == "operator":
        assert outcome[1].table.version >= 2 and outcome[1].table.currency == "USD"


def _price_list(w: World, caller: str, outcome: Outcome) -> None:
    assert outcome[1].current.currency == "USD" and outcome[1].current.rows


_SHIPPED_TOML = resources.files("server.domain").joinpath("default_prices.toml").read_text()


SPECS: dict[str, Spec] = {
    "AccountService.StartVerification": Spec(
        lambda w, c: apb.StartVerificationRequest(phone_number=w.owner.phone_number),
        expect(ALL_OK),
    ),
    "AccountService.CompleteVerification": Spec(
        lambda w, c: apb.CompleteVerificationRequest(
            verification_id=str(uuid.uuid4()),
            code="000000",
            device_name="x",
            account_kind=apb.ACCOUNT_KIND_PERSON,
        ),
        expect({k: grpc.StatusCode.NOT_FOUND for k in ALL_OK}),
    ),
    "AccountService.LinkDevice": Spec(
        lambda w, c: apb.LinkDeviceRequest(linking_code="not-a-code", device_name="x"),
        expect({k: grpc.StatusCode.NOT_FOUND for k in ALL_OK}),
    ),
    "AccountService.GetAccount": Spec(
        lambda w, c: apb.GetAccountRequest(account_id=w.owner.account_id),
        expect(ALL_OK, _account_view),
    ),
    "AccountService.ListDevices": Spec(
        lambda w, c: apb.ListDevicesRequest(), expect(ALL_OK, _devices_of_caller)
    ),
    "AccountService.CreateLinkingCode": Spec(
        lambda w, c: apb.CreateLinkingCodeRequest(), expect(PRIMARY_ONLY)
    ),
    "AccountService.RemoveDevice": Spec(
        # The owner's laptop; the laptop itself names another of the owner's devices, which a
        # linked device may not remove (it may remove only itself). The stranger has no such
        # device in its own account.
        lambda w, c: apb.RemoveDeviceRequest(
            device_id=w.removed.device_id if c == "linked" else w.linked.device_id
        ),
        expect({"owner": OK, "linked": DENIED, "stranger": grpc.StatusCode.NOT_FOUND}, _removal),
    ),
    "AccountService.DeleteAccount": Spec(
        lambda w, c: apb.DeleteAccountRequest(), expect(PRIMARY_ONLY, _owner_untouched)
    ),
    "AccountService.LookupAccount": Spec(
        lambda w, c: apb.LookupAccountRequest(phone_number=w.owner.phone_number),
        expect(ALL_OK),
    ),
    "KeyService.UploadPreKeys": Spec(
        lambda w, c: kpb.UploadPreKeysRequest(pre_keys=DeviceKeyMaker().pre_keys(1)),
        expect(ALL_OK, _owner_untouched),
    ),
    "KeyService.GetPreKeyBundles": Spec(
        lambda w, c: kpb.GetPreKeyBundlesRequest(account_id=w.owner.account_id),
        expect(ALL_OK),
    ),
    "KeyService.GetPreKeyCount": Spec(lambda w, c: kpb.GetPreKeyCountRequest(), expect(ALL_OK)),
    "MessagingService.SendMessage": Spec(_send_to_owner, expect(ALL_OK, _sent)),
    "MessagingService.SendMessages": Spec(
        lambda w, c: mpb.SendMessagesRequest(requests=[_send_to_owner(w, c)]),
        expect(ALL_OK, _sent),
    ),
    "MessagingService.SendMessageStream": Spec(
        lambda w, c: mpb.SendMessageStreamRequest(request=_send_to_owner(w, c)),
        expect(ALL_OK, _sent),
    ),
    "MessagingService.ReceiveMessages": Spec(
        lambda w, c: mpb.ReceiveMessagesRequest(), expect(ALL_OK, _received)
    ),
    "MessagingService.ReceiveMessageStream": Spec(
        lambda w, c: mpb.ReceiveMessageStreamRequest(envelope_ids=[w.owner_envelope]),
        expect(ALL_OK, _acknowledged_on_stream),
    ),
    "MessagingService.AcknowledgeMessages": Spec(
        lambda w, c: mpb.AcknowledgeMessagesRequest(envelope_ids=[w.owner_envelope]),
        expect(ALL_OK, _acknowledged),
    ),
    "BusinessService.GetBusinessProfile": Spec(
        lambda w, c: bpb.GetBusinessProfileRequest(account_id=_business(w).account_id),
        expect(ALL_OK),
    ),
    "BusinessService.UpdateBusinessProfile": Spec(
        lambda w, c: bpb.UpdateBusinessProfileRequest(
            fields=bpb.BusinessProfileFields(display_name="Mine now")
        ),
        expect(NOT_BUSINESS, _business_untouched),
    ),
    "BusinessService.CreateTemplate": Spec(
        lambda w, c: bpb.CreateTemplateRequest(
            name="x",
            language="en",
            category=mpb.MESSAGE_CATEGORY_UTILITY,
            content=bpb.TemplateContent(body="hi"),
        ),
        expect(NOT_BUSINESS, _business_untouched),
    ),
    "BusinessService.ListTemplates": Spec(
        lambda w, c: bpb.ListTemplatesRequest(), expect(NOT_BUSINESS)
    ),
    "BusinessService.GetTemplate": Spec(
        # The approved template is public; the pending one is checked in test_business_directory.
        lambda w, c: bpb.GetTemplateRequest(template_id=w.template_id),
        expect(ALL_OK),
    ),
    "BusinessService.PauseTemplate": Spec(
        lambda w, c: bpb.PauseTemplateRequest(template_id=w.template_id),
        expect(NOT_BUSINESS, _business_untouched),
    ),
    "BusinessService.UnpauseTemplate": Spec(
        lambda w, c: bpb.UnpauseTemplateRequest(template_id=w.template_id),
        expect(NOT_BUSINESS, _business_untouched),
    ),
    "AdminService.ListPendingReviews": Spec(
        lambda w, c: adm.ListPendingReviewsRequest(), expect(OPERATOR_ONLY)
    ),
    "AdminService.ReviewBusinessName": Spec(
        lambda w, c: adm.ReviewBusinessNameRequest(
            account_id=_business(w).account_id, decision=adm.REVIEW_DECISION_APPROVE
        ),
        expect(OPERATOR_ONLY, _reviewed),
    ),
    "AdminService.ReviewTemplate": Spec(
        lambda w, c: adm.ReviewTemplateRequest(
            template_id=w.pending_template_id, decision=adm.REVIEW_DECISION_APPROVE
        ),
        expect(OPERATOR_ONLY, _reviewed),
    ),
    # Consent: the owner is a person, so naming it as a business is refused (FAILED_PRECONDITION)
    # and naming oneself is INVALID_ARGUMENT; RecordOptIn is for business accounts only.
    "BusinessService.OptIn": Spec(
        lambda w, c: bpb.OptInRequest(
            business_account_id=w.owner.account_id, categories=[mpb.MESSAGE_CATEGORY_UTILITY]
        ),
        expect(SELF_INVALID_OTHERS_PERSON, _owner_untouched),
    ),
    "BusinessService.OptOut": Spec(
        lambda w, c: bpb.OptOutRequest(business_account_id=w.owner.account_id, all=True),
        expect(SELF_INVALID_OTHERS_PERSON, _owner_untouched),
    ),
    # The sending rules' questions are the business's own: the three people are refused.
    "BusinessService.GetConversationWindow": Spec(
        lambda w, c: bpb.GetConversationWindowRequest(user_account_id=w.owner.account_id),
        expect(NOT_BUSINESS),
    ),
    "BusinessService.GetBusinessStatus": Spec(
        lambda w, c: bpb.GetBusinessStatusRequest(), expect(NOT_BUSINESS, _business_untouched)
    ),
    # Click-to-chat: any account's own links and settings; anyone resolves a live link.
    "BusinessService.CreateChatLink": Spec(
        lambda w, c: lpb.CreateChatLinkRequest(prefilled_text="Hello"),
        expect(ALL_OK, _link_created),
    ),
    "BusinessService.ListChatLinks": Spec(
        lambda w, c: (_owner_link(w), lpb.ListChatLinksRequest())[1],
        expect(ALL_OK, _links_seen),
    ),
    "BusinessService.DeleteChatLink": Spec(
        lambda w, c: lpb.DeleteChatLinkRequest(code=_owner_link(w)),
        expect({"owner": OK, "linked": OK, "stranger": grpc.StatusCode.NOT_FOUND}, _link_deleted),
    ),
    "BusinessService.ResolveChatLink": Spec(
        lambda w, c: lpb.ResolveChatLinkRequest(code=_owner_link(w)),
        expect(ALL_OK, lambda w, c, o: _resolved_to_owner(w, o)),
    ),
    "BusinessService.GetChatLinkSettings": Spec(
        lambda w, c: lpb.GetChatLinkSettingsRequest(),
        expect(ALL_OK, lambda w, c, o: _settings_off(o)),
    ),
    "BusinessService.SetChatLinkSettings": Spec(
        lambda w, c: lpb.SetChatLinkSettingsRequest(number_links=True),
        expect(ALL_OK, _owner_number_links_off),
    ),
    "BusinessService.RecordOptIn": Spec(
        lambda w, c: bpb.RecordOptInRequest(
            phone_number=w.owner.phone_number,
            source=bpb.OPT_IN_SOURCE_WEBSITE,
            evidence="form",
            categories=[mpb.MESSAGE_CATEGORY_UTILITY],
        ),
        expect({k: grpc.StatusCode.FAILED_PRECONDITION for k in ALL_OK}, _owner_untouched),
    ),
    "BusinessService.BlockAccount": Spec(
        lambda w, c: bpb.BlockAccountRequest(account_id=w.owner.account_id),
        expect(SELF_INVALID_STRANGER_OK, _owner_untouched),
    ),
    "BusinessService.UnblockAccount": Spec(
        lambda w, c: bpb.UnblockAccountRequest(account_id=w.owner.account_id),
        expect(SELF_INVALID_STRANGER_OK, _owner_untouched),
    ),
    "BusinessService.ListMyBusinesses": Spec(
        lambda w, c: bpb.ListMyBusinessesRequest(),
        expect(ALL_OK, lambda w, c, o: _no_businesses(o)),
    ),
    # Live support: agents and the queue are the business's (people are refused); a user opens,
    # reads and closes their own conversation, and another person cannot even see it.
    "BusinessService.SetAgent": Spec(
        lambda w, c: spb.SetAgentRequest(device_id=1, on=True, display_name="Ann"),
        expect(NOT_BUSINESS, _no_agents),
    ),
    "BusinessService.ListAgents": Spec(
        lambda w, c: spb.ListAgentsRequest(), expect(NOT_BUSINESS, _no_agents)
    ),
    "BusinessService.OpenSupportConversation": Spec(
        lambda w, c: spb.OpenSupportConversationRequest(
            business_account_id=_business(w).account_id, topic="refund"
        ),
        expect(ALL_OK, _own_support),
    ),
    "BusinessService.GetSupportConversation": Spec(
        lambda w, c: _support_request(
            w, lambda cid: spb.GetSupportConversationRequest(conversation_id=cid)
        ),
        expect(NOT_FOUND_TO_STRANGER),
    ),
    "BusinessService.WatchSupportQueue": Spec(
        lambda w, c: spb.WatchSupportQueueRequest(), expect(NOT_BUSINESS)
    ),
    "BusinessService.ClaimConversation": Spec(
        lambda w, c: _support_request(
            w, lambda cid: spb.ClaimConversationRequest(conversation_id=cid)
        ),
        expect(NOT_BUSINESS),
    ),
    "BusinessService.TransferConversation": Spec(
        lambda w, c: _support_request(
            w, lambda cid: spb.TransferConversationRequest(conversation_id=cid, to_device_id=1)
        ),
        expect(NOT_BUSINESS),
    ),
    "BusinessService.CloseConversation": Spec(
        lambda w, c: _support_request(
            w, lambda cid: spb.CloseConversationRequest(conversation_id=cid)
        ),
        expect(NOT_FOUND_TO_STRANGER, _support_still_open),
    ),
    # Billing: anyone reads the price list; a business's balance, ledger, quotes, usage and
    # status events are its own (the three people are refused); the operator alone tops up and
    # sets prices.
    "BillingService.GetPriceList": Spec(
        lambda w, c: bipb.GetPriceListRequest(), expect(ALL_OK, _price_list)
    ),
    "BillingService.QuotePrice": Spec(
        lambda w, c: bipb.QuotePriceRequest(
            recipient_account_id=w.owner.account_id, category=mpb.MESSAGE_CATEGORY_MARKETING
        ),
        expect(NOT_BUSINESS),
    ),
    "BillingService.GetBalance": Spec(lambda w, c: bipb.GetBalanceRequest(), expect(NOT_BUSINESS)),
    "BillingService.ListLedgerEntries": Spec(
        lambda w, c: bipb.ListLedgerEntriesRequest(), expect(NOT_BUSINESS)
    ),
    "BillingService.TopUp": Spec(
        lambda w, c: bipb.TopUpRequest(
            business_account_id=_business(w).account_id, amount_micros=7, reference="wire-1"
        ),
        expect(OPERATOR_ONLY, _topped_up),
    ),
    "BillingService.SetPriceTable": Spec(
        _price_table_request, expect(OPERATOR_ONLY, _table_scheduled)
    ),
    "BillingService.GetUsageReport": Spec(
        lambda w, c: bipb.GetUsageReportRequest(), expect(NOT_BUSINESS)
    ),
    "BillingService.StreamStatusEvents": Spec(
        lambda w, c: bipb.StreamStatusEventsRequest(), expect(NOT_BUSINESS)
    ),
}

CELLS = [(rpc, caller) for rpc in all_rpcs() for caller in CALLERS]


@pytest.mark.parametrize(("rpc", "caller"), CELLS, ids=[f"{r}-{c}" for r, c in CELLS])
def test_authorization_matrix(world: World, rpc: Rpc, caller: str) -> None:
    spec = SPECS.get(rpc.name)
    request = spec.request(world, caller) if spec else rpc.request()
    outcome = _call(world, rpc, request, caller)
    assert outcome[0] not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), outcome
    if caller in INVALID_CALLERS:
        if rpc.open:  # registration needs no token, and a bad one is not looked at
            assert outcome[0] != UNAUTH, outcome
        else:  # refused before anything else, whatever the request says
            assert outcome[0] == UNAUTH, f"{rpc} let {caller} through: {outcome}"
            _owner_untouched(world, "stranger", outcome)
        return
    if caller == "operator" and not rpc.operator:
        # The operator token is no device's: refused wherever a device is needed.
        if rpc.open:
            assert outcome[0] != UNAUTH, outcome
        else:
            assert outcome[0] == UNAUTH, f"{rpc} let the operator token through: {outcome}"
            _owner_untouched(world, "stranger", outcome)
        return
    assert spec is not None, f"{rpc} has no row in SPECS: say what each valid caller gets"
    spec.check(world, caller, outcome)


def test_every_rpc_has_a_row() -> None:
    names = {rpc.name for rpc in all_rpcs()}
    assert names == set(SPECS), (
        f"rows missing: {sorted(names - set(SPECS))}; stale rows: {sorted(set(SPECS) - names)}"
    )
