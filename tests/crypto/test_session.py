"""Sessions: PQXDH setup, the Double Ratchet, limits, commit-on-success, archived sessions."""

from __future__ import annotations

import dataclasses

import pytest

from client.crypto import spqr_ratchet
from client.crypto.errors import (
    DuplicateMessageError,
    InvalidMacError,
    InvalidMessageError,
    InvalidSignatureError,
    InvalidStateError,
    MessageTooFarAheadError,
    MissingPreKeyError,
    NoSessionError,
)
from client.crypto.keys import KeyPair, PublicKey
from client.crypto.ratchet import ChainKey
from client.crypto.session import (
    ARCHIVED_STATES_MAX_LENGTH,
    MAX_FORWARD_JUMPS,
    MAX_MESSAGE_KEYS,
    MAX_RECEIVER_CHAINS,
    SessionRecord,
)
from client.crypto.trace import EventKind, collecting_tracer
from client.crypto.wire import PreKeySignalMessage, SignalMessage
from tests.crypto.support import established_pair, new_party


def test_prekey_messages_until_first_reply_then_whisper() -> None:
    alice, bob = new_party(1), new_party(2)
    bundle = bob.bundle()
    alice.record.process_prekey_bundle(bundle, our_identity=alice.identity, our_registration_id=1)
    first = [alice.record.encrypt(b"m%d" % i) for i in range(3)]
    assert [m.type for m in first] == [3, 3, 3]
    parsed = [PreKeySignalMessage.parse(m.serialized) for m in first]
    assert len({p.base_key for p in parsed}) == 1  # the same PQXDH header each time
    assert parsed[0].registration_id == 1
    assert parsed[0].pre_key_id == bundle.pre_key_id
    # Out of order, starting with a later one.
    result = bob.record.decrypt_prekey_message(
        first[2].serialized, our_identity=bob.identity, our_registration_id=2, prekeys=bob.prekeys
    )
    assert result.plaintext == b"m2"
    assert (result.used_pre_key_id, result.used_kyber_pre_key_id) == (1, 1)
    # The repeated header finds the existing session: nothing new is consumed.
    del bob.prekeys.one_time[1]
    again = bob.record.decrypt_prekey_message(
        first[0].serialized, our_identity=bob.identity, our_registration_id=2, prekeys=bob.prekeys
    )
    assert again.plaintext == b"m0"
    assert again.used_pre_key_id is None
    assert bob.receive(3, first[1].serialized) == b"m1"
    assert bob.record.current is not None
    assert bob.record.current.remote_registration_id == 1
    reply = bob.record.encrypt(b"reply")
    assert reply.type == 2
    assert alice.receive(2, reply.serialized) == b"reply"
    assert alice.record.encrypt(b"now whisper").type == 2


def test_session_without_one_time_prekey() -> None:
    alice, bob = new_party(1), new_party(2)
    alice.record.process_prekey_bundle(
        bob.bundle(with_one_time=False), our_identity=alice.identity, our_registration_id=1
    )
    msg = alice.record.encrypt(b"hi")
    assert PreKeySignalMessage.parse(msg.serialized).pre_key_id is None
    assert bob.receive(3, msg.serialized) == b"hi"


def test_bad_signatures_refuse_the_bundle_and_change_nothing() -> None:
    alice, bob = new_party(1), new_party(2)
    bundle = bob.bundle()
    other = KeyPair.generate()
    for forged in (
        dataclasses.replace(bundle, signed_pre_key_signature=bytes(64)),
        dataclasses.replace(bundle, kyber_pre_key_signature=bundle.signed_pre_key_signature),
        dataclasses.replace(bundle, signed_pre_key=other.public_key),
    ):
        with pytest.raises(InvalidSignatureError):
            alice.record.process_prekey_bundle(
                forged, our_identity=alice.identity, our_registration_id=1
            )
        assert alice.record.current is None


def test_missing_prekey_and_non_canonical_base_key() -> None:
    alice, bob = new_party(1), new_party(2)
    alice.record.process_prekey_bundle(
        bob.bundle(), our_identity=alice.identity, our_registration_id=1
    )
    msg = alice.record.encrypt(b"hi")
    bob.prekeys.kyber.clear()
    with pytest.raises(MissingPreKeyError):
        bob.receive(3, msg.serialized)
    assert bob.record.current is None

    parsed = PreKeySignalMessage.parse(msg.serialized)
    # u + p encodes the same point: a non-canonical encoding the responder must refuse.
    u = int.from_bytes(parsed.base_key.u, "little") + (2**255 - 19)
    if u < 2**256:
        forged = PreKeySignalMessage(
            registration_id=parsed.registration_id,
            pre_key_id=parsed.pre_key_id,
            signed_pre_key_id=parsed.signed_pre_key_id,
            kyber_pre_key_id=parsed.kyber_pre_key_id,
            kyber_ciphertext=parsed.kyber_ciphertext,
            base_key=PublicKey(u.to_bytes(32, "little")),
            identity_key=parsed.identity_key,
            message=parsed.message,
        )
        with pytest.raises(InvalidMessageError, match="canonical"):
            bob.receive(3, forged.serialized)


