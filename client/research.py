"""Protocol research runner: watch, reproduce and verify PQXDH and the Double Ratchet.

Pure Python and in-memory: two parties, Alice and Bob, hold a short scripted conversation
(optionally with out-of-order delivery) through :mod:`client.crypto`, and every protocol step
is reported through the tracer hook of :mod:`client.crypto.trace`. This module turns those
events into *steps* that list every input and output a researcher needs to recompute the
step by hand, named as Signal's PQXDH and Double Ratchet specifications name them (``IK_A``,
``EK_A``, ``SPK_B``, ``OPK_B``, ``PQPK_B``, ``SK``, ``RK``, ``CK``, ``MK`` ...; see
:data:`LEGEND`), and renders them as text or as JSON lines.

* ``seed``: the core takes its randomness as a parameter (``rng``), so a seeded run threads
  one deterministic byte stream per party through key generation, signatures, the ML-KEM
  encapsulation and every ratchet key: the same seed prints byte-identical traces.
* Secrets (private keys, DH outputs, chain and message keys, plaintexts) are shown only with
  ``reveal_secrets=True`` (research mode); otherwise their name and length are printed.
* :func:`verify` recomputes every step from the *printed* values, with primitives taken
  from outside the session code (``cryptography``'s X25519, HKDF, AES and ML-KEM, the
  standard library's HMAC, the XEdDSA verifier), and checks that a name used in several
  steps (both parties derive ``RK_1``) always has the same value. It works on a trace saved
  elsewhere (JSON lines), so a trace can be checked by someone who did not produce it.

Used by ``parley trace``; also usable directly::

    events = run_demo_conversation(messages=2, seed=1)
    print(render_text(events, reveal_secrets=True))
    report = verify(events)
    assert report.ok, report.render()
"""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from client.crypto import xeddsa
from client.crypto.errors import InvalidMessageError, MissingPreKeyError
from client.crypto.keys import (
    IdentityKeyPair,
    KeyPair,
    KyberKeyPair,
    Rng,
    default_rng,
    deterministic_rng,
)
from client.crypto.pqxdh import DISCONTINUITY_BYTES, SECRETS_LENGTH, PreKeyBundle
from client.crypto.protobuf import decode_fields
from client.crypto.ratchet.chain_key import CHAIN_KEY_SEED, MESSAGE_KEY_SEED
from client.crypto.ratchet.message_keys import MESSAGE_KEYS_INFO, MESSAGE_KEYS_LENGTH
from client.crypto.session import CiphertextMessage, SessionRecord
from client.crypto.trace import (
    EventKind,
    TraceEvent,
    Tracer,
    TraceValue,
    collecting_tracer,
    labelled,
)
from client.crypto.wire import MAC_LENGTH, VERSION_BYTE, SignalMessage

__all__ = [
    "HIDDEN",
    "LEGEND",
    "Check",
    "VerifyReport",
    "parse_jsonl",
    "records",
    "render_jsonl",
    "render_text",
    "run_demo_conversation",
    "verify",
]

HIDDEN: Final = "<hidden>"
"""What a secret shows as unless the renderer is told to reveal it."""
TRACE_START: Final = "trace.start"
"""The first event of a demo run: its seed and script (rendered as the trace header)."""
ROOT_KDF_LENGTH: Final = 64

LEGEND: Final[tuple[tuple[str, str], ...]] = (
    ("IK_A, IK_B", "identity keys of Alice (initiator) and Bob (responder), 0x05 || u"),
    ("EK_A", "Alice's ephemeral (base) key for this PQXDH run"),
    ("SPK_B, OPK_B", "Bob's signed prekey and one-time prekey (Curve25519, 0x05 || u)"),
    ("PQPK_B", "Bob's Kyber-1024 prekey, 0x08 || 1568 bytes"),
    ("X.private", "private half of X: 32 clamped bytes; for PQPK_B the 64-byte ML-KEM seed"),
    ("Sig(IK_B, X)", "XEdDSA signature by IK_B over the serialized key X"),
    ("DH1..DH4", "DH(IK_A,SPK_B), DH(EK_A,IK_B), DH(EK_A,SPK_B), DH(EK_A,OPK_B) (X25519)"),
    ("CT, SS", "KEM ciphertext (0x08 || 1568 bytes) and the 32-byte KEM shared secret"),
    ("F, salt_0", "32 bytes 0xFF prefixed to the IKM; the 32-zero-byte HKDF salt"),
    ("IKM, SK", "F || DH1 || DH2 || DH3 [|| DH4] || SS, and SK = HKDF(salt_0, IKM, info, 96)"),
    ("RK_n", "root keys: RK_0 from SK; RK_n || CK = KDF_RK(RK_n-1, DHR_n)"),
    ("DHR_n", "the ratchet Diffie-Hellman output that moves RK_n-1 to RK_n"),
    ("A1, A2, B1, ...", "ratchet key pairs of Alice and Bob; B0 is SPK_B, Bob's first"),
    ("CK_X.n", "chain key n of the chain on ratchet key X (CK_B0.0 is the second part of SK)"),
    ("SPQR_auth", "third part of SK, the SPQR authentication key (starts SPQR's chain)"),
    ("SPQR_key[X.n]", "SPQR's key for message n of chain X: the salt of its message keys"),
    ("pq_ratchet[X.n]", "SPQR message in field 5: version, epoch, index, type [, chunk]"),
    ("SPQR_root_e", "SPQR chain root after epoch e; seed_A2B_e, seed_B2A_e its two chains"),
    ("MK_X.n", "message key seed n of chain X = HMAC-SHA256(CK_X.n, 0x01)"),
    ("MK_X.n.*", "cipher_key || mac_key || iv = HKDF(SPQR_key[X.n] or salt_0, MK_X.n, info, 80)"),
    ("[X.n]", "the message sent with MK_X.n: plaintext, ciphertext, protobuf, MAC..."),
    ("MAC_input", "IK_sender || IK_receiver || version byte || protobuf (the MAC's input)"),
)
"""Every symbol a trace uses, with what it stands for (printed at the top of a trace)."""


# --- the demo conversation ----------------------------------------------------------------


class _PreKeys:
    def __init__(self, signed: KeyPair, kyber: KyberKeyPair, one_time: KeyPair) -> None:
        self._signed, self._kyber, self._one_time = signed, kyber, one_time

    def signed_pre_key(self, key_id: int) -> KeyPair:
        return self._signed

    def kyber_pre_key(self, key_id: int) -> KyberKeyPair:
        return self._kyber

    def one_time_pre_key(self, key_id: int) -> KeyPair:
        if key_id != 1:
            raise MissingPreKeyError(f"no one-time prekey {key_id}")
        return self._one_time


def _party_rngs(seed: int | None) -> tuple[Rng, Rng]:
    """One byte stream per party: independent of the order in which the two draw."""
    if seed is None:
        return default_rng, default_rng
    label = f"parley-trace-seed:{seed}:".encode()
    return deterministic_rng(label + b"alice"), deterministic_rng(label + b"bob")


