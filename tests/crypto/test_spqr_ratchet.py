"""SPQR per message (client/crypto/spqr_ratchet.py): the chain over the Braid's epochs and
version negotiation, driven with the fakes of tests/crypto/spqr_fakes.py. Both parties must
derive the same SPQR key for every message that is accepted, over a network that loses,
reorders and duplicates; epoch 0 must equal the existing first-epoch seam (spqr.py); the
limits and the negotiation rules of docs/spqr.md must hold."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client.crypto import spqr_braid
from client.crypto import spqr_ratchet as pq
from client.crypto.errors import (
    CryptoError,
    DuplicateMessageError,
    InvalidStateError,
    MessageTooFarAheadError,
)
from tests.crypto import spqr_first_epoch as spqr
from tests.crypto.spqr_fakes import FakeKem, Gf256Code

KEM = FakeKem()
CODE = Gf256Code()
AUTH_KEY = bytes(range(100, 132))


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


@dataclass
class Side:
    name: str
    state: pq.SpqrState
    rng: random.Random
    sent_keys: dict[bytes, bytes | None] = field(default_factory=dict)

    def send(self) -> bytes:
        self.state, wire, key = pq.send(self.state, kem=KEM, code=CODE, rng=self.rng.randbytes)
        self.state = _round_trip(self.state)
        # The wire bytes name the message: (epoch, index) never repeat for one sender.
        assert wire not in self.sent_keys or wire == b""
        self.sent_keys[wire] = key
        return wire

    def receive(self, wire: bytes) -> bytes | None:
        """Receive on a copy; keep it only on success (as the session will)."""
        new, key = pq.receive(self.state, wire, kem=KEM, code=CODE)
        self.state = _round_trip(new)
        return key


def _round_trip(state: pq.SpqrState) -> pq.SpqrState:
    again = pq.from_bytes(pq.to_bytes(state))
    assert again == state
    return again


def _pair(seed: int = 0, **kwargs: int) -> tuple[Side, Side]:
    rng = random.Random(seed)
    return (
        Side("A", pq.initial_state(AUTH_KEY, True, **kwargs), random.Random(rng.random())),
        Side("B", pq.initial_state(AUTH_KEY, False, **kwargs), random.Random(rng.random())),
    )


def test_epoch_zero_keys_are_the_seams_keys() -> None:
    a, b = _pair()
    for n in range(1, 6):
        wire = a.send()
        assert wire[:3] == bytes([1, 1, n])
        assert a.sent_keys[wire] == spqr.message_key_salt(wire, AUTH_KEY, True)
        assert b.receive(wire) == a.sent_keys[wire]
    wire = b.send()  # B has the header: it encapsulates, but still keys with chain epoch 0
    assert wire[:4] == bytes([1, 1, 1, spqr_braid.MessageType.CT1])
    assert b.sent_keys[wire] == spqr.message_key_salt(wire, AUTH_KEY, False)


def test_add_epoch_matches_the_spec() -> None:
    start = _hkdf(AUTH_KEY, bytes(32), b"Signal PQ Ratchet V1 Chain  Start", 96)
    secret = bytes([5]) * 32
    added = _hkdf(secret, start[:32], b"Signal PQ Ratchet V1 Chain Add Epoch", 96)
    chain = pq.Chain.start(AUTH_KEY, initiator=False).add_epoch(spqr_braid.EpochSecret(1, secret))
    step = _hkdf(added[64:96], bytes(32), (1).to_bytes(4, "big") + pq.CHAIN_NEXT_INFO, 64)
    _, index, key = chain.send_key(1)  # B sends B2A
    assert (index, key) == (1, step[32:])
    with pytest.raises(InvalidStateError):
        chain.add_epoch(spqr_braid.EpochSecret(3, secret))


def _run(seed: int, steps: int, loss: float, duplicate: float) -> tuple[int, int, int]:
    """Random conversation; returns (accepted, refused as duplicate, refused as too old)."""
    rng = random.Random(seed)
    a, b = _pair(seed)
    in_flight: dict[str, list[tuple[bytes, Side]]] = {"A": [], "B": []}
    accepted = duplicates = too_old = 0
    for _ in range(steps):
        sender, receiver = (a, b) if rng.random() < 0.5 else (b, a)
        if rng.random() < 0.6:
            wire = sender.send()
            if rng.random() >= loss:
                in_flight[receiver.name].append((wire, sender))
                if rng.random() < duplicate:
                    in_flight[receiver.name].append((wire, sender))
        queue = in_flight[receiver.name]
        if queue:
            wire, origin = queue.pop(rng.randrange(len(queue)))
            before = pq.to_bytes(receiver.state)
            try:
                key = receiver.receive(wire)
            except DuplicateMessageError:
                duplicates += 1
                assert pq.to_bytes(receiver.state) == before
                continue
            except spqr_braid.EpochOutOfRangeError:
                too_old += 1  # held back for more than an epoch: its chain epoch is gone
                assert pq.to_bytes(receiver.state) == before
                continue
            assert key == origin.sent_keys[wire]
            accepted += 1
    assert a.state.chain is not None and a.state.chain.current_epoch >= 2
    assert b.state.chain is not None and b.state.chain.current_epoch >= 2
    return accepted, duplicates, too_old


@pytest.mark.parametrize("seed", range(4))
def test_both_sides_derive_the_same_key_for_every_accepted_message(seed: int) -> None:
    accepted, duplicates, _ = _run(seed, 4000, loss=0.15, duplicate=0.1)
    assert accepted > 1000 and duplicates > 0


def test_keys_keep_coming_across_many_epochs_in_order() -> None:
    a, b = _pair(9)
    for _ in range(600):
        wire = a.send()
        assert b.receive(wire) == a.sent_keys[wire]
        wire = b.send()
        assert a.receive(wire) == b.sent_keys[wire]
    assert a.state.chain is not None and a.state.chain.current_epoch >= 6
    # Only the sending epoch and the one before it are kept.
    assert len(a.state.chain.links) <= 3


def test_a_late_message_of_the_previous_epoch_still_decrypts() -> None:
    a, b = _pair(10)
    held: list[bytes] = []
    for _ in range(600):
        wire = a.send()
        if not held and a.state.chain is not None and a.state.chain.send_epoch == 1:
            held.append(wire)  # an epoch-2 message (chain epoch 1) from A, delivered late
        else:
            b.receive(wire)
        b_wire = b.send()
        a.receive(b_wire)
        if b.state.chain is not None and b.state.chain.send_epoch >= 2:
            break
    assert held and b.state.chain is not None and b.state.chain.send_epoch == 2
    assert b.receive(held[0]) == a.sent_keys[held[0]]
    with pytest.raises(DuplicateMessageError):
        b.receive(held[0])


def test_chain_limits() -> None:
    chain = pq.Chain.start(AUTH_KEY, initiator=True, max_jump=10, max_ooo=5)
    peer = pq.Chain.start(AUTH_KEY, initiator=False, max_jump=10, max_ooo=5)
    keys = {}
    for _ in range(30):
        peer, index, key = peer.send_key(0)
        keys[index] = key
    with pytest.raises(MessageTooFarAheadError):
        chain.recv_key(0, 11)
    chain, key = chain.recv_key(0, 10)
    assert key == keys[10]
    with pytest.raises(DuplicateMessageError):
        chain.recv_key(0, 10)
    chain, key = chain.recv_key(0, 6)  # 10 - 5 - 1 .. kept
    assert key == keys[6]
    with pytest.raises(DuplicateMessageError, match="too old"):
        chain.recv_key(0, 4)
    chain, _ = chain.recv_key(0, 20)  # 10 ahead: every stored key dropped
    with pytest.raises(DuplicateMessageError):
        chain.recv_key(0, 9)
    chain, key = chain.recv_key(0, 17)
    assert key == keys[17]
    with pytest.raises(spqr_braid.EpochOutOfRangeError):
        chain.recv_key(1, 1)


def test_minimum_version_one_refuses_a_peer_without_spqr() -> None:
    a, b = _pair()
    with pytest.raises(spqr_braid.SpqrError, match="Minimum version"):
        pq.receive(b.state, b"", kem=KEM, code=CODE)
    # A version we do not know is ignored; after the first SPQR message, no downgrade.
    assert pq.receive(b.state, b"\x02junk", kem=KEM, code=CODE) == (b.state, None)
    with pytest.raises(spqr_braid.SpqrError, match="Minimum version"):
        pq.receive(b.state, b"\x00", kem=KEM, code=CODE)  # a leading 0 is version 0 too
    b.receive(a.send())
    with pytest.raises(spqr_braid.SpqrError, match="version mismatch"):
        pq.receive(b.state, b"", kem=KEM, code=CODE)


def test_minimum_version_zero_downgrades_and_keys_nothing_until_spoken_to() -> None:
    old = pq.initial_state(AUTH_KEY, True, min_version=0)  # libsignal 0.90's settings
    state, wire, key = pq.send(old, kem=KEM, code=CODE, rng=random.Random(1).randbytes)
    assert wire[:3] == bytes([1, 1, 0]) and key is None
    b = pq.initial_state(AUTH_KEY, False)
    _, key = pq.receive(b, wire, kem=KEM, code=CODE)  # we accept index 0 with no key
    assert key is None
    downgraded, key = pq.receive(state, b"", kem=KEM, code=CODE)
    assert downgraded == pq.VERSION_0 and key is None and pq.to_bytes(downgraded) == b""
    assert pq.send(downgraded, kem=KEM, code=CODE, rng=random.Random(2).randbytes)[1:] == (
        b"",
        None,
    )


def test_corrupt_states_are_refused() -> None:
    a, _ = _pair()
    a.send()
    good = pq.to_bytes(a.state)
    for bad in (good[:-2], b"\x08\x07", good[:2]):
        with pytest.raises(CryptoError):
            pq.from_bytes(bad)
    assert pq.from_bytes(b"") == pq.VERSION_0
    assert "secret" not in repr(a.state) or "<secret>" in repr(a.state)
