"""Live support's row types, enums and storage operations (agents, conversations, the queue).

Kept apart from `server.domain.model` and `server.domain.ports` so live support is one area the
backends implement (`server.storage.support`), mixed into the transaction protocols of
`server.domain.ports` (the send's device check reads the open conversation of a pair).

What every backend guarantees here (on top of `server.domain.ports`):

U1. At most one open (WAITING or ASSIGNED) conversation per (business, user): a partial unique
    index. `insert_conversation` is INSERT ... ON CONFLICT DO NOTHING and reports by its result
    whether it inserted, so of two concurrent opens exactly one creates the conversation and
    the other reads it.
U2. Every state change is one conditional UPDATE naming the state (and agent) it expects
    (`WHERE state = ? AND agent_device_id = ?`) and reports by its result whether it applied:
    of two concurrent claims exactly one moves the conversation; the other learns who won by
    reading it afterwards.
U3. A business's queue events get their sequence numbers from one counter row per business,
    bumped by an upsert (`... DO UPDATE SET last_sequence = last_sequence + 1 RETURNING`): the
    row stays locked until the transaction commits, so the writers of one business's queue
    commit in sequence order, and a reader that saw event n has seen every event before it. No
    gap (each number is taken by a transaction that also inserts the event; a rolled-back one
    gives its number back), no duplicate (the primary key (business, sequence)).
U4. Lookups are indexed: a conversation by primary key, the open one of a pair by the partial
    unique index (the send's device check: one probe per recipient and job), the latest one of
    a pair by (business, user, opened_at), events by the primary key range after a cursor, an
    agent by (account, device).
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple, Protocol


class SupportState(IntEnum):
    """proto `SupportState`."""

    UNSPECIFIED = 0
    WAITING = 1
    ASSIGNED = 2
    CLOSED = 3


class SupportEventKind(IntEnum):
    """proto `SupportEventKind`."""

    UNSPECIFIED = 0
    OPENED = 1
    CLAIMED = 2
    TRANSFERRED = 3
    CLOSED = 4


class AgentRow(NamedTuple):
    account_id: str
    device_id: int
    display_name: str
    since: float


class ConversationRow(NamedTuple):
    conversation_id: str
    business_account_id: str
    user_account_id: str
    topic: str
    state: int  # a SupportState
    agent_device_id: int  # 0: none
    opened_at: float
    updated_at: float


class EventRow(NamedTuple):
    business_account_id: str
    sequence: int  # 0 until the backend numbers it
    kind: int  # a SupportEventKind
    conversation_id: str
    user_account_id: str
    topic: str
    agent_device_id: int
    agent_display_name: str
    from_agent_device_id: int
    closed_by: str
    at: float


class SupportReads(Protocol):
    def get_agent(self, account_id: str, device_id: int) -> AgentRow | None: ...
    def list_agents(self, account_id: str) -> list[AgentRow]: ...
    def count_assigned(self, business_account_id: str, agent_device_id: int) -> int:
        """How many open conversations the agent holds."""
        ...

    def get_conversation(self, conversation_id: str) -> ConversationRow | None: ...
    def open_conversation(
        self, business_account_id: str, user_account_id: str
    ) -> ConversationRow | None:
        """The pair's WAITING or ASSIGNED conversation (one probe of the partial index, U4)."""
        ...

    def latest_conversation(
        self, business_account_id: str, user_account_id: str
    ) -> ConversationRow | None: ...
    def events_after(self, business_account_id: str, after: int, limit: int) -> list[EventRow]:
        """At most `limit` of the business's events with sequence > `after`, in order."""
        ...


class SupportWrites(Protocol):
    def put_agent(self, row: AgentRow) -> None:
        """Make the device an agent, or rename it (an upsert keeping `since` of a rename)."""
        ...

    def delete_agent(self, account_id: str, device_id: int) -> bool: ...
    def insert_conversation(self, row: ConversationRow) -> bool:
        """Insert unless the pair has an open conversation; whether it did (U1)."""
        ...

    def move_conversation(
        self,
        conversation_id: str,
        expected_state: int,
        expected_agent: int | None,
        state: int,
        agent_device_id: int,
        at: float,
    ) -> bool:
        """Change state and agent only if they are still as expected (None: any agent);
        whether it applied (U2)."""
        ...

    def append_event(self, row: EventRow) -> int:
        """Number the event with the business's next sequence and store it; return the
        number (U3)."""
        ...


PRIMARY_DEVICE = 1


def support_device_set(
    tx: SupportReads, business_account_id: str, user_account_id: str
) -> tuple[int, ...] | None:
    """The business devices the user's messages may reach while their support conversation is
    open: the primary device, and the assigned agent's once claimed. None when no conversation
    is open (every device). One probe of the partial unique index (U4): the send's device
    check and GetPreKeyBundles call it on their path."""
    conversation = tx.open_conversation(business_account_id, user_account_id)
    if conversation is None:
        return None
    if conversation.state == SupportState.ASSIGNED and conversation.agent_device_id:
        return tuple(sorted({PRIMARY_DEVICE, conversation.agent_device_id}))
    return (PRIMARY_DEVICE,)
