"""AccountService over a live loopback server: verification, auth, devices, deletion."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from parley.v1 import account_pb2 as apb

from server.domain.ratelimit import Rate
from tests.conftest import TEST_CODE, TEST_NUMBER, LiveServer, ServerFactory, link, register

ALICE = "+14155550123"
BOB = "+442079460123"


def rpc_error(call: Callable[[], object]) -> grpc.Call:
    """Run a thunk that must fail; return the failed call (status code, details, trailers)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert isinstance(info.value, grpc.Call)
    return info.value


def code_of(err: grpc.Call) -> grpc.StatusCode:
    return err.code()


def start(server: LiveServer, phone: str) -> apb.StartVerificationResponse:
    return server.accounts().StartVerification(apb.StartVerificationRequest(phone_number=phone))


def complete(
    server: LiveServer, vid: str, code: str, kind: int = apb.ACCOUNT_KIND_PERSON
) -> apb.CompleteVerificationResponse:
    return server.accounts().CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=vid,
            code=code,
            device_name="phone",
            account_kind=kind,  # type: ignore[arg-type]
        )
    )


def test_full_verification_flow(server: LiveServer) -> None:
    started = start(server, ALICE)
    assert started.code_length == 6
    assert started.expires_at.ToSeconds() == pytest.approx(server.clock.now() + 600, abs=1)
    code = server.sender.codes[ALICE]
    assert len(code) == 6 and code.isdigit()

    done = complete(server, started.verification_id, code)
    assert done.device_id == 1 and not done.reregistered
    assert len(done.auth_token) >= 40

    auth = (("authorization", f"Bearer {done.auth_token}"),)
    account = server.accounts().GetAccount(apb.GetAccountRequest(), metadata=auth).account
    assert account.account_id == done.account_id
    assert account.phone_number == ALICE
    assert account.kind == apb.ACCOUNT_KIND_PERSON
    assert list(account.device_ids) == [1]

    # A verification works once.
    err = rpc_error(lambda: complete(server, started.verification_id, code))
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION


def test_token_is_stored_only_as_hash(server: LiveServer) -> None:
    dev = register(server, ALICE)
    assert dev.token not in repr(server.all_rows())
    if server.on_sqlite:  # and nowhere in the file, its free pages and journal included
        server.stop()
        assert dev.token.encode() not in server.sqlite_file.read_bytes()


def test_expired_code(server: LiveServer) -> None:
    started = start(server, ALICE)
    server.clock.advance(601)
    err = rpc_error(lambda: complete(server, started.verification_id, server.sender.codes[ALICE]))
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in (err.details() or "")


def test_too_many_attempts(server: LiveServer) -> None:
    started = start(server, ALICE)
    right = server.sender.codes[ALICE]
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for left in (4, 3, 2, 1):
        err = rpc_error(lambda: complete(server, started.verification_id, wrong))
        assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
        assert f"{left} attempt" in (err.details() or "")
    err = rpc_error(lambda: complete(server, started.verification_id, wrong))
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Even the right code no longer works on this verification.
    err = rpc_error(lambda: complete(server, started.verification_id, right))
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_attempts_survive_restart(server: LiveServer) -> None:
    started = start(server, ALICE)
    right = server.sender.codes[ALICE]
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    for _ in range(4):
        rpc_error(lambda: complete(server, started.verification_id, wrong))
    server.restart()
    err = rpc_error(lambda: complete(server, started.verification_id, wrong))
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_rate_limit_per_number(make_server: ServerFactory) -> None:
    server = make_server(verification_rate=Rate(3, 60))
    for _ in range(3):
        start(server, ALICE)
    err = rpc_error(lambda: start(server, ALICE))
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The status carries a google.rpc.RetryInfo so clients know when to come back; grpcio-status
    # decodes it (and checks that its code and message agree with the call's).
    status = rpc_status.from_call(err)
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert 1 <= retry.retry_delay.seconds <= 20
    # Other numbers are not affected; the limit refills with time.
    start(server, BOB)
    server.clock.advance(21)
    start(server, ALICE)