def run_demo_conversation(
    messages: int = 4,
    out_of_order: bool = True,
    tracer: Tracer | None = None,
    *,
    seed: int | None = None,
) -> list[TraceEvent]:
    """Script a conversation between two in-memory parties and trace it.

    Alice fetches Bob's bundle (PQXDH), sends ``messages`` messages (delivered in reverse
    order when ``out_of_order``, so Bob stores and later uses skipped keys), Bob replies with
    as many (one held back and delivered last), and Alice answers once more, so that both
    sides take DH ratchet steps.

    Args:
        messages: messages per burst (at least 1).
        out_of_order: deliver bursts out of order.
        tracer: also send every event here (e.g. to print live); events are returned anyway.
        seed: make the run reproducible: every random byte (keys, signature nonces, the KEM
            encapsulation, ratchet keys) comes from a stream derived from it. ``None`` draws
            from the operating system, so two runs differ.

    Returns:
        All trace events, in order, each labelled with its party; the first one
        (kind ``trace.start``) records the seed and the script.
    """
    if messages < 1:
        raise ValueError("messages must be at least 1")
    collect, events = collecting_tracer()

    def both(event: TraceEvent) -> None:
        collect(event)
        if tracer is not None:
            tracer(event)

    both(
        TraceEvent(TRACE_START, {"seed": seed, "messages": messages, "out_of_order": out_of_order})
    )
    trace_alice, trace_bob = labelled(both, "alice"), labelled(both, "bob")

    def note(party: str, text: str) -> None:
        both(TraceEvent(EventKind.NOTE, {"text": text}, party=party))

    rng_a, rng_b = _party_rngs(seed)

    def nonce(rng: Rng) -> bytes | None:
        return None if rng is default_rng else rng(xeddsa.NONCE_LENGTH)

    alice_id, bob_id = IdentityKeyPair.generate(rng_a), IdentityKeyPair.generate(rng_b)
    signed, one_time = KeyPair.generate(rng_b), KeyPair.generate(rng_b)
    kyber = KyberKeyPair.generate(rng_b)
    bundle = PreKeyBundle(
        registration_id=2,
        device_id=1,
        pre_key_id=1,
        pre_key=one_time.public_key,
        signed_pre_key_id=1,
        signed_pre_key=signed.public_key,
        signed_pre_key_signature=bob_id.sign(signed.public_key.serialize(), nonce(rng_b)),
        kyber_pre_key_id=1,
        kyber_pre_key=kyber.public_key,
        kyber_pre_key_signature=bob_id.sign(kyber.public_key.serialize(), nonce(rng_b)),
        identity_key=bob_id.public_key,
    )
    prekeys = _PreKeys(signed, kyber, one_time)
    alice, bob = SessionRecord(), SessionRecord()

    note("alice", "fetches Bob's prekey bundle, checks its signatures and runs PQXDH")
    alice.process_prekey_bundle(
        bundle, our_identity=alice_id, our_registration_id=1, rng=rng_a, tracer=trace_alice
    )

    def deliver_to_bob(msg: CiphertextMessage) -> bytes:
        if msg.type == 3:
            return bob.decrypt_prekey_message(
                msg.serialized,
                our_identity=bob_id,
                our_registration_id=2,
                prekeys=prekeys,
                rng=rng_b,
                tracer=trace_bob,
            ).plaintext
        return bob.decrypt(msg.serialized, rng=rng_b, tracer=trace_bob)

    burst = [
        alice.encrypt(f"hello {i}".encode(), rng=rng_a, tracer=trace_alice) for i in range(messages)
    ]
    order = list(reversed(range(messages))) if out_of_order else list(range(messages))
    note("bob", f"receives Alice's messages in order {order}")
    for i in order:
        deliver_to_bob(burst[i])

    replies = [
        bob.encrypt(f"reply {i}".encode(), rng=rng_b, tracer=trace_bob) for i in range(messages)
    ]
    late = replies.pop(0) if out_of_order and messages > 1 else None
    note("alice", "receives Bob's replies" + (" except the first" if late else ""))
    for msg in replies:
        alice.decrypt(msg.serialized, rng=rng_a, tracer=trace_alice)

    answer = alice.encrypt(b"answer", rng=rng_a, tracer=trace_alice)
    note("bob", "receives Alice's answer")
    deliver_to_bob(answer)
    if late is not None:
        note("alice", "receives Bob's delayed first reply from an older chain")
        alice.decrypt(late.serialized, rng=rng_a, tracer=trace_alice)
    return events


# --- steps: named inputs and outputs ------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    role: str
    name: str
    data: TraceValue
    secret: bool = False
    text: bool = False


@dataclass
class _Step:
    party: str
    kind: str
    title: str
    formula: str = ""
    values: list[_Value] = field(default_factory=list)

    def add(
        self, role: str, name: str, data: TraceValue, *, secret: bool = False, text: bool = False
    ) -> None:
        self.values.append(_Value(role, name, data, secret, text))


class _Names:
    """Assigns specification names to values, the same name to the same value wherever it
    appears (so both parties' ``RK_1`` carry one name, and :func:`verify` can compare)."""

    def __init__(self) -> None:
        self.keys: dict[bytes, str] = {}
        self.chains: dict[bytes, str] = {}
        self.roots: dict[bytes, int] = {}
        self.ratchet_counts: dict[str, int] = {}

    def key(self, data: TraceValue, name: str) -> str:
        """The name of a public key, registering ``name`` if it is new."""
        if isinstance(data, bytes):
            return self.keys.setdefault(data, name)
        return name

    def ratchet(self, party: str, public: TraceValue) -> str:
        """The name of a ratchet key; a new key of ``party`` gets its next number."""
        if not isinstance(public, bytes):
            return "?"
        if public not in self.keys:
            letter = party[:1].upper() or "X"
            count = self.ratchet_counts.get(letter, 0) + 1
            self.ratchet_counts[letter] = count
            self.keys[public] = self.chains[public] = f"{letter}{count}"
        return self.keys[public]

    def chain(self, public: TraceValue) -> str:
        if isinstance(public, bytes):
            return self.chains.get(public) or self.keys.get(public, "?")
        return "?"

    def root(self, key: TraceValue) -> str:
        if not isinstance(key, bytes):
            return "RK_?"
        return f"RK_{self.roots.setdefault(key, len(self.roots))}"


def _get(event: TraceEvent, key: str) -> TraceValue:
    if key in event.public:
        return event.public[key]
    return event.secret.get(key)


def _other(party: str) -> str:
    return {"alice": "bob", "bob": "alice"}.get(party, "peer")


def _signature_step(event: TraceEvent, names: _Names) -> _Step:
    which = event.public.get("prekey")
    signer = names.key(event.public.get("signer"), "IK_B")
    key = names.key(event.public.get("message"), "SPK_B" if which == "signed_pre_key" else "PQPK_B")
    signature = event.public.get("signature")
    step = _Step(
        event.party,
        event.kind,
        f"XEdDSA check of the signature on {key} before using the bundle",
        f"valid = XEdDSA-verify({signer}, message = {key}, Sig({signer}, {key})); the Edwards "
        "sign bit is bit 7 of Sig[63], cleared before the Ed25519 check",
    )
    step.add("key_id", f"{key} id", event.public.get("key_id"))
    step.add("signer", signer, event.public.get("signer"))
    step.add("message", key, event.public.get("message"))
    step.add("signature", f"Sig({signer}, {key})", signature)
    if isinstance(signature, bytes) and len(signature) == xeddsa.SIGNATURE_LENGTH:
        step.add("sign_bit", "sign bit", signature[63] >> 7)
    step.add("valid", "valid", event.public.get("valid"))
    return step


