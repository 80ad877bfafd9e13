"""SQL for messages, per-device envelopes and delivery statuses, plus time-ordered ids.

All functions run inside the caller's transaction. Envelope reads are by (account, device) in
id order, which the `envelopes_by_device` index serves without sorting.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Message states.
PENDING, DELIVERED, FAILED, SYNC = 0, 1, 2, 3
SEQUENCE_BITS = 20  # ids are (milliseconds << 20) | sequence: a million ids per millisecond


class IdGenerator:
    """Unique, time-ordered 63-bit ids; strictly increasing even if the clock steps back."""

    def __init__(self, floor: int = 0) -> None:
        self._last = floor
        self._lock = threading.Lock()

    def next(self, now: float) -> int:
        with self._lock:
            candidate = int(now * 1000) << SEQUENCE_BITS
            self._last = max(self._last + 1, candidate)
            return self._last

    @classmethod
    def for_database(cls, conn: sqlite3.Connection) -> IdGenerator:
        row = conn.execute(
            "SELECT max(m) FROM (SELECT max(message_id) AS m FROM messages"
            " UNION ALL SELECT max(envelope_id) FROM envelopes"
            " UNION ALL SELECT max(status_id) FROM delivery_statuses)"
        ).fetchone()
        return cls(int(row[0] or 0))


@dataclass(frozen=True)
class MessageRow:
    message_id: int
    sender_account_id: str
    sender_device_id: int
    recipient_account_id: str
    request_id: str
    request_hash: bytes
    server_ts: float
    state: int
    category: int = 0
    template_name: str = ""


@dataclass(frozen=True)
class EnvelopeRow:
    envelope_id: int
    account_id: str
    device_id: int
    message_id: int
    sender_account_id: str
    sender_device_id: int
    server_ts: float
    client_ts_ms: int
    content_type: int
    content: bytes
    category: int
    template_name: str
    expires_at: float


@dataclass(frozen=True)
class StatusRow:
    status_id: int
    account_id: str
    device_id: int
    message_id: int
    request_id: str
    recipient_account_id: str
    state: int
    at: float
    reason: str


_MESSAGE_COLUMNS = (
    "message_id, sender_account_id, sender_device_id, recipient_account_id, request_id,"
    " request_hash, server_ts, state, category, template_name"
)
_ENVELOPE_COLUMNS = (
    "envelope_id, account_id, device_id, message_id, sender_account_id, sender_device_id,"
    " server_ts, client_ts_ms, content_type, content, category, template_name, expires_at"
)
_STATUS_COLUMNS = (
    "status_id, account_id, device_id, message_id, request_id, recipient_account_id, state, at,"
    " reason"
)


def device_registrations(conn: sqlite3.Connection, account_id: str) -> dict[int, int]:
    """device id -> registration id of the account's devices that can receive (have keys)."""
    rows = conn.execute(
        "SELECT k.device_id, k.registration_id FROM devices d JOIN device_keys k"
        " ON k.account_id = d.account_id AND k.device_id = d.device_id WHERE d.account_id = ?",
        (account_id,),
    ).fetchall()
    return {int(d): int(r) for d, r in rows}


def find_message(
    conn: sqlite3.Connection, sender_account_id: str, request_id: str
) -> MessageRow | None:
    r = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender_account_id = ? AND request_id = ?",
        (sender_account_id, request_id),
    ).fetchone()
    return None if r is None else MessageRow(*r)


def insert_message(conn: sqlite3.Connection, m: MessageRow) -> None:
    conn.execute(
        f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            m.message_id,
            m.sender_account_id,
            m.sender_device_id,
            m.recipient_account_id,
            m.request_id,
            m.request_hash,
            m.server_ts,
            m.state,
            m.category,
            m.template_name,
        ),
    )


def insert_envelopes(conn: sqlite3.Connection, rows: Sequence[EnvelopeRow]) -> None:
    conn.executemany(
        f"INSERT INTO envelopes ({_ENVELOPE_COLUMNS}) VALUES ({', '.join('?' * 13)})",
        [
            (
                e.envelope_id,
                e.account_id,
                e.device_id,
                e.message_id,
                e.sender_account_id,
                e.sender_device_id,
                e.server_ts,
                e.client_ts_ms,
                e.content_type,
                e.content,
                e.category,
                e.template_name,
                e.expires_at,
            )
            for e in rows
        ],
    )