def test_test_number_uses_fixed_code_and_sends_nothing(server: LiveServer) -> None:
    started = start(server, TEST_NUMBER)
    assert server.sender.sent == 0
    done = complete(server, started.verification_id, TEST_CODE)
    assert done.device_id == 1


def test_wrong_or_missing_token(server: LiveServer) -> None:
    register(server, ALICE)
    stub = server.accounts()
    cases = [
        (),
        (("authorization", "Bearer not-a-real-token"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer "),),
    ]
    for metadata in cases:
        err = rpc_error(partial(stub.ListDevices, apb.ListDevicesRequest(), metadata=metadata))
        assert code_of(err) == grpc.StatusCode.UNAUTHENTICATED, metadata


def test_reregistration_revokes_old_tokens(server: LiveServer) -> None:
    first = register(server, ALICE)
    laptop = link(server, first)
    again = register(server, ALICE, device_name="new phone")
    assert again.account_id == first.account_id and again.device_id == 1
    stub = server.accounts()
    for old in (first, laptop):
        err = rpc_error(partial(stub.ListDevices, apb.ListDevicesRequest(), metadata=old.metadata))
        assert code_of(err) == grpc.StatusCode.UNAUTHENTICATED
    devices = stub.ListDevices(apb.ListDevicesRequest(), metadata=again.metadata).devices
    assert [(d.device_id, d.name) for d in devices] == [(1, "new phone")]


def test_reregistration_with_other_kind_is_refused(server: LiveServer) -> None:
    register(server, ALICE)
    started = start(server, ALICE)
    err = rpc_error(
        lambda: complete(
            server, started.verification_id, server.sender.codes[ALICE], apb.ACCOUNT_KIND_BUSINESS
        )
    )
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION


def test_link_second_device(server: LiveServer) -> None:
    primary = register(server, ALICE)
    laptop = link(server, primary, "laptop")
    assert laptop.account_id == primary.account_id and laptop.device_id == 2
    stub = server.accounts()
    devices = stub.ListDevices(apb.ListDevicesRequest(), metadata=laptop.metadata).devices
    assert [(d.device_id, d.name) for d in devices] == [(1, "phone"), (2, "laptop")]
    # Only the primary device links; a linking code works once.
    err = rpc_error(
        lambda: stub.CreateLinkingCode(apb.CreateLinkingCodeRequest(), metadata=laptop.metadata)
    )
    assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
    code = stub.CreateLinkingCode(apb.CreateLinkingCodeRequest(), metadata=primary.metadata)
    stub.LinkDevice(apb.LinkDeviceRequest(linking_code=code.linking_code, device_name="tablet"))
    err = rpc_error(
        lambda: stub.LinkDevice(
            apb.LinkDeviceRequest(linking_code=code.linking_code, device_name="tablet")
        )
    )
    assert code_of(err) == grpc.StatusCode.NOT_FOUND


def test_linking_code_expires(server: LiveServer) -> None:
    primary = register(server, ALICE)
    stub = server.accounts()
    code = stub.CreateLinkingCode(apb.CreateLinkingCodeRequest(), metadata=primary.metadata)
    server.clock.advance(601)
    err = rpc_error(
        lambda: stub.LinkDevice(
            apb.LinkDeviceRequest(linking_code=code.linking_code, device_name="x")
        )
    )
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION


def test_device_limit(make_server: ServerFactory) -> None:
    server = make_server(max_devices=2)
    primary = register(server, ALICE)
    link(server, primary)
    err = rpc_error(lambda: link(server, primary))
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_remove_device_revokes_its_token(server: LiveServer) -> None:
    primary = register(server, ALICE)
    laptop = link(server, primary)
    tablet = link(server, primary, "tablet")
    stub = server.accounts()
    # A linked device may not remove another one, nor the primary.
    err = rpc_error(
        lambda: stub.RemoveDevice(apb.RemoveDeviceRequest(device_id=3), metadata=laptop.metadata)
    )
    assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED
    err = rpc_error(
        lambda: stub.RemoveDevice(apb.RemoveDeviceRequest(device_id=1), metadata=primary.metadata)
    )
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION

    stub.RemoveDevice(apb.RemoveDeviceRequest(device_id=2), metadata=primary.metadata)
    err = rpc_error(lambda: stub.ListDevices(apb.ListDevicesRequest(), metadata=laptop.metadata))
    assert code_of(err) == grpc.StatusCode.UNAUTHENTICATED
    # A linked device may remove itself.
    stub.RemoveDevice(apb.RemoveDeviceRequest(device_id=3), metadata=tablet.metadata)
    err = rpc_error(lambda: stub.ListDevices(apb.ListDevicesRequest(), metadata=tablet.metadata))
    assert code_of(err) == grpc.StatusCode.UNAUTHENTICATED
    err = rpc_error(
        lambda: stub.RemoveDevice(apb.RemoveDeviceRequest(device_id=2), metadata=primary.metadata)
    )
    assert code_of(err) == grpc.StatusCode.NOT_FOUND
    # Device ids are not reused.
    assert link(server, primary).device_id == 4


def test_delete_account(server: LiveServer) -> None:
    primary = register(server, ALICE)
    laptop = link(server, primary)
    bob = register(server, BOB)
    stub = server.accounts()
    err = rpc_error(
        lambda: stub.DeleteAccount(apb.DeleteAccountRequest(), metadata=laptop.metadata)
    )
    assert code_of(err) == grpc.StatusCode.PERMISSION_DENIED

    stub.DeleteAccount(apb.DeleteAccountRequest(), metadata=primary.metadata)
    for dev in (primary, laptop):
        err = rpc_error(partial(stub.GetAccount, apb.GetAccountRequest(), metadata=dev.metadata))
        assert code_of(err) == grpc.StatusCode.UNAUTHENTICATED
    err = rpc_error(
        lambda: stub.LookupAccount(
            apb.LookupAccountRequest(phone_number=ALICE), metadata=bob.metadata
        )
    )
    assert code_of(err) == grpc.StatusCode.NOT_FOUND
    err = rpc_error(
        lambda: stub.GetAccount(
            apb.GetAccountRequest(account_id=primary.account_id), metadata=bob.metadata
        )
    )
    assert code_of(err) == grpc.StatusCode.NOT_FOUND
    # The number is free again: registering it makes a new account.
    again = register(server, ALICE)
    assert again.account_id != primary.account_id
    rows = server.sql("SELECT count(*) FROM devices WHERE account_id = ?", (primary.account_id,))
    assert rows == [(0,)]


def test_lookup_and_public_view(server: LiveServer) -> None:
    alice = register(server, ALICE)
    shop = register(server, BOB, kind=apb.ACCOUNT_KIND_BUSINESS)
    stub = server.accounts()
    found = stub.LookupAccount(apb.LookupAccountRequest(phone_number=BOB), metadata=alice.metadata)
    assert found.account_id == shop.account_id and found.kind == apb.ACCOUNT_KIND_BUSINESS
    view = stub.GetAccount(
        apb.GetAccountRequest(account_id=shop.account_id), metadata=alice.metadata
    ).account
    assert view.phone_number == "" and list(view.device_ids) == [1]


def test_lookup_is_rate_limited(make_server: ServerFactory) -> None:
    server = make_server(lookup_rate=Rate(3, 60))
    alice = register(server, ALICE)
    stub = server.accounts()
    for i in range(3):
        number = f"+1415555{i:04d}"
        err = rpc_error(
            partial(
                stub.LookupAccount,
                apb.LookupAccountRequest(phone_number=number),
                metadata=alice.metadata,
            )
        )
        assert code_of(err) == grpc.StatusCode.NOT_FOUND
    err = rpc_error(
        lambda: stub.LookupAccount(
            apb.LookupAccountRequest(phone_number=BOB), metadata=alice.metadata
        )
    )
    assert code_of(err) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_restart_keeps_accounts_and_tokens(server: LiveServer) -> None:
    alice = register(server, ALICE)
    laptop = link(server, alice)
    server.restart()
    stub = server.accounts()
    for dev in (alice, laptop):
        account = stub.GetAccount(apb.GetAccountRequest(), metadata=dev.metadata).account
        assert account.account_id == alice.account_id
        assert list(account.device_ids) == [1, 2]