def _pqxdh_step(event: TraceEvent, names: _Names) -> _Step:
    initiator = event.kind == EventKind.PQXDH_INITIATOR
    if initiator:
        ik_a, ik_b = event.public.get("our_identity"), event.public.get("their_identity")
        ek_a = event.public.get("base_key")
    else:
        ik_a, ik_b = event.public.get("their_identity"), event.public.get("our_identity")
        ek_a = event.public.get("their_base_key")
    for data, name in ((ik_a, "IK_A"), (ik_b, "IK_B"), (ek_a, "EK_A")):
        names.key(data, name)
    spk = event.public.get("signed_pre_key")
    names.key(spk, "SPK_B")
    if isinstance(spk, bytes):
        names.chains.setdefault(spk, "B0")
    names.key(event.public.get("pre_key"), "OPK_B")
    names.key(event.public.get("kyber_pre_key"), "PQPK_B")
    one_time = event.public.get("pre_key") is not None
    dhs = ["DH1", "DH2", "DH3", *(["DH4"] if one_time else [])]
    step = _Step(
        event.party,
        event.kind,
        "PQXDH as the initiator: Alice's side of the key agreement"
        if initiator
        else "PQXDH as the responder: Bob's side, from the PreKeySignalMessage",
        "IKM = F || " + " || ".join(dhs) + " || SS;  SK = HKDF-SHA256(salt_0, IKM, info, 96)"
        " = RK_0 || CK_B0.0 || SPQR_auth",
    )
    own = "_A" if initiator else "_B"

    def add_key(name: str, public: TraceValue, private: str, key_id: str = "") -> None:
        """A public key, its id in the bundle (Alice's view) and, for this party's own keys,
        the private half."""
        if key_id and initiator:
            step.add(f"{name} id", f"{name} id", event.public.get(key_id))
        step.add(name, name, public)
        if name.endswith(own):
            step.add(f"{name}.private", f"{name}.private", event.secret.get(private), secret=True)

    add_key("IK_A", ik_a, "our_identity_private")
    add_key("EK_A", ek_a, "base_key_private")
    add_key("IK_B", ik_b, "our_identity_private")
    add_key("SPK_B", spk, "signed_pre_key_private", "signed_pre_key_id")
    if one_time:
        add_key("OPK_B", event.public.get("pre_key"), "pre_key_private", "pre_key_id")
    add_key("PQPK_B", event.public.get("kyber_pre_key"), "kyber_pre_key_seed", "kyber_pre_key_id")
    step.add(
        "CT",
        names.key(event.public.get("kyber_ciphertext"), "CT"),
        event.public.get("kyber_ciphertext"),
    )
    step.add("SS", "SS", event.secret.get("kem_shared_secret"), secret=True)
    for dh, key in zip(dhs, ("dh1_ik_spk", "dh2_ek_ik", "dh3_ek_spk", "dh4_ek_opk"), strict=False):
        step.add(dh, dh, event.secret.get(key), secret=True)
    step.add("F", "F", DISCONTINUITY_BYTES)
    step.add("IKM", "IKM", event.secret.get("ikm"), secret=True)
    step.add("salt", "salt_0", bytes(32))
    step.add("info", "info_PQXDH", event.public.get("info"), text=True)
    step.add("length", "L", SECRETS_LENGTH)
    parts = [event.secret.get(k) for k in ("root_key", "chain_key", "pqr_auth_key")]
    sk = b"".join(p for p in parts if isinstance(p, bytes))
    step.add("SK", "SK", sk, secret=True)
    step.add("RK", names.root(parts[0]), parts[0], secret=True)
    step.add("CK", "CK_B0.0", parts[1], secret=True)
    step.add("SPQR_auth", "SPQR_auth", parts[2], secret=True)
    return step


def _kdf_rk_step(event: TraceEvent, names: _Names) -> _Step:
    ours, theirs = event.public.get("our_ratchet_key"), event.public.get("their_ratchet_key")
    sending = event.public.get("direction") == "sending"
    our_name = names.ratchet(event.party, ours)
    their_name = names.ratchet(_other(event.party), theirs)
    rk_in = names.root(event.secret.get("root_key"))
    rk_out = names.root(event.secret.get("next_root_key"))
    dhr = "DHR_" + rk_out.removeprefix("RK_")
    chain = names.chain(ours if sending else theirs)
    ck = f"CK_{chain}.0"
    step = _Step(
        event.party,
        event.kind,
        f"KDF_RK: {rk_in} and DH({our_name}, {their_name}) give {rk_out} and the "
        f"{'sending' if sending else 'receiving'} chain {ck}",
        f"{dhr} = X25519({our_name}.private, {their_name});  {rk_out} || {ck} = "
        f"HKDF-SHA256(salt = {rk_in}, {dhr}, info, 64)",
    )
    step.add("root_key", rk_in, event.secret.get("root_key"), secret=True)
    step.add("our_ratchet_key", our_name, ours)
    step.add(
        "our_ratchet_private",
        f"{our_name}.private",
        event.secret.get("our_ratchet_private"),
        secret=True,
    )
    step.add("their_ratchet_key", their_name, theirs)
    step.add("dh_output", dhr, event.secret.get("dh_output"), secret=True)
    step.add("info", "info_RK", event.public.get("info"), text=True)
    step.add("length", "L", ROOT_KDF_LENGTH)
    step.add("next_root_key", rk_out, event.secret.get("next_root_key"), secret=True)
    step.add("chain_key", ck, event.secret.get("chain_key"), secret=True)
    return step


def _kdf_ck_step(event: TraceEvent, chain: str, counter: int, kind: str, title: str) -> _Step:
    ck, mk, ck_next = f"CK_{chain}.{counter}", f"MK_{chain}.{counter}", f"CK_{chain}.{counter + 1}"
    step = _Step(
        event.party,
        kind,
        title,
        f"{mk} = HMAC-SHA256({ck}, 0x01);  {ck_next} = HMAC-SHA256({ck}, 0x02)",
    )
    step.add("chain_key", ck, event.secret.get("chain_key"), secret=True)
    step.add("message_key_constant", "0x01", MESSAGE_KEY_SEED)
    step.add("chain_key_constant", "0x02", CHAIN_KEY_SEED)
    step.add("message_key_seed", mk, event.secret.get("message_key_seed"), secret=True)
    step.add("next_chain_key", ck_next, event.secret.get("next_chain_key"), secret=True)
    return step