def envelopes_after(
    conn: sqlite3.Connection, account_id: str, device_id: int, after_id: int, limit: int
) -> list[EnvelopeRow]:
    rows = conn.execute(
        f"SELECT {_ENVELOPE_COLUMNS} FROM envelopes WHERE account_id = ? AND device_id = ?"
        " AND envelope_id > ? ORDER BY envelope_id LIMIT ?",
        (account_id, device_id, after_id, limit),
    ).fetchall()
    return [EnvelopeRow(*r) for r in rows]


def delete_envelopes(
    conn: sqlite3.Connection, account_id: str, device_id: int, envelope_ids: Iterable[int]
) -> list[int]:
    """Delete the device's envelopes among `envelope_ids`; return their message ids."""
    ids = list(envelope_ids)
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"DELETE FROM envelopes WHERE account_id = ? AND device_id = ? AND envelope_id IN ({marks})"
        " RETURNING message_id",
        (account_id, device_id, *ids),
    ).fetchall()
    return [int(r[0]) for r in rows]


def settle_messages(
    conn: sqlite3.Connection, message_ids: Iterable[int], state: int, at: float
) -> list[MessageRow]:
    """Move pending messages among `message_ids` to `state`; return those that moved."""
    ids = sorted(set(message_ids))
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"UPDATE messages SET state = ?, settled_at = ? WHERE state = {PENDING}"
        f" AND message_id IN ({marks}) RETURNING {_MESSAGE_COLUMNS}",
        (state, at, *ids),
    ).fetchall()
    return [MessageRow(*r) for r in rows]


def insert_status(conn: sqlite3.Connection, s: StatusRow) -> bool:
    """Queue a status for the sending device; False when that device no longer exists."""
    return (
        conn.execute(
            f"INSERT INTO delivery_statuses ({_STATUS_COLUMNS})"
            " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS"
            " (SELECT 1 FROM devices WHERE account_id = ? AND device_id = ?)",
            (
                s.status_id,
                s.account_id,
                s.device_id,
                s.message_id,
                s.request_id,
                s.recipient_account_id,
                s.state,
                s.at,
                s.reason,
                s.account_id,
                s.device_id,
            ),
        ).rowcount
        > 0
    )


def statuses_after(
    conn: sqlite3.Connection, account_id: str, device_id: int, after_id: int, limit: int
) -> list[StatusRow]:
    rows = conn.execute(
        f"SELECT {_STATUS_COLUMNS} FROM delivery_statuses WHERE account_id = ? AND device_id = ?"
        " AND status_id > ? ORDER BY status_id LIMIT ?",
        (account_id, device_id, after_id, limit),
    ).fetchall()
    return [StatusRow(*r) for r in rows]


def delete_statuses(
    conn: sqlite3.Connection, account_id: str, device_id: int, status_ids: Iterable[int]
) -> int:
    ids = list(status_ids)
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    return conn.execute(
        f"DELETE FROM delivery_statuses WHERE account_id = ? AND device_id = ?"
        f" AND status_id IN ({marks})",
        (account_id, device_id, *ids),
    ).rowcount


def expire_envelopes(conn: sqlite3.Connection, now: float, limit: int) -> list[int]:
    """Delete up to `limit` envelopes past their expiry; return the message ids they carried."""
    rows = conn.execute(
        "DELETE FROM envelopes WHERE envelope_id IN ("
        " SELECT envelope_id FROM envelopes WHERE expires_at <= ? LIMIT ?) RETURNING message_id",
        (now, limit),
    ).fetchall()
    return [int(r[0]) for r in rows]


def messages_without_envelopes(conn: sqlite3.Connection, message_ids: Iterable[int]) -> list[int]:
    ids = sorted(set(message_ids))
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT m.message_id FROM messages m WHERE m.message_id IN ({marks}) AND NOT EXISTS"
        " (SELECT 1 FROM envelopes e WHERE e.message_id = m.message_id)",
        ids,
    ).fetchall()
    return [int(r[0]) for r in rows]


def delete_settled_messages(conn: sqlite3.Connection, settled_before: float) -> int:
    return conn.execute(
        f"DELETE FROM messages WHERE state != {PENDING} AND settled_at < ?", (settled_before,)
    ).rowcount
