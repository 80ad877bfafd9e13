"""libsignal ↔ libsignal through the driver, so the driver is known-good before Parley's own
implementation is tested against it.

Covers both packaged versions (0.90.0 and 0.103.0) and the two cross-version directions, and
pins down the SPQR behaviour that Parley's implementation has to live with.
"""

from __future__ import annotations

import random

import pytest

from tests.interop.libsignal_peer import (
    V090,
    VCURRENT,
    Address,
    Ciphertext,
    Identity,
    LibsignalError,
    LibsignalPeer,
)

EC_KEY_LEN = 33
KEM_KEY_LEN = 1569
SIGNATURE_LEN = 64


@pytest.fixture(params=[(V090, VCURRENT), (VCURRENT, V090)], ids=["0.90->current", "current->0.90"])
def cross_pair(
    request: pytest.FixtureRequest,
    libsignal_090: LibsignalPeer,
    libsignal_current: LibsignalPeer,
) -> tuple[LibsignalPeer, LibsignalPeer]:
    peers = {V090: libsignal_090, VCURRENT: libsignal_current}
    a, b = request.param
    return peers[a], peers[b]


def _start_session(
    pa: LibsignalPeer, pb: LibsignalPeer, *, one_time_pre_key: bool = True
) -> tuple[Identity, Identity]:
    alice = pa.new_identity("alice")
    bob = pb.new_identity("bob")
    bundle = pb.generate_bundle(bob, include_pre_key=one_time_pre_key)
    pa.process_bundle(alice, bob.address, bundle)
    return alice, bob


def _conversation(pa: LibsignalPeer, pb: LibsignalPeer) -> None:
    """Alice (pa) fetches Bob's (pb) bundle, sends 5, Bob replies, with out-of-order delivery."""
    alice, bob = _start_session(pa, pb)

    first = [pa.encrypt(alice, bob.address, f"hello {i}".encode()) for i in range(5)]
    # Until Bob answers, every message is a PreKeySignalMessage carrying the same base key.
    assert [c.type for c in first] == [3] * 5
    for i in (2, 0, 4, 1, 3):  # out of order, starting with a later message
        assert pb.decrypt(bob, alice.address, first[i]) == f"hello {i}".encode()
    assert pb.remote_identity(bob, alice.address) == alice.identity_key
    assert pb.session_info(bob, alice.address)["remote_registration_id"] == alice.registration_id

    replies = [pb.encrypt(bob, alice.address, f"reply {i}".encode()) for i in range(4)]
    assert [c.type for c in replies] == [2] * 4
    for i in (3, 1, 0):  # reply 2 is lost for now
        assert pa.decrypt(alice, bob.address, replies[i]) == f"reply {i}".encode()

    # Alice has heard from Bob: her messages are now plain SignalMessages (new DH ratchet step).
    second = [pa.encrypt(alice, bob.address, f"again {i}".encode()) for i in range(3)]
    assert [c.type for c in second] == [2] * 3
    for i in (1, 2, 0):
        assert pb.decrypt(bob, alice.address, second[i]) == f"again {i}".encode()

    # The lost reply from an older chain still decrypts late (skipped message key kept).
    assert pa.decrypt(alice, bob.address, replies[2]) == b"reply 2"

    # A few more turns each way, each one a DH ratchet step.
    for turn in range(3):
        c = pb.encrypt(bob, alice.address, f"b{turn}".encode())
        assert pa.decrypt(alice, bob.address, c) == f"b{turn}".encode()
        c = pa.encrypt(alice, bob.address, f"a{turn}".encode())
        assert pb.decrypt(bob, alice.address, c) == f"a{turn}".encode()

    # Replays are rejected, and the peer process survives them.
    with pytest.raises(LibsignalError) as exc:
        pb.decrypt(bob, alice.address, second[0])
    assert "duplicate" in str(exc.value).lower() or "old counter" in str(exc.value).lower()
    with pytest.raises(LibsignalError):
        pa.decrypt(alice, bob.address, replies[0])
    assert pa.hello()["libsignal_version"] == pa.libsignal_version


def test_versions(libsignal_090: LibsignalPeer, libsignal_current: LibsignalPeer) -> None:
    assert libsignal_090.libsignal_version == "0.90.0"
    assert libsignal_current.libsignal_version == "0.103.0"


def test_conversation_same_version(libsignal: LibsignalPeer) -> None:
    _conversation(libsignal, libsignal)


def test_conversation_cross_version(cross_pair: tuple[LibsignalPeer, LibsignalPeer]) -> None:
    _conversation(*cross_pair)


def test_bundle_without_one_time_pre_key(libsignal: LibsignalPeer) -> None:
    alice, bob = _start_session(libsignal, libsignal, one_time_pre_key=False)
    c = libsignal.encrypt(alice, bob.address, b"no opk")
    assert c.type == 3
    assert libsignal.parse_message(c)["pre_key_id"] is None
    assert libsignal.decrypt(bob, alice.address, c) == b"no opk"


