"""A tracer hook so protocol researchers can watch every step.

PQXDH and each ratchet step call ``tracer(event)`` with a :class:`TraceEvent`. The default
tracer, :data:`NO_TRACE`, does nothing, and the hot paths skip building events entirely
when it is in use, so tracing costs nothing unless asked for.

Events describe attempts as they happen: a decryption that fails after a DH ratchet step or
after storing skipped keys has already reported those steps; it is then followed by a
``ratchet.decrypt_failed`` event, and (invariant 1 of :mod:`client.crypto.session`) none of
those steps is kept in the session.

An event carries its secret values (keys, DH outputs) separately from its public values.
Renderers in :mod:`client.research` show secrets only with an explicit ``reveal`` flag;
``repr`` of an event never shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "NO_TRACE",
    "EventKind",
    "TraceEvent",
    "TraceValue",
    "Tracer",
    "collecting_tracer",
    "labelled",
]

TraceValue = str | int | bool | bytes | None


class EventKind:
    """The event names a tracer can see (one per protocol step)."""

    SIGNATURE_CHECK: Final = "pqxdh.signature_check"
    PQXDH_INITIATOR: Final = "pqxdh.initiator"
    PQXDH_RESPONDER: Final = "pqxdh.responder"
    SESSION_INITIALIZED: Final = "session.initialized"
    DH_RATCHET: Final = "ratchet.dh_step"
    KDF_RK: Final = "ratchet.kdf_rk"
    PREKEY_MESSAGE_RECEIVED: Final = "wire.prekey_message_received"
    ENCRYPT: Final = "ratchet.encrypt"
    DECRYPT: Final = "ratchet.decrypt"
    SKIPPED_KEY_STORED: Final = "ratchet.skipped_key_stored"
    SKIPPED_KEY_USED: Final = "ratchet.skipped_key_used"
    SKIPPED_KEY_DROPPED: Final = "ratchet.skipped_key_dropped"
    DECRYPT_FAILED: Final = "ratchet.decrypt_failed"
    SESSION_ARCHIVED: Final = "session.archived"
    SPQR_SEND: Final = "spqr.send"
    """SPQR's send step for one message: its ``pq_ratchet`` field and the SPQR key."""
    SPQR_RECEIVE: Final = "spqr.receive"
    """SPQR's receive step for one message (reported before the MAC check, like DH steps)."""
    SPQR_EPOCH: Final = "spqr.epoch"
    """An ML-KEM Braid epoch completed on this side: a new epoch of the SPQR chain."""
    NOTE: Final = "note"


@dataclass(frozen=True)
class TraceEvent:
    """One protocol step.

    Attributes:
        kind: one of :class:`EventKind`.
        public: values safe to show (counters, public keys, ids).
        secret: values shown only in research mode (keys, DH outputs, seeds).
        party: who took the step ("alice", "bob"); set by :func:`labelled`.
    """

    kind: str
    public: Mapping[str, TraceValue] = field(default_factory=dict)
    secret: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    party: str = ""


Tracer = Callable[[TraceEvent], None]


def _no_trace(event: TraceEvent) -> None:
    """The default tracer: ignores everything."""


NO_TRACE: Final[Tracer] = _no_trace


def labelled(tracer: Tracer, party: str) -> Tracer:
    """Wrap ``tracer`` so that every event it receives names ``party``."""

    def emit(event: TraceEvent) -> None:
        tracer(TraceEvent(event.kind, event.public, event.secret, party))

    return emit


def collecting_tracer() -> tuple[Tracer, list[TraceEvent]]:
    """A tracer that appends to a list, and the list."""
    events: list[TraceEvent] = []
    return events.append, events
