"""Reference client against a live server: registration, key upload, replenishing, signed
prekey rotation, trust on first use and safety numbers (no MessagingService needed)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import pytest
from parley.v1 import key_pb2 as kpb
from parley.v1 import key_pb2_grpc

from client.api import (
    MAX_SIGNED_PRE_KEY_AGE,
    ONE_TIME_KEYS_PER_UPLOAD,
    REPLACED_KEY_GRACE,
    ParleyClient,
    safety_number_for,
)
from client.crypto import IdentityKeyPair, KeyPair, KyberKeyPair
from client.store import ClientStore, LocalIdentity, StoreError, UntrustedIdentityError
from tests.client_helpers import linked, registered
from tests.conftest import LiveServer, ServerFactory, register

ALICE = "+14155550123"
BOB = "+442079460123"
DAY = 24 * 3600.0


def test_register_uploads_keys_and_keeps_the_private_parts(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        try:
            count = await alice.prekey_count()
            assert count.pre_key_count == ONE_TIME_KEYS_PER_UPLOAD
            assert count.kyber_pre_key_count == ONE_TIME_KEYS_PER_UPLOAD
            assert not count.replenish
            current = alice.store.current_signed_pre_key()
            assert current is not None and count.signed_pre_key_id == current.key_id
            assert alice.store.kyber_pre_key(count.last_resort_kyber_pre_key_id) is not None
            assert alice.store.count_one_time_pre_keys() == ONE_TIME_KEYS_PER_UPLOAD
            assert alice.store.count_one_time_kyber_pre_keys() == ONE_TIME_KEYS_PER_UPLOAD
            identity, account_id = alice.identity, alice.account_id
            assert alice.device_id == 1 and 1 <= identity.registration_id <= 16380
        finally:
            await alice.close()
        # Another account fetches the bundle: every public key matches a private key we kept.
        bob = register(server, BOB)
        stub = key_pb2_grpc.KeyServiceStub(server.channel())
        bundle = stub.GetPreKeyBundles(
            kpb.GetPreKeyBundlesRequest(account_id=account_id, device_id=1),
            metadata=bob.metadata,
        ).bundles[0]
        store = ClientStore.open_profile(tmp_path / "alice", clock=server.clock.now)
        try:
            ours = IdentityKeyPair.from_private_bytes(identity.identity_private)
            assert bundle.identity_key == ours.public_key.serialize()
            assert bundle.registration_id == identity.registration_id
            one_time = store.one_time_pre_key(bundle.pre_key.key_id)
            assert one_time is not None
            assert KeyPair.from_private_bytes(one_time).public_key.serialize() == (
                bundle.pre_key.public_key
            )
            signed = store.signed_pre_key(bundle.signed_pre_key.key_id)
            assert signed is not None
            assert KeyPair.from_private_bytes(signed).public_key.serialize() == (
                bundle.signed_pre_key.public_key
            )
            kyber = store.kyber_pre_key(bundle.kyber_pre_key.key_id)
            assert kyber is not None and not kyber[1]
            assert KyberKeyPair(kyber[0]).public_key.serialize() == bundle.kyber_pre_key.public_key
        finally:
            store.close()

    asyncio.run(body())


def test_a_profile_registers_once(server: LiveServer, tmp_path: Path) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        try:
            with pytest.raises(StoreError, match="already registered"):
                await alice.request_code(BOB)
        finally:
            await alice.close()

    asyncio.run(body())


def test_ensure_prekeys_replenishes_only_when_the_server_says_so(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(prekey_low_watermark=97)
    bob = register(server, BOB)
    stub = key_pb2_grpc.KeyServiceStub(server.channel())

    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        try:
            unchanged = await alice.ensure_prekeys()
            assert unchanged.pre_key_count == ONE_TIME_KEYS_PER_UPLOAD
            assert alice.store.count_one_time_pre_keys() == ONE_TIME_KEYS_PER_UPLOAD
            for _ in range(5):  # five bundles handed out: 95 left, below the watermark
                stub.GetPreKeyBundles(
                    kpb.GetPreKeyBundlesRequest(account_id=alice.account_id),
                    metadata=bob.metadata,
                )
            low = await alice.prekey_count()
            assert low.pre_key_count == 95 and low.kyber_pre_key_count == 95 and low.replenish
            after = await alice.ensure_prekeys()
            assert after.pre_key_count == ONE_TIME_KEYS_PER_UPLOAD
            assert after.kyber_pre_key_count == ONE_TIME_KEYS_PER_UPLOAD
            assert not after.replenish
            # The five handed-out keys are kept until a message uses them.
            assert alice.store.count_one_time_pre_keys() == ONE_TIME_KEYS_PER_UPLOAD + 5
            assert alice.store.count_one_time_kyber_pre_keys() == ONE_TIME_KEYS_PER_UPLOAD + 5
        finally:
            await alice.close()

    asyncio.run(body())


def test_signed_prekey_rotates_when_old_and_the_previous_one_has_a_grace_period(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        try:
            first = await alice.prekey_count()
            assert not await alice.rotate_signed_prekey()
            server.clock.advance(MAX_SIGNED_PRE_KEY_AGE - 60)
            assert not await alice.rotate_signed_prekey()
            server.clock.advance(120)
            assert await alice.rotate_signed_prekey()
            second = await alice.prekey_count()
            assert second.signed_pre_key_id != first.signed_pre_key_id
            assert second.last_resort_kyber_pre_key_id != first.last_resort_kyber_pre_key_id
            assert second.signed_pre_key_uploaded_at.seconds == int(server.clock.now())
            current = alice.store.current_signed_pre_key()
            assert current is not None and current.key_id == second.signed_pre_key_id
            # The replaced keys still decrypt messages built from an older bundle...
            assert alice.store.signed_pre_key(first.signed_pre_key_id) is not None
            assert alice.store.kyber_pre_key(first.last_resort_kyber_pre_key_id) is not None
            # ...until the grace period is over.
            server.clock.advance(REPLACED_KEY_GRACE + 60)
            assert await alice.rotate_signed_prekey()
            assert alice.store.signed_pre_key(first.signed_pre_key_id) is None
            assert alice.store.kyber_pre_key(first.last_resort_kyber_pre_key_id) is None
            assert alice.store.signed_pre_key(second.signed_pre_key_id) is not None
            assert len(alice.store.signed_pre_key_ids()) == 2
        finally:
            await alice.close()

    asyncio.run(body())


def test_a_changed_identity_key_is_refused_until_trusted(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        bob_id = bob.account_id
        try:
            assert await alice.start_sessions(BOB) == [1]
            before = await alice.safety_number(BOB)
            assert before == await bob.safety_number(ALICE)
            # Bob re-installs: same number and account, a new identity key.
            await bob.close()
            bob = await registered(server, tmp_path / "bob-new", BOB)
            assert bob.account_id == bob_id
            with pytest.raises(UntrustedIdentityError) as info:
                await alice.start_sessions(BOB)
            message = str(info.value)
            assert info.value.phone_number == BOB  # Alice looked Bob's number up
            assert f"safety_number({BOB!r})" in message
            assert f"trust_identity({bob_id!r})" in message
            assert info.value.account_id == bob_id and info.value.device_id == 1
            # Still refused on a second attempt: nothing was accepted silently.
            with pytest.raises(UntrustedIdentityError):
                await alice.start_sessions(BOB)
            # The safety number Alice compares is the one over Bob's new key.
            after = await alice.safety_number(BOB)
            assert after != before and after == await bob.safety_number(ALICE)
            assert alice.trust_identity(bob_id) == [1]
            assert await alice.start_sessions(BOB) == [1]
            assert await alice.safety_number(BOB) == after
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(body())


def test_safety_number_is_signals_numeric_fingerprint_over_all_devices(
    server: LiveServer, tmp_path: Path
) -> None:
    async def body() -> None:
        alice = await registered(server, tmp_path / "alice", ALICE)
        bob = await registered(server, tmp_path / "bob", BOB)
        laptop = await linked(server, bob, tmp_path / "bob-laptop")
        try:
            number = await alice.safety_number(BOB)
            assert len(number.digits) == 60 and number.digits.isdigit()
            assert str(number) == " ".join(number.groups) and len(number.groups) == 12
            assert all(len(g) == 5 for g in number.groups)
            assert number == await bob.safety_number(ALICE)
            assert number == await laptop.safety_number(ALICE)
            # Recompute from the documented definition, independently of the client code.
            keys_of = {
                alice.account_id: device_key(alice),
                bob.account_id: device_key(bob) + device_key(laptop),
            }
            halves = []
            for account_id, keys in keys_of.items():
                h = hashlib.sha512(b"\0\0" + keys + uuid.UUID(account_id).bytes).digest()
                for _ in range(5199):
                    h = hashlib.sha512(h + keys).digest()
                halves.append(
                    "".join(
                        f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}"
                        for i in range(0, 30, 5)
                    )
                )
            assert number.digits == "".join(sorted(halves))
        finally:
            for c in (alice, bob, laptop):
                await c.close()

    asyncio.run(body())


def device_key(client: ParleyClient) -> bytes:
    """The serialized identity public key of a client's device."""
    return IdentityKeyPair.from_private_bytes(
        client.identity.identity_private
    ).public_key.serialize()


