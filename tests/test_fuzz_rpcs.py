"""Fuzz every RPC of every Parley service, listed from the server's own descriptors.

Three kinds of input, each under several credentials (none, malformed, another account's, the
owner's, a business's, the operator's admin token — which AdminService RPCs get most often, so
their fuzzing reaches past authentication): bytes that do not decode (random, and truncations of
valid requests), requests whose fields Hypothesis fills from the descriptor (boundary integers,
huge strings and repeated fields, unknown enum numbers, real ids of the accounts involved), and
— for client streams — valid messages mixed with garbage frames. Whatever comes in, the server
answers with a deliberate status: never UNKNOWN or INTERNAL, never a hang (every call has a
deadline, and a unary call that reaches it fails the test), and afterwards it still serves and
its database passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parley.v1 import account_pb2 as apb
from parley.v1 import business_pb2 as bpb
from parley.v1 import business_pb2_grpc, key_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from server.config import Settings
from server.domain.clock import ManualClock
from tests.conftest import Device, LiveServer, RecordingCodeSender, link, register
from tests.keys_helper import DeviceKeyMaker
from tests.rpc_catalog import Rpc, all_rpcs, message_class

# Statuses that mean the server did not decide what to answer.
UNDECIDED = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
CALL_DEADLINE = 10.0
# A server stream with nothing more to say stays open: read this long, then hang up ourselves.
STREAM_READ = 0.3
# Fresh accounts for each fuzzed RPC (a few each), with room for more RPCs.
NUMBERS = [f"+155501{i:05d}" for i in range(2_000)]
EXAMPLES = 30
ADMIN_TOKEN = "fuzz-operator-token"

FIELD_TYPE = FieldDescriptor
INT_BOUNDS = {
    FIELD_TYPE.TYPE_INT32: (-(2**31), 2**31 - 1),
    FIELD_TYPE.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FIELD_TYPE.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FIELD_TYPE.TYPE_UINT32: (0, 2**32 - 1),
    FIELD_TYPE.TYPE_FIXED32: (0, 2**32 - 1),
    FIELD_TYPE.TYPE_INT64: (-(2**63), 2**63 - 1),
    FIELD_TYPE.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FIELD_TYPE.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FIELD_TYPE.TYPE_UINT64: (0, 2**64 - 1),
    FIELD_TYPE.TYPE_FIXED64: (0, 2**64 - 1),
}


@dataclass
class Fuzzed:
    """The accounts a fuzzed call may name: its owner (with keys) and a stranger."""

    server: LiveServer
    owner: Device
    linked: Device
    stranger: Device
    numbers: Iterator[str]
    business: Device
    template_id: str  # a PENDING template of the business

    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {ADMIN_TOKEN}"),)

    def credentials(self, which: str) -> tuple[tuple[str, str], ...]:
        return {
            "none": (),
            "malformed": (("authorization", "Basic c2VjcmV0"),),
            "garbage": (("authorization", "Bearer " + "A" * 43),),
            "stranger": self.stranger.metadata,
            "owner": self.owner.metadata,
            "linked": self.linked.metadata,
            "business": self.business.metadata,
            "operator": self.admin_metadata(),
        }[which]


CREDENTIALS = [
    "none",
    "malformed",
    "garbage",
    "stranger",
    "owner",
    "linked",
    "business",
    "operator",
]


def _credentials(rpc: Rpc) -> st.SearchStrategy[str]:
    """Any credential; the operator's most of the time on the operator's RPCs, which refuse all
    others before looking at the request."""
    if rpc.operator:
        return st.one_of(st.just("operator"), st.sampled_from(CREDENTIALS))
    return st.sampled_from(CREDENTIALS)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(
        host="localhost",
        port=0,
        database=base / "fuzz.db",
        test_numbers={n: "123456" for n in NUMBERS},
        shutdown_grace=1.0,
        admin_token=ADMIN_TOKEN,
    )
    server = LiveServer(settings_, ManualClock(), RecordingCodeSender())
    yield server
    server.stop()
    check = sqlite3.connect(base / "fuzz.db")
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        check.close()


_numbers = iter(NUMBERS)


@pytest.fixture
def world(fuzz_server: LiveServer) -> Fuzzed:
    """Fresh accounts for each RPC: a fuzzed DeleteAccount must not starve the next RPC."""
    owner = register(fuzz_server, next(_numbers))
    linked = link(fuzz_server, owner)
    stranger = register(fuzz_server, next(_numbers))
    keys = key_pb2_grpc.KeyServiceStub(fuzz_server.channel())
    for device in (owner, linked, stranger):
        maker = DeviceKeyMaker(registration_id=100 + device.device_id)
        keys.UploadPreKeys(maker.first_upload(pre_keys=3, kyber=2), metadata=device.metadata)
    business = register(fuzz_server, next(_numbers), apb.ACCOUNT_KIND_BUSINESS)
    stub = business_pb2_grpc.BusinessServiceStub(fuzz_server.channel())
    stub.UpdateBusinessProfile(
        bpb.UpdateBusinessProfileRequest(fields=bpb.BusinessProfileFields(display_name="Fuzz")),
        metadata=business.metadata,
    )
    template = stub.CreateTemplate(
        bpb.CreateTemplateRequest(
            name="fuzz",
            language="en",
            category=mpb.MESSAGE_CATEGORY_UTILITY,
            content=bpb.TemplateContent(body="Hello {{1}}"),
        ),
        metadata=business.metadata,
    ).template
    return Fuzzed(fuzz_server, owner, linked, stranger, _numbers, business, template.template_id)


# -- strategies built from descriptors ----------------------------------------------------------


def _strings(world: Fuzzed, small: bool) -> st.SearchStrategy[str]:
    real = [
        world.owner.account_id,
        world.stranger.account_id,
        world.business.account_id,
        world.template_id,
        world.owner.phone_number,
        str(uuid.uuid4()),
        "+15550001111",
        "123456",
    ]
    edges = ["", "\x00", "\u202e"] if small else ["", "\x00", "\u202e", "x" * 100_000, "😀" * 5_000]
    return st.one_of(st.text(max_size=40), st.sampled_from(real), st.sampled_from(edges))


def _scalar(f: FieldDescriptor, world: Fuzzed, small: bool) -> st.SearchStrategy[Any]:
    if f.type in INT_BOUNDS:
        low, high = INT_BOUNDS[f.type]
        edges = sorted({low, high, 0, 1, 2, max(low, -1), min(high, 2**31), min(high, 2**63)})
        return st.one_of(st.sampled_from(edges), st.integers(low, high))
    if f.type == FIELD_TYPE.TYPE_BOOL:
        return st.booleans()
    if f.type in (FIELD_TYPE.TYPE_FLOAT, FIELD_TYPE.TYPE_DOUBLE):
        return st.floats(width=32 if f.type == FIELD_TYPE.TYPE_FLOAT else 64)
    if f.type == FIELD_TYPE.TYPE_STRING:
        return _strings(world, small)
    if f.type == FIELD_TYPE.TYPE_BYTES:
        keys = [b"", b"\x05" + bytes(32), b"\x08" + bytes(1568)]
        return st.one_of(
            st.binary(max_size=64), st.sampled_from(keys if small else [*keys, b"x" * 300_000])
        )
    if f.type == FIELD_TYPE.TYPE_ENUM:
        assert f.enum_type is not None
        known = [v.number for v in f.enum_type.values]
        return st.sampled_from([*known, max(known) + 1, 999, -1])
    raise AssertionError(f"no strategy for field type {f.type} of {f.full_name}")


def _field(
    f: FieldDescriptor, world: Fuzzed, depth: int, small: bool = False
) -> st.SearchStrategy[Any]:
    """Values for field `f`. `small` (inside a list repeated past the batch limits) leaves out
    the huge strings, bytes and lists, so a request stays a few MiB at most: huge *and*
    repeated 1,500 times would only exhaust the test's own memory, not test the server."""
    if f.type == FIELD_TYPE.TYPE_MESSAGE:
        assert f.message_type is not None
        if f.message_type.GetOptions().map_entry:
            key, value = (f.message_type.fields_by_name[n] for n in ("key", "value"))
            keys, values = _field(key, world, depth, small), _field(value, world, depth, small)
            return st.dictionaries(keys, values, max_size=3)
        one: st.SearchStrategy[Any] = (
            _message(f.message_type, world, depth + 1, small) if depth < 3 else st.just({})
        )
        small_one: st.SearchStrategy[Any] = (
            _message(f.message_type, world, depth + 1, True) if depth < 3 else st.just({})
        )
    else:
        one, small_one = _scalar(f, world, small), _scalar(f, world, True)
    if not f.is_repeated:
        return one
    if small:
        return st.lists(one, max_size=4)
    # Past every batch limit, with small items, so the request stays under the size limit.
    return st.one_of(st.lists(one, max_size=4), small_one.map(lambda v: [v] * 1_500))


