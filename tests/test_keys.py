"""KeyService over a live server: uploads, signature checks, bundles, one-time-key accounting."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import key_pb2 as kpb
from parley.v1 import key_pb2_grpc

from client.crypto import xeddsa
from server.domain.ratelimit import Rate
from tests.conftest import Device, LiveServer, ServerFactory, link, register
from tests.keys_helper import DeviceKeyMaker, ec_public

ALICE = "+14155550123"
BOB = "+442079460123"


def keys(server: LiveServer) -> key_pb2_grpc.KeyServiceStub:
    return key_pb2_grpc.KeyServiceStub(server.channel())


def failure(call: Callable[[], object]) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert isinstance(info.value, grpc.Call)
    return info.value


def counts(server: LiveServer, dev: Device) -> kpb.PreKeyCount:
    return keys(server).GetPreKeyCount(kpb.GetPreKeyCountRequest(), metadata=dev.metadata).count


def test_upload_and_count(server: LiveServer) -> None:
    alice = register(server, ALICE)
    maker = DeviceKeyMaker()
    request = maker.first_upload(pre_keys=20, kyber=12)
    reply = keys(server).UploadPreKeys(request, metadata=alice.metadata)
    assert reply.count.pre_key_count == 20 and reply.count.kyber_pre_key_count == 12
    assert not reply.count.replenish
    assert reply.count.signed_pre_key_id == request.signed_pre_key.key_id
    assert reply.count.last_resort_kyber_pre_key_id == request.last_resort_kyber_pre_key.key_id
    assert reply.count.signed_pre_key_uploaded_at.seconds == int(server.clock.now())
    assert counts(server, alice) == reply.count


def test_first_upload_must_be_complete(server: LiveServer) -> None:
    alice = register(server, ALICE)
    maker = DeviceKeyMaker()
    request = maker.first_upload()
    request.ClearField("last_resort_kyber_pre_key")
    err = failure(lambda: keys(server).UploadPreKeys(request, metadata=alice.metadata))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "last_resort_kyber_pre_key" in (err.details() or "")


@pytest.mark.parametrize("which", ["signed_pre_key", "last_resort", "one_time_kyber"])
def test_forged_signature_is_refused_and_nothing_is_stored(server: LiveServer, which: str) -> None:
    alice = register(server, ALICE)
    maker = DeviceKeyMaker()
    forger = DeviceKeyMaker()
    request = maker.first_upload()
    if which == "signed_pre_key":
        request.signed_pre_key.signature = forger.sign(request.signed_pre_key.public_key)
    elif which == "last_resort":
        key = request.last_resort_kyber_pre_key
        key.signature = forger.sign(key.public_key)
    else:
        key = request.kyber_pre_keys[1]
        key.signature = bytes([key.signature[0] ^ 1]) + key.signature[1:]
    err = failure(lambda: keys(server).UploadPreKeys(request, metadata=alice.metadata))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature does not verify" in (err.details() or "")
    assert counts(server, alice).pre_key_count == 0
    assert counts(server, alice).signed_pre_key_id == 0


def test_identity_key_is_fixed_until_reregistration(server: LiveServer) -> None:
    alice = register(server, ALICE)
    maker = DeviceKeyMaker()
    keys(server).UploadPreKeys(maker.first_upload(), metadata=alice.metadata)
    other = DeviceKeyMaker()
    err = failure(lambda: keys(server).UploadPreKeys(other.first_upload(), metadata=alice.metadata))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == (  # the same status and message when a concurrent upload lost
        "this device already has a different identity key; register the number "
        "(or link the device) again to publish a new identity"
    )
    # Later uploads may leave the identity out; their signatures are checked against the file.
    more = kpb.UploadPreKeysRequest(pre_keys=maker.pre_keys(3), kyber_pre_keys=[maker.kyber()])
    reply = keys(server).UploadPreKeys(more, metadata=alice.metadata)
    assert reply.count.pre_key_count == 8
    forged = kpb.UploadPreKeysRequest(kyber_pre_keys=[other.kyber()])
    err = failure(lambda: keys(server).UploadPreKeys(forged, metadata=alice.metadata))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Registering again clears the device's keys, so a new identity is accepted.
    again = register(server, ALICE)
    keys(server).UploadPreKeys(other.first_upload(), metadata=again.metadata)


def test_duplicate_key_ids(server: LiveServer) -> None:
    alice = register(server, ALICE)
    maker = DeviceKeyMaker()
    first = maker.first_upload(pre_keys=3)
    keys(server).UploadPreKeys(first, metadata=alice.metadata)
    # Repeating the identical upload (a retry) is harmless.
    reply = keys(server).UploadPreKeys(first, metadata=alice.metadata)
    assert reply.count.pre_key_count == 3
    # The same id twice in one request.
    dup = maker.pre_keys(1) * 2
    err = failure(
        lambda: keys(server).UploadPreKeys(
            kpb.UploadPreKeysRequest(pre_keys=dup), metadata=alice.metadata
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An id on file with another key.
    clash = kpb.EcPreKey(key_id=first.pre_keys[0].key_id, public_key=ec_public(os.urandom(32)))
    err = failure(
        lambda: keys(server).UploadPreKeys(
            kpb.UploadPreKeysRequest(pre_keys=[clash]), metadata=alice.metadata
        )
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert counts(server, alice).pre_key_count == 3


def test_batch_limit(server: LiveServer) -> None:
    alice = register(server, ALICE)
    maker = DeviceKeyMaker()
    request = maker.first_upload(pre_keys=0)
    request.pre_keys.extend(maker.pre_keys(101))
    err = failure(lambda: keys(server).UploadPreKeys(request, metadata=alice.metadata))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 100" in (err.details() or "")


def test_bundle_hands_out_each_one_time_key_once(server: LiveServer) -> None:
    alice = register(server, ALICE)
    bob = register(server, BOB)
    maker = DeviceKeyMaker()
    upload = maker.first_upload(pre_keys=2, kyber=1)
    keys(server).UploadPreKeys(upload, metadata=bob.metadata)
    stub = keys(server)
    request = kpb.GetPreKeyBundlesRequest(account_id=bob.account_id, device_id=1)
    seen = []
    for _ in range(3):
        reply = stub.GetPreKeyBundles(request, metadata=alice.metadata)
        (bundle,) = reply.bundles
        assert bundle.identity_key == maker.identity_key
        assert bundle.registration_id == maker.registration_id
        assert bundle.signed_pre_key == upload.signed_pre_key
        assert xeddsa.verify(
            bundle.identity_key, bundle.kyber_pre_key.public_key, bundle.kyber_pre_key.signature
        )
        seen.append(
            (
                bundle.pre_key.key_id if bundle.HasField("pre_key") else None,
                bundle.kyber_pre_key.key_id,
                bundle.kyber_pre_key_is_last_resort,
            )
        )
    lr = upload.last_resort_kyber_pre_key.key_id
    one_time_kyber = upload.kyber_pre_keys[0].key_id
    assert seen == [
        (upload.pre_keys[0].key_id, one_time_kyber, False),
        (upload.pre_keys[1].key_id, lr, True),
        (None, lr, True),
    ]
    count = counts(server, bob)
    assert count.pre_key_count == 0 and count.kyber_pre_key_count == 0 and count.replenish


def fetch_concurrently(
    stubs: list[key_pb2_grpc.KeyServiceStub],
    fetchers: list[Device],
    account_id: str,
    calls: int,
    threads: int,
) -> list[tuple[int | None, int, bool]]:
    """`calls` GetPreKeyBundles for the account's first device at once, call i through stub
    and fetcher i mod n: (one-time EC key id or None, Kyber key id, is it the last resort)."""
    request = kpb.GetPreKeyBundlesRequest(account_id=account_id)

    def fetch(i: int) -> tuple[int | None, int, bool]:
        reply = stubs[i % len(stubs)].GetPreKeyBundles(
            request, metadata=fetchers[i % len(fetchers)].metadata
        )
        b = reply.bundles[0]
        return (
            b.pre_key.key_id if b.HasField("pre_key") else None,
            b.kyber_pre_key.key_id,
            b.kyber_pre_key_is_last_resort,
        )

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fetch, range(calls)))


def assert_handed_out_once(results: list[tuple[int | None, int, bool]], one_time: int) -> None:
    """Each of the `one_time` EC and Kyber one-time keys went to exactly one fetch; the other
    fetches got no EC key and the last-resort Kyber key."""
    ec = [r[0] for r in results if r[0] is not None]
    kyber = [r[1] for r in results if not r[2]]
    assert len(ec) == one_time and len(set(ec)) == one_time
    assert len(kyber) == one_time and len(set(kyber)) == one_time
    assert sum(1 for r in results if r[2]) == len(results) - one_time


def test_concurrent_fetches_never_share_a_key(server: LiveServer) -> None:
    bob = register(server, BOB)
    fetchers = [register(server, f"+1415555{i:04d}") for i in range(5)]
    keys(server).UploadPreKeys(
        DeviceKeyMaker().first_upload(pre_keys=10, kyber=10), metadata=bob.metadata
    )
    results = fetch_concurrently(
        [keys(server) for _ in range(5)], fetchers, bob.account_id, calls=50, threads=50
    )
    assert_handed_out_once(results, one_time=10)


def test_all_devices_and_removed_devices(server: LiveServer) -> None:
    alice = register(server, ALICE)
    bob = register(server, BOB)
    laptop = link(server, bob)
    keys(server).UploadPreKeys(DeviceKeyMaker().first_upload(), metadata=bob.metadata)
    keys(server).UploadPreKeys(DeviceKeyMaker().first_upload(), metadata=laptop.metadata)
    request = kpb.GetPreKeyBundlesRequest(account_id=bob.account_id)
    reply = keys(server).GetPreKeyBundles(request, metadata=alice.metadata)
    assert [b.device_id for b in reply.bundles] == [1, 2]
    server.accounts().RemoveDevice(apb.RemoveDeviceRequest(device_id=2), metadata=bob.metadata)
    reply = keys(server).GetPreKeyBundles(request, metadata=alice.metadata)
    assert [b.device_id for b in reply.bundles] == [1]
    err = failure(
        lambda: keys(server).GetPreKeyBundles(
            kpb.GetPreKeyBundlesRequest(account_id=bob.account_id, device_id=2),
            metadata=alice.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_bundle_requests_are_rate_limited(make_server: ServerFactory) -> None:
    server = make_server(bundle_rate=Rate(3, 60))
    alice = register(server, ALICE)
    bob = register(server, BOB)
    keys(server).UploadPreKeys(DeviceKeyMaker().first_upload(), metadata=bob.metadata)
    request = kpb.GetPreKeyBundlesRequest(account_id=bob.account_id)
    for _ in range(3):
        keys(server).GetPreKeyBundles(request, metadata=alice.metadata)
    err = failure(lambda: keys(server).GetPreKeyBundles(request, metadata=alice.metadata))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_keys_survive_restart(server: LiveServer) -> None:
    bob = register(server, BOB)
    keys(server).UploadPreKeys(DeviceKeyMaker().first_upload(pre_keys=4), metadata=bob.metadata)
    server.restart()
    assert counts(server, bob).pre_key_count == 4
