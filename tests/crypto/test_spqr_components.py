"""The real ML-KEM-768 and GF(2^16) erasure code behind the Braid's protocols
(client/crypto/spqr_components.py): two parties run several whole epochs of SPQR over a lossy,
reordering, duplicating network and derive the same epoch secrets and the same per-message
keys. The fake-based tests cover the state machine's rules; these check that the real parts
fit it (sizes, the order of encaps1's outputs, dk as a seed, the code's chunk indices)."""

from __future__ import annotations

import random

import pytest

from client.crypto import mlkem_incremental, spqr_braid
from client.crypto import spqr_ratchet as pq
from client.crypto.errors import DuplicateMessageError
from client.crypto.spqr_components import CODE, KEM

AUTH_KEY = bytes(range(7, 39))


def test_the_kem_round_trips_and_refuses_a_foreign_key_vector() -> None:
    rng = random.Random(1)
    keys = KEM.generate(rng.randbytes(64))
    assert (len(keys.header), len(keys.ek)) == (spqr_braid.HEADER_SIZE, spqr_braid.EK_SIZE)
    ct1, state, shared = KEM.encaps1(keys.header, rng.randbytes(32))
    assert len(ct1) == spqr_braid.CT1_SIZE
    assert len(state) == mlkem_incremental.STATE_LENGTH
    ct2 = KEM.encaps2(state, keys.ek)
    assert len(ct2) == spqr_braid.CT2_SIZE
    assert KEM.decaps(keys.dk, ct1, ct2) == shared
    assert KEM.ek_matches_header(keys.header, keys.ek)
    other = KEM.generate(rng.randbytes(64))
    assert not KEM.ek_matches_header(keys.header, other.ek)
    with pytest.raises(spqr_braid.SpqrError):
        KEM.encaps2(state, other.ek)


def test_the_code_is_systematic_and_any_chunks_rebuild() -> None:
    payload = random.Random(2).randbytes(spqr_braid.EK_SIZE)
    n = len(payload) // 32
    assert CODE.chunk(payload, 3) == payload[96:128]
    chunks = {i: CODE.chunk(payload, i) for i in range(5, 5 + 2 * n, 2)}
    assert CODE.decode(len(payload), chunks) == payload


def _run(seed: int, steps: int) -> tuple[pq.SpqrState, pq.SpqrState, int]:
    """A random conversation (15 % loss, 10 % duplicates, random delivery order); every
    accepted key must equal the sender's; returns both states and the keys accepted."""
    rng = random.Random(seed)
    states = {
        "A": pq.initial_state(AUTH_KEY, True),
        "B": pq.initial_state(AUTH_KEY, False),
    }
    sent: dict[tuple[str, bytes], bytes | None] = {}
    in_flight: dict[str, list[tuple[str, bytes]]] = {"A": [], "B": []}
    accepted = 0
    for _ in range(steps):
        sender, receiver = ("A", "B") if rng.random() < 0.5 else ("B", "A")
        states[sender], wire, key = pq.send(states[sender], kem=KEM, code=CODE, rng=rng.randbytes)
        sent[sender, wire] = key
        if rng.random() >= 0.15:
            in_flight[receiver].append((sender, wire))
            if rng.random() < 0.1:
                in_flight[receiver].append((sender, wire))
        queue = in_flight[receiver]
        while queue and rng.random() < 0.7:
            origin, wire = queue.pop(rng.randrange(len(queue)))
            try:
                new, got = pq.receive(states[receiver], wire, kem=KEM, code=CODE)
            except (spqr_braid.EpochOutOfRangeError, DuplicateMessageError):
                continue  # too late (its chain epoch is gone) or a duplicate
            assert got == sent[origin, wire]
            states[receiver] = pq.from_bytes(pq.to_bytes(new))
            accepted += 1
    return states["A"], states["B"], accepted


def test_two_parties_complete_several_real_epochs_over_a_bad_network() -> None:
    a, b, accepted = _run(3, 1500)
    assert a.chain is not None and b.chain is not None
    # Same epoch secrets: the chain's next root is derived from all of them in order.
    common = min(a.chain.current_epoch, b.chain.current_epoch)
    assert common >= 4, (a.chain.current_epoch, b.chain.current_epoch)
    if a.chain.current_epoch == b.chain.current_epoch:
        assert a.chain.next_root == b.chain.next_root
    assert accepted > 800
