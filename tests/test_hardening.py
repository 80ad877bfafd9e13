"""Defects an attacker found on loopback, each pinned by a test that failed before its fix.

Revoked credentials on open streams, corrupt frames in a client stream, 64-bit values the store
cannot hold, undecodable request bytes. (The fuzz and authorization-matrix tests cover the same
classes for every RPC; these are the reported instances, step by step.)
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import messaging_pb2 as mpb

from tests.conftest import LiveServer, register
from tests.test_messaging import ALICE, BOB, Member, Stream, failure, member, send_request, stub

DEADLINE = 15.0


class SendStream:
    """A SendMessageStream driven request by request from the test thread."""

    def __init__(self, server: LiveServer, who: Member) -> None:
        self._queue: queue.Queue[mpb.SendMessageStreamRequest | None] = queue.Queue()
        self.call = stub(server).SendMessageStream(
            self._requests(), metadata=who.device.metadata, timeout=DEADLINE
        )
        self._responses: Iterator[mpb.SendMessageStreamResponse] = iter(self.call)

    def _requests(self) -> Iterator[mpb.SendMessageStreamRequest]:
        while (item := self._queue.get()) is not None:
            yield item

    def send(self, request: mpb.SendMessageRequest) -> mpb.SendResult:
        self._queue.put(mpb.SendMessageStreamRequest(request=request))
        return next(self._responses).result

    def push(self, request: mpb.SendMessageRequest) -> None:
        self._queue.put(mpb.SendMessageStreamRequest(request=request))

    def finish(self) -> grpc.StatusCode:
        """End the client's side, then read to the end of the call; its status code."""
        self._queue.put(None)
        return self.end_status()

    def end_status(self) -> grpc.StatusCode:
        """Read to the end of the call (the server ends it); its status code."""
        try:
            for _ in self._responses:
                pass
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc.code()
        finally:
            self._queue.put(None)
        return grpc.StatusCode.OK


def _remove_linked(server: LiveServer, alice: Member, sender: Member) -> None:
    server.accounts().RemoveDevice(
        apb.RemoveDeviceRequest(device_id=sender.device.device_id), metadata=alice.device.metadata
    )


def _reregister(server: LiveServer, alice: Member, sender: Member) -> None:
    register(server, ALICE)


def _delete(server: LiveServer, alice: Member, sender: Member) -> None:
    server.accounts().DeleteAccount(apb.DeleteAccountRequest(), metadata=alice.device.metadata)


REVOCATIONS: dict[str, tuple[bool, Callable[[LiveServer, Member, Member], None]]] = {
    # name: (the sender is a linked device, how its credential is revoked)
    "remove-device": (True, _remove_linked),
    "re-register": (False, _reregister),
    "delete-account": (False, _delete),
}


@pytest.mark.parametrize("how", sorted(REVOCATIONS))
def test_a_revoked_device_cannot_send_on_a_stream_it_opened_before(
    server: LiveServer, how: str
) -> None:
    """Defect 1: sends on an open SendMessageStream outlived RemoveDevice, re-registration and
    DeleteAccount; the recipient saw them as from the removed device or the new owner."""
    linked, revoke = REVOCATIONS[how]
    alice, bob = member(server, ALICE), member(server, BOB)
    sender = member(server, ALICE, primary=alice.device) if linked else alice
    sends = SendStream(server, sender)
    before = sends.send(send_request([bob], b"before"))
    assert before.code == 0 and before.response.stored
    receive = Stream(server, sender)
    assert receive.until_empty() == []

    revoke(server, alice, sender)

    sends.push(send_request([bob], b"after"))
    assert sends.end_status() == grpc.StatusCode.UNAUTHENTICATED
    got = Stream(server, bob).until_empty()
    assert [e.content for e in got] == [b"before"]
    # The receiving stream ended at once too, with no further traffic needed to notice.
    with pytest.raises(grpc.RpcError) as info:
        receive.next()
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (info.value.details() or "")


def test_a_corrupt_frame_ends_a_send_stream_with_invalid_argument(server: LiveServer) -> None:
    """Defect 2: one valid request then undecodable bytes hung SendMessageStream forever."""
    alice, bob = member(server, ALICE), member(server, BOB)
    raw = server.channel().stream_stream(
        "/parley.v1.MessagingService/SendMessageStream", None, None
    )
    valid = mpb.SendMessageStreamRequest(request=send_request([bob], b"ok")).SerializeToString()
    call = raw(iter([valid, b"\xff\xff\xff\xff"]), metadata=alice.device.metadata, timeout=10)
    responses = []
    with pytest.raises(grpc.RpcError) as info:
        for item in call:
            responses.append(mpb.SendMessageStreamResponse.FromString(item))
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SendMessageStreamRequest" in (info.value.details() or "")
    # The send before the bad frame was committed and answered.
    assert [r.result.code for r in responses] == [0]
    assert [e.content for e in Stream(server, bob).until_empty()] == [b"ok"]