def test_replay_is_a_duplicate_and_changes_nothing() -> None:
    alice, bob = established_pair()
    msg = alice.record.encrypt(b"once")
    assert bob.receive(2, msg.serialized) == b"once"
    before = bob.record.to_bytes()
    with pytest.raises(DuplicateMessageError):
        bob.receive(2, msg.serialized)
    assert bob.record.to_bytes() == before


def test_tampered_message_raises_invalid_mac_and_changes_nothing() -> None:
    alice, bob = established_pair()
    msg = alice.record.encrypt(b"x" * 40)
    before = bob.record.to_bytes()
    data = bytearray(msg.serialized)
    data[-20] ^= 0x01  # inside the ciphertext
    with pytest.raises(InvalidMacError):
        bob.receive(2, bytes(data))
    data = bytearray(msg.serialized)
    data[-1] ^= 0x80  # the MAC itself
    with pytest.raises(InvalidMacError):
        bob.receive(2, bytes(data))
    assert bob.record.to_bytes() == before
    assert bob.receive(2, msg.serialized) == b"x" * 40


def test_forged_message_with_new_ratchet_key_changes_nothing() -> None:
    alice, bob = established_pair()
    msg = SignalMessage.parse(alice.record.encrypt(b"real").serialized)
    forged = SignalMessage.create(
        mac_key=bytes(32),
        ratchet_key=KeyPair.generate().public_key,  # forces a (discarded) DH ratchet step
        counter=0,
        previous_counter=0,
        ciphertext=msg.ciphertext,
        sender_identity=alice.identity.public_key,
        receiver_identity=bob.identity.public_key,
        pq_ratchet=msg.pq_ratchet,  # a valid SPQR field: the MAC is what refuses it
    )
    before = bob.record.to_bytes()
    with pytest.raises(InvalidMacError):
        bob.record.decrypt(forged.serialized)
    assert bob.record.to_bytes() == before


def test_too_far_ahead_is_rejected_and_changes_nothing() -> None:
    alice, bob = established_pair()
    state = alice.record.current
    assert state is not None
    # Jump Alice's sending chain without sending (cheap: only the chain key moves).
    chain = state.sender_chain
    state.sender_chain = type(chain)(
        chain.ratchet_key, _advance(chain.chain_key, MAX_FORWARD_JUMPS + 1)
    )
    msg = alice.record.encrypt(b"far")
    before = bob.record.to_bytes()
    with pytest.raises(MessageTooFarAheadError):
        bob.receive(2, msg.serialized)
    assert bob.record.to_bytes() == before


def _advance(chain_key: ChainKey, steps: int) -> ChainKey:
    key = chain_key.key
    from client.crypto.kdf import hmac_sha256

    for _ in range(steps):
        key = hmac_sha256(key, b"\x02")
    return ChainKey(key, chain_key.index + steps)


def test_skipped_keys_are_capped_oldest_dropped() -> None:
    alice, bob = established_pair()
    lost = alice.record.encrypt(b"oldest")
    messages = [alice.record.encrypt(b"%d" % i) for i in range(MAX_MESSAGE_KEYS + 5)]
    # Delivering the last skips MAX_MESSAGE_KEYS + 5 keys: only MAX_MESSAGE_KEYS are kept.
    assert bob.receive(2, messages[-1].serialized) == b"%d" % (MAX_MESSAGE_KEYS + 4)
    current = bob.record.current
    assert current is not None
    chain = current.receiver_chains[-1]
    assert len(chain.message_keys) == MAX_MESSAGE_KEYS
    with pytest.raises(DuplicateMessageError):
        bob.receive(2, lost.serialized)  # its key was dropped first
    assert bob.receive(2, messages[10].serialized) == b"10"


def test_receiver_chains_are_capped() -> None:
    alice, bob = established_pair()
    for turn in range(MAX_RECEIVER_CHAINS + 3):
        assert bob.receive(2, alice.record.encrypt(b"a%d" % turn).serialized) == b"a%d" % turn
        assert alice.receive(2, bob.record.encrypt(b"b%d" % turn).serialized) == b"b%d" % turn
    assert alice.record.current is not None and bob.record.current is not None
    assert len(bob.record.current.receiver_chains) == MAX_RECEIVER_CHAINS
    assert len(alice.record.current.receiver_chains) == MAX_RECEIVER_CHAINS


def test_late_message_from_old_chain_uses_stored_key() -> None:
    alice, bob = established_pair()
    early = [alice.record.encrypt(b"e%d" % i) for i in range(3)]
    assert bob.receive(2, early[0].serialized) == b"e0"
    assert alice.receive(2, bob.record.encrypt(b"turn").serialized) == b"turn"
    newer = alice.record.encrypt(b"new chain")
    assert bob.receive(2, newer.serialized) == b"new chain"
    assert SignalMessage.parse(newer.serialized).previous_counter == 2  # libsignal: last index
    tracer, events = collecting_tracer()
    assert bob.record.decrypt(early[2].serialized, tracer=tracer) == b"e2"
    assert [e.public["counter"] for e in events if e.kind == EventKind.SKIPPED_KEY_STORED] == [1]
    tracer, events = collecting_tracer()
    assert bob.record.decrypt(early[1].serialized, tracer=tracer) == b"e1"
    assert any(e.kind == EventKind.SKIPPED_KEY_USED for e in events)


