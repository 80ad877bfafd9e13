"""SQL for messages, per-device envelopes and delivery statuses.

The rows are the domain's NamedTuples (`server.domain.model`), in column order: on the send
path they are handed to the multi-row INSERTs as they are, with no per-row conversion.

All methods run inside the caller's transaction. Envelope reads are by (account, device) in
id order, which the `envelopes_by_device` index serves without sorting.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from server.domain.model import EnvelopeRow, MessageRow, MessageState, StatusRow

# SQLite binds at most 32,766 parameters per statement (since 3.32).
MAX_PARAMETERS = 32_000
PENDING = int(MessageState.PENDING)  # spelled into SQL text as a literal


_MESSAGE_COLUMNS = (
    "message_id, sender_account_id, sender_device_id, recipient_account_id, request_id,"
    " request_hash, server_ts, state, category, template_name"
)
_ENVELOPE_COLUMNS = (
    "envelope_id, account_id, device_id, message_id, sender_account_id, sender_device_id,"
    " server_ts, client_ts_ms, content_type, content, category, template_name, template_id"
)
_STATUS_COLUMNS = (
    "status_id, account_id, device_id, message_id, request_id, recipient_account_id, state, at,"
    " reason"
)


def insert_rows(
    conn: sqlite3.Connection,
    into: str,
    width: int,
    rows: Sequence[tuple[object, ...]],
    conflict: str = "",
) -> int:
    """INSERT many rows with few statements: one multi-row VALUES per chunk.

    The sqlite3 module releases the GIL around every step, and executemany steps once per row;
    on a busy server each re-acquisition waits behind the event loop. One statement per
    chunk steps once.
    """
    per_statement = MAX_PARAMETERS // width
    row_marks = "(" + ",".join("?" * width) + ")"
    inserted = 0
    for first in range(0, len(rows), per_statement):
        chunk = rows[first : first + per_statement]
        inserted += conn.execute(
            f"INSERT INTO {into} VALUES " + ",".join([row_marks] * len(chunk)) + conflict,
            [value for row in chunk for value in row],
        ).rowcount
    return inserted


def _rows_after(
    conn: sqlite3.Connection,
    table: str,
    columns: str,
    account_id: str,
    device_id: int,
    after_id: int,
    limit: int,
) -> sqlite3.Cursor:
    """A device's rows of `table` past `after_id`, by id (the first of `columns`)."""
    key = columns.split(",")[0]
    return conn.execute(
        f"SELECT {columns} FROM {table} WHERE account_id = ? AND device_id = ?"
        f" AND {key} > ? ORDER BY {key} LIMIT ?",
        (account_id, device_id, after_id, limit),
    )


