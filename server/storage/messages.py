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
from typing import TypeVar

from server.domain.model import EnvelopeRow, MessageRow, MessageState, StatusRow
from server.storage.sql import Cursor, SqlConnection

# SQLite binds at most 32,766 parameters per statement (since 3.32).
MAX_PARAMETERS = 32_000
PENDING = int(MessageState.PENDING)  # spelled into SQL text as a literal


MESSAGE_COLUMNS = (
    "message_id, sender_account_id, sender_device_id, recipient_account_id, request_id,"
    " request_hash, server_ts, state, category, template_name"
)
_ENVELOPE_COLUMNS = (
    "envelope_id, account_id, device_id, message_id, sender_account_id, sender_device_id,"
    " server_ts, client_ts_ms, content_type, content, category, template_name, template_id, seq"
)
_STATUS_COLUMNS = (
    "status_id, account_id, device_id, message_id, request_id, recipient_account_id, state, at,"
    " reason, seq"
)


def insert_rows(
    conn: SqlConnection,
    into: str,
    width: int,
    rows: Sequence[tuple[object, ...]],
    conflict: str = "",
) -> int:
    """INSERT many rows with few round trips; return how many were inserted.

    SQLite: one multi-row VALUES per chunk. The sqlite3 module releases the GIL around every
    step, and executemany steps once per row; on a busy server each re-acquisition waits behind
    the event loop. One statement per chunk steps once.
    PostgreSQL: executemany, which psycopg sends as one pipeline of a single prepared statement;
    a multi-row VALUES there is a new statement text for every row count, parsed each time.
    """
    if not rows:
        return 0
    row_marks = "(" + ",".join("?" * width) + ")"
    if not isinstance(conn, sqlite3.Connection):
        return conn.executemany(f"INSERT INTO {into} VALUES {row_marks}{conflict}", rows).rowcount
    per_statement = MAX_PARAMETERS // width
    inserted = 0
    for first in range(0, len(rows), per_statement):
        chunk = rows[first : first + per_statement]
        inserted += conn.execute(
            f"INSERT INTO {into} VALUES " + ",".join([row_marks] * len(chunk)) + conflict,
            [value for row in chunk for value in row],
        ).rowcount
    return inserted


def _rows_after(
    conn: SqlConnection,
    table: str,
    columns: str,
    account_id: str,
    device_id: int,
    after_seq: int,
    limit: int,
) -> Cursor:
    """A device's rows of `table` past stream position `after_seq`, in position order."""
    return conn.execute(
        f"SELECT {columns} FROM {table} WHERE account_id = ? AND device_id = ?"
        " AND seq > ? ORDER BY seq LIMIT ?",
        (account_id, device_id, after_seq, limit),
    )


Positioned = TypeVar("Positioned", EnvelopeRow, StatusRow)


