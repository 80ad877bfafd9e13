"""Hypothesis properties of the ratchet:

* any delivery order within the limits decrypts, with replays rejected;
* any flipped bit of a SignalMessage is rejected and leaves the state byte-identical;
* serialize/deserialize round-trips at any point of a conversation.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from client.crypto.errors import CryptoError, DuplicateMessageError
from client.crypto.session import SessionRecord
from tests.crypto.support import Party, established_pair


@st.composite
def conversations(draw: st.DrawFn) -> list[tuple[str, int]]:
    """A script: who sends, in bursts, and in which order each burst is delivered."""
    steps: list[tuple[str, int]] = []
    for _ in range(draw(st.integers(1, 4))):
        sender = draw(st.sampled_from(["alice", "bob"]))
        steps.append((sender, draw(st.integers(1, 6))))
    return steps


@given(conversations(), st.randoms(use_true_random=False))
def test_any_delivery_order_decrypts(script: list[tuple[str, int]], rnd: random.Random) -> None:
    alice, bob = established_pair()
    parties = {"alice": (alice, bob), "bob": (bob, alice)}
    in_flight: list[tuple[Party, int, bytes, bytes]] = []
    for n, (sender_name, count) in enumerate(script):
        sender, receiver = parties[sender_name]
        for i in range(count):
            plaintext = b"%d/%d from %s" % (n, i, sender_name.encode())
            msg = sender.record.encrypt(plaintext)
            in_flight.append((receiver, msg.type, msg.serialized, plaintext))
        # Deliver a random subset now, out of order; the rest stays in flight.
        rnd.shuffle(in_flight)
        keep = rnd.randint(0, len(in_flight))
        for receiver, kind, data, plaintext in in_flight[keep:]:
            assert receiver.receive(kind, data) == plaintext
        in_flight = in_flight[:keep]
    rnd.shuffle(in_flight)
    for receiver, kind, data, plaintext in in_flight:
        assert receiver.receive(kind, data) == plaintext
        before = receiver.record.to_bytes()
        try:
            receiver.receive(kind, data)
        except DuplicateMessageError:
            pass
        else:  # pragma: no cover - a replay must never decrypt
            raise AssertionError("replay decrypted")
        assert receiver.record.to_bytes() == before


_PAIR = established_pair()


@given(st.data())
def test_any_flipped_bit_is_rejected_and_state_unchanged(data: st.DataObject) -> None:
    alice, bob = _PAIR
    msg = alice.record.encrypt(data.draw(st.binary(max_size=64))).serialized
    bit = data.draw(st.integers(0, len(msg) * 8 - 1))
    forged = bytearray(msg)
    forged[bit // 8] ^= 1 << (bit % 8)
    before = bob.record.to_bytes()
    try:
        bob.record.decrypt(bytes(forged))
    except CryptoError:
        pass
    else:  # pragma: no cover
        raise AssertionError(f"flipped bit {bit} was accepted")
    assert bob.record.to_bytes() == before
    bob.record.decrypt(msg)  # the genuine message still decrypts afterwards


@given(st.lists(st.sampled_from(["a2b", "b2a", "a2b-lost"]), max_size=12))
def test_serialization_round_trips(moves: list[str]) -> None:
    alice, bob = established_pair()
    for move in moves:
        sender, receiver = (alice, bob) if move.startswith("a2b") else (bob, alice)
        msg = sender.record.encrypt(b"payload")
        if not move.endswith("lost"):
            receiver.receive(msg.type, msg.serialized)
        for party in (alice, bob):
            data = party.record.to_bytes()
            restored = SessionRecord.from_bytes(data)
            assert restored.to_bytes() == data
            party.record = restored  # continue with the restored copy
    msg = alice.record.encrypt(b"after restore")
    assert bob.receive(msg.type, msg.serialized) == b"after restore"
