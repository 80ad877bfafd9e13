"""The same conversation on the raw generated stubs, with the protocol core for the crypto.

What an app in another language does, step by step (the Python API does all of this for
you): register, publish keys, fetch the peer's bundle, encrypt a serialized
``parley.v1.Content``, send it, receive it, decrypt it, acknowledge it.

Run a server with two test numbers:

    parley-server --test-number +15550001111=111111 --test-number +15550002222=222222

then:

    python examples/raw_stubs.py --server localhost:50051
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc import aio
from parley.v1 import account_pb2 as apb
from parley.v1 import account_pb2_grpc, key_pb2_grpc, messaging_pb2_grpc
from parley.v1 import content_pb2 as cpb
from parley.v1 import key_pb2 as kpb
from parley.v1 import messaging_pb2 as mpb

from client.crypto import (
    IdentityKeyPair,
    KeyPair,
    KyberKeyPair,
    KyberPublicKey,
    MissingPreKeyError,
    PreKeyBundle,
    PublicKey,
    SessionRecord,
)

K = TypeVar("K")
ONE_TIME_KEYS = 10
"""One-time prekeys per kind in the first upload (the server takes up to 100 per call)."""
LAST_RESORT = 1000
"""Key id of the last-resort Kyber prekey (any id not used by a one-time Kyber key)."""


@dataclass
class Device:
    """One registered device: its credentials, its keys (private parts) and its sessions.
    An app keeps all of this on disk; a lost private prekey breaks that peer's first message."""

    phone: str
    account_id: str
    device_id: int
    token: str
    identity: IdentityKeyPair
    registration_id: int
    signed: dict[int, KeyPair] = field(default_factory=dict)
    one_time: dict[int, KeyPair] = field(default_factory=dict)
    kyber: dict[int, KyberKeyPair] = field(default_factory=dict)
    sessions: dict[tuple[str, int], SessionRecord] = field(default_factory=dict)

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        """Every call but registration carries the device's bearer token."""
        return (("authorization", f"Bearer {self.token}"),)

    # The protocol core asks for our private prekeys by id (client.crypto.PreKeySource).
    def signed_pre_key(self, key_id: int) -> KeyPair:
        return self._find(self.signed, key_id)

    def one_time_pre_key(self, key_id: int) -> KeyPair:
        return self._find(self.one_time, key_id)

    def kyber_pre_key(self, key_id: int) -> KyberKeyPair:
        return self._find(self.kyber, key_id)

    @staticmethod
    def _find(keys: dict[int, K], key_id: int) -> K:
        if key_id not in keys:
            raise MissingPreKeyError(f"no prekey {key_id}")
        return keys[key_id]


async def register(channel: aio.Channel, phone: str, code: str) -> Device:
    """StartVerification + CompleteVerification (a test number: the code is known)."""
    accounts = account_pb2_grpc.AccountServiceStub(channel)
    started = await accounts.StartVerification(apb.StartVerificationRequest(phone_number=phone))
    done = await accounts.CompleteVerification(
        apb.CompleteVerificationRequest(
            verification_id=started.verification_id,
            code=code,
            device_name="raw example",
            account_kind=apb.ACCOUNT_KIND_PERSON,
        )
    )
    return Device(
        phone=phone,
        account_id=done.account_id,
        device_id=done.device_id,
        token=done.auth_token,
        identity=IdentityKeyPair.generate(),
        registration_id=secrets.randbelow(16380) + 1,  # 14 bits, 1..16380
    )


def signed_kyber_key(device: Device, key_id: int) -> kpb.KyberPreKey:
    pair = KyberKeyPair.generate()
    device.kyber[key_id] = pair
    public = pair.public_key.serialize()  # 0x08 || 1568 bytes
    return kpb.KyberPreKey(key_id=key_id, public_key=public, signature=device.identity.sign(public))


