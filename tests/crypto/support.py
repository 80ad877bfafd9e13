"""Test helpers: deterministic randomness, in-memory prekeys and two-party sessions."""

from __future__ import annotations

from dataclasses import dataclass, field

from client.crypto.errors import MissingPreKeyError
from client.crypto.keys import IdentityKeyPair, KeyPair, KyberKeyPair, deterministic_rng
from client.crypto.pqxdh import PreKeyBundle
from client.crypto.session import SessionRecord

__all__ = ["Party", "PreKeys", "deterministic_rng", "established_pair", "new_party"]


@dataclass
class PreKeys:
    """An in-memory :class:`client.crypto.session.PreKeySource`."""

    signed: dict[int, KeyPair] = field(default_factory=dict)
    kyber: dict[int, KyberKeyPair] = field(default_factory=dict)
    one_time: dict[int, KeyPair] = field(default_factory=dict)

    def signed_pre_key(self, key_id: int) -> KeyPair:
        try:
            return self.signed[key_id]
        except KeyError:
            raise MissingPreKeyError(f"no signed prekey {key_id}") from None

    def kyber_pre_key(self, key_id: int) -> KyberKeyPair:
        try:
            return self.kyber[key_id]
        except KeyError:
            raise MissingPreKeyError(f"no Kyber prekey {key_id}") from None

    def one_time_pre_key(self, key_id: int) -> KeyPair:
        try:
            return self.one_time[key_id]
        except KeyError:
            raise MissingPreKeyError(f"no one-time prekey {key_id}") from None


@dataclass
class Party:
    """One device: identity, registration id, prekeys, and its session with the peer."""

    identity: IdentityKeyPair
    registration_id: int
    prekeys: PreKeys = field(default_factory=PreKeys)
    record: SessionRecord = field(default_factory=SessionRecord)

    def bundle(self, *, with_one_time: bool = True, key_id: int = 1) -> PreKeyBundle:
        """Publish fresh prekeys under ``key_id`` and return the bundle the server hands out."""
        signed = KeyPair.generate()
        kyber = KyberKeyPair.generate()
        self.prekeys.signed[key_id] = signed
        self.prekeys.kyber[key_id] = kyber
        one_time = None
        if with_one_time:
            one_time = KeyPair.generate()
            self.prekeys.one_time[key_id] = one_time
        return PreKeyBundle(
            registration_id=self.registration_id,
            device_id=1,
            pre_key_id=key_id if one_time else None,
            pre_key=one_time.public_key if one_time else None,
            signed_pre_key_id=key_id,
            signed_pre_key=signed.public_key,
            signed_pre_key_signature=self.identity.sign(signed.public_key.serialize()),
            kyber_pre_key_id=key_id,
            kyber_pre_key=kyber.public_key,
            kyber_pre_key_signature=self.identity.sign(kyber.public_key.serialize()),
            identity_key=self.identity.public_key,
        )

    def receive(self, message_type: int, data: bytes) -> bytes:
        """Decrypt a message of either type, as a client would."""
        if message_type == 3:
            return self.record.decrypt_prekey_message(
                data,
                our_identity=self.identity,
                our_registration_id=self.registration_id,
                prekeys=self.prekeys,
            ).plaintext
        return self.record.decrypt(data)


def new_party(registration_id: int) -> Party:
    return Party(IdentityKeyPair.generate(), registration_id)


def established_pair() -> tuple[Party, Party]:
    """Alice and Bob with a session in both directions (PreKey phase over)."""
    alice, bob = new_party(1001), new_party(2002)
    alice.record.process_prekey_bundle(
        bob.bundle(), our_identity=alice.identity, our_registration_id=alice.registration_id
    )
    first = alice.record.encrypt(b"hello bob")
    assert bob.receive(first.type, first.serialized) == b"hello bob"
    reply = bob.record.encrypt(b"hello alice")
    assert alice.receive(reply.type, reply.serialized) == b"hello alice"
    return alice, bob