def test_bundle_encoding(libsignal: LibsignalPeer) -> None:
    bob = libsignal.new_identity("bob")
    b = libsignal.generate_bundle(bob, pre_key_id=77, signed_pre_key_id=5, kyber_pre_key_id=9)
    assert (b.pre_key_id, b.signed_pre_key_id, b.kyber_pre_key_id) == (77, 5, 9)
    assert b.registration_id == bob.registration_id and b.device_id == 1
    assert b.identity_key == bob.identity_key
    assert b.pre_key is not None
    for key in (b.identity_key, b.pre_key, b.signed_pre_key):
        assert len(key) == EC_KEY_LEN and key[0] == 0x05
    assert len(b.kyber_pre_key) == KEM_KEY_LEN and b.kyber_pre_key[0] == 0x08
    assert len(b.signed_pre_key_signature) == len(b.kyber_pre_key_signature) == SIGNATURE_LEN
    # Prekey signatures are XEdDSA by the identity key over the serialized public keys.
    assert libsignal.verify(b.identity_key, b.signed_pre_key, b.signed_pre_key_signature)
    assert libsignal.verify(b.identity_key, b.kyber_pre_key, b.kyber_pre_key_signature)


def test_message_encoding(libsignal: LibsignalPeer) -> None:
    alice, bob = _start_session(libsignal, libsignal)
    c = libsignal.encrypt(alice, bob.address, b"x" * 256)
    assert c.body[0] == 0x44  # version byte: current version 4, minimum 4
    info = libsignal.parse_message(c)
    assert info["version"] == 4
    assert info["registration_id"] == alice.registration_id
    assert info["signal_message"]["counter"] == 0
    libsignal.decrypt(bob, alice.address, c)
    r = libsignal.encrypt(bob, alice.address, b"y")
    assert r.body[0] == 0x44
    assert libsignal.parse_message(r)["signal_message"]["version"] == 4


def test_rejects_bad_bundle_signatures(libsignal: LibsignalPeer) -> None:
    alice = libsignal.new_identity("alice")
    bob = libsignal.new_identity("bob")
    good = libsignal.generate_bundle(bob)
    flip = bytes([good.signed_pre_key_signature[0] ^ 1]) + good.signed_pre_key_signature[1:]
    bad = [
        good.__class__(**{**good.__dict__, "signed_pre_key_signature": flip}),
        good.__class__(
            **{**good.__dict__, "kyber_pre_key_signature": good.signed_pre_key_signature}
        ),
    ]
    for bundle in bad:
        with pytest.raises(LibsignalError, match="signature"):
            libsignal.process_bundle(alice, bob.address, bundle)
    libsignal.process_bundle(alice, bob.address, good)


def test_signatures(libsignal: LibsignalPeer) -> None:
    me = libsignal.new_identity("signer")
    msg = bytes(range(100))
    sig = libsignal.sign(me, msg)
    assert len(sig) == SIGNATURE_LEN
    assert libsignal.verify(me.identity_key, msg, sig)
    assert not libsignal.verify(me.identity_key, msg + b"!", sig)
    priv, pub = libsignal.generate_key_pair()
    assert libsignal.public_key(priv) == pub
    assert libsignal.verify(pub, msg, libsignal.sign(priv, msg))
    # XEdDSA is randomized: two signatures of one message differ, both verify.
    assert libsignal.sign(priv, msg) != libsignal.sign(priv, msg)


def test_primitives(libsignal: LibsignalPeer) -> None:
    a_priv, a_pub = libsignal.generate_key_pair()
    b_priv, b_pub = libsignal.generate_key_pair()
    assert libsignal.agree(a_priv, b_pub) == libsignal.agree(b_priv, a_pub)
    # RFC 5869 test case 1.
    okm = libsignal.hkdf(
        42,
        bytes.fromhex("0b" * 22),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        bytes.fromhex("000102030405060708090a0b0c"),
    )
    assert okm.hex().startswith("3cb25f25faacd57a90434f64d0362f2a")


def test_fixed_identity_key(libsignal: LibsignalPeer) -> None:
    priv, pub = libsignal.generate_key_pair()
    me = libsignal.create_identity("fixed-key-user", 3, registration_id=1234, identity_private=priv)
    assert (me.identity_key, me.identity_private, me.registration_id) == (pub, priv, 1234)


