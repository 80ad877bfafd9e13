"""The ML-KEM Braid state machine (client/crypto/spqr_braid.py) driven with a fake KEM and a
small erasure code (tests/crypto/spqr_fakes.py): two parties through many epochs over a network
that loses, reorders and duplicates, agreeing on every epoch secret; the wire encoding, the
authenticator and the epoch-secret KDF recomputed independently from docs/spqr.md; tampering
and out-of-range epochs refused."""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass, field, replace

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client.crypto import spqr_braid as braid
from client.crypto.errors import InvalidMacError, InvalidStateError
from client.crypto.spqr_braid import BraidMessage, Chunk, MessageType
from tests.crypto.spqr_fakes import FakeKem, Gf256Code

KEM = FakeKem()
CODE = Gf256Code()
AUTH_KEY = bytes(range(32))


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, bytes(32), info).derive(ikm)


# --- the wire encoding -------------------------------------------------------------------


def test_message_examples_from_the_spec() -> None:
    data = bytes(range(32))
    first = BraidMessage(1, MessageType.HDR, Chunk(0, data))
    assert braid.encode_message(first, 1) == bytes.fromhex("0101010100") + data
    assert braid.encode_message(first, 0) == bytes.fromhex("0101000100") + data
    assert braid.encode_message(BraidMessage(1, MessageType.NONE), 1) == bytes.fromhex("01010100")
    assert braid.encode_message(BraidMessage(2, MessageType.CT1_ACK), 300) == bytes.fromhex(
        "0102ac0204"
    )
    big = BraidMessage(2**64 - 1, MessageType.CT2, Chunk(65535, data))
    encoded = braid.encode_message(big, 2**32 - 1)
    assert braid.decode_message(encoded) == (big, 2**32 - 1)


@pytest.mark.parametrize("kind", list(MessageType))
def test_message_round_trip_and_trailing_bytes(kind: MessageType) -> None:
    chunk = Chunk(300, bytes([7]) * 32) if kind.has_chunk else None
    message = BraidMessage(5, kind, chunk)
    encoded = braid.encode_message(message, 12)
    assert encoded[0] == 1 and encoded[3] == kind
    assert braid.decode_message(encoded) == (message, 12)
    assert braid.decode_message(encoded + b"later versions") == (message, 12)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x01\x01\x00",  # version 2 handed to the v1 decoder
        b"\x01\x00\x01\x00",  # epoch 0
        b"\x01\x01\x01",  # no type
        b"\x01\x01\x01\x07",  # unknown type
        b"\x01\x81",  # truncated varint
        b"\x01" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
        b"\x01\x01\x80\x80\x80\x80\x10\x00",  # index 2^32
        b"\x01\x01\x01\x01\x00" + bytes(31),  # chunk data too short
        b"\x01\x01\x01\x01\x80\x80\x04" + bytes(32),  # chunk index 65536
        b"\x01\x01\x01\x05",  # Ct1 without its chunk
    ],
)
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(braid.SpqrError):
        braid.decode_message(data)


# --- the KDFs, recomputed ----------------------------------------------------------------


def test_authenticator_and_epoch_secret_match_the_spec() -> None:
    update = b"Signal_PQCKA_V1_MLKEM768:Authenticator Update"
    out = _hkdf(bytes(32) + AUTH_KEY, update + (1).to_bytes(8, "big"), 64)
    auth = braid.Authenticator.start(AUTH_KEY)
    assert (auth.root, auth.mac_key) == (out[:32], out[32:])

    header = bytes(range(64))
    label = b"Signal_PQCKA_V1_MLKEM768:ekheader" + (1).to_bytes(8, "big")
    assert auth.header_mac(1, header) == hmac.new(out[32:], label + header, "sha256").digest()

    shared = bytes([9]) * 32
    secret = braid.epoch_secret(shared, 3)
    info = b"Signal_PQCKA_V1_MLKEM768:SCKA Key" + (3).to_bytes(8, "big")
    assert secret == _hkdf(shared, info, 32)

    later = auth.update(3, secret)
    out = _hkdf(out[:32] + secret, update + (3).to_bytes(8, "big"), 64)
    assert (later.root, later.mac_key) == (out[:32], out[32:])
    ct = bytes(range(200)) * 5
    label = b"Signal_PQCKA_V1_MLKEM768:ciphertext" + (3).to_bytes(8, "big")
    assert later.ciphertext_mac(3, ct) == hmac.new(out[32:], label + ct, "sha256").digest()


