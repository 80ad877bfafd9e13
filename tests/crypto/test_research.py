"""The research runner: reproducible seeded traces, every value a researcher needs (named as
the Signal specifications do), secrets hidden unless revealed, and a verifier that recomputes
each step from the printed values and pinpoints a tampered one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from client.crypto.trace import EventKind
from client.crypto.wire import PreKeySignalMessage, SignalMessage
from client.research import (
    HIDDEN,
    LEGEND,
    parse_jsonl,
    records,
    render_jsonl,
    render_text,
    run_demo_conversation,
    verify,
)


def _values(recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every named value of a trace (first occurrence), by name."""
    out: dict[str, dict[str, Any]] = {}
    for record in recs[1:]:
        for entry in record.get("values", {}).values():
            out.setdefault(entry["name"], entry)
    return out


def test_demo_conversation_traces_every_step() -> None:
    live: list[object] = []
    events = run_demo_conversation(messages=3, out_of_order=True, tracer=live.append, seed=3)
    assert len(live) == len(events)
    kinds = {e.kind for e in events}
    for kind in (
        EventKind.SIGNATURE_CHECK,
        EventKind.PQXDH_INITIATOR,
        EventKind.PQXDH_RESPONDER,
        EventKind.SESSION_INITIALIZED,
        EventKind.DH_RATCHET,
        EventKind.KDF_RK,
        EventKind.ENCRYPT,
        EventKind.DECRYPT,
        EventKind.SKIPPED_KEY_STORED,
        EventKind.SKIPPED_KEY_USED,
        EventKind.PREKEY_MESSAGE_RECEIVED,
    ):
        assert kind in kinds, kind
    assert {e.party for e in events if e.kind != "trace.start"} == {"alice", "bob"}


def test_same_seed_gives_identical_bytes_and_another_seed_other_keys() -> None:
    first = run_demo_conversation(messages=2, seed=11)
    again = run_demo_conversation(messages=2, seed=11)
    other = run_demo_conversation(messages=2, seed=12)
    assert render_jsonl(first, reveal_secrets=True) == render_jsonl(again, reveal_secrets=True)
    assert render_text(first, reveal_secrets=True) == render_text(again, reveal_secrets=True)
    a = _values(records(first, reveal_secrets=True))
    b = _values(records(other, reveal_secrets=True))
    for name in ("IK_A", "IK_B", "EK_A", "SPK_B", "OPK_B", "PQPK_B", "CT", "SS", "RK_0", "A1"):
        assert a[name]["hex"] != b[name]["hex"], name
    # Without a seed, two runs draw fresh randomness.
    unseeded = [_values(records(run_demo_conversation(messages=1))) for _ in range(2)]
    assert unseeded[0]["IK_A"]["hex"] != unseeded[1]["IK_A"]["hex"]


