"""SQL for accounts, devices, phone verifications and linking codes.

Plain functions over a connection: the caller (a domain service, through `Database.write` or
`Database.read`) owns the transaction, so several of these compose into one atomic step.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class VerificationRow:
    verification_id: str
    phone_number: str
    code_hash: bytes
    created_at: float
    expires_at: float
    attempts: int
    completed: bool


@dataclass(frozen=True)
class AccountRow:
    account_id: str
    phone_number: str
    kind: int
    created_at: float


@dataclass(frozen=True)
class DeviceRow:
    account_id: str
    device_id: int
    name: str
    created_at: float
    last_seen_at: float


# -- verifications ---------------------------------------------------------------------------


def insert_verification(conn: sqlite3.Connection, row: VerificationRow) -> None:
    conn.execute(
        "INSERT INTO verifications (verification_id, phone_number, code_hash, created_at,"
        " expires_at, attempts, completed) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            row.verification_id,
            row.phone_number,
            row.code_hash,
            row.created_at,
            row.expires_at,
            row.attempts,
            int(row.completed),
        ),
    )


def get_verification(conn: sqlite3.Connection, verification_id: str) -> VerificationRow | None:
    r = conn.execute(
        "SELECT verification_id, phone_number, code_hash, created_at, expires_at, attempts,"
        " completed FROM verifications WHERE verification_id = ?",
        (verification_id,),
    ).fetchone()
    if r is None:
        return None
    vid, phone, code_hash, created, expires, attempts, completed = r
    return VerificationRow(vid, phone, code_hash, created, expires, attempts, bool(completed))


def add_verification_attempt(conn: sqlite3.Connection, verification_id: str) -> None:
    conn.execute(
        "UPDATE verifications SET attempts = attempts + 1 WHERE verification_id = ?",
        (verification_id,),
    )


def complete_verification(conn: sqlite3.Connection, verification_id: str) -> None:
    conn.execute(
        "UPDATE verifications SET completed = 1 WHERE verification_id = ?", (verification_id,)
    )


def delete_verifications_expired_before(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM verifications WHERE expires_at < ?", (before,)).rowcount


# -- accounts --------------------------------------------------------------------------------

_ACCOUNT_COLUMNS = "account_id, phone_number, kind, created_at"


def insert_account(conn: sqlite3.Connection, row: AccountRow) -> None:
    conn.execute(
        f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?)",
        (row.account_id, row.phone_number, row.kind, row.created_at),
    )


def get_account(conn: sqlite3.Connection, account_id: str) -> AccountRow | None:
    r = conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ?", (account_id,)
    ).fetchone()
    return None if r is None else AccountRow(*r)


def get_account_by_phone(conn: sqlite3.Connection, phone_number: str) -> AccountRow | None:
    r = conn.execute(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE phone_number = ?", (phone_number,)
    ).fetchone()
    return None if r is None else AccountRow(*r)


def delete_account(conn: sqlite3.Connection, account_id: str) -> bool:
    """Delete the account; every table that references it cascades."""
    return conn.execute("DELETE FROM accounts WHERE account_id = ?", (account_id,)).rowcount > 0


def allocate_device_id(conn: sqlite3.Connection, account_id: str) -> int:
    """Next unused device id of the account (ids are never handed out twice)."""
    row = conn.execute(
        "UPDATE accounts SET next_device_id = next_device_id + 1 WHERE account_id = ?"
        " RETURNING next_device_id - 1",
        (account_id,),
    ).fetchone()
    if row is None:
        raise LookupError(account_id)
    return int(row[0])


# -- devices ---------------------------------------------------------------------------------

_DEVICE_COLUMNS = "account_id, device_id, name, created_at, last_seen_at"


def insert_device(conn: sqlite3.Connection, row: DeviceRow, token_hash: bytes) -> None:
    conn.execute(
        f"INSERT INTO devices ({_DEVICE_COLUMNS}, token_hash) VALUES (?, ?, ?, ?, ?, ?)",
        (row.account_id, row.device_id, row.name, row.created_at, row.last_seen_at, token_hash),
    )


def list_devices(conn: sqlite3.Connection, account_id: str) -> list[DeviceRow]:
    rows = conn.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE account_id = ? ORDER BY device_id",
        (account_id,),
    ).fetchall()
    return [DeviceRow(*r) for r in rows]


def count_devices(conn: sqlite3.Connection, account_id: str) -> int:
    return int(
        conn.execute("SELECT count(*) FROM devices WHERE account_id = ?", (account_id,)).fetchone()[
            0
        ]
    )


def delete_device(conn: sqlite3.Connection, account_id: str, device_id: int) -> bool:
    return (
        conn.execute(
            "DELETE FROM devices WHERE account_id = ? AND device_id = ?", (account_id, device_id)
        ).rowcount
        > 0
    )


def delete_all_devices(conn: sqlite3.Connection, account_id: str) -> int:
    return conn.execute("DELETE FROM devices WHERE account_id = ?", (account_id,)).rowcount


def device_for_token(conn: sqlite3.Connection, token_hash: bytes) -> DeviceRow | None:
    r = conn.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE token_hash = ?", (token_hash,)
    ).fetchone()
    return None if r is None else DeviceRow(*r)


def holds_credential(
    conn: sqlite3.Connection, account_id: str, device_id: int, token_hash: bytes
) -> bool:
    """Whether `token_hash` is still the credential of that device (one primary-key probe)."""
    return (
        conn.execute(
            "SELECT 1 FROM devices WHERE token_hash = ? AND account_id = ? AND device_id = ?",
            (token_hash, account_id, device_id),
        ).fetchone()
        is not None
    )


def touch_device(conn: sqlite3.Connection, account_id: str, device_id: int, at: float) -> None:
    conn.execute(
        "UPDATE devices SET last_seen_at = ? WHERE account_id = ? AND device_id = ?",
        (at, account_id, device_id),
    )


# -- linking codes ---------------------------------------------------------------------------


def insert_linking_code(
    conn: sqlite3.Connection, code_hash: bytes, account_id: str, expires_at: float
) -> None:
    conn.execute(
        "INSERT INTO linking_codes (code_hash, account_id, expires_at) VALUES (?, ?, ?)",
        (code_hash, account_id, expires_at),
    )


def take_linking_code(conn: sqlite3.Connection, code_hash: bytes) -> tuple[str, float] | None:
    """Remove a linking code and return (account_id, expires_at): a code works once."""
    r = conn.execute(
        "DELETE FROM linking_codes WHERE code_hash = ? RETURNING account_id, expires_at",
        (code_hash,),
    ).fetchone()
    return None if r is None else (str(r[0]), float(r[1]))


def delete_linking_codes_expired_before(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM linking_codes WHERE expires_at < ?", (before,)).rowcount
