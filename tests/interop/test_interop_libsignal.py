"""Parley's protocol core against libsignal itself (Node peer, see libsignal_peer.py).

* libsignal 0.90: full conversations in both directions (Parley initiates / libsignal
  initiates), 30+ rounds each, with out-of-order and late delivery across DH ratchet steps.
* libsignal current (0.103), which requires SPQR in every message: conversations in both
  directions, as with 0.90 (Parley sends SPQR v1 in every message).
* Byte level: libsignal's PreKeySignalMessage re-encodes to identical bytes with our encoder;
  signatures verify both ways; X25519 and HKDF agree.
"""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from client.crypto import xeddsa
from client.crypto.kdf import hkdf_sha256
from client.crypto.keys import IdentityKeyPair, KeyPair, KyberKeyPair, KyberPublicKey, PublicKey
from client.crypto.pqxdh import PreKeyBundle
from client.crypto.session import SessionRecord
from client.crypto.wire import PreKeySignalMessage, SignalMessage
from tests.interop.libsignal_peer import (
    Address,
    Identity,
    LibsignalPeer,
)
from tests.interop.libsignal_peer import PreKeyBundle as PeerBundle

ROUNDS = 32


def _from_peer(bundle: PeerBundle) -> PreKeyBundle:
    return PreKeyBundle(
        registration_id=bundle.registration_id,
        device_id=bundle.device_id,
        pre_key_id=bundle.pre_key_id,
        pre_key=PublicKey.deserialize(bundle.pre_key) if bundle.pre_key else None,
        signed_pre_key_id=bundle.signed_pre_key_id,
        signed_pre_key=PublicKey.deserialize(bundle.signed_pre_key),
        signed_pre_key_signature=bundle.signed_pre_key_signature,
        kyber_pre_key_id=bundle.kyber_pre_key_id,
        kyber_pre_key=KyberPublicKey.deserialize(bundle.kyber_pre_key),
        kyber_pre_key_signature=bundle.kyber_pre_key_signature,
        identity_key=PublicKey.deserialize(bundle.identity_key),
    )


@dataclass
class ParleyDevice:
    """A Parley client: identity, prekeys (a PreKeySource) and its session with the peer."""

    identity: IdentityKeyPair = field(default_factory=IdentityKeyPair.generate)
    registration_id: int = 4321
    signed: dict[int, KeyPair] = field(default_factory=dict)
    kyber: dict[int, KyberKeyPair] = field(default_factory=dict)
    one_time: dict[int, KeyPair] = field(default_factory=dict)
    record: SessionRecord = field(default_factory=SessionRecord)

    def signed_pre_key(self, key_id: int) -> KeyPair:
        return self.signed[key_id]

    def kyber_pre_key(self, key_id: int) -> KyberKeyPair:
        return self.kyber[key_id]

    def one_time_pre_key(self, key_id: int) -> KeyPair:
        return self.one_time.pop(key_id)

    def bundle(self, with_one_time: bool = True) -> PeerBundle:
        signed, kyber, one_time = KeyPair.generate(), KyberKeyPair.generate(), KeyPair.generate()
        self.signed[11], self.kyber[12] = signed, kyber
        if with_one_time:
            self.one_time[13] = one_time
        return PeerBundle(
            registration_id=self.registration_id,
            device_id=1,
            pre_key_id=13 if with_one_time else None,
            pre_key=one_time.public_key.serialize() if with_one_time else None,
            signed_pre_key_id=11,
            signed_pre_key=signed.public_key.serialize(),
            signed_pre_key_signature=self.identity.sign(signed.public_key.serialize()),
            kyber_pre_key_id=12,
            kyber_pre_key=kyber.public_key.serialize(),
            kyber_pre_key_signature=self.identity.sign(kyber.public_key.serialize()),
            identity_key=self.identity.public_key.serialize(),
        )

    def encrypt(self, plaintext: bytes) -> tuple[int, bytes]:
        msg = self.record.encrypt(plaintext)
        return msg.type, msg.serialized

    def decrypt(self, kind: int, data: bytes) -> bytes:
        if kind == 3:
            return self.record.decrypt_prekey_message(
                data,
                our_identity=self.identity,
                our_registration_id=self.registration_id,
                prekeys=self,
            ).plaintext
        return self.record.decrypt(data)


Send = Callable[[bytes], tuple[int, bytes]]
Receive = Callable[[int, bytes], bytes]


