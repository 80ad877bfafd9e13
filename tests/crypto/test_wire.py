"""Wire format: exact bytes of SignalMessage / PreKeySignalMessage and the decoder's rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.crypto.errors import InvalidMessageError, UnsupportedVersionError
from client.crypto.keys import PublicKey
from client.crypto.protobuf import bytes_field, decode_fields, uint_field, varint
from client.crypto.wire import (
    VERSION_BYTE,
    PreKeySignalMessage,
    SignalMessage,
    compute_mac,
)

RATCHET = PublicKey(bytes(range(32)))
ALICE = PublicKey(bytes(range(1, 33)))
BOB = PublicKey(bytes(range(2, 34)))
MAC_KEY = bytes(range(100, 132))


def _message(
    counter: int = 3, previous: int = 1, ciphertext: bytes = b"\xaa" * 16
) -> SignalMessage:
    return SignalMessage.create(
        mac_key=MAC_KEY,
        ratchet_key=RATCHET,
        counter=counter,
        previous_counter=previous,
        ciphertext=ciphertext,
        sender_identity=ALICE,
        receiver_identity=BOB,
    )


def test_varint() -> None:
    assert varint(0) == b"\x00"
    assert varint(127) == b"\x7f"
    assert varint(300) == b"\xac\x02"
    assert varint(2**32 - 1) == b"\xff\xff\xff\xff\x0f"


def test_signal_message_exact_bytes() -> None:
    msg = _message()
    body = (
        bytes([0x44])
        + b"\x0a\x21"
        + RATCHET.serialize()
        + b"\x10\x03"
        + b"\x18\x01"
        + b"\x22\x10"
        + b"\xaa" * 16
    )
    assert msg.serialized[:-8] == body
    assert msg.serialized[-8:] == compute_mac(MAC_KEY, ALICE, BOB, body)
    assert VERSION_BYTE == 0x44


def test_signal_message_round_trip_and_mac() -> None:
    msg = _message(counter=70000, previous=300, ciphertext=b"x" * 300)
    parsed = SignalMessage.parse(msg.serialized)
    assert (parsed.counter, parsed.previous_counter, parsed.ciphertext) == (70000, 300, b"x" * 300)
    assert parsed.ratchet_key == RATCHET
    assert parsed.verify_mac(MAC_KEY, ALICE, BOB)
    assert not parsed.verify_mac(MAC_KEY, BOB, ALICE)  # direction is part of the MAC
    assert not parsed.verify_mac(bytes(32), ALICE, BOB)


def test_optional_fields_pq_ratchet_and_addresses() -> None:
    msg = SignalMessage.create(
        mac_key=MAC_KEY,
        ratchet_key=RATCHET,
        counter=0,
        previous_counter=0,
        ciphertext=b"c" * 16,
        sender_identity=ALICE,
        receiver_identity=BOB,
        pq_ratchet=b"\x01\x01\x00\x01\x00",
        addresses=bytes(36),
    )
    assert b"\x2a\x05\x01\x01\x00\x01\x00\x32\x24" in msg.serialized
    parsed = SignalMessage.parse(msg.serialized)
    assert parsed.pq_ratchet == b"\x01\x01\x00\x01\x00"
    assert parsed.addresses == bytes(36)
    assert parsed.verify_mac(MAC_KEY, ALICE, BOB)


@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=400),
)
def test_fast_and_general_parsers_agree(counter: int, previous: int, ciphertext: bytes) -> None:
    msg = _message(counter, previous, ciphertext)
    fast = SignalMessage._parse_canonical(msg.serialized)
    fields = decode_fields(msg.serialized[1:-8])
    assert fields == {1: RATCHET.serialize(), 2: counter, 3: previous, 4: ciphertext}
    if fast is not None:
        assert (fast.counter, fast.previous_counter, fast.ciphertext) == (
            counter,
            previous,
            ciphertext,
        )
    parsed = SignalMessage.parse(msg.serialized)
    assert (parsed.counter, parsed.previous_counter, parsed.ciphertext) == (
        counter,
        previous,
        ciphertext,
    )


def test_reordered_fields_take_the_general_path() -> None:
    body = (
        bytes([0x44])
        + uint_field(2, 5)
        + bytes_field(1, RATCHET.serialize())
        + bytes_field(4, b"z" * 16)
        + uint_field(99, 7)  # unknown fields are skipped, as prost does
    )
    data = body + compute_mac(MAC_KEY, ALICE, BOB, body)
    parsed = SignalMessage.parse(data)
    assert (parsed.counter, parsed.previous_counter, parsed.ciphertext) == (5, 0, b"z" * 16)
    assert parsed.verify_mac(MAC_KEY, ALICE, BOB)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x44" + b"\x00" * 7,
        b"\x44" + bytes_field(2, b"x")[:2] + bytes(8),
        b"\x44" + uint_field(2, 1) + bytes_field(4, b"c") + bytes(8),  # no ratchet key
        b"\x44" + bytes_field(1, RATCHET.serialize()) + bytes_field(4, b"c") + bytes(8),  # no ctr
        b"\x44" + bytes_field(1, b"\x05" + bytes(5)) + uint_field(2, 1) + bytes(8),
        b"\x44\x0b" + bytes(8),  # wire type 3 (group)
    ],
)
def test_malformed_signal_messages_are_rejected(data: bytes) -> None:
    with pytest.raises(InvalidMessageError):
        SignalMessage.parse(data)


@pytest.mark.parametrize("version", [0x33, 0x34, 0x43, 0x45, 0x55])
def test_other_versions_are_unsupported(version: int) -> None:
    data = bytes([version]) + _message().serialized[1:]
    with pytest.raises(UnsupportedVersionError):
        SignalMessage.parse(data)


def test_prekey_signal_message_exact_bytes_in_field_order() -> None:
    inner = _message()
    kyber_ct = b"\x08" + bytes(1568)
    msg = PreKeySignalMessage(
        registration_id=1234,
        pre_key_id=7,
        signed_pre_key_id=8,
        kyber_pre_key_id=9,
        kyber_ciphertext=kyber_ct,
        base_key=RATCHET,
        identity_key=ALICE,
        message=inner,
    )
    # prost writes fields in field-number order, whatever the .proto's declaration order.
    expected = (
        b"\x44"
        + uint_field(1, 7)
        + bytes_field(2, RATCHET.serialize())
        + bytes_field(3, ALICE.serialize())
        + bytes_field(4, inner.serialized)
        + uint_field(5, 1234)
        + uint_field(6, 8)
        + uint_field(7, 9)
        + bytes_field(8, kyber_ct)
    )
    assert msg.serialized == expected
    parsed = PreKeySignalMessage.parse(msg.serialized)
    assert (parsed.registration_id, parsed.pre_key_id, parsed.signed_pre_key_id) == (1234, 7, 8)
    assert (parsed.kyber_pre_key_id, parsed.kyber_ciphertext) == (9, kyber_ct)
    assert parsed.base_key == RATCHET and parsed.identity_key == ALICE
    assert parsed.message.serialized == inner.serialized


def test_prekey_signal_message_without_one_time_prekey() -> None:
    msg = PreKeySignalMessage(
        registration_id=1,
        pre_key_id=None,
        signed_pre_key_id=2,
        kyber_pre_key_id=3,
        kyber_ciphertext=b"\x08" + bytes(1568),
        base_key=RATCHET,
        identity_key=ALICE,
        message=_message(),
    )
    assert msg.serialized[1] == 0x12  # starts with field 2: no field 1
    assert PreKeySignalMessage.parse(msg.serialized).pre_key_id is None


def test_prekey_signal_message_without_kyber_is_rejected() -> None:
    body = (
        b"\x44"
        + bytes_field(2, RATCHET.serialize())
        + bytes_field(3, ALICE.serialize())
        + bytes_field(4, _message().serialized)
        + uint_field(5, 1)
        + uint_field(6, 2)
    )
    with pytest.raises(InvalidMessageError, match="Kyber"):
        PreKeySignalMessage.parse(body)
