"""Golden transcript: fixed keys and randomness → fixed bytes, checked in.

Any change to the key schedule, the wire encoding or the saved-state format changes these
bytes, so it cannot happen by accident. The KEM step uses ML-KEM-1024 KAT record 0 (a valid
key, ciphertext and shared secret), so these bytes do not depend on our own seeded
encapsulation (``client/crypto/mlkem_encaps.py``), which has known-answer tests of its own.

Also keeps every saved-state format readable: ``fixtures/session_record_v1.bin`` (format 1,
before SPQR) was written by this transcript when messages carried no SPQR; it must load and
keep decrypting the message that followed it then (``session_record_v1_next_message.json``),
and a record re-serialized from it (now format 2) must read back the same.
``fixtures/session_record_v2.bin`` (format 2, with the SPQR state) is written by the current
transcript and must load, re-serialize identically and decrypt the transcript's last message.

The transcript changed when every message started carrying SPQR (issue 13): the ``pq_ratchet``
field and the SPQR-salted message keys change every message's bytes, and SPQR's ML-KEM steps
draw from each party's seeded rng, so ``encrypt`` is given it.

Regenerate (only for an intended change, and say why in the commit):
``PARLEY_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/crypto/test_golden.py``. The v1 state
fixture is never regenerated: a new format gets a new fixture next to it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from client.crypto import pqxdh, spqr_ratchet
from client.crypto.keys import IdentityKeyPair, KeyPair, KyberKeyPair, kyber_shared_secret
from client.crypto.pqxdh import PreKeyBundle
from client.crypto.session import (
    SessionRecord,
    initialize_initiator_state,
)
from client.crypto.wire import SignalMessage
from tests.crypto.support import PreKeys, deterministic_rng

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden_transcript.json"
STATE_V1 = FIXTURES / "session_record_v1.bin"
STATE_V1_NEXT = FIXTURES / "session_record_v1_next_message.json"
STATE_V2 = FIXTURES / "session_record_v2.bin"


def _key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def build_transcript(kem: dict[str, str]) -> tuple[dict[str, Any], bytes, SessionRecord]:
    """Run the scripted conversation. Returns (transcript, bob's record before the last
    message as bytes, bob's live record at that point)."""
    rng_a, rng_b = deterministic_rng(b"alice"), deterministic_rng(b"bob")
    alice_id = IdentityKeyPair.from_private_bytes(_key("alice identity"))
    bob_id = IdentityKeyPair.from_private_bytes(_key("bob identity"))
    signed = KeyPair.from_private_bytes(_key("bob signed prekey"))
    one_time = KeyPair.from_private_bytes(_key("bob one-time prekey"))
    kyber = KyberKeyPair(bytes.fromhex(kem["seed"]))
    prekeys = PreKeys({7: signed}, {9: kyber}, {5: one_time})
    bundle = PreKeyBundle(
        registration_id=2222,
        device_id=1,
        pre_key_id=5,
        pre_key=one_time.public_key,
        signed_pre_key_id=7,
        signed_pre_key=signed.public_key,
        signed_pre_key_signature=bob_id.sign(signed.public_key.serialize(), bytes(64)),
        kyber_pre_key_id=9,
        kyber_pre_key=kyber.public_key,
        kyber_pre_key_signature=bob_id.sign(kyber.public_key.serialize(), b"\x01" * 64),
        identity_key=bob_id.public_key,
    )
    bundle.verify_signatures()
    ciphertext = b"\x08" + bytes.fromhex(kem["ct"])
    kem_secret = kyber_shared_secret(bytes.fromhex(kem["ss"]), ciphertext[1:])
    base_key = KeyPair.from_private_bytes(_key("alice base key"))
    secrets = pqxdh.initiator_secrets(alice_id, base_key, bundle, kem_secret)
    alice = SessionRecord(
        initialize_initiator_state(
            our_identity=alice_id,
            our_registration_id=1111,
            bundle=bundle,
            secrets=secrets,
            base_key=base_key,
            kyber_ciphertext=ciphertext,
            sending_ratchet_key=KeyPair.generate(rng_a),
        )
    )
    bob = SessionRecord()
    out: dict[str, Any] = {
        "signed_pre_key_signature": bundle.signed_pre_key_signature.hex(),
        "kyber_pre_key_signature": bundle.kyber_pre_key_signature.hex(),
        "root_key": secrets.root_key.hex(),
        "chain_key": secrets.chain_key.hex(),
        "pqr_auth_key": secrets.pqr_auth_key.hex(),
        "messages": [],
    }
    messages: list[dict[str, Any]] = out["messages"]

    rngs = {"alice": rng_a, "bob": rng_b}

    def send(record: SessionRecord, who: str, text: str) -> bytes:
        msg = record.encrypt(text.encode(), rng=rngs[who])
        messages.append({"from": who, "type": msg.type, "hex": msg.serialized.hex()})
        return msg.serialized

    a1, a2, a3 = (send(alice, "alice", f"alice {i}") for i in range(3))
    for data, text in ((a2, "alice 1"), (a1, "alice 0"), (a3, "alice 2")):
        result = bob.decrypt_prekey_message(
            data, our_identity=bob_id, our_registration_id=2222, prekeys=prekeys, rng=rng_b
        )
        assert result.plaintext == text.encode()
    b1, b2 = send(bob, "bob", "bob 0"), send(bob, "bob", "bob 1")
    assert alice.decrypt(b2, rng=rng_a) == b"bob 1"
    assert alice.decrypt(b1, rng=rng_a) == b"bob 1"[:-1] + b"0"
    a4 = send(alice, "alice", "alice 3")
    a5 = send(alice, "alice", "alice 4")
    assert bob.decrypt(a4, rng=rng_b) == b"alice 3"
    saved = bob.to_bytes()
    out["bob_state_sha256"] = hashlib.sha256(saved).hexdigest()
    out["alice_state_sha256"] = hashlib.sha256(alice.to_bytes()).hexdigest()
    out["last_message_plaintext"] = "alice 4"
    assert a5
    return out, saved, bob


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text())
    return data


def test_golden_transcript_is_up_to_date() -> None:
    golden = _load()
    transcript, saved, _ = build_transcript(golden["kem"])
    if os.environ.get("PARLEY_REGENERATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"kem": golden["kem"], **transcript}, indent=1) + "\n")
        if not STATE_V2.exists():
            STATE_V2.write_bytes(saved)
        golden = _load()
    expected = {k: v for k, v in golden.items() if k != "kem"}
    assert transcript == expected


def test_state_format_v1_fixture_still_loads_and_decrypts() -> None:
    following = json.loads(STATE_V1_NEXT.read_text())
    record = SessionRecord.from_bytes(STATE_V1.read_bytes())
    assert record.current is not None and record.current.spqr == spqr_ratchet.VERSION_0
    again = record.to_bytes()
    assert SessionRecord.from_bytes(again).to_bytes() == again
    assert record.decrypt(bytes.fromhex(following["hex"])) == following["plaintext"].encode()
    # It keeps working: a reply without SPQR, as the session had none.
    reply = record.encrypt(b"still here")
    assert SignalMessage.parse(reply.serialized).pq_ratchet == b""


def test_state_format_v2_fixture_loads_and_decrypts() -> None:
    golden = _load()
    data = STATE_V2.read_bytes()
    record = SessionRecord.from_bytes(data)
    assert record.to_bytes() == data
    assert record.current is not None and record.current.spqr.version == 1
    last = bytes.fromhex(golden["messages"][-1]["hex"])
    assert record.decrypt(last) == golden["last_message_plaintext"].encode()