def test_safety_number_changes_with_either_key() -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    ka = {1: IdentityKeyPair.generate().public_key.serialize()}
    kb = {1: IdentityKeyPair.generate().public_key.serialize()}
    number = safety_number_for(a, ka, b, kb)
    assert number == safety_number_for(b, kb, a, ka)
    other = {1: IdentityKeyPair.generate().public_key.serialize()}
    assert safety_number_for(a, ka, b, other) != number
    assert safety_number_for(a, other, b, kb) != number


def test_an_interrupted_first_upload_is_completed_by_ensure_prekeys(
    server: LiveServer, tmp_path: Path
) -> None:
    """The process died after saving its identity and before UploadPreKeys went through."""
    device = register(server, ALICE)
    store = ClientStore.open_profile(tmp_path / "alice", clock=server.clock.now)
    store.save_identity(
        LocalIdentity(
            identity_private=IdentityKeyPair.generate().private_key.serialize(),
            registration_id=77,
            account_id=device.account_id,
            device_id=device.device_id,
            auth_token=device.token,
            server=server.target,
            phone_number=ALICE,
            created_at=server.clock.now(),
        )
    )
    store.close()

    async def body() -> None:
        alice = ParleyClient.open(tmp_path / "alice", clock=server.clock)
        try:
            assert (await alice.prekey_count()).signed_pre_key_id == 0
            count = await alice.ensure_prekeys()
            assert count.signed_pre_key_id != 0 and count.last_resort_kyber_pre_key_id != 0
            assert count.pre_key_count == ONE_TIME_KEYS_PER_UPLOAD
            assert count.kyber_pre_key_count == ONE_TIME_KEYS_PER_UPLOAD
        finally:
            await alice.close()

    asyncio.run(body())
