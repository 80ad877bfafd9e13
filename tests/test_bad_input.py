"""Every RPC refuses bad input with the right status and a message a person can act on."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc, key_pb2_grpc, messaging_pb2_grpc
from parley.v1 import key_pb2 as kpb
from parley.v1 import messaging_pb2 as mpb

from server.config import Settings
from server.domain.clock import ManualClock
from tests.conftest import Device, LiveServer, RecordingCodeSender, link, register
from tests.keys_helper import DeviceKeyMaker

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class World:
    server: LiveServer
    stub: account_pb2_grpc.AccountServiceStub
    keys: key_pb2_grpc.KeyServiceStub
    messaging: messaging_pb2_grpc.MessagingServiceStub
    primary: Device
    laptop: Device
    verification_id: str


Call = Callable[[World], object]


def complete(vid: str = "", code: str = "000000", name: str = "phone", kind: int = 1) -> Call:
    return lambda w: w.stub.CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=vid or w.verification_id,
            code=code,
            device_name=name,
            account_kind=cast(apb.AccountKind.ValueType, kind),
        )
    )


def start(phone: str) -> Call:
    return lambda w: w.stub.StartVerification(apb.StartVerificationRequest(phone_number=phone))


def as_primary(name: str, request: object) -> Call:
    return lambda w: getattr(w.stub, name)(request, metadata=w.primary.metadata)


def as_laptop(name: str, request: object) -> Call:
    return lambda w: getattr(w.stub, name)(request, metadata=w.laptop.metadata)


def anonymous(name: str, request: object) -> Call:
    return lambda w: getattr(w.stub, name)(request)


UNKNOWN_UUID = str(uuid.UUID(int=42))

CASES: list[tuple[str, Call, grpc.StatusCode]] = [
    ("start: empty number", start(""), INVALID),
    ("start: no plus", start("14155550123"), INVALID),
    ("start: too short", start("+1"), INVALID),
    ("start: letters", start("+1415555abcd"), INVALID),
    ("start: unknown country", start("+999123456789"), INVALID),
    ("start: not a real number", start("+10005550123"), INVALID),
    ("start: oversized", start("+" + "1" * 5000), INVALID),
    (
        "start: request over the size limit",
        lambda w: start("+1" * (w.server.settings.max_request_bytes // 2 + 1024))(w),
        EXHAUSTED,
    ),
    (
        "complete: empty id",
        lambda w: w.stub.CompleteVerification(
            apb.CompleteVerificationRequest(
                code="123456", device_name="x", account_kind=apb.ACCOUNT_KIND_PERSON
            )
        ),
        INVALID,
    ),
    ("complete: id not a uuid", complete(vid="abc"), INVALID),
    ("complete: unknown id", complete(vid=UNKNOWN_UUID), NOT_FOUND),
    ("complete: short code", complete(code="12345"), INVALID),
    ("complete: letters in code", complete(code="12a456"), INVALID),
    ("complete: unicode digits", complete(code="١٢٣٤٥٦"), INVALID),
    ("complete: empty device name", complete(name="   "), INVALID),
    ("complete: long device name", complete(name="x" * 65), INVALID),
    ("complete: control char in name", complete(name="bad\x07name"), INVALID),
    ("complete: kind unspecified", complete(kind=0), INVALID),
    ("complete: unknown kind", complete(kind=99), INVALID),
    (
        "get: not a uuid",
        as_primary("GetAccount", apb.GetAccountRequest(account_id="nope")),
        INVALID,
    ),
    (
        "get: unknown",
        as_primary("GetAccount", apb.GetAccountRequest(account_id=UNKNOWN_UUID)),
        NOT_FOUND,
    ),
    ("get: anonymous", anonymous("GetAccount", apb.GetAccountRequest()), UNAUTH),
    ("list: anonymous", anonymous("ListDevices", apb.ListDevicesRequest()), UNAUTH),
    (
        "linking code: anonymous",
        anonymous("CreateLinkingCode", apb.CreateLinkingCodeRequest()),
        UNAUTH,
    ),
    (
        "linking code: linked device",
        as_laptop("CreateLinkingCode", apb.CreateLinkingCodeRequest()),
        DENIED,
    ),
    ("link: empty code", anonymous("LinkDevice", apb.LinkDeviceRequest(device_name="x")), INVALID),
    (
        "link: oversized code",
        anonymous("LinkDevice", apb.LinkDeviceRequest(linking_code="c" * 100, device_name="x")),
        INVALID,
    ),
    (
        "link: unknown code",
        anonymous("LinkDevice", apb.LinkDeviceRequest(linking_code="nope", device_name="x")),
        NOT_FOUND,
    ),
    (
        "link: empty name",
        anonymous("LinkDevice", apb.LinkDeviceRequest(linking_code="nope")),
        INVALID,
    ),
    ("remove: zero id", as_primary("RemoveDevice", apb.RemoveDeviceRequest(device_id=0)), INVALID),
    (
        "remove: unknown id",
        as_primary("RemoveDevice", apb.RemoveDeviceRequest(device_id=77)),
        NOT_FOUND,
    ),
    (
        "remove: primary",
        as_primary("RemoveDevice", apb.RemoveDeviceRequest(device_id=1)),
        PRECONDITION,
    ),
    (
        "remove: other device from linked",
        as_laptop("RemoveDevice", apb.RemoveDeviceRequest(device_id=1)),
        PRECONDITION,
    ),
    ("remove: anonymous", anonymous("RemoveDevice", apb.RemoveDeviceRequest(device_id=2)), UNAUTH),
    ("delete: linked device", as_laptop("DeleteAccount", apb.DeleteAccountRequest()), DENIED),
    ("delete: anonymous", anonymous("DeleteAccount", apb.DeleteAccountRequest()), UNAUTH),
    ("lookup: empty", as_primary("LookupAccount", apb.LookupAccountRequest()), INVALID),
    (
        "lookup: malformed",
        as_primary("LookupAccount", apb.LookupAccountRequest(phone_number="+1")),
        INVALID,
    ),
    (
        "lookup: unregistered",
        as_primary("LookupAccount", apb.LookupAccountRequest(phone_number="+12025550143")),
        NOT_FOUND,
    ),
    (
        "lookup: anonymous",
        anonymous("LookupAccount", apb.LookupAccountRequest(phone_number="+12025550143")),
        UNAUTH,
    ),
]


def upload(**fields: object) -> Call:
    """An upload by the primary device (which has no keys on file) with some fields set."""

    def call(w: World) -> object:
        maker = DeviceKeyMaker()
        request = maker.first_upload()
        for name, value in fields.items():
            if name == "pre_key":
                request.pre_keys.append(value)  # type: ignore[arg-type]
            elif name == "signed_pre_key_signature":
                request.signed_pre_key.signature = value  # type: ignore[assignment]
            elif name == "kyber_public_key":
                request.kyber_pre_keys[0].public_key = value  # type: ignore[assignment]
            elif name == "empty":
                request = kpb.UploadPreKeysRequest()
            else:
                setattr(request, name, value)
        return w.keys.UploadPreKeys(request, metadata=w.primary.metadata)

    return call


def bundles(account: str | None = None, device: int = 0) -> Call:
    return lambda w: w.keys.GetPreKeyBundles(
        kpb.GetPreKeyBundlesRequest(
            account_id=w.primary.account_id if account is None else account, device_id=device
        ),
        metadata=w.laptop.metadata,
    )


KEY_CASES: list[tuple[str, Call, grpc.StatusCode]] = [
    ("upload: anonymous", lambda w: w.keys.UploadPreKeys(kpb.UploadPreKeysRequest()), UNAUTH),
    ("upload: nothing on a fresh device", upload(empty=True), PRECONDITION),
    ("upload: short identity key", upload(identity_key=b"\x05" + b"k" * 31), INVALID),
    ("upload: identity key of wrong type", upload(identity_key=b"\x06" + b"k" * 32), INVALID),
    ("upload: registration id over 14 bits", upload(registration_id=0x4000), INVALID),
    (
        "upload: key id zero",
        upload(pre_key=kpb.EcPreKey(key_id=0, public_key=b"\x05" * 33)),
        INVALID,
    ),
    (
        "upload: short one-time key",
        upload(pre_key=kpb.EcPreKey(key_id=9, public_key=b"\x05")),
        INVALID,
    ),
    ("upload: short signature", upload(signed_pre_key_signature=b"sig"), INVALID),
    ("upload: EC key where Kyber belongs", upload(kyber_public_key=b"\x05" * 33), INVALID),
    (
        "bundles: anonymous",
        lambda w: w.keys.GetPreKeyBundles(kpb.GetPreKeyBundlesRequest()),
        UNAUTH,
    ),
    ("bundles: empty account", bundles(account=""), INVALID),
    ("bundles: account not a uuid", bundles(account="bob"), INVALID),
    ("bundles: unknown account", bundles(account=UNKNOWN_UUID), NOT_FOUND),
    ("bundles: account without keys", bundles(), NOT_FOUND),
    ("bundles: unknown device", bundles(device=9), NOT_FOUND),
    ("count: anonymous", lambda w: w.keys.GetPreKeyCount(kpb.GetPreKeyCountRequest()), UNAUTH),
]
CASES += KEY_CASES


def send(recipient: str | None = None, request_id: str | None = None, **message: Any) -> Call:
    def call(w: World) -> object:
        fields: dict[str, Any] = {
            "device_id": 1,
            "registration_id": 1,
            "content_type": 2,
            "content": b"c",
        }
        fields.update(message)
        request = mpb.SendMessageRequest(
            request_id=str(uuid.uuid4()) if request_id is None else request_id,
            recipient_account_id=w.primary.account_id if recipient is None else recipient,
            messages=[mpb.OutgoingMessage(**fields)] if fields.get("device_id") != -1 else [],
        )
        return w.messaging.SendMessage(request, metadata=w.laptop.metadata)

    return call


def ack(**fields: Any) -> Call:
    return lambda w: w.messaging.AcknowledgeMessages(
        mpb.AcknowledgeMessagesRequest(**fields), metadata=w.laptop.metadata
    )


MESSAGING_CASES: list[tuple[str, Call, grpc.StatusCode]] = [
    ("send: anonymous", lambda w: w.messaging.SendMessage(mpb.SendMessageRequest()), UNAUTH),
    ("send: no request id", send(request_id=""), INVALID),
    ("send: request id not a uuid", send(request_id="1"), INVALID),
    ("send: recipient not a uuid", send(recipient="bob"), INVALID),
    ("send: unknown recipient", send(recipient=UNKNOWN_UUID), NOT_FOUND),
    ("send: no device messages", send(recipient=UNKNOWN_UUID, device_id=-1), INVALID),
    ("send: device id zero", send(device_id=0), INVALID),
    ("send: content type unspecified", send(content_type=0), INVALID),
    ("send: unknown content type", send(content_type=5), INVALID),
    ("send: empty content", send(content=b""), INVALID),
    ("send: oversized content", send(content=b"x" * (256 * 1024 + 1)), INVALID),
    (
        "send batch: empty",
        lambda w: w.messaging.SendMessages(mpb.SendMessagesRequest(), metadata=w.laptop.metadata),
        INVALID,
    ),
    (
        "send batch: anonymous",
        lambda w: w.messaging.SendMessages(mpb.SendMessagesRequest()),
        UNAUTH,
    ),
    (
        "send stream: anonymous",
        lambda w: next(
            iter(w.messaging.SendMessageStream(iter([mpb.SendMessageStreamRequest()]), timeout=10))
        ),
        UNAUTH,
    ),
    (
        "receive: anonymous",
        lambda w: next(iter(w.messaging.ReceiveMessages(mpb.ReceiveMessagesRequest(), timeout=10))),
        UNAUTH,
    ),
    (
        "receive: bad token",
        lambda w: next(
            iter(
                w.messaging.ReceiveMessages(
                    mpb.ReceiveMessagesRequest(),
                    timeout=10,
                    metadata=(("authorization", "Bearer x"),),
                )
            )
        ),
        UNAUTH,
    ),
    (
        "receive stream: anonymous",
        lambda w: list(
            w.messaging.ReceiveMessageStream(
                iter([mpb.ReceiveMessageStreamRequest(envelope_ids=[1])]), timeout=10
            )
        ),
        UNAUTH,
    ),
    (
        "receive stream: an ack of id 0",
        lambda w: list(
            w.messaging.ReceiveMessageStream(
                iter([mpb.ReceiveMessageStreamRequest(envelope_ids=[0])]),
                timeout=10,
                metadata=w.laptop.metadata,
            )
        ),
        INVALID,
    ),
    ("ack: nothing", ack(), INVALID),
    ("ack: too many", ack(envelope_ids=list(range(1, 1002))), INVALID),
    (
        "ack: anonymous",
        lambda w: w.messaging.AcknowledgeMessages(mpb.AcknowledgeMessagesRequest(envelope_ids=[1])),
        UNAUTH,
    ),
]
CASES += MESSAGING_CASES


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = Settings(port=0, database=tmp_path_factory.mktemp("bad") / "p.db")
    server = LiveServer(settings, ManualClock(), RecordingCodeSender())
    primary = register(server, "+14155550123")
    laptop = link(server, primary)
    stub = server.accounts()
    vid = stub.StartVerification(
        apb.StartVerificationRequest(phone_number="+33612345678")
    ).verification_id
    yield World(
        server,
        stub,
        key_pb2_grpc.KeyServiceStub(server.channel()),
        messaging_pb2_grpc.MessagingServiceStub(server.channel()),
        primary,
        laptop,
        vid,
    )
    server.stop()


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(world: World, call: Call, expected: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(world)
    err = info.value
    assert isinstance(err, grpc.Call)
    assert err.code() == expected, err.details()
    message = err.details()
    assert message and len(message) >= 15, f"message too terse to act on: {message!r}"
    assert "Traceback" not in message


@pytest.mark.parametrize(
    ("service", "prefixes"),
    [
        (
            apb.DESCRIPTOR.services_by_name["AccountService"],
            {
                "StartVerification": "start:",
                "CompleteVerification": "complete:",
                "GetAccount": "get:",
                "ListDevices": "list:",
                "CreateLinkingCode": "linking code:",
                "LinkDevice": "link:",
                "RemoveDevice": "remove:",
                "DeleteAccount": "delete:",
                "LookupAccount": "lookup:",
            },
        ),
        (
            kpb.DESCRIPTOR.services_by_name["KeyService"],
            {
                "UploadPreKeys": "upload:",
                "GetPreKeyBundles": "bundles:",
                "GetPreKeyCount": "count:",
            },
        ),
        (
            mpb.DESCRIPTOR.services_by_name["MessagingService"],
            {
                "SendMessage": "send:",
                "SendMessages": "send batch:",
                "SendMessageStream": "send stream:",
                "ReceiveMessages": "receive:",
                "ReceiveMessageStream": "receive stream:",
                "AcknowledgeMessages": "ack:",
            },
        ),
    ],
    ids=["AccountService", "KeyService", "MessagingService"],
)
def test_every_rpc_has_bad_input_cases(service: Any, prefixes: dict[str, str]) -> None:
    assert set(service.methods_by_name) == set(prefixes), "add cases for the new RPCs"
    names = [name for name, _, _ in CASES]
    for rpc, prefix in prefixes.items():
        assert any(n.startswith(prefix) for n in names), rpc
