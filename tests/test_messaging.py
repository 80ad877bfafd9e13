"""MessagingService over a live server: store-and-forward, streams, acks, statuses, limits.

The server relays opaque bytes, so these tests send arbitrary ciphertext-like payloads; the
end-to-end tests with real encryption live with the client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
import pytest
from grpc_status import rpc_status
from parley.v1 import account_pb2 as apb
from parley.v1 import messaging_pb2 as mpb
from parley.v1 import messaging_pb2_grpc

from server import heap
from server.app import ParleyServer
from server.domain.ratelimit import Rate
from tests.conftest import Device, LiveServer, ServerFactory, link, register
from tests.keys_helper import DeviceKeyMaker
from tests.test_keys import keys

ALICE = "+14155550123"
BOB = "+442079460123"
WHISPER = mpb.CONTENT_TYPE_WHISPER


@dataclass
class Member:
    device: Device
    registration_id: int


def member(server: LiveServer, phone: str, primary: Device | None = None) -> Member:
    device = link(server, primary) if primary else register(server, phone)
    maker = DeviceKeyMaker(registration_id=1000 + device.device_id)
    keys(server).UploadPreKeys(maker.first_upload(pre_keys=1, kyber=1), metadata=device.metadata)
    return Member(device, maker.registration_id)


def stub(server: LiveServer) -> messaging_pb2_grpc.MessagingServiceStub:
    return messaging_pb2_grpc.MessagingServiceStub(server.channel())


def send_request(
    to: list[Member], payload: bytes, request_id: str | None = None, **fields: object
) -> mpb.SendMessageRequest:
    return mpb.SendMessageRequest(
        request_id=request_id or str(uuid.uuid4()),
        recipient_account_id=to[0].device.account_id,
        messages=[
            mpb.OutgoingMessage(
                device_id=m.device.device_id,
                registration_id=m.registration_id,
                content_type=WHISPER,
                content=payload,
            )
            for m in to
        ],
        client_timestamp_ms=1234,
        **fields,  # type: ignore[arg-type]
    )


def failure(call: Callable[[], object]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert isinstance(info.value, grpc.Call)
    return info.value


class Stream:
    """A ReceiveMessages stream read event by event (with a deadline, so a bug cannot hang)."""

    def __init__(self, server: LiveServer, who: Member, timeout: float = 20) -> None:
        self.call = stub(server).ReceiveMessages(
            mpb.ReceiveMessagesRequest(), metadata=who.device.metadata, timeout=timeout
        )
        self._events: Iterator[mpb.ReceiveMessagesResponse] = iter(self.call)

    def next(self) -> mpb.ReceiveMessagesResponse:
        return next(self._events)

    def until_empty(self) -> list[mpb.Envelope]:
        out: list[mpb.Envelope] = []
        while True:
            event = self.next()
            if event.HasField("queue_empty"):
                return out
            out.extend(event.envelopes.envelopes)

    def envelopes(self, n: int) -> list[mpb.Envelope]:
        out: list[mpb.Envelope] = []
        while len(out) < n:
            event = self.next()
            out.extend(event.envelopes.envelopes)
        return out

    def statuses(self, n: int) -> list[mpb.DeliveryStatus]:
        out: list[mpb.DeliveryStatus] = []
        while len(out) < n:
            event = self.next()
            out.extend(event.statuses.statuses)
        return out

    def close(self) -> None:
        self.call.cancel()  # type: ignore[no-untyped-call]


def ack(
    server: LiveServer,
    who: Member,
    envelopes: Sequence[mpb.Envelope] = (),
    statuses: Sequence[mpb.DeliveryStatus] = (),
) -> mpb.AcknowledgeMessagesResponse:
    return stub(server).AcknowledgeMessages(
        mpb.AcknowledgeMessagesRequest(
            envelope_ids=[e.envelope_id for e in envelopes],
            status_ids=[s.status_id for s in statuses],
        ),
        metadata=who.device.metadata,
    )


def test_send_receive_ack_and_delivery_status(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    sent = stub(server).SendMessage(
        send_request([bob], b"ciphertext-1"), metadata=alice.device.metadata
    )
    assert sent.stored and sent.message_id > 0

    stream = Stream(server, bob)
    (env,) = stream.until_empty()
    assert env.content == b"ciphertext-1" and env.content_type == WHISPER
    assert env.sender_account_id == alice.device.account_id and env.sender_device_id == 1
    assert env.message_id == sent.message_id and env.client_timestamp_ms == 1234
    assert env.server_timestamp.seconds == int(server.clock.now())

    alice_stream = Stream(server, alice)
    assert alice_stream.until_empty() == []
    assert ack(server, bob, [env]).acknowledged_envelopes == 1
    (status,) = alice_stream.statuses(1)
    assert status.message_id == sent.message_id and status.state == mpb.DELIVERY_STATE_DELIVERED
    assert status.recipient_account_id == bob.device.account_id
    # A second ack changes nothing and produces no second status.
    assert ack(server, bob, [env]).acknowledged_envelopes == 0
    assert ack(server, alice, statuses=[status]).acknowledged_statuses == 1
    stream.close()
    alice_stream.close()
    # Acked: never sent again.
    again = Stream(server, bob)
    assert again.until_empty() == []
    again.close()


def test_live_delivery_to_a_connected_device(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    stream = Stream(server, bob)
    assert stream.until_empty() == []
    for i in range(3):
        stub(server).SendMessage(
            send_request([bob], f"m{i}".encode()), metadata=alice.device.metadata
        )
    got = stream.envelopes(3)
    assert [e.content for e in got] == [b"m0", b"m1", b"m2"]
    stream.close()


def test_device_mismatch_is_reported_with_details(server: LiveServer) -> None:
    alice = member(server, ALICE)
    bob = member(server, BOB)
    bob_laptop = member(server, BOB, primary=bob.device)
    messaging = stub(server)

    def mismatch(request: mpb.SendMessageRequest) -> mpb.MismatchedDevices:
        err = failure(lambda: messaging.SendMessage(request, metadata=alice.device.metadata))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        status = rpc_status.from_call(err)  # grpcio-status checks code and message agree
        detail = mpb.MismatchedDevices()
        assert status.details[0].Unpack(detail)
        return detail

    missing = mismatch(send_request([bob], b"x"))
    assert list(missing.missing_devices) == [2] and missing.account_id == bob.device.account_id
    ghost = Member(Device(bob.device.account_id, 7, "", BOB), 1)
    extra = mismatch(send_request([bob, bob_laptop, ghost], b"x"))
    assert list(extra.extra_devices) == [7] and not extra.missing_devices
    stale = mismatch(send_request([bob, Member(bob_laptop.device, 999)], b"x"))
    assert list(stale.stale_devices) == [2]
    # After fixing the list the send goes through.
    messaging.SendMessage(send_request([bob, bob_laptop], b"x"), metadata=alice.device.metadata)


def test_idempotent_retry(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    request = send_request([bob], b"once")
    first = stub(server).SendMessage(request, metadata=alice.device.metadata)
    second = stub(server).SendMessage(request, metadata=alice.device.metadata)
    assert first == second
    stream = Stream(server, bob)
    assert [e.content for e in stream.until_empty()] == [b"once"]
    stream.close()
    changed = send_request([bob], b"other body", request_id=request.request_id)
    err = failure(lambda: stub(server).SendMessage(changed, metadata=alice.device.metadata))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already used" in (err.details() or "")


def test_offline_recipient_gets_everything_in_order(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    batch = mpb.SendMessagesRequest(
        requests=[send_request([bob], f"{i:04d}".encode()) for i in range(250)]
    )
    results = stub(server).SendMessages(batch, metadata=alice.device.metadata).results
    assert all(r.code == 0 for r in results)
    stream = Stream(server, bob)
    got = stream.until_empty()
    assert [e.content for e in got] == [f"{i:04d}".encode() for i in range(250)]
    assert [e.envelope_id for e in got] == sorted(e.envelope_id for e in got)
    stream.close()


def test_unacked_are_redelivered_after_the_stream_drops(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    for i in range(4):
        stub(server).SendMessage(
            send_request([bob], f"m{i}".encode()), metadata=alice.device.metadata
        )
    stream = Stream(server, bob)
    got = stream.until_empty()
    ack(server, bob, got[:2])
    stream.close()
    server.restart()  # also across a server restart
    stream = Stream(server, bob)
    assert [e.content for e in stream.until_empty()] == [b"m2", b"m3"]
    stream.close()


def test_expiry_reports_failure_to_sender(make_server: ServerFactory) -> None:
    server = make_server(envelope_ttl=3600.0, expiry_interval=0.05)
    alice, bob = member(server, ALICE), member(server, BOB)
    sent = stub(server).SendMessage(send_request([bob], b"late"), metadata=alice.device.metadata)
    alice_stream = Stream(server, alice)
    assert alice_stream.until_empty() == []
    server.clock.advance(3601)
    (status,) = alice_stream.statuses(1)
    assert status.state == mpb.DELIVERY_STATE_FAILED and status.message_id == sent.message_id
    assert "not delivered" in status.reason
    alice_stream.close()
    stream = Stream(server, bob)
    assert stream.until_empty() == []
    stream.close()


def test_message_to_a_removed_device_fails_after_the_ttl(make_server: ServerFactory) -> None:
    server = make_server(envelope_ttl=3600.0, expiry_interval=0.05)
    alice = member(server, ALICE)
    bob = member(server, BOB)
    laptop = member(server, BOB, primary=bob.device)
    sent = stub(server).SendMessage(
        send_request([bob, laptop], b"to both"), metadata=alice.device.metadata
    )
    # Bob deletes his account: the envelopes go with his devices, the message stays pending.
    server.accounts().DeleteAccount(apb.DeleteAccountRequest(), metadata=bob.device.metadata)
    alice_stream = Stream(server, alice)
    assert alice_stream.until_empty() == []
    server.clock.advance(3601)
    (status,) = alice_stream.statuses(1)
    assert status.state == mpb.DELIVERY_STATE_FAILED and status.message_id == sent.message_id
    alice_stream.close()


def test_removing_a_device_ends_its_stream(server: LiveServer) -> None:
    bob = member(server, BOB)
    laptop = member(server, BOB, primary=bob.device)
    stream = Stream(server, laptop)
    assert stream.until_empty() == []
    server.accounts().RemoveDevice(
        apb.RemoveDeviceRequest(device_id=laptop.device.device_id), metadata=bob.device.metadata
    )
    with pytest.raises(grpc.RpcError) as info:
        stream.next()
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_second_stream_replaces_the_first(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    first = Stream(server, bob)
    assert first.until_empty() == []
    second = Stream(server, bob)
    assert second.until_empty() == []
    with pytest.raises(grpc.RpcError) as info:
        first.next()
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.ABORTED
    stub(server).SendMessage(send_request([bob], b"to second"), metadata=alice.device.metadata)
    assert [e.content for e in second.envelopes(1)] == [b"to second"]
    second.close()


def test_online_only_messages_are_never_stored(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    offline = stub(server).SendMessage(
        send_request([bob], b"typing", online_only=True), metadata=alice.device.metadata
    )
    assert not offline.stored
    stream = Stream(server, bob)
    assert stream.until_empty() == []
    online = stub(server).SendMessage(
        send_request([bob], b"typing", online_only=True), metadata=alice.device.metadata
    )
    assert online.stored
    (env,) = stream.envelopes(1)
    assert env.online_only and env.content == b"typing"
    stream.close()
    assert "typing" not in repr(server.all_rows())
    if server.on_sqlite:  # nor anywhere in the file
        server.stop()
        assert b"typing" not in server.sqlite_file.read_bytes()


def test_sync_copies_to_own_devices(server: LiveServer) -> None:
    alice = member(server, ALICE)
    laptop = member(server, ALICE, primary=alice.device)
    # A send to one's own account covers every device but the sender.
    stub(server).SendMessage(send_request([laptop], b"sync"), metadata=alice.device.metadata)
    err = failure(
        lambda: stub(server).SendMessage(
            send_request([alice, laptop], b"sync"), metadata=alice.device.metadata
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    stream = Stream(server, laptop)
    (env,) = stream.until_empty()
    assert env.sender_device_id == 1 and env.content == b"sync"
    ack(server, laptop, [env])
    stream.close()
    # Sync copies produce no delivery status.
    alice_stream = Stream(server, alice)
    assert alice_stream.until_empty() == []
    alice_stream.close()


def test_empty_send_to_own_account_probes_for_other_devices(server: LiveServer) -> None:
    alice = member(server, ALICE)
    probe = mpb.SendMessageRequest(
        request_id=str(uuid.uuid4()), recipient_account_id=alice.device.account_id
    )
    reply = stub(server).SendMessage(probe, metadata=alice.device.metadata)
    assert not reply.stored
    member(server, ALICE, primary=alice.device)
    probe.request_id = str(uuid.uuid4())
    err = failure(lambda: stub(server).SendMessage(probe, metadata=alice.device.metadata))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "missing devices [2]" in (err.details() or "")


def test_send_stream(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    requests = [send_request([bob], f"s{i:02d}".encode()) for i in range(30)]
    requests[7].messages[0].registration_id = 999  # stale: fails alone
    responses = list(
        stub(server).SendMessageStream(
            (mpb.SendMessageStreamRequest(request=r) for r in requests),
            metadata=alice.device.metadata,
            timeout=20,
        )
    )
    by_id = {r.result.request_id: r.result for r in responses}
    assert set(by_id) == {r.request_id for r in requests}
    assert by_id[requests[7].request_id].code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert list(by_id[requests[7].request_id].mismatched_devices.stale_devices) == [1]
    assert sum(1 for r in by_id.values() if r.code == 0 and r.response.stored) == 29
    stream = Stream(server, bob)
    got = sorted(e.content for e in stream.until_empty())
    assert got == sorted(f"s{i:02d}".encode() for i in range(30) if i != 7)
    stream.close()


def test_a_slow_reader_falls_back_to_the_database(make_server: ServerFactory) -> None:
    """More live envelopes than the stream buffer holds: all arrive, once each, in order."""
    server = make_server(stream_buffer_bytes=20 * 4)  # 20 envelopes of 4 bytes
    alice, bob = member(server, ALICE), member(server, BOB)
    stream = Stream(server, bob)
    assert stream.until_empty() == []
    for first in range(0, 300, 100):  # 100 per batch: each push overflows the buffer
        batch = [send_request([bob], f"{i:03d}".encode()) for i in range(first, first + 100)]
        stub(server).SendMessages(
            mpb.SendMessagesRequest(requests=batch), metadata=alice.device.metadata
        )
    got = stream.envelopes(300)
    assert [e.content for e in got] == [f"{i:03d}".encode() for i in range(300)]
    stream.close()


def test_the_server_gives_memory_back_after_a_stream_that_buffered_much_ends(
    make_server: ServerFactory,
) -> None:
    """The server built by the app hands fanout rule 3's `released` to its heap.GiveBack: a
    stream that buffered a quarter of --stream-buffer-bytes has the heap given back a moment
    after it ends, one that buffered nothing does not (tests/test_heap.py: what that returns)."""
    server = make_server(stream_buffer_bytes=20 * 4)  # gives back after a stream held 20 bytes

    async def given_back(s: ParleyServer) -> int:
        return s.give_back.calls

    alice, bob = member(server, ALICE), member(server, BOB)
    quiet = Stream(server, alice)
    assert quiet.until_empty() == []
    quiet.close()
    time.sleep(heap.GIVE_BACK_DELAY + 0.3)
    assert server.run(given_back) == 0
    stream = Stream(server, bob)
    assert stream.until_empty() == []
    batch = [send_request([bob], f"{i:03d}".encode()) for i in range(10)]  # 30 bytes at once
    stub(server).SendMessages(
        mpb.SendMessagesRequest(requests=batch), metadata=alice.device.metadata
    )
    assert len(stream.envelopes(10)) == 10
    assert server.run(given_back) == 0  # not while the stream is open
    stream.close()
    deadline = time.monotonic() + 10
    while server.run(given_back) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.run(given_back) == 1


def test_keep_alives_on_an_idle_stream(make_server: ServerFactory) -> None:
    server = make_server(keepalive_interval=0.1)
    bob = member(server, BOB)
    stream = Stream(server, bob)
    assert stream.until_empty() == []
    assert stream.next().HasField("keep_alive")
    assert stream.next().HasField("keep_alive")
    stream.close()


def test_business_metadata_travels_in_cleartext(server: LiveServer) -> None:
    shop, bob = member(server, ALICE), member(server, BOB)
    business = mpb.BusinessMetadata(
        category=mpb.MESSAGE_CATEGORY_UTILITY, template_name="order_shipped"
    )
    stub(server).SendMessage(
        send_request([bob], b"sealed", business=business), metadata=shop.device.metadata
    )
    plain = stub(server).SendMessage(send_request([bob], b"plain"), metadata=shop.device.metadata)
    stream = Stream(server, bob)
    first, second = stream.until_empty()
    assert first.business == business and first.content == b"sealed"
    assert not second.HasField("business") and second.message_id == plain.message_id
    stream.close()
    err = failure(
        lambda: stub(server).SendMessage(
            send_request([bob], b"x", business=mpb.BusinessMetadata(category=42)),  # type: ignore[arg-type]
            metadata=shop.device.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_batched_send_reports_each_item(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    good = send_request([bob], b"good")
    wrong_devices = send_request([Member(bob.device, 5)], b"stale")
    bad_id = send_request([bob], b"bad")
    bad_id.request_id = "not-a-uuid"
    results = (
        stub(server)
        .SendMessages(
            mpb.SendMessagesRequest(requests=[good, wrong_devices, bad_id]),
            metadata=alice.device.metadata,
        )
        .results
    )
    assert [r.code for r in results] == [
        0,
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
    ]
    assert list(results[1].mismatched_devices.stale_devices) == [1]
    assert results[0].response.stored


def test_limits(make_server: ServerFactory) -> None:
    server = make_server(
        max_envelope_bytes=1024, max_devices_per_send=1, max_batch=3, send_rate=Rate(5, 60)
    )
    alice, bob = member(server, ALICE), member(server, BOB)
    bob_laptop = member(server, BOB, primary=bob.device)
    messaging = stub(server)
    md = alice.device.metadata
    err = failure(lambda: messaging.SendMessage(send_request([bob], b"x" * 1025), metadata=md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "1024" in (err.details() or "")
    err = failure(lambda: messaging.SendMessage(send_request([bob, bob_laptop], b"x"), metadata=md))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 1" in (err.details() or "")
    err = failure(
        lambda: messaging.SendMessages(
            mpb.SendMessagesRequest(requests=[send_request([bob], b"x") for _ in range(4)]),
            metadata=md,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 3" in (err.details() or "")


def test_send_rate_per_device(make_server: ServerFactory) -> None:
    server = make_server(send_rate=Rate(3, 60))
    alice, bob = member(server, ALICE), member(server, BOB)
    messaging = stub(server)
    for _ in range(3):
        messaging.SendMessage(send_request([bob], b"x"), metadata=alice.device.metadata)
    err = failure(
        lambda: messaging.SendMessage(send_request([bob], b"x"), metadata=alice.device.metadata)
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "try again in 20 s" in (err.details() or "")
    # Another device has its own budget; time refills it.
    messaging.SendMessage(send_request([alice], b"x"), metadata=bob.device.metadata)
    server.clock.advance(20)
    messaging.SendMessage(send_request([bob], b"x"), metadata=alice.device.metadata)


def test_ack_and_stream_need_auth(server: LiveServer) -> None:
    messaging = stub(server)
    err = failure(
        lambda: next(iter(messaging.ReceiveMessages(mpb.ReceiveMessagesRequest(), timeout=5)))
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = failure(
        lambda: messaging.AcknowledgeMessages(mpb.AcknowledgeMessagesRequest(envelope_ids=[1]))
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