class SqlMessages:
    """Messages, envelopes and delivery statuses (ports.MessageReads/MessageWrites)."""

    connection: SqlConnection

    def max_message_id(self) -> int:
        row = self.connection.execute(
            "SELECT max(m) FROM (SELECT max(message_id) AS m FROM messages"
            " UNION ALL SELECT max(envelope_id) FROM envelopes"
            " UNION ALL SELECT max(status_id) FROM delivery_statuses) AS tops"
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
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_account_id = ?"
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
            f"messages ({MESSAGE_COLUMNS})",
            10,
            rows,
            " ON CONFLICT (sender_account_id, request_id) DO NOTHING",
        )

    def _positions(self, rows: Sequence[Positioned]) -> list[Positioned]:
        """The rows with their devices' next stream positions (ports guarantee 15): one upsert
        per device bumps its counter by its row count and holds the counter's row until
        commit, so a concurrent writer to the same device gets the positions after these and
        commits after them. Devices in key order, so two writers cannot wait on each other."""
        by_device: dict[tuple[str, int], int] = {}
        for r in rows:
            device: tuple[str, int] = (r.account_id, r.device_id)
            by_device[device] = by_device.get(device, 0) + 1
        next_of: dict[tuple[str, int], int] = {}
        for (account_id, device_id), n in sorted(by_device.items()):
            next_of[account_id, device_id] = self._bump(account_id, device_id, n) - n + 1
        out: list[Positioned] = []
        for r in rows:
            device = (r.account_id, r.device_id)
            # `seq` is both row types' last field: a slice, not `_replace` (a dict round trip).
            out.append(type(r)(*r[:-1], next_of[device]))
            next_of[device] += 1
        return out

    # Bumps a device's stream counter by ? rows and returns the new last position.
    BUMP = (
        "INSERT INTO device_streams (account_id, device_id, last_seq) VALUES (?, ?, ?)"
        " ON CONFLICT (account_id, device_id) DO UPDATE"
        " SET last_seq = device_streams.last_seq + excluded.last_seq RETURNING last_seq"
    )

    def _bump(self, account_id: str, device_id: int, n: int) -> int:
        """The device's counter, moved on by `n` (locked until commit); its new value."""
        (last,) = self.connection.execute(self.BUMP, (account_id, device_id, n)).fetchone()
        return int(last)

    def claim_stream(self, account_id: str, device_id: int) -> int:
        """A new epoch for the device's stream (fanout rule 6): one upsert, so of two streams
        opened at once on two replicas, one gets the higher epoch."""
        (epoch,) = self.connection.execute(
            "INSERT INTO device_streams (account_id, device_id, last_seq, epoch)"
            " VALUES (?, ?, 0, 1) ON CONFLICT (account_id, device_id) DO UPDATE"
            " SET epoch = device_streams.epoch + 1 RETURNING epoch",
            (account_id, device_id),
        ).fetchone()
        return int(epoch)

    def insert_envelopes(self, rows: Sequence[EnvelopeRow]) -> list[EnvelopeRow]:
        """Insert the rows, numbered in their devices' streams; return them with their
        positions, in the order given."""
        placed = self._positions(rows)
        insert_rows(self.connection, f"envelopes ({_ENVELOPE_COLUMNS})", 14, placed)
        return placed

    def envelopes_after(
        self,
        account_id: str,
        device_id: int,
        after_seq: int,
        limit: int,
        max_bytes: int,
    ) -> list[EnvelopeRow]:
        """At most `limit` envelopes past `after_seq`, stopping once `max_bytes` of content are read
        (at least one): a page of large ciphertexts never holds more than about `max_bytes`."""
        rows = _rows_after(
            self.connection, "envelopes", _ENVELOPE_COLUMNS, account_id, device_id, after_seq, limit
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
            MESSAGE_COLUMNS.replace("request_hash", "hex(request_hash)").split(", ")
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
        kept = self._positions([s for s in rows if (s.account_id, s.device_id) in live])
        insert_rows(self.connection, f"delivery_statuses ({_STATUS_COLUMNS})", 10, kept)
        return kept

    def statuses_after(
        self, account_id: str, device_id: int, after_seq: int, limit: int
    ) -> list[StatusRow]:
        rows = _rows_after(
            self.connection,
            "delivery_statuses",
            _STATUS_COLUMNS,
            account_id,
            device_id,
            after_seq,
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

    def delete_settled_messages(self, before_id: int, limit: int) -> int:
        """Delete up to `limit` settled messages sent before `before_id`: a range of the
        primary key (ids are time-ordered), not a scan of the table."""
        return self.connection.execute(
            "DELETE FROM messages WHERE message_id IN ("
            f" SELECT message_id FROM messages WHERE message_id < ? AND state != {PENDING}"
            " ORDER BY message_id LIMIT ?)",
            (before_id, limit),
        ).rowcount

    def expire_statuses(self, before_id: int, limit: int) -> int:
        """Delete up to `limit` delivery statuses queued before `before_id` (a primary-key
        range: status ids are time-ordered); how many."""
        return self.connection.execute(
            "DELETE FROM delivery_statuses WHERE status_id IN ("
            " SELECT status_id FROM delivery_statuses WHERE status_id < ?"
            " ORDER BY status_id LIMIT ?)",
            (before_id, limit),
        ).rowcount