def test_bad_inputs_do_not_kill_the_peer(libsignal: LibsignalPeer) -> None:
    alice, bob = _start_session(libsignal, libsignal)
    libsignal.decrypt(bob, alice.address, libsignal.encrypt(alice, bob.address, b"hi"))
    libsignal.decrypt(alice, bob.address, libsignal.encrypt(bob, alice.address, b"hi"))
    # A SignalMessage is MAC-covered end to end (unlike a PreKey message's registration id).
    c = libsignal.encrypt(alice, bob.address, b"tamper me")
    assert c.type == 2
    rng = random.Random(1)
    for _ in range(8):
        pos = rng.randrange(len(c.body))
        bad = bytearray(c.body)
        bad[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(LibsignalError):
            libsignal.decrypt(bob, alice.address, Ciphertext(c.type, bytes(bad)))
    for body in (b"", b"\x44", b"garbage" * 10):
        for t in (2, 3):
            with pytest.raises(LibsignalError):
                libsignal.decrypt(bob, alice.address, t, body)
    with pytest.raises(LibsignalError, match="message type"):
        libsignal.decrypt(bob, alice.address, 7, c.body)
    with pytest.raises(LibsignalError, match="unknown local identity"):
        libsignal.encrypt(Address("nobody", 1), bob.address, b"x")
    with pytest.raises(LibsignalError, match="unknown op"):
        libsignal.request("no_such_op")
    # The untampered message still decrypts: failures did not move the session.
    assert libsignal.decrypt(bob, alice.address, c) == b"tamper me"


def test_untrusted_identity_change(libsignal: LibsignalPeer) -> None:
    alice, bob = _start_session(libsignal, libsignal)
    libsignal.decrypt(bob, alice.address, libsignal.encrypt(alice, bob.address, b"hi"))
    # Someone else claims Alice's address with another identity key: Bob's store refuses it.
    mallory = libsignal.create_identity(f"mallory-as-{alice.name}", 1)
    libsignal.process_bundle(mallory, bob.address, libsignal.generate_bundle(bob))
    forged = libsignal.encrypt(mallory, bob.address, b"forged")
    # Deliver it as if from Alice's address.
    with pytest.raises(LibsignalError, match="untrusted identity"):
        libsignal.decrypt(bob, alice.address, forged)


# --- SPQR -----------------------------------------------------------------------------------
# A PreKey message with the `pq_ratchet` field (SignalMessage field 5) removed is what a peer
# without SPQR would send (apart from the MAC). 0.103 rejects it before checking the MAC with
# "post-quantum ratchet error: Minimum version"; 0.90 accepts the missing SPQR data and only
# fails on the (now wrong) MAC. The top-level message is generic; the reason is in the log.


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _encode_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, raw bytes of the whole field, payload) for a flat protobuf."""
    i, out = 0, []
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        if key & 7 == 0:
            _, i = _varint(buf, i)
            out.append((key >> 3, buf[start:i], b""))
        elif key & 7 == 2:
            n, i = _varint(buf, i)
            out.append((key >> 3, buf[start : i + n], buf[i : i + n]))
            i += n
        else:
            raise ValueError(f"unexpected wire type {key & 7}")
    return out


def _strip_pq_ratchet_signal(message: bytes) -> bytes:
    """Drop field 5 from a SignalMessage (version || protobuf || mac(8)), keeping the MAC."""
    body = b"".join(raw for n, raw, _ in _fields(message[1:-8]) if n != 5)
    return message[:1] + body + message[-8:]


def _strip_pq_ratchet(prekey_message: bytes) -> bytes:
    out = bytearray(prekey_message[:1])
    for number, raw, payload in _fields(prekey_message[1:]):
        if number == 4:  # the inner SignalMessage
            inner = _strip_pq_ratchet_signal(payload)
            raw = raw[:1] + _encode_varint(len(inner)) + inner
        out += raw
    return bytes(out)


def test_spqr_in_use(libsignal: LibsignalPeer) -> None:
    alice, bob = _start_session(libsignal, libsignal)
    c = libsignal.encrypt(alice, bob.address, b"x")
    assert libsignal.parse_message(c)["signal_message"]["pq_ratchet"] != ""


def _assert_spqr_rejection(peer: LibsignalPeer, error: LibsignalError) -> None:
    if peer.version == VCURRENT:
        assert "decryption failed" in error.message
        assert "post-quantum ratchet error: Minimum version" in str(error)
    else:
        assert "Minimum version" not in str(error)
        assert "MAC verification failed" in str(error)


def test_spqr_missing(libsignal: LibsignalPeer) -> None:
    alice, bob = _start_session(libsignal, libsignal)
    c = libsignal.encrypt(alice, bob.address, b"x")
    stripped = Ciphertext(3, _strip_pq_ratchet(c.body))
    assert libsignal.parse_message(stripped)["signal_message"]["pq_ratchet"] == ""
    with pytest.raises(LibsignalError) as exc:
        libsignal.decrypt(bob, alice.address, stripped)
    _assert_spqr_rejection(libsignal, exc.value)
    assert libsignal.decrypt(bob, alice.address, c) == b"x"

    reply = libsignal.encrypt(bob, alice.address, b"y")
    assert reply.type == 2
    stripped = Ciphertext(2, _strip_pq_ratchet_signal(reply.body))
    assert libsignal.parse_message(stripped)["signal_message"]["pq_ratchet"] == ""
    with pytest.raises(LibsignalError) as exc:
        libsignal.decrypt(alice, bob.address, stripped)
    _assert_spqr_rejection(libsignal, exc.value)
    assert libsignal.decrypt(alice, bob.address, reply) == b"y"
