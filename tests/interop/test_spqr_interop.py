"""SPQR (the triple ratchet) against libsignal 0.90 and 0.103, issue 13's "done when".

For both versions and both roles (Parley initiates / libsignal initiates), long conversations
in one-sided bursts and in ping-pong, at least 200 messages each way, until at least three
post-quantum epochs have completed with each side as the ML-KEM key owner (read from Parley's
SPQR state). Delivery is shuffled within each burst, and some messages are held back and
delivered after the other side has sent again, several of them across an SPQR epoch change.
A tampered SPQR chunk is refused by either side and leaves that side's session byte-identical.

libsignal decrypting Parley's messages checks Parley's chain keys and epoch secrets (they salt
every message key); Parley decrypting libsignal's checks the other way round. The same driver
runs Parley against Parley as a reference.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from client.crypto import spqr_braid
from client.crypto.errors import InvalidMacError
from client.crypto.session import SessionRecord
from client.crypto.wire import PreKeySignalMessage, SignalMessage
from tests.interop.libsignal_peer import Address, LibsignalError, LibsignalPeer
from tests.interop.test_interop_libsignal import ParleyDevice, _from_peer

MIN_MESSAGES = 200
MIN_EPOCHS = 6
"""Completed SPQR epochs: odd ones have the initiator as the key owner, even ones the
responder, so six means three with each side sending the ML-KEM key."""
MAX_MESSAGES = 3_000

Send = Callable[[bytes], tuple[int, bytes]]
Receive = Callable[[int, bytes], bytes]


def _pq_field(kind: int, data: bytes) -> bytes:
    if kind == 3:
        return PreKeySignalMessage.parse(data).message.pq_ratchet
    return SignalMessage.parse(data).pq_ratchet


def _epoch(kind: int, data: bytes) -> int:
    message, _ = spqr_braid.decode_message(_pq_field(kind, data))
    return message.epoch


@dataclass
class Link:
    """A conversation between a Parley device and a party on the other side."""

    parley: ParleyDevice
    parley_send: Send
    parley_receive: Receive
    other_send: Send
    other_receive: Receive
    parley_is_initiator: bool
    other_record: Callable[[], bytes | None] = lambda: None

    def completed_epochs(self) -> int:
        state = self.parley.record.current
        assert state is not None and state.spqr.chain is not None
        return state.spqr.chain.current_epoch


@dataclass
class Stats:
    sent: dict[str, int] = field(default_factory=lambda: {"parley": 0, "other": 0})
    late: int = 0
    late_across_epochs: int = 0


def _handshake(link: Link) -> None:
    """The PreKey phase: the initiator's first messages, then a reply."""
    first_send, first_receive, reply_send, reply_receive = (
        (link.parley_send, link.other_receive, link.other_send, link.parley_receive)
        if link.parley_is_initiator
        else (link.other_send, link.parley_receive, link.parley_send, link.other_receive)
    )
    first = [first_send(b"hello %d" % i) for i in range(3)]
    for i in (2, 0, 1):
        assert first_receive(*first[i]) == b"hello %d" % i
    assert reply_receive(*reply_send(b"reply")) == b"reply"


def _run(link: Link, seed: int, *, ping_pong: bool) -> Stats:
    """Alternate bursts (one message each in ping-pong, 30 to 60 otherwise) until both sides
    sent MIN_MESSAGES and MIN_EPOCHS more SPQR epochs completed. Each burst is delivered
    shuffled; now and then a message is held back and delivered one or more bursts later
    (at most 8 in ping-pong, where every burst is a DH ratchet step: libsignal and Parley keep
    5 receiving chains)."""
    rnd = random.Random(seed)
    stats = Stats()
    start = link.completed_epochs()
    # (deliver after this burst number, receive, kind, data, plaintext, sender's name)
    held: list[tuple[int, Receive, int, bytes, bytes, str]] = []
    last_epoch = {"parley": 0, "other": 0}
    burst_no = 0
    while min(stats.sent.values()) < MIN_MESSAGES or link.completed_epochs() - start < MIN_EPOCHS:
        assert sum(stats.sent.values()) < MAX_MESSAGES, "SPQR epochs stopped advancing"
        name = "parley" if burst_no % 2 == 0 else "other"
        send, receive = (
            (link.parley_send, link.other_receive)
            if name == "parley"
            else (link.other_send, link.parley_receive)
        )
        burst = []
        for i in range(1 if ping_pong else rnd.randint(30, 60)):
            plaintext = f"{name} {burst_no}.{i} ".encode() + os.urandom(rnd.randint(0, 30))
            kind, data = send(plaintext)
            last_epoch[name] = _epoch(kind, data)
            burst.append((kind, data, plaintext))
        stats.sent[name] += len(burst)
        rnd.shuffle(burst)
        if rnd.random() < (0.1 if ping_pong else 0.5):
            kind, data, plaintext = burst.pop()
            delay = rnd.randint(2, 8) if ping_pong else rnd.choice((2, 4))
            held.append((burst_no + delay, receive, kind, data, plaintext, name))
        for kind, data, plaintext in burst:
            assert receive(kind, data) == plaintext
        for item in [h for h in held if h[0] <= burst_no]:
            held.remove(item)
            _, late_receive, kind, data, plaintext, sender = item
            stats.late += 1
            if _epoch(kind, data) < last_epoch[sender]:
                stats.late_across_epochs += 1
            assert late_receive(kind, data) == plaintext
        burst_no += 1
    for _, late_receive, kind, data, plaintext, _sender in held:
        stats.late += 1
        assert late_receive(kind, data) == plaintext
    assert min(stats.sent.values()) >= MIN_MESSAGES
    assert link.completed_epochs() - start >= MIN_EPOCHS
    return stats


