"""Every RPC refuses bad input with the right status and a message a person can act on."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import grpc
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc

from server.config import Settings
from server.domain.clock import ManualClock
from tests.conftest import Device, LiveServer, RecordingCodeSender, link, register

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
    ("start: request over the size limit", start("+1" * (3 * 1024 * 1024)), EXHAUSTED),
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
    yield World(server, stub, primary, laptop, vid)
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


def test_every_account_rpc_has_a_bad_input_case() -> None:
    rpcs = apb.DESCRIPTOR.services_by_name["AccountService"].methods_by_name
    covered = " ".join(name for name, _, _ in CASES).lower()
    aliases = {
        "StartVerification": "start:",
        "CompleteVerification": "complete:",
        "GetAccount": "get:",
        "ListDevices": "list:",
        "CreateLinkingCode": "linking code:",
        "LinkDevice": "link:",
        "RemoveDevice": "remove:",
        "DeleteAccount": "delete:",
        "LookupAccount": "lookup:",
    }
    assert set(rpcs) == set(aliases)
    for rpc in rpcs:
        assert aliases[rpc] in covered, rpc
