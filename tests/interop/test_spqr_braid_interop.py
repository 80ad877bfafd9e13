"""SPQR bytes of a real libsignal sender checked against client/crypto/spqr_braid.py.

Before the incremental ML-KEM and the erasure code exist, one part of the Braid can already be
checked against libsignal: a libsignal initiator (A) starts epoch 1 by sending its ML-KEM header
in ``Hdr`` chunks, and the erasure code is systematic, so chunks 0-2 are the plain
``header (64) || header MAC (32)``. Parley, as the responder, knows the PQXDH auth key, so it can
recompute that MAC: equality pins the SPQR message encoding, the authenticator's start from the
auth key, the header-MAC label and layout (docs/spqr.md, "Checking against libsignal").
"""

from __future__ import annotations

from collections.abc import Mapping

from client.crypto import spqr_braid as braid
from client.crypto.wire import PreKeySignalMessage
from tests.interop.libsignal_peer import V090, Address, LibsignalPeer
from tests.interop.test_interop_libsignal import ParleyDevice


def test_libsignal_header_mac_verifies_with_our_authenticator(libsignal: LibsignalPeer) -> None:
    peer = libsignal
    alice = peer.new_identity("alice-spqr")
    bob = ParleyDevice()
    bob_address = Address("parley-bob-spqr", 1)
    peer.process_bundle(alice, bob_address, bob.bundle())
    sent = [peer.encrypt(alice, bob_address, b"pq %d" % i) for i in range(4)]
    assert bob.decrypt(sent[0].type, sent[0].body) == b"pq 0"
    assert bob.record.current is not None
    auth_key = bob.record.current.pqr_auth_key

    chunks = []
    for i, ciphertext in enumerate(sent):
        assert ciphertext.type == 3  # A has received nothing: every message is a PreKey one
        wire = PreKeySignalMessage.parse(ciphertext.body).message.pq_ratchet
        message, index = braid.decode_message(wire)
        assert message.epoch == 1 and message.type is braid.MessageType.HDR
        assert message.chunk is not None and message.chunk.index == i
        # 0.90 (minimum version 0) has no chain before it receives: index 0, no SPQR key.
        assert index == (0 if peer.version == V090 else i + 1)
        assert len(wire) == 37
        chunks.append(message.chunk.data)

    payload = b"".join(chunks[:3])
    header, mac = payload[: braid.HEADER_SIZE], payload[braid.HEADER_SIZE :]
    ours = braid.Authenticator.start(auth_key)
    assert ours.header_mac(1, header) == mac
    assert braid.Authenticator.start(bytes(32)).header_mac(1, header) != mac
    # Our responder state takes the three chunks and verifies the header itself.
    state = braid.initial_state(auth_key, initiator=False)
    code = _Systematic()
    for data in chunks[:3]:
        message = braid.BraidMessage(1, braid.MessageType.HDR, braid.Chunk(len(code.seen), data))
        code.seen.append(data)
        state = braid.receive(state, message, kem=_NoKem(), code=code).state
    assert isinstance(state, braid.HeaderReceived) and state.header == header


class _Systematic:
    """Decodes only from chunks 0..n-1 (the systematic part): all this check needs."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def chunk(self, payload: bytes, index: int) -> bytes:
        raise AssertionError("not used")

    def decode(self, length: int, chunks: Mapping[int, bytes]) -> bytes:
        assert sorted(chunks) == list(range(length // 32))
        return b"".join(chunks[i] for i in range(length // 32))


class _NoKem:
    def generate(self, seed: bytes) -> braid.KemKeys:
        raise AssertionError("not used")

    def encaps1(self, header: bytes, randomness: bytes) -> tuple[bytes, bytes, bytes]:
        raise AssertionError("not used")

    def encaps2(self, state: bytes, ek: bytes) -> bytes:
        raise AssertionError("not used")

    def decaps(self, dk: bytes, ct1: bytes, ct2: bytes) -> bytes:
        raise AssertionError("not used")

    def ek_matches_header(self, header: bytes, ek: bytes) -> bool:
        raise AssertionError("not used")