def _libsignal_link(peer: LibsignalPeer, parley_initiates: bool) -> Link:
    parley = ParleyDevice()
    theirs = peer.new_identity("spqr")
    address = Address(f"parley-spqr-{os.urandom(4).hex()}", 1)
    if parley_initiates:
        parley.record.process_prekey_bundle(
            _from_peer(peer.generate_bundle(theirs)),
            our_identity=parley.identity,
            our_registration_id=parley.registration_id,
        )
    else:
        peer.process_bundle(theirs, address, parley.bundle())

    def other_send(plaintext: bytes) -> tuple[int, bytes]:
        c = peer.encrypt(theirs, address, plaintext)
        return c.type, c.body

    def other_receive(kind: int, data: bytes) -> bytes:
        return peer.decrypt(theirs, address, kind, data)

    link = Link(
        parley,
        parley.encrypt,
        parley.decrypt,
        other_send,
        other_receive,
        parley_initiates,
        lambda: peer.session_record(theirs, address),
    )
    _handshake(link)
    return link


def _parley_link() -> Link:
    """Parley against Parley, the reference for the same driver."""
    a, b = ParleyDevice(), ParleyDevice(registration_id=1234)
    a.record.process_prekey_bundle(
        _from_peer(b.bundle()), our_identity=a.identity, our_registration_id=a.registration_id
    )
    link = Link(a, a.encrypt, a.decrypt, b.encrypt, b.decrypt, True, b.record.to_bytes)
    _handshake(link)
    return link


ROLES = pytest.mark.parametrize(
    "parley_initiates", [True, False], ids=["parley-initiates", "libsignal-initiates"]
)


@ROLES
@pytest.mark.parametrize("ping_pong", [False, True], ids=["bursts", "ping-pong"])
def test_long_conversations_complete_spqr_epochs_both_ways(
    libsignal: LibsignalPeer, parley_initiates: bool, ping_pong: bool
) -> None:
    link = _libsignal_link(libsignal, parley_initiates)
    stats = _run(link, seed=7 + 2 * parley_initiates + ping_pong, ping_pong=ping_pong)
    assert stats.late >= 5 and stats.late_across_epochs >= 1, stats
    print(
        f"libsignal {libsignal.version} parley_initiates={parley_initiates}"
        f" ping_pong={ping_pong}: sent {stats.sent}, late {stats.late}"
        f" ({stats.late_across_epochs} across epochs),"
        f" SPQR epochs completed {link.completed_epochs()}"
    )


@pytest.mark.parametrize("ping_pong", [False, True], ids=["bursts", "ping-pong"])
def test_the_same_conversations_parley_to_parley(ping_pong: bool) -> None:
    link = _parley_link()
    stats = _run(link, seed=3, ping_pong=ping_pong)
    assert stats.late_across_epochs >= 1


def _chunk_message(send: Send) -> tuple[int, bytes, bytes]:
    """Send until a message carries an SPQR chunk; returns (kind, bytes, pq_ratchet)."""
    for i in range(100):
        kind, data = send(b"chunk? %d" % i)
        pq = _pq_field(kind, data)
        message, _ = spqr_braid.decode_message(pq)
        if message.chunk is not None:
            return kind, data, pq
        raise AssertionError("the first messages after the handshake carry chunks")
    raise AssertionError("no chunk")


def _tamper(data: bytes, pq: bytes) -> bytes:
    assert data.count(pq) == 1
    return data.replace(pq, pq[:-1] + bytes([pq[-1] ^ 0x40]))


@ROLES
def test_a_tampered_spqr_chunk_is_refused_and_changes_nothing(
    libsignal: LibsignalPeer, parley_initiates: bool
) -> None:
    link = _libsignal_link(libsignal, parley_initiates)
    # Parley's chunk, tampered on the way to libsignal.
    kind, data, pq = _chunk_message(link.parley_send)
    before = link.other_record()
    with pytest.raises(LibsignalError):
        link.other_receive(kind, _tamper(data, pq))
    assert link.other_record() == before
    assert link.other_receive(kind, data).startswith(b"chunk? ")
    # libsignal's chunk, tampered on the way to Parley.
    kind, data, pq = _chunk_message(link.other_send)
    saved = link.parley.record.to_bytes()
    with pytest.raises(InvalidMacError):
        link.parley_receive(kind, _tamper(data, pq))
    assert link.parley.record.to_bytes() == saved
    assert link.parley_receive(kind, data).startswith(b"chunk? ")
    # And the conversation goes on.
    assert link.other_receive(*link.parley_send(b"after")) == b"after"
    assert link.parley_receive(*link.other_send(b"after too")) == b"after too"
    assert isinstance(SessionRecord.from_bytes(saved), SessionRecord)