TOO_LARGE = [2**63, 2**64 - 1]


def timestamped(request: mpb.SendMessageRequest, ms: int) -> mpb.SendMessageRequest:
    request.client_timestamp_ms = ms
    return request


@pytest.mark.parametrize("value", TOO_LARGE)
def test_64_bit_values_the_store_cannot_hold_are_invalid_arguments(
    server: LiveServer, value: int
) -> None:
    """Defect 3: uint64 values above 2^63-1 gave INTERNAL (an SQLite overflow)."""
    alice, bob = member(server, ALICE), member(server, BOB)
    md = alice.device.metadata
    calls: dict[str, Callable[[], object]] = {
        "envelope_ids[0]": lambda: stub(server).AcknowledgeMessages(
            mpb.AcknowledgeMessagesRequest(envelope_ids=[value]), metadata=md
        ),
        "status_ids[1]": lambda: stub(server).AcknowledgeMessages(
            mpb.AcknowledgeMessagesRequest(status_ids=[1, value]), metadata=md
        ),
        "client_timestamp_ms": lambda: stub(server).SendMessage(
            timestamped(send_request([bob], b"x"), value), metadata=md
        ),
        "requests[1].client_timestamp_ms": lambda: stub(server).SendMessages(
            mpb.SendMessagesRequest(
                requests=[
                    send_request([bob], b"fine"),
                    timestamped(send_request([bob], b"x"), value),
                ]
            ),
            metadata=md,
        ),
    }
    for path, call in calls.items():
        error = failure(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, path
        assert f"{path} is {value}" in (error.details() or ""), error.details()
        assert "2^63-1" in (error.details() or "")
    # Nothing of the refused batch was stored.
    assert Stream(server, bob).until_empty() == []


def test_undecodable_bytes_are_invalid_argument_and_logged_briefly(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 4: undecodable request bytes gave UNKNOWN, and an ERROR with a traceback per call,
    even without a token."""
    alice = member(server, ALICE)
    channel = server.channel()
    caplog.set_level(logging.INFO, logger="parley")
    for metadata in ((), alice.device.metadata):
        for method in (
            "/parley.v1.AccountService/StartVerification",
            "/parley.v1.AccountService/ListDevices",
            "/parley.v1.MessagingService/AcknowledgeMessages",
        ):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(method, None, None)(
                    b"\xff\xff\xff", metadata=metadata, timeout=5
                )
            assert isinstance(info.value, grpc.Call)
            code = info.value.code()
            if metadata or method.endswith("StartVerification"):
                assert code == grpc.StatusCode.INVALID_ARGUMENT, method
                assert "not a valid parley.v1." in (info.value.details() or "")
            else:  # no token: refused before the bytes are even looked at
                assert code == grpc.StatusCode.UNAUTHENTICATED, method
    records = [r for r in caplog.records if r.name.startswith("parley")]
    assert not [r for r in records if r.levelno >= logging.WARNING or r.exc_info]
    assert len([r for r in records if "undecodable" in r.getMessage()]) == 1  # throttled


def test_unread_streams_end_when_the_client_goes(server: LiveServer) -> None:
    """A stalled reader's stream ends (and frees its buffer) when its client cancels it."""
    alice, bob = member(server, ALICE), member(server, BOB)
    stream = Stream(server, bob)
    assert stream.until_empty() == []
    for _ in range(20):
        stub(server).SendMessage(send_request([bob], b"x" * 1000), metadata=alice.device.metadata)
    stream.close()
    done = threading.Event()

    def reconnect() -> None:
        assert len(Stream(server, bob).until_empty()) == 20
        done.set()

    worker = threading.Thread(target=reconnect)
    worker.start()
    worker.join(DEADLINE)
    assert done.is_set()


def test_request_ids_need_not_be_fresh_after_a_refusal(server: LiveServer) -> None:
    """A request refused at the edge stored nothing, so its request_id is still free."""
    alice, bob = member(server, ALICE), member(server, BOB)
    request_id = str(uuid.uuid4())
    bad = timestamped(send_request([bob], b"x", request_id=request_id), 2**63)
    assert failure(
        lambda: stub(server).SendMessage(bad, metadata=alice.device.metadata)
    ).code() == (grpc.StatusCode.INVALID_ARGUMENT)
    good = send_request([bob], b"x", request_id=request_id)
    assert stub(server).SendMessage(good, metadata=alice.device.metadata).stored
