"""A send to a device that exists but has not uploaded keys says so, not "no longer exists".

A grpcurl tester who registers two numbers and sends before uploading the recipient's keys hits
this first; the message must point at KeyService/UploadPreKeys.
"""

from __future__ import annotations

import grpc
from google.rpc import status_pb2
from parley.v1 import messaging_pb2 as mpb

from tests.conftest import Device, LiveServer, link, register
from tests.test_messaging import ALICE, BOB, Member, failure, member, send_request, stub


def _refusal(server: LiveServer, sender: Member, request: mpb.SendMessageRequest) -> grpc.Call:
    err = failure(lambda: stub(server).SendMessage(request, metadata=sender.device.metadata))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    return err


def _detail(err: grpc.Call) -> mpb.MismatchedDevices:
    trailers = dict(err.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    detail = mpb.MismatchedDevices()
    assert status.details[0].Unpack(detail)
    return detail


def test_recipient_device_without_keys_is_named_as_such(server: LiveServer) -> None:
    alice = member(server, ALICE)
    bob = Member(register(server, BOB), 4242)  # registered, no UploadPreKeys yet
    err = _refusal(server, alice, send_request([bob], b"hello"))
    assert err.details() == (
        "device 1 of the recipient has not uploaded its keys yet (KeyService/UploadPreKeys),"
        " so it cannot receive messages"
    )
    # Clients still learn to drop the device from this send (its old session is useless).
    assert list(_detail(err).extra_devices) == [1]


def test_devices_without_keys_and_devices_that_do_not_exist_are_told_apart(
    server: LiveServer,
) -> None:
    alice = member(server, ALICE)
    bob = member(server, BOB)
    fresh = [Member(link(server, bob.device), 1) for _ in range(2)]  # devices 2, 3: no keys
    ghost = Member(Device(bob.device.account_id, 9, "", BOB), 1)
    err = _refusal(server, alice, send_request([bob, *fresh, ghost], b"x"))
    message = err.details() or ""
    assert "extra devices [9] (they no longer exist" in message
    assert "devices [2, 3] of the recipient have not uploaded their keys yet" in message
    assert list(_detail(err).extra_devices) == [2, 3, 9]
    # Without them the send goes through: only devices with keys receive.
    stub(server).SendMessage(send_request([bob], b"x"), metadata=alice.device.metadata)


def test_own_device_without_keys_on_a_sync_send(server: LiveServer) -> None:
    alice = member(server, ALICE)
    laptop = Member(link(server, alice.device), 1)
    request = send_request([laptop], b"sync")
    err = _refusal(server, alice, request)
    assert (err.details() or "").startswith("device 2 of your account has not uploaded its keys")
    # The sending device itself is never called keyless, even when listed by mistake.
    err = _refusal(server, alice, send_request([alice], b"self"))
    assert "has not uploaded" not in (err.details() or "")