async def upload_keys(channel: aio.Channel, device: Device) -> None:
    """The first upload must carry the identity key, the registration id, a signed prekey and
    a last-resort Kyber prekey; every signature is XEdDSA by the identity key over the
    serialized public key, and the server checks each one (one bad one refuses the upload)."""
    signed = KeyPair.generate()
    device.signed[1] = signed
    one_time = {key_id: KeyPair.generate() for key_id in range(1, ONE_TIME_KEYS + 1)}
    device.one_time.update(one_time)
    request = kpb.UploadPreKeysRequest(
        identity_key=device.identity.public_key.serialize(),  # 0x05 || 32 bytes
        registration_id=device.registration_id,
        signed_pre_key=kpb.SignedEcPreKey(
            key_id=1,
            public_key=signed.public_key.serialize(),
            signature=device.identity.sign(signed.public_key.serialize()),
        ),
        pre_keys=[
            kpb.EcPreKey(key_id=key_id, public_key=pair.public_key.serialize())
            for key_id, pair in one_time.items()
        ],
        kyber_pre_keys=[signed_kyber_key(device, i) for i in range(1, ONE_TIME_KEYS + 1)],
        last_resort_kyber_pre_key=signed_kyber_key(device, LAST_RESORT),
    )
    reply = await key_pb2_grpc.KeyServiceStub(channel).UploadPreKeys(
        request, metadata=device.metadata
    )
    print(f"{device.phone} published keys: {reply.count.pre_key_count} one-time EC prekeys")


def bundle_from_proto(bundle: kpb.PreKeyBundle) -> PreKeyBundle:
    """parley.v1.PreKeyBundle → the protocol core's PreKeyBundle (the one-time EC prekey is
    optional: a device that ran out still gets sessions, through the signed prekey)."""
    has_one_time = bundle.HasField("pre_key")
    return PreKeyBundle(
        registration_id=bundle.registration_id,
        device_id=bundle.device_id,
        pre_key_id=bundle.pre_key.key_id if has_one_time else None,
        pre_key=PublicKey.deserialize(bundle.pre_key.public_key) if has_one_time else None,
        signed_pre_key_id=bundle.signed_pre_key.key_id,
        signed_pre_key=PublicKey.deserialize(bundle.signed_pre_key.public_key),
        signed_pre_key_signature=bundle.signed_pre_key.signature,
        kyber_pre_key_id=bundle.kyber_pre_key.key_id,
        kyber_pre_key=KyberPublicKey.deserialize(bundle.kyber_pre_key.public_key),
        kyber_pre_key_signature=bundle.kyber_pre_key.signature,
        identity_key=PublicKey.deserialize(bundle.identity_key),
    )


async def send_text(
    channel: aio.Channel, sender: Device, recipient_account: str, text: str
) -> None:
    """Encrypt a parley.v1.Content once per recipient device and send it in one request."""
    bundles = await key_pb2_grpc.KeyServiceStub(channel).GetPreKeyBundles(
        kpb.GetPreKeyBundlesRequest(account_id=recipient_account, device_id=0),  # 0: all
        metadata=sender.metadata,
    )
    now_ms = int(time.time() * 1000)
    # The plaintext of every message is a serialized parley.v1.Content.
    plaintext = cpb.Content(
        data=cpb.DataMessage(text=text, timestamp_ms=now_ms)
    ).SerializeToString()
    messages = []
    for proto in bundles.bundles:
        record = SessionRecord()
        record.process_prekey_bundle(  # PQXDH; checks both prekey signatures
            bundle_from_proto(proto),
            our_identity=sender.identity,
            our_registration_id=sender.registration_id,
        )
        sender.sessions[(recipient_account, proto.device_id)] = record
        encrypted = record.encrypt(plaintext)  # a PreKeySignalMessage until the peer answers
        messages.append(
            mpb.OutgoingMessage(
                device_id=proto.device_id,
                registration_id=proto.registration_id,
                content_type=encrypted.type,  # type: ignore[arg-type]
                content=encrypted.serialized,
            )
        )
    # One request_id per logical message: a retry with the same id is stored once. A wrong
    # device list fails with FAILED_PRECONDITION and a parley.v1.MismatchedDevices detail.
    reply = await messaging_pb2_grpc.MessagingServiceStub(channel).SendMessage(
        mpb.SendMessageRequest(
            request_id=str(uuid.uuid4()),
            recipient_account_id=recipient_account,
            messages=messages,
            client_timestamp_ms=now_ms,
        ),
        metadata=sender.metadata,
    )
    print(f"{sender.phone} sent message {reply.message_id} to {len(messages)} device(s)")