def _message_keys_step(event: TraceEvent, chain: str, counter: int) -> _Step:
    mk = f"MK_{chain}.{counter}"
    pq_salt = event.secret.get("pq_salt")
    salt_name = f"SPQR_key[{chain}.{counter}]" if pq_salt else "salt_0"
    step = _Step(
        event.party,
        "ratchet.message_keys",
        f"message keys for message {counter} of chain {chain}",
        f"{mk}.cipher_key || {mk}.mac_key || {mk}.iv = HKDF-SHA256({salt_name}, {mk}, info, 80)"
        + ("" if pq_salt else "  (no SPQR key: the absent salt is 32 zero bytes)"),
    )
    step.add("message_key_seed", mk, event.secret.get("message_key_seed"), secret=True)
    step.add(
        "salt",
        salt_name,
        pq_salt if isinstance(pq_salt, bytes) else bytes(32),
        secret=bool(pq_salt),
    )
    step.add("info", "info_MK", MESSAGE_KEYS_INFO, text=True)
    step.add("length", "L", MESSAGE_KEYS_LENGTH)
    for role in ("cipher_key", "mac_key", "iv"):
        step.add(role, f"{mk}.{role}", event.secret.get(role), secret=True)
    return step


def _message_step(event: TraceEvent, names: _Names, chain: str, counter: int) -> _Step:
    sending = event.kind == EventKind.ENCRYPT
    tag = f"[{chain}.{counter}]"
    mk = f"MK_{chain}.{counter}"
    sender = names.key(event.public.get("sender_identity"), "IK_?")
    receiver = names.key(event.public.get("receiver_identity"), "IK_?")
    wire = event.public.get("serialized")
    wire_bytes = wire if isinstance(wire, bytes) else b""
    step = _Step(
        event.party,
        event.kind,
        f"{'encrypt' if sending else 'decrypt'} message {counter} of chain {chain} "
        f"({sender} to {receiver})",
        f"ciphertext{tag} = AES-256-CBC({mk}.cipher_key, {mk}.iv, PKCS7(plaintext{tag}));  "
        f"MAC_input{tag} = {sender} || {receiver} || version || protobuf{tag};  "
        f"MAC{tag} = HMAC-SHA256({mk}.mac_key, MAC_input{tag})[:8];  "
        f"SignalMessage{tag} = version || protobuf{tag} || MAC{tag}",
    )
    step.add("plaintext", f"plaintext{tag}", event.secret.get("plaintext"), secret=True, text=True)
    step.add("cipher_key", f"{mk}.cipher_key", event.secret.get("cipher_key"), secret=True)
    step.add("iv", f"{mk}.iv", event.secret.get("iv"), secret=True)
    step.add("ciphertext", f"ciphertext{tag}", event.public.get("ciphertext"))
    ratchet_key = event.public.get("ratchet_key")
    step.add("ratchet_key", names.key(ratchet_key, chain), ratchet_key)
    step.add("counter", "counter", event.public.get("counter"))
    step.add("previous_counter", "PN", event.public.get("previous_counter"))
    step.add("version", "version", wire_bytes[:1])
    step.add("protobuf", f"protobuf{tag}", wire_bytes[1:-MAC_LENGTH])
    step.add("sender_identity", sender, event.public.get("sender_identity"))
    step.add("receiver_identity", receiver, event.public.get("receiver_identity"))
    step.add(
        "mac_input",
        f"MAC_input{tag}",
        _bytes(event.public.get("sender_identity"))
        + _bytes(event.public.get("receiver_identity"))
        + wire_bytes[:-MAC_LENGTH],
    )
    step.add("mac_key", f"{mk}.mac_key", event.secret.get("mac_key"), secret=True)
    step.add("mac", f"MAC{tag}", wire_bytes[-MAC_LENGTH:])
    step.add("wire", f"SignalMessage{tag}", wire)
    return step


def _prekey_wire_step(event: TraceEvent, names: _Names, tag: str, sent: bool) -> _Step:
    step = _Step(
        event.party,
        "wire.prekey_signal_message",
        f"PreKeySignalMessage{tag} {'sent' if sent else 'received'}: the PQXDH header around "
        f"SignalMessage{tag}",
        f"PreKeySignalMessage{tag} = version || protobuf{{1: OPK_B id, 2: EK_A, 3: IK_A, "
        f"4: SignalMessage{tag}, 5: registration id, 6: SPK_B id, 7: PQPK_B id, 8: CT}}",
    )
    step.add("version", "version", bytes((VERSION_BYTE,)))
    step.add("pre_key_id", "OPK_B id", event.public.get("pre_key_id"))
    step.add(
        "base_key", names.key(event.public.get("base_key"), "EK_A"), event.public.get("base_key")
    )
    step.add(
        "identity_key",
        names.key(event.public.get("identity_key"), "IK_A"),
        event.public.get("identity_key"),
    )
    step.add(
        "message",
        f"SignalMessage{tag}",
        event.public.get("message") or event.public.get("serialized"),
    )
    step.add("registration_id", "registration id", event.public.get("registration_id"))
    step.add("signed_pre_key_id", "SPK_B id", event.public.get("signed_pre_key_id"))
    step.add("kyber_pre_key_id", "PQPK_B id", event.public.get("kyber_pre_key_id"))
    step.add(
        "kyber_ciphertext",
        names.key(event.public.get("kyber_ciphertext"), "CT"),
        event.public.get("kyber_ciphertext"),
    )
    step.add("wire", f"PreKeySignalMessage{tag}", event.public.get("prekey_serialized"))
    return step


def _bytes(value: TraceValue) -> bytes:
    return value if isinstance(value, bytes) else b""


def _info_step(event: TraceEvent, names: _Names) -> _Step:
    """Events that report a decision rather than a computation (nothing to recompute)."""
    titles = {
        EventKind.SESSION_INITIALIZED: "session state initialized ({role})",
        EventKind.DH_RATCHET: "DH ratchet step: a new ratchet key from the peer",
        EventKind.SKIPPED_KEY_DROPPED: "oldest stored message key dropped (limit reached)",
        EventKind.DECRYPT_FAILED: "decryption failed with the {session} session",
        EventKind.SESSION_ARCHIVED: "previous session archived",
    }
    title = titles.get(event.kind, event.kind).format_map(_Default(event.public))
    step = _Step(event.party, event.kind, title)
    for key, value in event.public.items():
        if key.endswith("ratchet_key") and isinstance(value, bytes):
            owner = event.party if key.startswith(("our", "sending")) else _other(event.party)
            step.add(key, names.ratchet(owner, value), value)
        else:
            step.add(key, key, value)
    return step