def test_archived_session_still_decrypts_and_is_promoted() -> None:
    alice, bob = established_pair()
    in_flight = alice.record.encrypt(b"sent before the reset")
    # Bob starts a fresh session to Alice (e.g. reinstall): the old one is archived.
    bob.record.process_prekey_bundle(
        alice.bundle(key_id=9), our_identity=bob.identity, our_registration_id=2
    )
    assert len(bob.record.previous) == 1
    assert bob.receive(2, in_flight.serialized) == b"sent before the reset"
    assert bob.record.current is not None
    assert bob.record.current.pending_pre_key is None  # the old session is current again
    assert len(bob.record.previous) == 1


def test_archive_is_bounded() -> None:
    record = SessionRecord()
    alice, _ = established_pair()
    state = alice.record.current
    assert state is not None
    for _ in range(ARCHIVED_STATES_MAX_LENGTH + 5):
        record.promote_state(state.copy())
    assert len(record.previous) == ARCHIVED_STATES_MAX_LENGTH


def test_corrupt_or_unknown_state_is_refused() -> None:
    alice, _ = established_pair()
    data = alice.record.to_bytes()
    with pytest.raises(InvalidStateError, match="version"):
        SessionRecord.from_bytes(b"\x08\x03" + data[2:])  # format version 3 does not exist
    with pytest.raises(InvalidStateError):
        SessionRecord.from_bytes(data[:-5])
    with pytest.raises(InvalidStateError):
        SessionRecord.from_bytes(b"\xff")
    assert SessionRecord.from_bytes(SessionRecord().to_bytes()).current is None


def test_no_session_errors() -> None:
    alice, _ = established_pair()
    msg = alice.record.encrypt(b"x")
    with pytest.raises(NoSessionError):
        SessionRecord().encrypt(b"x")
    with pytest.raises(NoSessionError):
        SessionRecord().decrypt(msg.serialized)


def test_wrong_receiver_cannot_decrypt() -> None:
    alice, _ = established_pair()
    _, carol = established_pair()
    with pytest.raises(InvalidMacError):
        carol.receive(2, alice.record.encrypt(b"for bob").serialized)


def test_secret_types_do_not_print_their_bytes() -> None:
    alice, bob = established_pair()
    state = alice.record.current
    assert state is not None
    secrets = [
        state.root_key.key,
        state.sender_chain.chain_key.key,
        state.sender_chain.ratchet_key.private_key.serialize(),
        alice.identity.private_key.serialize(),
    ]
    text = " ".join(
        repr(x)
        for x in (
            alice.record,
            state,
            state.root_key,
            state.sender_chain,
            state.sender_chain.chain_key,
            state.sender_chain.ratchet_key,
            alice.identity,
            alice.identity.private_key,
            bob.prekeys.kyber[1],
        )
    )
    for secret in secrets:
        assert secret.hex() not in text
        assert repr(secret) not in text


# --- SPQR (triple ratchet, docs/spqr.md) -----------------------------------------------------


def test_every_message_carries_spqr_and_real_epochs_complete() -> None:
    alice, bob = established_pair()
    for i in range(150):
        for sender, receiver in ((alice, bob), (bob, alice)):
            msg = sender.record.encrypt(b"ping %d" % i)
            assert SignalMessage.parse(msg.serialized).pq_ratchet[0] == 1  # SPQR v1
            assert receiver.receive(msg.type, msg.serialized) == b"ping %d" % i
    for party in (alice, bob):
        record = SessionRecord.from_bytes(party.record.to_bytes())
        assert record.current is not None and record.current.spqr.chain is not None
        assert record.current.spqr.chain.current_epoch >= 2
        assert record.to_bytes() == party.record.to_bytes()


def test_a_tampered_spqr_chunk_is_refused_and_changes_nothing() -> None:
    alice, bob = established_pair()
    msg = alice.record.encrypt(b"with a header chunk")
    field = SignalMessage.parse(msg.serialized).pq_ratchet
    assert field[3] == 1 and len(field) == 37  # Hdr, chunk index, 32 data bytes
    tampered = field[:-1] + bytes([field[-1] ^ 1])
    forged = msg.serialized.replace(field, tampered)
    before = bob.record.to_bytes()
    with pytest.raises(InvalidMacError):
        bob.record.decrypt(forged)
    assert bob.record.to_bytes() == before
    assert bob.record.decrypt(msg.serialized) == b"with a header chunk"


def test_a_message_without_spqr_is_refused_by_a_spqr_session() -> None:
    alice, bob = established_pair()
    state = alice.record.current
    assert state is not None
    state.spqr = spqr_ratchet.VERSION_0  # as a Parley without SPQR would send
    msg = alice.record.encrypt(b"no spqr")
    before = bob.record.to_bytes()
    with pytest.raises(InvalidMessageError, match="version mismatch"):
        bob.record.decrypt(msg.serialized)
    assert bob.record.to_bytes() == before