def _message(
    desc: Descriptor, world: Fuzzed, depth: int = 0, small: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    fields = {f.name: _field(f, world, depth, small) for f in desc.fields}
    return st.fixed_dictionaries({}, optional=fields)


def build(desc: Descriptor, values: dict[str, Any]) -> Message:
    message = message_class(desc)()
    _fill(message, values)
    return message


def _fill(message: Message, values: dict[str, Any]) -> None:
    desc = message.DESCRIPTOR
    for name, value in values.items():
        f = desc.fields_by_name[name]
        target = getattr(message, name)
        if f.type != FIELD_TYPE.TYPE_MESSAGE:
            if f.is_repeated:
                target.extend(value)
            else:
                setattr(message, name, value)
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, dict):
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif f.is_repeated:
            for item in value:
                _fill(target.add(), item)
        else:
            target.SetInParent()
            _fill(target, value)


# -- calling ------------------------------------------------------------------------------------


def _call(world: Fuzzed, rpc: Rpc, frames: list[bytes], credentials: str) -> grpc.StatusCode:
    """Send `frames` (one for a unary request) as raw bytes; the call's final status."""
    channel = world.server.channel()
    metadata = world.credentials(credentials)
    try:
        if rpc.client_streaming:
            call: Any = channel.stream_stream(rpc.path, None, None)(
                iter(frames), metadata=metadata, timeout=CALL_DEADLINE
            )
            for _ in call:
                pass
        elif rpc.server_streaming:
            call = channel.unary_stream(rpc.path, None, None)(
                frames[0], metadata=metadata, timeout=STREAM_READ
            )
            for _ in call:
                pass
        else:
            channel.unary_unary(rpc.path, None, None)(
                frames[0], metadata=metadata, timeout=CALL_DEADLINE
            )
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        code = exc.code()
        assert code not in UNDECIDED, f"{rpc} answered {code}: {exc.details()}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # A live receive stream has nothing more to say; anything else must answer in time.
            assert rpc.server_streaming and not rpc.client_streaming, f"{rpc} hung"
        return code
    return grpc.StatusCode.OK


