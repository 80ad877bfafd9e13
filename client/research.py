"""Protocol research runner: watch PQXDH and the Double Ratchet step by step.

Pure Python and in-memory: two parties, Alice and Bob, hold a short scripted conversation
(optionally with out-of-order delivery) through :mod:`client.crypto`, and every protocol step
is reported through the tracer hook of :mod:`client.crypto.trace`. The trace renders as
readable text or as JSON lines. Secret values (keys, DH outputs) are shown only when the
caller passes ``reveal_secrets=True`` — research mode: a trace is safe to share by default.

Used by the ``parley trace`` command; also usable directly::

    events = run_demo_conversation(messages=4, out_of_order=True)
    print(render_text(events, reveal_secrets=False))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from client.crypto.errors import MissingPreKeyError
from client.crypto.keys import IdentityKeyPair, KeyPair, KyberKeyPair
from client.crypto.pqxdh import PreKeyBundle
from client.crypto.session import CiphertextMessage, SessionRecord
from client.crypto.trace import (
    EventKind,
    TraceEvent,
    Tracer,
    TraceValue,
    collecting_tracer,
    labelled,
)

__all__ = ["render_jsonl", "render_text", "run_demo_conversation"]

HIDDEN = "<hidden>"
"""What a secret shows as unless the renderer is told to reveal it."""


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


def run_demo_conversation(
    messages: int = 4, out_of_order: bool = True, tracer: Tracer | None = None
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

    Returns:
        All trace events, in order, each labelled with its party.
    """
    if messages < 1:
        raise ValueError("messages must be at least 1")
    collect, events = collecting_tracer()

    def both(event: TraceEvent) -> None:
        collect(event)
        if tracer is not None:
            tracer(event)

    trace_alice, trace_bob = labelled(both, "alice"), labelled(both, "bob")
    note: Callable[[str, str], None] = lambda party, text: both(  # noqa: E731
        TraceEvent(EventKind.NOTE, {"text": text}, party=party)
    )

    alice_id, bob_id = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    signed, kyber, one_time = KeyPair.generate(), KyberKeyPair.generate(), KeyPair.generate()
    bundle = PreKeyBundle(
        registration_id=2,
        device_id=1,
        pre_key_id=1,
        pre_key=one_time.public_key,
        signed_pre_key_id=1,
        signed_pre_key=signed.public_key,
        signed_pre_key_signature=bob_id.sign(signed.public_key.serialize()),
        kyber_pre_key_id=1,
        kyber_pre_key=kyber.public_key,
        kyber_pre_key_signature=bob_id.sign(kyber.public_key.serialize()),
        identity_key=bob_id.public_key,
    )
    prekeys = _PreKeys(signed, kyber, one_time)
    alice, bob = SessionRecord(), SessionRecord()

    note("alice", "fetches Bob's prekey bundle and runs PQXDH")
    alice.process_prekey_bundle(
        bundle, our_identity=alice_id, our_registration_id=1, tracer=trace_alice
    )

    def deliver_to_bob(msg: CiphertextMessage) -> bytes:
        if msg.type == 3:
            return bob.decrypt_prekey_message(
                msg.serialized,
                our_identity=bob_id,
                our_registration_id=2,
                prekeys=prekeys,
                tracer=trace_bob,
            ).plaintext
        return bob.decrypt(msg.serialized, tracer=trace_bob)

    burst = [alice.encrypt(f"hello {i}".encode(), tracer=trace_alice) for i in range(messages)]
    order = list(reversed(range(messages))) if out_of_order else list(range(messages))
    note("bob", f"receives Alice's messages in order {order}")
    for i in order:
        deliver_to_bob(burst[i])

    replies = [bob.encrypt(f"reply {i}".encode(), tracer=trace_bob) for i in range(messages)]
    late = replies.pop(0) if out_of_order and messages > 1 else None
    for msg in replies:
        alice.decrypt(msg.serialized, tracer=trace_alice)

    answer = alice.encrypt(b"answer", tracer=trace_alice)
    deliver_to_bob(answer)
    if late is not None:
        note("alice", "receives Bob's delayed first reply from an older chain")
        alice.decrypt(late.serialized, tracer=trace_alice)
    return events


def _show(value: TraceValue) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _fields(event: TraceEvent, reveal_secrets: bool) -> dict[str, str | int | bool | None]:
    out: dict[str, str | int | bool | None] = {}
    for key, value in event.public.items():
        out[key] = value.hex() if isinstance(value, bytes) else value
    for key, secret in event.secret.items():
        out[key] = secret.hex() if reveal_secrets else HIDDEN
    return out


def render_text(events: Iterable[TraceEvent], reveal_secrets: bool = False) -> str:
    """Readable text, one block per event; secrets only with ``reveal_secrets``."""
    lines: list[str] = []
    for n, event in enumerate(events, 1):
        party = event.party or "-"
        if event.kind == EventKind.NOTE:
            lines.append(f"{n:3d} {party:>5} ── {_show(event.public.get('text', ''))}")
            continue
        lines.append(f"{n:3d} {party:>5} {event.kind}")
        for key, value in _fields(event, reveal_secrets).items():
            lines.append(f"            {key}: {_show(value)}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_jsonl(events: Iterable[TraceEvent], reveal_secrets: bool = False) -> str:
    """One JSON object per line: ``{"seq", "party", "kind", ...fields}``."""
    out = []
    for n, event in enumerate(events, 1):
        record: dict[str, object] = {"seq": n, "party": event.party, "kind": event.kind}
        record.update(_fields(event, reveal_secrets))
        out.append(json.dumps(record, sort_keys=False))
    return "\n".join(out) + ("\n" if out else "")