class SqliteMessages:
    """Messages, envelopes and delivery statuses (ports.MessageReads/MessageWrites)."""

    connection: sqlite3.Connection

    def max_message_id(self) -> int:
        row = self.connection.execute(
            "SELECT max(m) FROM (SELECT max(message_id) AS m FROM messages"
            " UNION ALL SELECT max(envelope_id) FROM envelopes"
            " UNION ALL SELECT max(status_id) FROM delivery_statuses)"
        ).fetchone()
        return int(row[0] or 0)

    def device_registrations(self, account_id: str) -> dict[int, int]:
        """device id -> registration id of the account's devices that can receive (have keys)."""
        rows = self.connection.execute(
            "SELECT k.device_id, k.registration_id FROM devices d JOIN device_keys k"
            " ON k.account_id = d.account_id AND k.device_id = d.device_id WHERE d.account_id = ?",
            (account_id,),
        ).fetchall()
        return {int(d): int(r) for d, r in rows}

    def find_messages(
        self, sender_account_id: str, request_ids: Sequence[str]
    ) -> dict[str, MessageRow]:
        """The sender's messages among `request_ids`, by request id (one query for a batch)."""
        if not request_ids:
            return {}
        marks = ",".join("?" * len(request_ids))
        rows = self.connection.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender_account_id = ?"
            f" AND request_id IN ({marks})",
            (sender_account_id, *request_ids),
        ).fetchall()
        return {r[4]: MessageRow(*r) for r in rows}

    def insert_messages(self, rows: Sequence[MessageRow]) -> int:
        """Insert the rows whose (sender, request_id) is still free; return how many were.

        UNIQUE (sender_account_id, request_id) with ON CONFLICT DO NOTHING is what keeps one
        message per request_id when writers race (ports guarantee 3): a row that lost is
        skipped, not an error, and the count tells the caller. One statement per chunk, and
        no RETURNING (it would step once per row, see insert_rows).
        """
        return insert_rows(
            self.connection,
            f"messages ({_MESSAGE_COLUMNS})",
            10,
            rows,
            " ON CONFLICT (sender_account_id, request_id) DO NOTHING",
        )

    def insert_envelopes(self, rows: Sequence[EnvelopeRow]) -> None:
        insert_rows(self.connection, f"envelopes ({_ENVELOPE_COLUMNS})", 13, rows)

    def envelopes_after(
        self,
        account_id: str,
        device_id: int,
        after_id: int,
        limit: int,
        max_bytes: int,
    ) -> list[EnvelopeRow]:
        """At most `limit` envelopes past `after_id`, stopping once `max_bytes` of content are read
        (at least one): a page of large ciphertexts never holds more than about `max_bytes`."""
        rows = _rows_after(
            self.connection, "envelopes", _ENVELOPE_COLUMNS, account_id, device_id, after_id, limit
        )
        out: list[EnvelopeRow] = []
        size = 0
        for r in rows:
            row = EnvelopeRow._make(r)
            out.append(row)
            size += len(row.content)
            if size >= max_bytes:
                break
        rows.close()
        return out

    def delete_envelopes(
        self, account_id: str, device_id: int, envelope_ids: Iterable[int]
    ) -> list[int]:
        """Delete the device's envelopes among `envelope_ids`; return their message ids."""
        ids = list(envelope_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        where = f"account_id = ? AND device_id = ? AND envelope_id IN ({marks})"
        # One row back (not one per envelope, as RETURNING would step): see insert_rows.
        (found,) = self.connection.execute(
            f"SELECT group_concat(message_id) FROM envelopes WHERE {where}",
            (account_id, device_id, *ids),
        ).fetchone()
        if not found:
            return []
        self.connection.execute(
            f"DELETE FROM envelopes WHERE {where}", (account_id, device_id, *ids)
        )
        return [int(m) for m in found.split(",")]

    def settle_messages(
        self, message_ids: Iterable[int], state: int, at: float
    ) -> list[MessageRow]:
        """Move pending messages among `message_ids` to `state`; return those that moved."""
        ids = sorted(set(message_ids))
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        where = f"state = {PENDING} AND message_id IN ({marks})"
        columns = ", ".join(
            _MESSAGE_COLUMNS.replace("request_hash", "hex(request_hash)").split(", ")
        )
        (found,) = self.connection.execute(
            f"SELECT json_group_array(json_array({columns})) FROM messages WHERE {where}", ids
        ).fetchone()
        rows = json.loads(found)
        if not rows:
            return []
        self.connection.execute(
            f"UPDATE messages SET state = ?, settled_at = ? WHERE {where}", (state, at, *ids)
        )
        return [MessageRow._make([*r[:5], bytes.fromhex(r[5]), *r[6:]]) for r in rows]

    def insert_statuses(self, rows: Sequence[StatusRow]) -> list[StatusRow]:
        """Queue statuses for the sending devices; return those whose device still exists."""
        live = {
            key
            for key in {(s.account_id, s.device_id) for s in rows}
            if self.connection.execute(
                "SELECT 1 FROM devices WHERE account_id = ? AND device_id = ?", key
            ).fetchone()
        }
        kept = [s for s in rows if (s.account_id, s.device_id) in live]
        insert_rows(self.connection, f"delivery_statuses ({_STATUS_COLUMNS})", 9, kept)
        return kept

    def statuses_after(
        self, account_id: str, device_id: int, after_id: int, limit: int
    ) -> list[StatusRow]:
        rows = _rows_after(
            self.connection,
            "delivery_statuses",
            _STATUS_COLUMNS,
            account_id,
            device_id,
            after_id,
            limit,
        )
        return [StatusRow._make(r) for r in rows.fetchall()]

    def delete_statuses(self, account_id: str, device_id: int, status_ids: Iterable[int]) -> int:
        ids = list(status_ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        return self.connection.execute(
            f"DELETE FROM delivery_statuses WHERE account_id = ? AND device_id = ?"
            f" AND status_id IN ({marks})",
            (account_id, device_id, *ids),
        ).rowcount

    def delete_message_envelopes(self, message_ids: Sequence[int], max_copies: int) -> int:
        deleted = 0
        for message_id in message_ids:
            deleted += self.connection.execute(
                "DELETE FROM envelopes WHERE envelope_id > ? AND envelope_id <= ?"
                " AND message_id = ?",
                (message_id, message_id + max_copies, message_id),
            ).rowcount
        return deleted

    def expire_envelopes(self, before_id: int, limit: int) -> int:
        """Delete up to `limit` envelopes with ids below `before_id`; return how many."""
        return self.connection.execute(
            "DELETE FROM envelopes WHERE envelope_id IN ("
            " SELECT envelope_id FROM envelopes WHERE envelope_id < ?"
            " ORDER BY envelope_id LIMIT ?)",
            (before_id, limit),
        ).rowcount

    def pending_before(self, before_id: int, limit: int) -> list[int]:
        """Ids of up to `limit` messages still pending that were sent before `before_id`."""
        rows = self.connection.execute(
            f"SELECT message_id FROM messages WHERE message_id < ? AND state = {PENDING}"
            " ORDER BY message_id LIMIT ?",
            (before_id, limit),
        ).fetchall()
        return [int(r[0]) for r in rows]

    def delete_settled_messages(self, settled_before: float) -> int:
        return self.connection.execute(
            f"DELETE FROM messages WHERE state != {PENDING} AND settled_at < ?", (settled_before,)
        ).rowcount