def decrypt(device: Device, envelope: mpb.Envelope) -> cpb.Content:
    """Decrypt one envelope with the sender device's session (created by a PreKey message)."""
    key = (envelope.sender_account_id, envelope.sender_device_id)
    record = device.sessions.setdefault(key, SessionRecord())
    if envelope.content_type == mpb.CONTENT_TYPE_PREKEY:
        result = record.decrypt_prekey_message(
            envelope.content,
            our_identity=device.identity,
            our_registration_id=device.registration_id,
            prekeys=device,
        )
        # One-time keys are used once: forget them (the last-resort Kyber key stays).
        if result.used_pre_key_id is not None:
            device.one_time.pop(result.used_pre_key_id, None)
        if result.used_kyber_pre_key_id is not None and result.used_kyber_pre_key_id != LAST_RESORT:
            device.kyber.pop(result.used_kyber_pre_key_id, None)
        plaintext = result.plaintext
    else:
        plaintext = record.decrypt(envelope.content)
    return cpb.Content.FromString(plaintext)


async def receive(channel: aio.Channel, device: Device) -> None:
    """Read the stored queue, print each text, acknowledge (after it is safely handled)."""
    messaging = messaging_pb2_grpc.MessagingServiceStub(channel)
    call = messaging.ReceiveMessages(mpb.ReceiveMessagesRequest(), metadata=device.metadata)
    try:
        async for response in call:
            if response.HasField("queue_empty"):
                return  # the stream would go on with live messages; a script stops here
            for envelope in response.envelopes.envelopes:
                content = decrypt(device, envelope)
                print(f"{device.phone} received: {content.data.text!r}")
            envelope_ids = [e.envelope_id for e in response.envelopes.envelopes]
            status_ids = [s.status_id for s in response.statuses.statuses]
            if envelope_ids or status_ids:
                # Acknowledged envelopes are deleted; unacknowledged ones come again next time.
                await messaging.AcknowledgeMessages(
                    mpb.AcknowledgeMessagesRequest(
                        envelope_ids=envelope_ids, status_ids=status_ids
                    ),
                    metadata=device.metadata,
                )
    finally:
        call.cancel()


async def main(args: argparse.Namespace) -> None:
    if args.ca_file is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=args.ca_file.read_bytes())
        channel = aio.secure_channel(args.server, credentials)
    else:
        channel = aio.insecure_channel(args.server)
    async with channel:
        alice = await register(channel, *args.alice)
        bob = await register(channel, *args.bob)
        for device in (alice, bob):
            await upload_keys(channel, device)
        await send_text(channel, alice, bob.account_id, "Hello Bob, straight from the stubs")
        await receive(channel, bob)


def test_number(text: str) -> tuple[str, str]:
    phone, _, code = text.partition("=")
    if not phone.startswith("+") or not code:
        raise argparse.ArgumentTypeError("expected NUMBER=CODE, e.g. +15550001111=111111")
    return phone, code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("PARLEY_SERVER", "localhost:50051"))
    parser.add_argument("--ca-file", type=Path, default=os.environ.get("PARLEY_CA_FILE") or None)
    parser.add_argument("--alice", type=test_number, default=test_number("+15550001111=111111"))
    parser.add_argument("--bob", type=test_number, default=test_number("+15550002222=222222"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