def test_every_value_needed_to_recompute_the_protocol_is_named() -> None:
    recs = records(run_demo_conversation(messages=2, out_of_order=True, seed=1), True)
    values = _values(recs)
    expected = [
        # PQXDH inputs, private halves and outputs.
        "IK_A",
        "IK_A.private",
        "EK_A",
        "EK_A.private",
        "IK_B",
        "IK_B.private",
        "SPK_B",
        "SPK_B.private",
        "OPK_B",
        "OPK_B.private",
        "PQPK_B",
        "PQPK_B.private",
        "Sig(IK_B, SPK_B)",
        "Sig(IK_B, PQPK_B)",
        "DH1",
        "DH2",
        "DH3",
        "DH4",
        "CT",
        "SS",
        "F",
        "IKM",
        "salt_0",
        "info_PQXDH",
        "SK",
        "RK_0",
        "CK_B0.0",
        "SPQR_auth",
        # Double Ratchet: KDF_RK, KDF_CK, message keys.
        "A1",
        "A1.private",
        "B1",
        "B1.private",
        "DHR_1",
        "DHR_2",
        "RK_1",
        "RK_2",
        "info_RK",
        "CK_A1.0",
        "CK_A1.1",
        "0x01",
        "0x02",
        "MK_A1.0",
        "info_MK",
        "MK_A1.0.cipher_key",
        "MK_A1.0.mac_key",
        "MK_A1.0.iv",
        "CK_B1.0",
        "MK_B1.0",
        # Messages: plaintext to wire bytes.
        "plaintext[A1.0]",
        "ciphertext[A1.0]",
        "protobuf[A1.0]",
        "MAC_input[A1.0]",
        "MAC[A1.0]",
        "SignalMessage[A1.0]",
        "PreKeySignalMessage[A1.0]",
        "SignalMessage[B1.0]",
    ]
    missing = [name for name in expected if name not in values]
    assert not missing
    sizes = {"IK_A": 33, "PQPK_B": 1569, "PQPK_B.private": 64, "CT": 1569, "SK": 96, "IKM": 192}
    for name, size in sizes.items():
        assert values[name]["bytes"] == size, name
    texts = {values[n].get("text") for n in ("info_PQXDH", "info_RK", "info_MK")}
    assert texts == {
        "WhisperText_X25519_SHA-256_CRYSTALS-KYBER-1024",
        "WhisperRatchet",
        "WhisperMessageKeys",
    }
    assert values["plaintext[A1.0]"]["text"] == "hello 0"
    # The wire bytes are the real messages: they parse, and their fields are the named keys.
    prekey = PreKeySignalMessage.parse(bytes.fromhex(values["PreKeySignalMessage[A1.0]"]["hex"]))
    assert prekey.base_key.serialize().hex() == values["EK_A"]["hex"]
    assert prekey.kyber_ciphertext.hex() == values["CT"]["hex"]
    assert prekey.message.serialized.hex() == values["SignalMessage[A1.0]"]["hex"]
    reply = SignalMessage.parse(bytes.fromhex(values["SignalMessage[B1.0]"]["hex"]))
    assert reply.ratchet_key.serialize().hex() == values["B1"]["hex"]
    # Both parties' derivations carry one name each: Bob's RK_1 is Alice's RK_1.
    parties = {
        r["party"] for r in recs[1:] for v in r.get("values", {}).values() if v["name"] == "RK_1"
    }
    assert parties == {"alice", "bob"}
    # Every symbol family the trace uses is explained in the legend.
    legend = " ".join(symbol for symbol, _ in LEGEND)
    for symbol in ("IK_A", "EK_A", "SPK_B", "OPK_B", "PQPK_B", "SK", "RK_n", "CK_X.n", "MK_X.n"):
        assert symbol in legend
    text = render_text(run_demo_conversation(messages=1, seed=1))
    assert text.index("legend:") < text.index("#1 ")


def test_secrets_only_in_research_mode() -> None:
    events = run_demo_conversation(messages=2, out_of_order=True, seed=5)
    secrets = {s.hex() for e in events for s in e.secret.values() if len(s) >= 16}
    assert secrets
    hidden_text, hidden_json = render_text(events, False), render_jsonl(events, False)
    for secret in secrets:
        assert secret not in hidden_text and secret not in hidden_json
    assert HIDDEN in hidden_text and "--reveal-secrets" in hidden_text
    assert "plaintext" in hidden_text and "hello 0" not in hidden_text
    # Hidden values keep their name and length.
    hidden = _values(parse_jsonl(hidden_json))
    assert hidden["RK_0"] == {"name": "RK_0", "bytes": 32, "secret": True, "hex": HIDDEN}
    assert hidden["IK_A"]["hex"] != HIDDEN
    revealed = render_text(events, reveal_secrets=True)
    assert all(secret in revealed.replace("\n", "").replace(" ", "") for secret in secrets)
    assert not any(secret in repr(e) for e in events for secret in secrets)