def test_the_first_header_is_the_keys_header_and_its_mac() -> None:
    seed = hashlib.sha256(b"seed").digest() * 2
    sent = braid.send(
        braid.initial_state(AUTH_KEY, initiator=True), kem=KEM, code=CODE, rng=lambda n: seed[:n]
    )
    keys = KEM.generate(seed)
    payload = keys.header + braid.Authenticator.start(AUTH_KEY).header_mac(1, keys.header)
    assert sent.message == BraidMessage(1, MessageType.HDR, Chunk(0, payload[:32]))
    assert isinstance(sent.state, braid.KeysSampled)
    for i in (1, 2):
        sent = braid.send(sent.state, kem=KEM, code=CODE, rng=lambda n: b"")
        assert sent.message.chunk == Chunk(i, payload[32 * i : 32 * i + 32])


# --- two parties over a bad network ------------------------------------------------------


@dataclass
class Party:
    """One side of the conversation: its Braid state and the epoch secrets it derived."""

    name: str
    state: braid.State
    rng: random.Random
    secrets: dict[int, bytes] = field(default_factory=dict)
    outbox: list[BraidMessage] = field(default_factory=list)

    def send(self) -> bytes:
        sent = braid.send(self.state, kem=KEM, code=CODE, rng=self.rng.randbytes)
        self._learn(sent.secret)
        self.state = _round_trip(sent.state)
        return braid.encode_message(sent.message, len(self.outbox) + 1)

    def receive(self, wire: bytes) -> None:
        message, _ = braid.decode_message(wire)
        received = braid.receive(self.state, message, kem=KEM, code=CODE)
        self._learn(received.secret)
        self.state = _round_trip(received.state)

    def _learn(self, secret: braid.EpochSecret | None) -> None:
        if secret is not None:
            # Epochs come out strictly in order, each once.
            assert secret.epoch == len(self.secrets) + 1, (self.name, secret.epoch)
            self.secrets[secret.epoch] = secret.secret


def _round_trip(state: braid.State) -> braid.State:
    """Every state must survive the session record unchanged."""
    again = braid.state_from_bytes(braid.state_to_bytes(state))
    assert again == state
    return again


def _pair(seed: int) -> tuple[Party, Party]:
    rng = random.Random(seed)
    a = Party("A", braid.initial_state(AUTH_KEY, initiator=True), random.Random(rng.random()))
    b = Party("B", braid.initial_state(AUTH_KEY, initiator=False), random.Random(rng.random()))
    return a, b


def _converse(
    seed: int, steps: int, *, loss: float, duplicate: float, reorder: bool
) -> tuple[Party, Party]:
    """Random sends and deliveries; each sent message may be lost, duplicated, or held
    back and delivered later in any order."""
    rng = random.Random(seed)
    a, b = _pair(seed)
    in_flight: dict[str, list[bytes]] = {"A": [], "B": []}
    for _ in range(steps):
        sender, receiver = (a, b) if rng.random() < 0.5 else (b, a)
        if rng.random() < 0.6:
            wire = sender.send()
            if rng.random() >= loss:
                in_flight[receiver.name].append(wire)
                if rng.random() < duplicate:
                    in_flight[receiver.name].append(wire)
        queue = in_flight[receiver.name]
        if queue:
            index = rng.randrange(len(queue)) if reorder else 0
            receiver.receive(queue.pop(index))
    return a, b


def _assert_agree(a: Party, b: Party, at_least: int) -> None:
    common = a.secrets.keys() & b.secrets.keys()
    assert len(common) >= at_least, (len(a.secrets), len(b.secrets))
    for epoch in common:
        assert a.secrets[epoch] == b.secrets[epoch], epoch
    assert abs(len(a.secrets) - len(b.secrets)) <= 1
    assert len(set(a.secrets.values())) == len(a.secrets)


def test_ping_pong_runs_epochs() -> None:
    a, b = _pair(1)
    for _ in range(400):
        b.receive(a.send())
        a.receive(b.send())
    _assert_agree(a, b, at_least=4)


def test_one_way_traffic_makes_no_epoch() -> None:
    a, b = _pair(2)
    for _ in range(100):
        b.receive(a.send())
    assert a.secrets == {} and b.secrets == {}
    assert isinstance(b.state, braid.HeaderReceived)  # it needs to send to encapsulate


@pytest.mark.parametrize("seed", range(6))
def test_lossy_reordering_duplicating_network(seed: int) -> None:
    a, b = _converse(seed, 5000, loss=0.2, duplicate=0.1, reorder=True)
    _assert_agree(a, b, at_least=3)