def _converse(a_send: Send, a_receive: Receive, b_send: Send, b_receive: Receive, seed: int) -> int:
    """ROUNDS rounds, alternating sender; each round's burst is delivered shuffled and a few
    messages are held back to arrive after later DH ratchet steps. Returns messages checked."""
    rnd = random.Random(seed)
    held: list[tuple[Receive, int, bytes, bytes]] = []
    checked = 0
    for round_no in range(ROUNDS):
        send, receive = (a_send, b_receive) if round_no % 2 == 0 else (b_send, a_receive)
        burst = []
        for i in range(rnd.randint(1, 4)):
            plaintext = f"round {round_no} message {i} ".encode() + os.urandom(rnd.randint(0, 40))
            kind, data = send(plaintext)
            burst.append((receive, kind, data, plaintext))
        rnd.shuffle(burst)
        if len(burst) > 1 and rnd.random() < 0.4:
            held.append(burst.pop())
        for rec, kind, data, plaintext in burst:
            assert rec(kind, data) == plaintext
            checked += 1
        if held and rnd.random() < 0.5:
            rec, kind, data, plaintext = held.pop(0)
            assert rec(kind, data) == plaintext
            checked += 1
    for rec, kind, data, plaintext in held:
        assert rec(kind, data) == plaintext
        checked += 1
    return checked


def _peer_send(peer: LibsignalPeer, local: Identity, remote: Address) -> Send:
    def send(plaintext: bytes) -> tuple[int, bytes]:
        c = peer.encrypt(local, remote, plaintext)
        return c.type, c.body

    return send


def _peer_receive(peer: LibsignalPeer, local: Identity, remote: Address) -> Receive:
    def receive(kind: int, data: bytes) -> bytes:
        return peer.decrypt(local, remote, kind, data)

    return receive


def test_parley_initiates_libsignal_090_answers(libsignal_090: LibsignalPeer) -> None:
    peer = libsignal_090
    bob = peer.new_identity("bob")
    alice = ParleyDevice()
    alice_address = Address("parley-alice", 1)
    alice.record.process_prekey_bundle(
        _from_peer(peer.generate_bundle(bob)),
        our_identity=alice.identity,
        our_registration_id=alice.registration_id,
    )
    # The first messages are PreKeySignalMessages that libsignal takes, out of order.
    first = [alice.encrypt(b"first %d" % i) for i in range(3)]
    assert [k for k, _ in first] == [3, 3, 3]
    for i in (1, 2, 0):
        assert peer.decrypt(bob, alice_address, *first[i]) == b"first %d" % i
    assert peer.remote_identity(bob, alice_address) == alice.identity.public_key.serialize()
    info = peer.session_info(bob, alice_address)
    assert info["remote_registration_id"] == alice.registration_id
    checked = _converse(
        alice.encrypt,
        alice.decrypt,
        _peer_send(peer, bob, alice_address),
        _peer_receive(peer, bob, alice_address),
        seed=1,
    )
    assert checked >= ROUNDS


@pytest.mark.parametrize("with_one_time", [True, False])
def test_libsignal_090_initiates_parley_answers(
    libsignal_090: LibsignalPeer, with_one_time: bool
) -> None:
    peer = libsignal_090
    alice = peer.new_identity("alice")
    bob = ParleyDevice()
    bob_address = Address("parley-bob", 1)
    peer.process_bundle(alice, bob_address, bob.bundle(with_one_time))
    first = [peer.encrypt(alice, bob_address, b"hi %d" % i) for i in range(4)]
    assert [c.type for c in first] == [3] * 4
    for i in (3, 0, 2, 1):
        assert bob.decrypt(first[i].type, first[i].body) == b"hi %d" % i
    assert bob.record.current is not None
    assert bob.record.current.remote_registration_id == alice.registration_id
    checked = _converse(
        _peer_send(peer, alice, bob_address),
        _peer_receive(peer, alice, bob_address),
        bob.encrypt,
        bob.decrypt,
        seed=2 + with_one_time,
    )
    assert checked >= ROUNDS


def test_current_libsignal_initiates_parley_answers(libsignal_current: LibsignalPeer) -> None:
    """libsignal >= 0.92 requires SPQR in every message ("Minimum version"); Parley sends it,
    so 0.103 takes our replies and the conversation goes on both ways."""
    peer = libsignal_current
    alice = peer.new_identity("alice")
    bob = ParleyDevice()
    bob_address = Address("parley-bob-current", 1)
    peer.process_bundle(alice, bob_address, bob.bundle())  # verifies our two signatures
    first = [peer.encrypt(alice, bob_address, b"current %d" % i) for i in range(6)]
    assert all(c.type == 3 for c in first)
    assert all(peer.parse_message(c)["signal_message"]["pq_ratchet"] for c in first)
    for i in (4, 1, 0, 5, 3, 2):
        assert bob.decrypt(first[i].type, first[i].body) == b"current %d" % i
    checked = _converse(
        _peer_send(peer, alice, bob_address),
        _peer_receive(peer, alice, bob_address),
        bob.encrypt,
        bob.decrypt,
        seed=5,
    )
    assert checked >= ROUNDS


