"""SQL for accounts, devices, phone verifications and linking codes.

Methods over the transaction's connection: the caller (a domain service, through
`Database.write` or `Database.read`) owns the transaction, so several compose into one atomic
step. Device ids come from one UPDATE ... RETURNING of the account's counter and linking codes
are taken with DELETE ... RETURNING (ports guarantees 5 and 6). The account row also counts its
devices: a device is inserted only after a conditional UPDATE took one of the account's slots
(guarantee 11), and an account is created with ON CONFLICT (phone_number) DO NOTHING
(guarantee 13).
"""

from __future__ import annotations

from server.domain.model import AccountKind, AccountRow, DeviceRow, VerificationRow
from server.storage.sql import SqlConnection

_ACCOUNT_COLUMNS = "account_id, phone_number, kind, created_at"
_DEVICE_COLUMNS = "account_id, device_id, name, created_at, last_seen_at"


def _account(r: tuple[str, str, int, float]) -> AccountRow:
    account_id, phone, kind, created_at = r
    return AccountRow(account_id, phone, AccountKind(kind), created_at)


class SqlAccounts:
    """Accounts, devices, verifications and linking codes (ports.AccountReads/AccountWrites)."""

    connection: SqlConnection

    def insert_verification(self, row: VerificationRow) -> None:
        self.connection.execute(
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

    def get_verification(self, verification_id: str) -> VerificationRow | None:
        r = self.connection.execute(
            "SELECT verification_id, phone_number, code_hash, created_at, expires_at, attempts,"
            " completed FROM verifications WHERE verification_id = ?",
            (verification_id,),
        ).fetchone()
        if r is None:
            return None
        vid, phone, code_hash, created, expires, attempts, completed = r
        return VerificationRow(vid, phone, code_hash, created, expires, attempts, bool(completed))

    def add_verification_attempt(self, verification_id: str, max_attempts: int) -> int | None:
        row = self.connection.execute(
            "UPDATE verifications SET attempts = attempts + 1"
            " WHERE verification_id = ? AND attempts < ? RETURNING attempts",
            (verification_id, max_attempts),
        ).fetchone()
        return None if row is None else int(row[0])

    def complete_verification(self, verification_id: str) -> bool:
        return (
            self.connection.execute(
                "UPDATE verifications SET completed = 1"
                " WHERE verification_id = ? AND completed = 0",
                (verification_id,),
            ).rowcount
            > 0
        )

    def delete_verifications_expired_before(self, before: float) -> int:
        return self.connection.execute(
            "DELETE FROM verifications WHERE expires_at < ?", (before,)
        ).rowcount

    def insert_account(self, row: AccountRow) -> bool:
        """Create the account unless its number has one already; whether it was created.

        A number taken by a concurrent registration is reported, not raised, so the loser can
        re-read and re-register instead of failing on the UNIQUE constraint."""
        return (
            self.connection.execute(
                f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (phone_number) DO NOTHING",
                (row.account_id, row.phone_number, int(row.kind), row.created_at),
            ).rowcount
            > 0
        )

    def get_account(self, account_id: str) -> AccountRow | None:
        r = self.connection.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ?", (account_id,)
        ).fetchone()
        return None if r is None else _account(r)

    def get_account_by_phone(self, phone_number: str) -> AccountRow | None:
        r = self.connection.execute(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE phone_number = ?", (phone_number,)
        ).fetchone()
        return None if r is None else _account(r)

    def delete_account(self, account_id: str) -> bool:
        """Delete the account; every table that references it cascades."""
        return (
            self.connection.execute(
                "DELETE FROM accounts WHERE account_id = ?", (account_id,)
            ).rowcount
            > 0
        )

    def allocate_device_id(self, account_id: str) -> int:
        """Next unused device id of the account (ids are never handed out twice)."""
        row = self.connection.execute(
            "UPDATE accounts SET next_device_id = next_device_id + 1 WHERE account_id = ?"
            " RETURNING next_device_id - 1",
            (account_id,),
        ).fetchone()
        if row is None:
            raise LookupError(account_id)
        return int(row[0])

    def insert_device(self, row: DeviceRow, token_hash: bytes, max_devices: int) -> bool:
        """Insert the device if the account has fewer than `max_devices`; whether it did.

        The slot is taken by one conditional UPDATE of the account's `device_count` before the
        insert, in the same transaction: the count is never read first, so no interleaving of
        writers (nor two inserts in one transaction) passes the limit."""
        if (
            self.connection.execute(
                "UPDATE accounts SET device_count = device_count + 1"
                " WHERE account_id = ? AND device_count < ?",
                (row.account_id, max_devices),
            ).rowcount
            == 0
        ):
            return False
        self.connection.execute(
            f"INSERT INTO devices ({_DEVICE_COLUMNS}, token_hash) VALUES (?, ?, ?, ?, ?, ?)",
            (row.account_id, row.device_id, row.name, row.created_at, row.last_seen_at, token_hash),
        )
        return True

    def list_devices(self, account_id: str) -> list[DeviceRow]:
        rows = self.connection.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE account_id = ? ORDER BY device_id",
            (account_id,),
        ).fetchall()
        return [DeviceRow(*r) for r in rows]

    def delete_device(self, account_id: str, device_id: int) -> bool:
        """Delete the device and give its slot back (only if this call deleted it)."""
        if (
            self.connection.execute(
                "DELETE FROM devices WHERE account_id = ? AND device_id = ?",
                (account_id, device_id),
            ).rowcount
            == 0
        ):
            return False
        self.connection.execute(
            "UPDATE accounts SET device_count = device_count - 1 WHERE account_id = ?",
            (account_id,),
        )
        return True

    def delete_all_devices(self, account_id: str) -> int:
        """Delete every device of the account and reset its count (re-registration)."""
        deleted = self.connection.execute(
            "DELETE FROM devices WHERE account_id = ?", (account_id,)
        ).rowcount
        self.connection.execute(
            "UPDATE accounts SET device_count = 0 WHERE account_id = ?", (account_id,)
        )
        return deleted

    def device_for_token(self, token_hash: bytes) -> DeviceRow | None:
        r = self.connection.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return None if r is None else DeviceRow(*r)

    def holds_credential(self, account_id: str, device_id: int, token_hash: bytes) -> bool:
        """Whether `token_hash` is still the credential of that device (one primary-key probe)."""
        return (
            self.connection.execute(
                "SELECT 1 FROM devices WHERE token_hash = ? AND account_id = ? AND device_id = ?",
                (token_hash, account_id, device_id),
            ).fetchone()
            is not None
        )

    def touch_device(self, account_id: str, device_id: int, at: float) -> None:
        self.connection.execute(
            "UPDATE devices SET last_seen_at = ? WHERE account_id = ? AND device_id = ?",
            (at, account_id, device_id),
        )

    def insert_linking_code(self, code_hash: bytes, account_id: str, expires_at: float) -> None:
        self.connection.execute(
            "INSERT INTO linking_codes (code_hash, account_id, expires_at) VALUES (?, ?, ?)",
            (code_hash, account_id, expires_at),
        )

    def take_linking_code(self, code_hash: bytes) -> tuple[str, float] | None:
        """Remove a linking code and return (account_id, expires_at): a code works once."""
        r = self.connection.execute(
            "DELETE FROM linking_codes WHERE code_hash = ? RETURNING account_id, expires_at",
            (code_hash,),
        ).fetchone()
        return None if r is None else (str(r[0]), float(r[1]))

    def delete_linking_codes_expired_before(self, before: float) -> int:
        return self.connection.execute(
            "DELETE FROM linking_codes WHERE expires_at < ?", (before,)
        ).rowcount