def test_in_order_lossless_network_is_fast() -> None:
    a, b = _converse(100, 3000, loss=0.0, duplicate=0.0, reorder=False)
    _assert_agree(a, b, at_least=6)


def test_roles_alternate_and_the_ct_sender_learns_first() -> None:
    a, b = _pair(3)
    first: dict[int, str] = {}
    for _ in range(600):
        for sender, receiver in ((a, b), (b, a)):
            receiver.receive(sender.send())
            for party in (a, b):
                # A sends the key in odd epochs, B in even ones (states 1-5 are the EK side).
                sends_key = party.state.KIND <= braid.EkSentCt1Received.KIND
                assert sends_key == ((party.state.epoch % 2 == 1) == (party is a))
                for epoch in party.secrets:
                    first.setdefault(epoch, party.name)
    assert len(first) >= 4
    # The CT sender has the secret when it encapsulates, the EK sender only after ct2.
    assert all(name == ("B" if epoch % 2 else "A") for epoch, name in first.items())


# --- refusals ----------------------------------------------------------------------------


def _until(party: Party, other: Party, kind: type[braid.State]) -> None:
    for _ in range(200):
        if isinstance(party.state, kind):
            return
        other.receive(party.send())
        party.receive(other.send())
    raise AssertionError(f"{party.name} never reached {kind.__name__}")


def _tampered(wire: bytes) -> bytes:
    return wire[:-1] + bytes([wire[-1] ^ 1])


def test_tampered_header_chunk_fails_the_header_mac() -> None:
    a, b = _pair(4)
    wires = [a.send() for _ in range(3)]
    b.receive(wires[0])
    b.receive(wires[1])
    before = b.state
    with pytest.raises(braid.SpqrMacError) as exc:
        b.receive(_tampered(wires[2]))
    assert isinstance(exc.value, InvalidMacError)
    assert b.state is before  # the caller keeps its old state
    b.receive(wires[2])
    assert isinstance(b.state, braid.HeaderReceived)


def test_tampered_ciphertext_fails_the_ciphertext_mac() -> None:
    a, b = _pair(5)
    _until(b, a, braid.Ct2Sampled)
    _until(a, b, braid.EkSentCt1Received)
    assert isinstance(a.state, braid.EkSentCt1Received)
    wires = [b.send() for _ in range(a.state.receiving.needed - len(a.state.receiving.chunks))]
    with pytest.raises(braid.SpqrMacError):
        for wire in [*wires[:-1], _tampered(wires[-1])]:
            a.receive(wire)


def test_encapsulation_key_that_does_not_match_its_header_is_refused() -> None:
    a, b = _pair(6)
    _until(a, b, braid.HeaderSent)
    assert isinstance(b.state, braid.Ct1Sampled)
    state: braid.State = b.state
    for i in range(braid.EK_SIZE // 32):
        message = BraidMessage(1, MessageType.EK, Chunk(i, bytes(32)))
        if i == braid.EK_SIZE // 32 - 1:
            with pytest.raises(braid.ErroneousDataError):
                braid.receive(state, message, kem=KEM, code=CODE)
        else:
            state = braid.receive(state, message, kem=KEM, code=CODE).state


def test_future_epochs_are_refused_and_past_ones_ignored() -> None:
    a, b = _pair(7)
    with pytest.raises(braid.EpochOutOfRangeError):
        braid.receive(b.state, BraidMessage(2, MessageType.NONE), kem=KEM, code=CODE)
    for _ in range(400):
        b.receive(a.send())
        a.receive(b.send())
    assert a.state.epoch >= 3
    old = BraidMessage(1, MessageType.CT1, Chunk(0, bytes(32)))
    assert braid.receive(a.state, old, kem=KEM, code=CODE).state is a.state


def test_corrupt_state_is_refused() -> None:
    good = braid.state_to_bytes(braid.initial_state(AUTH_KEY, initiator=False))
    for bad in (b"", good[:-3], b"\x08\x02" + good[2:], good.replace(b"\x10\x06", b"\x10\x63")):
        with pytest.raises(InvalidStateError):
            braid.state_from_bytes(bad)


def test_secrets_never_print() -> None:
    a, b = _pair(8)
    _until(b, a, braid.Ct1Sampled)
    text = repr(b.state) + repr(b.state.auth) + repr(next(iter(b.secrets.items()), None))
    assert b.state.auth.mac_key.hex() not in text
    assert repr(replace(b.state, epoch=9)) == "Ct1Sampled(epoch=9)"
