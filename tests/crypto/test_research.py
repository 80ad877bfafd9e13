"""The research runner and the tracer hook: events for every step, secrets hidden unless
revealed."""

from __future__ import annotations

import json

from client.crypto.trace import EventKind
from client.research import HIDDEN, render_jsonl, render_text, run_demo_conversation


def test_demo_conversation_traces_every_step() -> None:
    live: list[object] = []
    events = run_demo_conversation(messages=3, out_of_order=True, tracer=live.append)
    assert len(live) == len(events)
    kinds = {e.kind for e in events}
    for kind in (
        EventKind.PQXDH_INITIATOR,
        EventKind.PQXDH_RESPONDER,
        EventKind.SESSION_INITIALIZED,
        EventKind.DH_RATCHET,
        EventKind.ENCRYPT,
        EventKind.DECRYPT,
        EventKind.SKIPPED_KEY_STORED,
        EventKind.SKIPPED_KEY_USED,
    ):
        assert kind in kinds, kind
    assert {e.party for e in events} == {"alice", "bob"}


def test_secrets_only_in_research_mode() -> None:
    events = run_demo_conversation(messages=2, out_of_order=False)
    secrets = [s.hex() for e in events for s in e.secret.values()]
    assert secrets
    hidden_text, hidden_json = render_text(events, False), render_jsonl(events, False)
    for secret in secrets:
        assert secret not in hidden_text and secret not in hidden_json
    assert HIDDEN in hidden_text
    revealed = render_text(events, reveal_secrets=True)
    assert all(secret in revealed for secret in secrets)
    assert all(
        secret not in repr(e) for e in events for secret in [s.hex() for s in e.secret.values()]
    )


def test_jsonl_is_one_object_per_event() -> None:
    events = run_demo_conversation(messages=1, out_of_order=True)
    lines = render_jsonl(events, reveal_secrets=True).splitlines()
    assert len(lines) == len(events)
    first = json.loads(lines[0])
    assert first["seq"] == 1 and first["party"] == "alice"
    root_keys = [json.loads(line).get("root_key") for line in lines]
    assert any(isinstance(k, str) and len(k) == 64 for k in root_keys)