def test_parley_initiates_current_libsignal_answers(libsignal_current: LibsignalPeer) -> None:
    """The same from the other side: 0.103 accepts our PreKey messages and what follows."""
    peer = libsignal_current
    bob = peer.new_identity("bob")
    alice = ParleyDevice()
    alice_address = Address("parley-alice-current", 1)
    alice.record.process_prekey_bundle(
        _from_peer(peer.generate_bundle(bob)),
        our_identity=alice.identity,
        our_registration_id=alice.registration_id,
    )
    first = [alice.encrypt(b"hello %d" % i) for i in range(3)]
    for i in (2, 0, 1):
        assert peer.decrypt(bob, alice_address, *first[i]) == b"hello %d" % i
    checked = _converse(
        alice.encrypt,
        alice.decrypt,
        _peer_send(peer, bob, alice_address),
        _peer_receive(peer, bob, alice_address),
        seed=6,
    )
    assert checked >= ROUNDS


def test_prekey_message_bytes_equal_libsignal_encoding(libsignal: LibsignalPeer) -> None:
    peer = libsignal
    alice = peer.new_identity("alice")
    bob = ParleyDevice()
    address = Address("parley-bytes", 1)
    peer.process_bundle(alice, address, bob.bundle())
    theirs = peer.encrypt(alice, address, b"bytes")
    parsed = PreKeySignalMessage.parse(theirs.body)
    ours = PreKeySignalMessage(
        registration_id=parsed.registration_id,
        pre_key_id=parsed.pre_key_id,
        signed_pre_key_id=parsed.signed_pre_key_id,
        kyber_pre_key_id=parsed.kyber_pre_key_id,
        kyber_ciphertext=parsed.kyber_ciphertext,
        base_key=parsed.base_key,
        identity_key=parsed.identity_key,
        message=parsed.message,
    )
    assert ours.serialized == theirs.body
    inner = SignalMessage.parse(parsed.message.serialized)
    assert inner.counter == 0 and inner.ciphertext


def test_our_messages_parse_the_same_in_libsignal(libsignal_090: LibsignalPeer) -> None:
    peer = libsignal_090
    bob = peer.new_identity("bob")
    alice = ParleyDevice()
    alice.record.process_prekey_bundle(
        _from_peer(peer.generate_bundle(bob)),
        our_identity=alice.identity,
        our_registration_id=alice.registration_id,
    )
    kind, data = alice.encrypt(b"x" * 100)
    view = peer.parse_message(kind, data)
    ours = PreKeySignalMessage.parse(data)
    assert view["version"] == 4
    assert view["registration_id"] == ours.registration_id
    assert view["pre_key_id"] == ours.pre_key_id
    assert view["signed_pre_key_id"] == ours.signed_pre_key_id
    assert view["signal_message"]["counter"] == 0
    # Every message carries SPQR: A's first is epoch 1, index 1, a header chunk (37 bytes).
    assert base64.b64decode(view["signal_message"]["pq_ratchet"]) == ours.message.pq_ratchet
    assert ours.message.pq_ratchet[:5] == bytes([1, 1, 1, 1, 0])
    assert len(ours.message.pq_ratchet) == 37


def test_xeddsa_both_ways(libsignal: LibsignalPeer) -> None:
    peer = libsignal
    sign_bits = set()
    for _ in range(24):
        private, public = peer.generate_key_pair()
        message = os.urandom(33)
        theirs = peer.sign(private, message)
        sign_bits.add(theirs[63] & 0x80)
        assert xeddsa.verify(public, message, theirs)
        assert not xeddsa.verify(public, message + b"!", theirs)
        ours = xeddsa.sign(private, message)
        assert peer.verify(public, message, ours)
        kyber = KyberKeyPair.generate().public_key.serialize()
        assert peer.verify(public, kyber, xeddsa.sign(private, kyber))
    assert sign_bits == {0, 0x80}  # libsignal really does set the sign bit


def test_x25519_and_hkdf_agree(libsignal_090: LibsignalPeer) -> None:
    peer = libsignal_090
    private, public = peer.generate_key_pair()
    ours = KeyPair.generate()
    assert ours.public_key.serialize() == peer.public_key(ours.private_key.serialize())
    assert ours.private_key.agree(PublicKey.deserialize(public)) == peer.agree(
        private, ours.public_key.serialize()
    )
    ikm, info, salt = os.urandom(40), b"WhisperRatchet", os.urandom(32)
    assert hkdf_sha256(ikm, salt, info, 64) == peer.hkdf(64, ikm, info, salt)
    assert hkdf_sha256(ikm, None, info, 80) == peer.hkdf(80, ikm, info, None)