def test_jsonl_is_a_header_then_one_object_per_step() -> None:
    events = run_demo_conversation(messages=1, out_of_order=True, seed=2)
    lines = render_jsonl(events, reveal_secrets=True).splitlines()
    header = json.loads(lines[0])
    assert header["kind"] == "trace.header" and header["seed"] == 2
    assert header["secrets"] == "revealed" and "RK_n" in header["legend"]
    steps = [json.loads(line) for line in lines[1:]]
    assert [s["seq"] for s in steps] == list(range(1, len(steps) + 1))
    initiator = next(s for s in steps if s["kind"] == "pqxdh.initiator")
    assert initiator["party"] == "alice"
    assert len(bytes.fromhex(initiator["values"]["RK"]["hex"])) == 32


@pytest.mark.parametrize(("seed", "out_of_order"), [(1, True), (2, False), (None, True)])
def test_verify_passes_on_a_fresh_trace(seed: int | None, out_of_order: bool) -> None:
    events = run_demo_conversation(messages=3, out_of_order=out_of_order, seed=seed)
    report = verify(events)
    assert report.ok, report.render()
    kinds = {c.kind for c in report.checks}
    for kind in (
        "pqxdh.signature_check",
        "pqxdh.initiator",
        "pqxdh.responder",
        "ratchet.kdf_rk",
        "ratchet.kdf_ck",
        "ratchet.message_keys",
        "ratchet.encrypt",
        "ratchet.decrypt",
        "wire.prekey_signal_message",
        "links",
    ):
        assert kind in kinds, kind
    # The same report from the saved JSON lines: verification needs only the printed values.
    assert verify(render_jsonl(events, reveal_secrets=True)).checks == report.checks


def _flip(hex_value: str) -> str:
    """Change one hex digit of a value: the third, so that a key keeps its type byte and an
    ML-KEM seed changes its ``d`` half (its ``z`` half only matters for a bad ciphertext)."""
    return hex_value[:2] + ("0" if hex_value[2] != "0" else "1") + hex_value[3:]


# One value per kind of step: an input, an output or a wire field.
TAMPER = [
    ("pqxdh.signature_check", "signature"),
    ("pqxdh.initiator", "EK_A.private"),
    ("pqxdh.initiator", "DH2"),
    ("pqxdh.responder", "SS"),
    ("pqxdh.responder", "PQPK_B.private"),
    ("ratchet.kdf_rk", "dh_output"),
    ("ratchet.kdf_rk", "next_root_key"),
    ("ratchet.kdf_ck", "message_key_seed"),
    ("ratchet.skipped_key_stored", "next_chain_key"),
    ("ratchet.message_keys", "iv"),
    ("ratchet.encrypt", "ciphertext"),
    ("ratchet.encrypt", "mac"),
    ("ratchet.decrypt", "plaintext"),
    ("ratchet.decrypt", "wire"),
    ("wire.prekey_signal_message", "kyber_ciphertext"),
]


@pytest.mark.parametrize(("kind", "role"), TAMPER)
def test_verify_fails_exactly_the_tampered_step(kind: str, role: str) -> None:
    saved = render_jsonl(run_demo_conversation(messages=2, out_of_order=True, seed=4), True)
    recs = parse_jsonl(saved)
    target = next(r for r in recs if r["kind"] == kind)
    entry = target["values"][role]
    entry["hex"] = _flip(entry["hex"])
    tampered = "\n".join(json.dumps(r) for r in recs) + "\n"
    report = verify(tampered)
    assert not report.ok
    failed_steps = {c.seq for c in report.failed if c.kind != "links"}
    assert failed_steps == {target["seq"]}, report.render()
    # A name shared with other steps shows up as a broken link, naming that value.
    for check in report.failed:
        if check.kind == "links" and "differs" in check.what:
            assert check.what.startswith(entry["name"] + " "), check.what


def test_a_trace_without_secrets_cannot_be_verified() -> None:
    saved = render_jsonl(run_demo_conversation(messages=1, seed=1), reveal_secrets=False)
    report = verify(saved)
    assert not report.ok and report.secrets_hidden
    assert any("--reveal-secrets" in c.detail for c in report.failed)
    assert not verify("").ok
