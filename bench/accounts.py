"""Many registered devices at once, written into the database file before the server starts.

Registering 10,000 devices through StartVerification / CompleteVerification / UploadPreKeys
would take minutes of a 2-core machine and measure registration, which no figure here is
about. Each account is made by `server.domain.accounts.register_number`, the very step
CompleteVerification runs in its transaction (account row, device 1, the hash of its token),
with the device's key row (`put_device_keys`) so that sends to it pass the device-list rule.
The keys are placeholders: no one fetches these bundles, and the server checks signatures only
on upload.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.messaging_bench import Account, test_number
from server.domain.accounts import register_number
from server.domain.auth import new_token
from server.domain.model import AccountKind, DeviceKeys, SignedKey
from server.storage.database import Database, connect
from server.storage.transaction import SqliteTransaction


def create_database(path: Path) -> None:
    """A new, migrated database file, made as the server makes it (mode, pragmas, schema)."""
    Database(path).close()


def prefill_accounts(
    database: Path, count: int, first: int = 0, kind: AccountKind = AccountKind.PERSON
) -> list[Account]:
    """`count` accounts with one device each (numbers test_number(first) on), in one
    transaction; the database must exist (`create_database`) and no server may be writing it."""
    conn = connect(database)
    tx = SqliteTransaction(conn)
    now = time.time()
    accounts = []
    try:
        conn.execute("BEGIN")
        for i in range(first, first + count):
            token = new_token()
            registered = register_number(tx, test_number(i), kind, "bench", token, now, 6)
            registration_id = 1 + i % 16_000
            key = SignedKey(1, b"\x05" + os.urandom(32), os.urandom(64))
            tx.put_device_keys(
                DeviceKeys(
                    registered.account_id,
                    registered.device_id,
                    b"\x05" + os.urandom(32),
                    registration_id,
                    key,
                    now,
                    key,
                )
            )
            metadata = (("authorization", f"Bearer {token}"),)
            accounts.append(Account(registered.account_id, metadata, registration_id))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return accounts
