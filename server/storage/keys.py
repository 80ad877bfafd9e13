"""SQL for the key directory: device identity, signed prekeys, one-time EC and Kyber prekeys.

Handing out a one-time key is a DELETE ... RETURNING: the row is gone in the same statement that
reads it, so two callers, on one writer or several, can never receive the same key (ports
guarantee 5). A device's identity is written by an upsert conditional on the identity on file
(guarantee 12).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.domain.model import DeviceKeys, KeyCounts, SignedKey
from server.storage.sql import SqlConnection

_DEVICE_KEY_COLUMNS = (
    "account_id, device_id, identity_key, registration_id, signed_pre_key_id, signed_pre_key,"
    " signed_pre_key_signature, signed_pre_key_at, last_resort_kyber_id, last_resort_kyber_key,"
    " last_resort_kyber_signature"
)


def _device_keys(r: Any) -> DeviceKeys:
    (acc, dev, ik, reg, spk_id, spk, spk_sig, spk_at, lr_id, lr_key, lr_sig) = r
    return DeviceKeys(
        acc, dev, ik, reg, SignedKey(spk_id, spk, spk_sig), spk_at, SignedKey(lr_id, lr_key, lr_sig)
    )


def _existing(
    conn: SqlConnection, table: str, account_id: str, device_id: int, key_ids: Iterable[int]
) -> dict[int, bytes]:
    ids = list(key_ids)
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT key_id, public_key FROM {table} WHERE account_id = ? AND device_id = ?"
        f" AND key_id IN ({marks})",
        (account_id, device_id, *ids),
    ).fetchall()
    return {int(k): bytes(v) for k, v in rows}


class SqlKeys:
    """The key directory (ports.KeyReads/KeyWrites)."""

    connection: SqlConnection

    def get_device_keys(self, account_id: str, device_id: int) -> DeviceKeys | None:
        r = self.connection.execute(
            f"SELECT {_DEVICE_KEY_COLUMNS} FROM device_keys WHERE account_id = ? AND device_id = ?",
            (account_id, device_id),
        ).fetchone()
        return None if r is None else _device_keys(r)

    def list_device_keys(self, account_id: str) -> list[DeviceKeys]:
        rows = self.connection.execute(
            f"SELECT {_DEVICE_KEY_COLUMNS} FROM device_keys WHERE account_id = ?"
            " ORDER BY device_id",
            (account_id,),
        ).fetchall()
        return [_device_keys(r) for r in rows]

    def put_device_keys(self, k: DeviceKeys) -> bool:
        """Store the device's keys, unless a row on file has another identity key or
        registration id; whether they were stored.

        One upsert whose update is conditional on the row's own identity (ports guarantee 12):
        a concurrent upload with another identity can never replace the one on file, whatever
        the uploader read before."""
        return (
            self.connection.execute(
                f"INSERT INTO device_keys ({_DEVICE_KEY_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (account_id, device_id) DO UPDATE SET"
                " signed_pre_key_id = excluded.signed_pre_key_id,"
                " signed_pre_key = excluded.signed_pre_key,"
                " signed_pre_key_signature = excluded.signed_pre_key_signature,"
                " signed_pre_key_at = excluded.signed_pre_key_at,"
                " last_resort_kyber_id = excluded.last_resort_kyber_id,"
                " last_resort_kyber_key = excluded.last_resort_kyber_key,"
                " last_resort_kyber_signature = excluded.last_resort_kyber_signature"
                " WHERE device_keys.identity_key = excluded.identity_key"
                " AND device_keys.registration_id = excluded.registration_id",
                (
                    k.account_id,
                    k.device_id,
                    k.identity_key,
                    k.registration_id,
                    k.signed_pre_key.key_id,
                    k.signed_pre_key.public_key,
                    k.signed_pre_key.signature,
                    k.signed_pre_key_at,
                    k.last_resort_kyber.key_id,
                    k.last_resort_kyber.public_key,
                    k.last_resort_kyber.signature,
                ),
            ).rowcount
            > 0
        )

    def existing_pre_keys(
        self, account_id: str, device_id: int, key_ids: Iterable[int]
    ) -> dict[int, bytes]:
        """The device's one-time EC prekeys among `key_ids`, by id."""
        return _existing(self.connection, "one_time_pre_keys", account_id, device_id, key_ids)

    def existing_kyber_pre_keys(
        self, account_id: str, device_id: int, key_ids: Iterable[int]
    ) -> dict[int, bytes]:
        """The device's one-time Kyber prekeys among `key_ids`, by id."""
        return _existing(self.connection, "kyber_pre_keys", account_id, device_id, key_ids)

    def add_pre_keys(
        self, account_id: str, device_id: int, keys: Iterable[tuple[int, bytes]]
    ) -> None:
        self.connection.executemany(
            "INSERT INTO one_time_pre_keys (account_id, device_id, key_id, public_key)"
            " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(account_id, device_id, key_id, pub) for key_id, pub in keys],
        )

    def add_kyber_pre_keys(
        self, account_id: str, device_id: int, keys: Iterable[SignedKey]
    ) -> None:
        self.connection.executemany(
            "INSERT INTO kyber_pre_keys (account_id, device_id, key_id, public_key,"
            " signature) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(account_id, device_id, k.key_id, k.public_key, k.signature) for k in keys],
        )

    def take_pre_key(self, account_id: str, device_id: int) -> tuple[int, bytes] | None:
        """Remove and return the device's lowest-id one-time EC prekey."""
        r = self.connection.execute(
            "DELETE FROM one_time_pre_keys WHERE account_id = ?1 AND device_id = ?2 AND key_id = ("
            " SELECT min(key_id) FROM one_time_pre_keys WHERE account_id = ?1 AND device_id = ?2)"
            " RETURNING key_id, public_key",
            (account_id, device_id),
        ).fetchone()
        return None if r is None else (int(r[0]), bytes(r[1]))

    def take_kyber_pre_key(self, account_id: str, device_id: int) -> SignedKey | None:
        """Remove and return the device's lowest-id one-time Kyber prekey."""
        r = self.connection.execute(
            "DELETE FROM kyber_pre_keys WHERE account_id = ?1 AND device_id = ?2 AND key_id = ("
            " SELECT min(key_id) FROM kyber_pre_keys WHERE account_id = ?1 AND device_id = ?2)"
            " RETURNING key_id, public_key, signature",
            (account_id, device_id),
        ).fetchone()
        return None if r is None else SignedKey(int(r[0]), bytes(r[1]), bytes(r[2]))

    def count_keys(self, account_id: str, device_id: int) -> KeyCounts:
        r = self.connection.execute(
            "SELECT (SELECT count(*) FROM one_time_pre_keys"
            " WHERE account_id = ?1 AND device_id = ?2),"
            " (SELECT count(*) FROM kyber_pre_keys WHERE account_id = ?1 AND device_id = ?2)",
            (account_id, device_id),
        ).fetchone()
        return KeyCounts(int(r[0]), int(r[1]))
