"""SQL for live support: agents, support conversations and each business's queue of events.

Every state change is one conditional statement (guarantees U1-U4 of
`server.domain.support_model`): the open-per-pair rule is a partial unique index, state moves
name the state they expect, and sequence numbers come from one counter row per business.
"""

from __future__ import annotations

from server.domain.support_model import AgentRow, ConversationRow, EventRow, SupportState
from server.storage.sql import SqlConnection

_CONVERSATION = (
    "conversation_id, business_account_id, user_account_id, topic, state, agent_device_id,"
    " opened_at, updated_at"
)
_EVENT = (
    "business_account_id, sequence, kind, conversation_id, user_account_id, topic,"
    " agent_device_id, agent_display_name, from_agent_device_id, closed_by, at"
)
_ASSIGNED = int(SupportState.ASSIGNED)


class SqlSupport:
    """Agents, conversations, queue events (support_model.SupportReads/SupportWrites)."""

    connection: SqlConnection
    # SQLite's planner is told which index serves "the pair's open conversation" (it would
    # otherwise pick the wider one); PostgreSQL has no such hint and needs none.
    open_pair_index = " INDEXED BY support_open_per_pair"

    def get_agent(self, account_id: str, device_id: int) -> AgentRow | None:
        r = self.connection.execute(
            "SELECT account_id, device_id, display_name, since FROM support_agents"
            " WHERE account_id = ? AND device_id = ?",
            (account_id, device_id),
        ).fetchone()
        return None if r is None else AgentRow(*r)

    def list_agents(self, account_id: str) -> list[AgentRow]:
        rows = self.connection.execute(
            "SELECT account_id, device_id, display_name, since FROM support_agents"
            " WHERE account_id = ? ORDER BY device_id",
            (account_id,),
        ).fetchall()
        return [AgentRow(*r) for r in rows]

    def count_assigned(self, business_account_id: str, agent_device_id: int) -> int:
        # Scans the business's open conversations only (the partial unique index's prefix).
        r = self.connection.execute(
            f"SELECT count(*) FROM support_conversations{self.open_pair_index}"
            " WHERE business_account_id = ? AND state != 3 AND state = ? AND agent_device_id = ?",
            (business_account_id, _ASSIGNED, agent_device_id),
        ).fetchone()
        return int(r[0])

    def get_conversation(self, conversation_id: str) -> ConversationRow | None:
        r = self.connection.execute(
            f"SELECT {_CONVERSATION} FROM support_conversations WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        return None if r is None else ConversationRow(*r)

    def open_conversation(
        self, business_account_id: str, user_account_id: str
    ) -> ConversationRow | None:
        r = self.connection.execute(
            f"SELECT {_CONVERSATION} FROM support_conversations{self.open_pair_index}"
            " WHERE business_account_id = ? AND user_account_id = ? AND state != 3",
            (business_account_id, user_account_id),
        ).fetchone()
        return None if r is None else ConversationRow(*r)

    def latest_conversation(
        self, business_account_id: str, user_account_id: str
    ) -> ConversationRow | None:
        r = self.connection.execute(
            f"SELECT {_CONVERSATION} FROM support_conversations"
            " WHERE business_account_id = ? AND user_account_id = ?"
            " ORDER BY opened_at DESC, state ASC LIMIT 1",
            (business_account_id, user_account_id),
        ).fetchone()
        return None if r is None else ConversationRow(*r)

    def events_after(self, business_account_id: str, after: int, limit: int) -> list[EventRow]:
        rows = self.connection.execute(
            f"SELECT {_EVENT} FROM support_events"
            " WHERE business_account_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (business_account_id, after, limit),
        ).fetchall()
        return [EventRow(*r) for r in rows]

    def put_agent(self, row: AgentRow) -> None:
        self.connection.execute(
            "INSERT INTO support_agents (account_id, device_id, display_name, since)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (account_id, device_id) DO UPDATE"
            " SET display_name = excluded.display_name",
            row,
        )

    def delete_agent(self, account_id: str, device_id: int) -> bool:
        cursor = self.connection.execute(
            "DELETE FROM support_agents WHERE account_id = ? AND device_id = ?",
            (account_id, device_id),
        )
        return cursor.rowcount > 0

    def insert_conversation(self, row: ConversationRow) -> bool:
        # DO NOTHING with no target: the partial unique index's conflict is skipped (U1).
        cursor = self.connection.execute(
            f"INSERT INTO support_conversations ({_CONVERSATION}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            row,
        )
        return cursor.rowcount > 0

    def move_conversation(
        self,
        conversation_id: str,
        expected_state: int,
        expected_agent: int | None,
        state: int,
        agent_device_id: int,
        at: float,
    ) -> bool:
        agent_check = "" if expected_agent is None else " AND agent_device_id = ?"
        params: tuple[object, ...] = (state, agent_device_id, at, conversation_id, expected_state)
        if expected_agent is not None:
            params += (expected_agent,)
        cursor = self.connection.execute(
            "UPDATE support_conversations SET state = ?, agent_device_id = ?, updated_at = ?"
            f" WHERE conversation_id = ? AND state = ?{agent_check}",
            params,
        )
        return cursor.rowcount > 0

    def append_event(self, row: EventRow) -> int:
        (sequence,) = self.connection.execute(
            "INSERT INTO support_queues (business_account_id, last_sequence) VALUES (?, 1)"
            " ON CONFLICT (business_account_id) DO UPDATE"
            " SET last_sequence = support_queues.last_sequence + 1 RETURNING last_sequence",
            (row.business_account_id,),
        ).fetchone()
        self.connection.execute(
            f"INSERT INTO support_events ({_EVENT}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row._replace(sequence=sequence),
        )
        return int(sequence)