class _Default(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def _steps(events: Iterable[TraceEvent]) -> tuple[dict[str, TraceValue], list[_Step]]:
    """Turn core events into named steps; returns the run's header fields and the steps."""
    names = _Names()
    header: dict[str, TraceValue] = {}
    steps: list[_Step] = []
    for event in events:
        kind = event.kind
        if kind == TRACE_START:
            header = dict(event.public)
        elif kind == EventKind.NOTE:
            steps.append(_Step(event.party, kind, str(event.public.get("text", ""))))
        elif kind == EventKind.SIGNATURE_CHECK:
            steps.append(_signature_step(event, names))
        elif kind in (EventKind.PQXDH_INITIATOR, EventKind.PQXDH_RESPONDER):
            steps.append(_pqxdh_step(event, names))
        elif kind == EventKind.KDF_RK:
            steps.append(_kdf_rk_step(event, names))
        elif kind in (EventKind.ENCRYPT, EventKind.DECRYPT):
            steps += _message_steps(event, names)
        elif kind == EventKind.SKIPPED_KEY_STORED:
            chain = names.chain(event.public.get("ratchet_key"))
            counter = _int(event.public.get("counter"))
            steps.append(
                _kdf_ck_step(
                    event,
                    chain,
                    counter,
                    kind,
                    f"KDF_CK for skipped message {counter} of chain {chain}: "
                    f"MK_{chain}.{counter} is stored until it arrives",
                )
            )
        elif kind == EventKind.SKIPPED_KEY_USED:
            chain = names.chain(event.public.get("ratchet_key"))
            counter = _int(event.public.get("counter"))
            step = _Step(
                event.party,
                kind,
                f"message {counter} of chain {chain} arrived late: stored MK_{chain}.{counter} "
                "is used once and deleted",
            )
            step.add(
                "message_key_seed",
                f"MK_{chain}.{counter}",
                event.secret.get("message_key_seed"),
                secret=True,
            )
            steps.append(step)
        elif kind in (EventKind.SPQR_SEND, EventKind.SPQR_RECEIVE, EventKind.SPQR_EPOCH):
            steps.append(_spqr_step(event, names))
        elif kind == EventKind.PREKEY_MESSAGE_RECEIVED:
            tag = _inner_tag(event, names)
            steps.append(_prekey_wire_step(event, names, tag, sent=False))
        else:
            steps.append(_info_step(event, names))
    return header, steps


def _spqr_step(event: TraceEvent, names: _Names) -> _Step:
    """SPQR's part of a message (its ``pq_ratchet`` field decoded, the Braid state before and
    after, the SPQR key that salts the message keys) or an SPQR epoch completing (the new
    chain epoch's root and seeds). The SPQR key carries the name the message-keys step uses
    for its salt, and an epoch's root the same name on both sides, so :func:`verify`'s link
    check ties them together."""
    p = event.public

    def text(name: str) -> str:
        value = p.get(name)
        return value.hex() if isinstance(value, bytes) else str(value)

    if event.kind == EventKind.SPQR_EPOCH:
        epoch = _int(p.get("epoch"))
        step = _Step(
            event.party,
            event.kind,
            f"SPQR epoch {epoch} completed here ({text('how')}): chain epoch {epoch} added",
            f"SPQR_root_{epoch} || seed_A2B_{epoch} || seed_B2A_{epoch} = HKDF-SHA256("
            f"salt = SPQR_root_{epoch - 1}, epoch secret {epoch}, info_add_epoch, 96)",
        )
        for key, value in p.items():
            step.add(key, key, value)
        ours = text("our_direction")
        theirs = "B2A" if ours == "A2B" else "A2B"
        step.add(
            "chain_next_root",
            f"SPQR_root_{epoch}",
            event.secret.get("chain_next_root"),
            secret=True,
        )
        step.add(
            "our_chain_seed",
            f"seed_{ours}_{epoch}",
            event.secret.get("our_chain_seed"),
            secret=True,
        )
        step.add(
            "their_chain_seed",
            f"seed_{theirs}_{epoch}",
            event.secret.get("their_chain_seed"),
            secret=True,
        )
        return step
    sending = event.kind == EventKind.SPQR_SEND
    ratchet_key = p.get("ratchet_key")
    chain = names.ratchet(event.party, ratchet_key) if sending else names.chain(ratchet_key)
    counter = _int(p.get("counter"))
    what = "sent with" if sending else "received with"
    detail = (
        f"epoch {text('epoch')}, {text('message_type')}"
        + (f" chunk {text('chunk_index')}" if p.get("chunk_index") is not None else "")
        + f", index {text('index')}"
        if "epoch" in p
        else "no SPQR"
    )
    step = _Step(
        event.party,
        event.kind,
        f"SPQR {what} message {counter} of chain {chain}: {detail}",
        f"SPQR_key[{chain}.{counter}] = key {text('index')} of the "
        f"{'sending' if sending else 'receiving'} SPQR chain, chain epoch "
        f"{_int(p.get('epoch', 1)) - 1}",
    )
    step.add("pq_ratchet", f"pq_ratchet[{chain}.{counter}]", p.get("pq_ratchet"))
    for name in ("state_before", "state_after"):
        step.add(name, name, p.get(name))
    if "spqr_key" in event.secret:
        step.add("spqr_key", f"SPQR_key[{chain}.{counter}]", event.secret["spqr_key"], secret=True)
    return step


def _message_steps(event: TraceEvent, names: _Names) -> list[_Step]:
    """An encryption or decryption as the steps a researcher recomputes: KDF_CK (unless the
    key was stored earlier), the message keys, the message itself and its PreKey wrapper."""
    sending = event.kind == EventKind.ENCRYPT
    key = event.public.get("ratchet_key")
    chain = names.ratchet(event.party, key) if sending else names.chain(key)
    counter = _int(event.public.get("counter"))
    out = []
    if sending or not event.public.get("from_skipped_key"):
        direction = "sending" if sending else "receiving"
        title = f"KDF_CK: {direction} chain {chain} steps for message {counter}"
        out.append(_kdf_ck_step(event, chain, counter, "ratchet.kdf_ck", title))
    out.append(_message_keys_step(event, chain, counter))
    out.append(_message_step(event, names, chain, counter))
    if sending and event.public.get("prekey_message"):
        out.append(_prekey_wire_step(event, names, f"[{chain}.{counter}]", sent=True))
    return out


def _int(value: TraceValue) -> int:
    return value if isinstance(value, int) else -1


def _inner_tag(event: TraceEvent, names: _Names) -> str:
    """``[A1.0]`` for the SignalMessage inside a received PreKeySignalMessage."""
    inner = event.public.get("message")
    try:
        message = SignalMessage.parse(inner if isinstance(inner, bytes) else b"")
    except InvalidMessageError:
        return "[?]"
    return f"[{names.chain(message.ratchet_key.serialize())}.{message.counter}]"


# --- rendering ------------------------------------------------------------------------------


def _value_record(value: _Value, reveal_secrets: bool) -> dict[str, Any]:
    if not isinstance(value.data, bytes):
        return {"name": value.name, "value": value.data}
    out: dict[str, Any] = {"name": value.name, "bytes": len(value.data)}
    if value.secret:
        out["secret"] = True
    shown = reveal_secrets or not value.secret
    out["hex"] = value.data.hex() if shown else HIDDEN
    if value.text and shown:
        out["text"] = value.data.decode("utf-8", "replace")
    return out


def records(events: Iterable[TraceEvent], reveal_secrets: bool = False) -> list[dict[str, Any]]:
    """The trace as plain records: a header (``seq`` 0: seed, legend, whether secrets are
    shown), then one record per step with ``seq``, ``party``, ``kind``, ``title``,
    ``formula`` and ``values`` (role → ``{name, bytes, hex[, secret, text]}`` or
    ``{name, value}``). :func:`render_jsonl` prints exactly these, and :func:`verify`
    reads them back."""
    header, steps = _steps(events)
    out: list[dict[str, Any]] = [
        {
            "seq": 0,
            "kind": "trace.header",
            "seed": header.get("seed"),
            "messages": header.get("messages"),
            "out_of_order": header.get("out_of_order"),
            "secrets": "revealed" if reveal_secrets else "hidden",
            "legend": dict(LEGEND),
        }
    ]
    for seq, step in enumerate(steps, 1):
        record: dict[str, Any] = {"seq": seq, "party": step.party, "kind": step.kind}
        record["title"] = step.title
        if step.formula:
            record["formula"] = step.formula
        record["values"] = {v.role: _value_record(v, reveal_secrets) for v in step.values}
        out.append(record)
    return out


def render_jsonl(events: Iterable[TraceEvent], reveal_secrets: bool = False) -> str:
    """One JSON object per line (see :func:`records`); secrets only with ``reveal_secrets``."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records(events, reveal_secrets)]
    return "\n".join(lines) + "\n"


_NAME_WIDTH: Final = 22
_LINE_WIDTH: Final = 100
_HEX_PER_LINE: Final = 66
"""33-byte keys fit on one line; longer values wrap at this many hex digits."""


def _header_text(header: Mapping[str, Any], hidden: int) -> list[str]:
    seed = header.get("seed")
    lines = [
        "Parley protocol trace: PQXDH and the Double Ratchet between Alice and Bob",
        f"seed: {seed}"
        if seed is not None
        else "seed: none (a random run; pass --seed N to reproduce it)",
    ]
    if header.get("secrets") == "hidden":
        lines.append(
            f"secrets: hidden ({hidden} values show as {HIDDEN}); --reveal-secrets prints them,"
            " and --verify needs them"
        )
    else:
        lines.append("secrets: revealed (research mode)")
    lines.append("legend:")
    width = max(len(symbol) for symbol, _ in LEGEND)
    lines += [f"  {symbol:<{width}}  {meaning}" for symbol, meaning in LEGEND]
    return lines


def render_text(events: Iterable[TraceEvent], reveal_secrets: bool = False) -> str:
    """Readable text: the legend, then one block per step with its formula and its named
    values in hex (long values wrapped; a long value shown before is referred back to)."""
    recs = records(events, reveal_secrets)
    hidden = sum(1 for r in recs[1:] for v in r["values"].values() if v.get("hex") == HIDDEN)
    lines = _header_text(recs[0], hidden)
    shown: dict[tuple[str, str], int] = {}
    indent = " " * (4 + _NAME_WIDTH + 8)  # "    name size "
    for r in recs[1:]:
        lines.append("")
        if r["kind"] == EventKind.NOTE:
            lines.append(f"#{r['seq']} {r['party']} -- {r['title']}")
            continue
        lines += _wrap(f"#{r['seq']} {r['party']} {r['kind']}: {r['title']}", "    ")
        if "formula" in r:
            for part in r["formula"].split(";  "):
                lines += _wrap(f"  = {part.strip()}", "      ")
        for value in r["values"].values():
            name = value["name"]
            if len(name) > _NAME_WIDTH:
                lines.append(f"    {name}")
                name = ""
            if "hex" not in value:
                lines.append(f"    {name:<{_NAME_WIDTH}} {'':>6} {_plain(value['value'])}")
                continue
            size = f"{value['bytes']} B"
            text = value["hex"]
            seen = shown.get((name, text))
            if seen is not None and value["bytes"] > 64:
                lines.append(f"    {name:<{_NAME_WIDTH}} {size:>6} (as in #{seen})")
                continue
            if text != HIDDEN:
                shown.setdefault((name, text), r["seq"])
            chunks = [text[i : i + _HEX_PER_LINE] for i in range(0, len(text), _HEX_PER_LINE)]
            if "text" in value:
                quoted = f'"{value["text"]}"'
                if len(indent) + len(chunks[-1]) + 2 + len(quoted) <= _LINE_WIDTH:
                    chunks[-1] += "  " + quoted
                else:
                    chunks.append(quoted)
            lines.append(f"    {name:<{_NAME_WIDTH}} {size:>6} {chunks[0] if chunks else ''}")
            lines += [indent + chunk for chunk in chunks[1:]]
    return "\n".join(lines) + "\n"


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(
        text, _LINE_WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
    )


def _plain(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One recomputation: ``what`` was checked in step ``seq`` and whether it held."""

    seq: int
    party: str
    kind: str
    what: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify`: per-step checks and cross-step name checks."""

    checks: tuple[Check, ...]
    secrets_hidden: bool = False
    """The trace was saved without its secrets, so its steps cannot be recomputed."""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def render(self) -> str:
        """One line per check, then a summary line."""
        lines = []
        for c in self.checks:
            where = f"#{c.seq} {c.party} {c.kind}" if c.seq else "links"
            status = "OK" if c.ok else "FAILED"
            lines.append(f"{status:<6}  {where}: {c.what}" + (f" ({c.detail})" if c.detail else ""))
        failed = len(self.failed)
        lines.append(
            f"verified {len(self.checks)} checks: "
            + ("all OK" if self.ok else f"{failed} FAILED" if self.checks else "nothing to check")
        )
        return "\n".join(lines) + "\n"

    def jsonl(self) -> str:
        """The checks as JSON lines (``verify.check``), then a ``verify.summary`` line."""
        out = [
            json.dumps(
                {
                    "kind": "verify.check",
                    "seq": c.seq,
                    "party": c.party,
                    "step": c.kind,
                    "check": c.what,
                    "ok": c.ok,
                    **({"detail": c.detail} if c.detail else {}),
                }
            )
            for c in self.checks
        ]
        out.append(
            json.dumps(
                {
                    "kind": "verify.summary",
                    "ok": self.ok,
                    "checks": len(self.checks),
                    "failed": len(self.failed),
                }
            )
        )
        return "\n".join(out) + "\n"


class _Unverifiable(Exception):
    """A value needed for a check is hidden or malformed."""


class _Record:
    """Typed access to one step record's values by role."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record
        self.values: Mapping[str, Mapping[str, Any]] = record.get("values") or {}

    def has(self, role: str) -> bool:
        return role in self.values

    def name(self, role: str) -> str:
        return str(self.values.get(role, {}).get("name", role))

    def b(self, role: str) -> bytes:
        entry = self.values.get(role)
        if entry is None or "hex" not in entry:
            raise _Unverifiable(f"{role} is missing")
        text = entry["hex"]
        if text == HIDDEN:
            raise _Unverifiable(
                f"{entry.get('name', role)} is hidden: the trace was made without --reveal-secrets"
            )
        try:
            return bytes.fromhex(text)
        except (TypeError, ValueError):
            raise _Unverifiable(f"{entry.get('name', role)} is not hex") from None

    def v(self, role: str) -> Any:
        entry = self.values.get(role)
        if entry is None or "value" not in entry:
            raise _Unverifiable(f"{role} is missing")
        return entry["value"]


def _x25519(private: bytes, public: bytes) -> bytes:
    """X25519 from ``cryptography`` (OpenSSL), not the core's libsodium path."""
    key = x25519.X25519PrivateKey.from_private_bytes(private)
    return key.exchange(x25519.X25519PublicKey.from_public_bytes(_u(public)))


def _x25519_public(private: bytes) -> bytes:
    raw = x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    return b"\x05" + raw


def _u(public: bytes) -> bytes:
    if len(public) != 33 or public[0] != 0x05:
        raise _Unverifiable("a Curve25519 public key is 0x05 followed by 32 bytes")
    return public[1:]


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 from ``cryptography``, not the core's own implementation."""
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES256(key), modes.CBC(iv)).encryptor()
    return enc.update(padded) + enc.finalize()


def _aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    dec = Cipher(algorithms.AES256(key), modes.CBC(iv)).decryptor()
    padded = dec.update(ciphertext) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


class _Checker:
    def __init__(self, record: Mapping[str, Any]) -> None:
        self.r = _Record(record)
        self.seq = int(record.get("seq", -1))
        self.party = str(record.get("party", ""))
        self.kind = str(record.get("kind", ""))
        self.checks: list[Check] = []

    def check(self, what: str, test: Callable[[], bool]) -> None:
        try:
            ok, detail = bool(test()), ""
        except _Unverifiable as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # a tampered value can make any primitive refuse it
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.checks.append(Check(self.seq, self.party, self.kind, what, ok, detail))

    def public_from_private(self, public: str, private: str) -> None:
        r = self.r
        self.check(
            f"{r.name(public)} = X25519({r.name(private)}, 9)",
            lambda: _x25519_public(r.b(private)) == r.b(public),
        )

    def dh(self, output: str, private: str, public: str) -> None:
        r = self.r
        self.check(
            f"{r.name(output)} = X25519({r.name(private)}, {r.name(public)})",
            lambda: _x25519(r.b(private), r.b(public)) == r.b(output),
        )


def _verify_signature(c: _Checker) -> None:
    r = c.r
    c.check(
        f"XEdDSA-verify({r.name('signer')}, {r.name('message')}, {r.name('signature')})"
        " is valid, as printed",
        lambda: (
            xeddsa.verify(r.b("signer"), r.b("message"), r.b("signature"))
            == bool(r.v("valid"))
            is True
        ),
    )
    c.check("sign bit = Sig[63] >> 7", lambda: r.b("signature")[63] >> 7 == r.v("sign_bit"))


def _verify_pqxdh(c: _Checker) -> None:
    r = c.r
    initiator = c.kind == EventKind.PQXDH_INITIATOR
    # Each side computes the same four values from its own private keys (PQXDH §3.3/§3.4).
    if initiator:
        owned: tuple[str, ...] = ("IK_A", "EK_A")
        dhs = [
            ("DH1", "IK_A", "SPK_B"),
            ("DH2", "EK_A", "IK_B"),
            ("DH3", "EK_A", "SPK_B"),
            ("DH4", "EK_A", "OPK_B"),
        ]
    else:
        owned = ("IK_B", "SPK_B", "OPK_B")
        dhs = [
            ("DH1", "SPK_B", "IK_A"),
            ("DH2", "IK_B", "EK_A"),
            ("DH3", "SPK_B", "EK_A"),
            ("DH4", "OPK_B", "EK_A"),
        ]
    for name in owned:
        if r.has(f"{name}.private"):
            c.public_from_private(name, f"{name}.private")
    for output, private, public in dhs:
        if r.has(output):
            c.dh(output, f"{private}.private", public)
    if not initiator:

        def pqpk() -> bool:
            key = mlkem.MLKEM1024PrivateKey.from_seed_bytes(r.b("PQPK_B.private"))
            return b"\x08" + key.public_key().public_bytes_raw() == r.b("PQPK_B")

        def decapsulate() -> bool:
            key = mlkem.MLKEM1024PrivateKey.from_seed_bytes(r.b("PQPK_B.private"))
            ct = r.b("CT")
            if ct[:1] != b"\x08":
                raise _Unverifiable("CT does not start with the type byte 0x08")
            k = key.decapsulate(ct[1:])
            ss = hashlib.shake_256(k + hashlib.sha3_256(ct[1:]).digest()).digest(32)
            return ss == r.b("SS")

        c.check("PQPK_B = 0x08 || ML-KEM-1024.KeyGen(PQPK_B.private)", pqpk)
        c.check(
            "SS = SHAKE256(ML-KEM-1024.Decaps(PQPK_B.private, CT) || SHA3-256(CT))[:32]",
            decapsulate,
        )
    present = [output for output, _, _ in dhs if r.has(output)]
    c.check(
        "IKM = F || " + " || ".join(present) + " || SS",
        lambda: r.b("IKM") == r.b("F") + b"".join(r.b(d) for d in present) + r.b("SS"),
    )
    c.check(
        "SK = HKDF-SHA256(salt_0, IKM, info_PQXDH, 96)",
        lambda: _hkdf(r.b("IKM"), r.b("salt"), r.b("info"), int(r.v("length"))) == r.b("SK"),
    )
    c.check(
        f"SK = {r.name('RK')} || {r.name('CK')} || SPQR_auth",
        lambda: r.b("SK") == r.b("RK") + r.b("CK") + r.b("SPQR_auth"),
    )


def _verify_kdf_rk(c: _Checker) -> None:
    r = c.r
    c.public_from_private("our_ratchet_key", "our_ratchet_private")
    c.dh("dh_output", "our_ratchet_private", "their_ratchet_key")
    c.check(
        f"{r.name('next_root_key')} || {r.name('chain_key')} = HKDF-SHA256(salt = "
        f"{r.name('root_key')}, {r.name('dh_output')}, info_RK, 64)",
        lambda: (
            _hkdf(r.b("dh_output"), r.b("root_key"), r.b("info"), int(r.v("length")))
            == r.b("next_root_key") + r.b("chain_key")
        ),
    )


def _verify_kdf_ck(c: _Checker) -> None:
    r = c.r
    ck = r.name("chain_key")
    c.check(
        f"{r.name('message_key_seed')} = HMAC-SHA256({ck}, 0x01)",
        lambda: _hmac(r.b("chain_key"), r.b("message_key_constant")) == r.b("message_key_seed"),
    )
    c.check(
        f"{r.name('next_chain_key')} = HMAC-SHA256({ck}, 0x02)",
        lambda: _hmac(r.b("chain_key"), r.b("chain_key_constant")) == r.b("next_chain_key"),
    )


def _verify_message_keys(c: _Checker) -> None:
    r = c.r
    mk = r.name("message_key_seed")
    c.check(
        f"{mk}.cipher_key || .mac_key || .iv = HKDF-SHA256({r.name('salt')}, {mk}, info_MK, 80)",
        lambda: (
            _hkdf(r.b("message_key_seed"), r.b("salt"), r.b("info"), int(r.v("length")))
            == r.b("cipher_key") + r.b("mac_key") + r.b("iv")
        ),
    )


def _verify_message(c: _Checker) -> None:
    r = c.r
    sending = c.kind == EventKind.ENCRYPT
    if sending:
        c.check(
            f"{r.name('ciphertext')} = AES-256-CBC(cipher_key, iv, PKCS7({r.name('plaintext')}))",
            lambda: (
                _aes_cbc_encrypt(r.b("cipher_key"), r.b("iv"), r.b("plaintext"))
                == r.b("ciphertext")
            ),
        )
    else:
        c.check(
            f"{r.name('plaintext')} = AES-256-CBC-decrypt(cipher_key, iv, {r.name('ciphertext')})",
            lambda: (
                _aes_cbc_decrypt(r.b("cipher_key"), r.b("iv"), r.b("ciphertext"))
                == r.b("plaintext")
            ),
        )

    def fields() -> bool:
        f = decode_fields(r.b("protobuf"))
        return (
            f.get(1) == r.b("ratchet_key")
            and f.get(2) == r.v("counter")
            and f.get(3, 0) == r.v("previous_counter")
            and f.get(4) == r.b("ciphertext")
        )

    c.check(
        f"{r.name('protobuf')} = {{1: {r.name('ratchet_key')}, 2: counter, 3: PN, "
        f"4: {r.name('ciphertext')}}}",
        fields,
    )
    c.check(
        "version = 0x44 (message version 4, current version 4)",
        lambda: r.b("version") == bytes((VERSION_BYTE,)),
    )
    c.check(
        f"{r.name('mac_input')} = {r.name('sender_identity')} || "
        f"{r.name('receiver_identity')} || version || {r.name('protobuf')}",
        lambda: (
            r.b("mac_input")
            == r.b("sender_identity") + r.b("receiver_identity") + r.b("version") + r.b("protobuf")
        ),
    )
    c.check(
        f"{r.name('mac')} = HMAC-SHA256(mac_key, {r.name('mac_input')})[:8]",
        lambda: _hmac(r.b("mac_key"), r.b("mac_input"))[:MAC_LENGTH] == r.b("mac"),
    )
    c.check(
        f"{r.name('wire')} = version || {r.name('protobuf')} || {r.name('mac')}",
        lambda: r.b("wire") == r.b("version") + r.b("protobuf") + r.b("mac"),
    )


def _verify_prekey_wire(c: _Checker) -> None:
    r = c.r

    def fields() -> bool:
        wire = r.b("wire")
        f = decode_fields(wire[1:])
        return (
            wire[:1] == r.b("version")
            and f.get(1) == r.v("pre_key_id")
            and f.get(2) == r.b("base_key")
            and f.get(3) == r.b("identity_key")
            and f.get(4) == r.b("message")
            and f.get(5, 0) == r.v("registration_id")
            and f.get(6) == r.v("signed_pre_key_id")
            and f.get(7) == r.v("kyber_pre_key_id")
            and f.get(8) == r.b("kyber_ciphertext")
        )

    c.check(
        f"{r.name('wire')} = version || protobuf{{1: OPK_B id, 2: {r.name('base_key')}, "
        f"3: {r.name('identity_key')}, 4: {r.name('message')}, 5: registration id, "
        f"6: SPK_B id, 7: PQPK_B id, 8: {r.name('kyber_ciphertext')}}}",
        fields,
    )


_VERIFIERS: Final[Mapping[str, Callable[[_Checker], None]]] = {
    EventKind.SIGNATURE_CHECK: _verify_signature,
    EventKind.PQXDH_INITIATOR: _verify_pqxdh,
    EventKind.PQXDH_RESPONDER: _verify_pqxdh,
    EventKind.KDF_RK: _verify_kdf_rk,
    "ratchet.kdf_ck": _verify_kdf_ck,
    EventKind.SKIPPED_KEY_STORED: _verify_kdf_ck,
    "ratchet.message_keys": _verify_message_keys,
    EventKind.ENCRYPT: _verify_message,
    EventKind.DECRYPT: _verify_message,
    "wire.prekey_signal_message": _verify_prekey_wire,
}


def _links(recs: Sequence[Mapping[str, Any]]) -> list[Check]:
    """A name that appears in several steps must carry one value: this ties each step to
    the ones before it, and Alice's computations to Bob's."""
    first: dict[str, tuple[str, int]] = {}
    broken: dict[str, list[int]] = {}
    for record in recs:
        for entry in (record.get("values") or {}).values():
            text = entry.get("hex")
            if text is None or text == HIDDEN:
                continue
            name, seq = str(entry.get("name")), int(record.get("seq", -1))
            seen = first.setdefault(name, (text, seq))
            if seen[0] != text:
                broken.setdefault(name, [seen[1]]).append(seq)
    shared = sum(
        1
        for name in first
        if sum(
            1
            for record in recs
            for e in (record.get("values") or {}).values()
            if e.get("name") == name and "hex" in e
        )
        > 1
    )
    checks = [
        Check(
            0,
            "",
            "links",
            f"{name} differs between steps " + ", ".join(f"#{s}" for s in seqs),
            False,
        )
        for name, seqs in broken.items()
    ]
    checks.append(
        Check(
            0,
            "",
            "links",
            f"{shared - len(broken)} of {shared} names used in several steps carry one value",
            not broken,
        )
    )
    return checks


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """Read a trace saved with ``--json``; lines that are not trace records are skipped.

    Raises:
        ValueError: a line is not JSON (the message names the line).
    """
    out: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number} is not JSON: {exc.msg}") from None
        if isinstance(record, dict) and "seq" in record:
            out.append(record)
    return out


def verify(trace: str | Sequence[TraceEvent] | Sequence[Mapping[str, Any]]) -> VerifyReport:
    """Recompute every step of a trace from its printed values.

    Args:
        trace: JSON-lines text (as printed by ``parley trace --json --reveal-secrets``),
            records as returned by :func:`records`/:func:`parse_jsonl`, or events from
            :func:`run_demo_conversation` (rendered with secrets, then read back, so that
            exactly the printed values are checked).

    Returns:
        A report with one :class:`Check` per recomputed value and the cross-step name
        checks; ``report.ok`` is true only if every check held. Steps whose secrets are
        hidden fail with a message saying so.
    """
    if isinstance(trace, str):
        recs: Sequence[Mapping[str, Any]] = parse_jsonl(trace)
    elif trace and isinstance(trace[0], TraceEvent):
        recs = parse_jsonl(render_jsonl([e for e in trace if isinstance(e, TraceEvent)], True))
    else:
        recs = [r for r in trace if isinstance(r, Mapping)]
    checks: list[Check] = []
    for record in recs:
        verifier = _VERIFIERS.get(str(record.get("kind")))
        if verifier is None:
            continue
        checker = _Checker(record)
        verifier(checker)
        checks += checker.checks
    if checks:
        checks += _links(recs)
    hidden = any(r.get("kind") == "trace.header" and r.get("secrets") == "hidden" for r in recs)
    return VerifyReport(tuple(checks), secrets_hidden=hidden)