def _assert_alive(world: Fuzzed) -> None:
    health = health_pb2_grpc.HealthStub(world.server.channel())
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


RPCS = all_rpcs()
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_undecodable_and_truncated_bytes(world: Fuzzed, rpc: Rpc) -> None:
    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        valid = build(rpc.input, data.draw(_message(rpc.input, world))).SerializeToString()
        cut = data.draw(st.integers(0, max(0, len(valid) - 1)))
        frame = data.draw(
            st.one_of(st.binary(min_size=1, max_size=200), st.just(valid[:cut] + b"\xff"))
        )
        _call(world, rpc, [frame], data.draw(_credentials(rpc)))

    run()
    _assert_alive(world)


@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_generated_field_values(world: Fuzzed, rpc: Rpc) -> None:
    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        count = data.draw(st.integers(1, 3)) if rpc.client_streaming else 1
        frames = [
            build(rpc.input, data.draw(_message(rpc.input, world))).SerializeToString()
            for _ in range(count)
        ]
        _call(world, rpc, frames, data.draw(_credentials(rpc)))

    run()
    _assert_alive(world)


@pytest.mark.parametrize("rpc", [r for r in RPCS if r.client_streaming], ids=str)
def test_garbage_frames_in_client_streams(world: Fuzzed, rpc: Rpc) -> None:
    @FUZZ
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        frames = data.draw(
            st.lists(
                st.one_of(
                    _message(rpc.input, world).map(
                        lambda v: build(rpc.input, v).SerializeToString()
                    ),
                    st.binary(min_size=1, max_size=100),
                ),
                min_size=1,
                max_size=6,
            )
        )
        _call(world, rpc, frames, data.draw(st.sampled_from(["owner", "stranger", "none"])))

    run()
    _assert_alive(world)


def test_every_served_service_is_fuzzed(fuzz_server: LiveServer) -> None:
    """The list above is what reflection says the server serves (besides health and
    reflection themselves), so no served RPC escapes the fuzzer."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    served = set(ProtoReflectionDescriptorDatabase(fuzz_server.channel()).get_services())
    fuzzed = {r.method.containing_service.full_name for r in RPCS}
    assert served - fuzzed == {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert fuzzed <= served
