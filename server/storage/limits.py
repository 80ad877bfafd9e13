"""SQL for shared rate limits (`server.domain.ratelimit`): one token bucket per (limit, key).

`lock_bucket` creates the bucket's row full if it is missing (`INSERT ... ON CONFLICT DO
NOTHING`), then reads it locked for the rest of the transaction (`FOR UPDATE` where the dialect
has it; SQLite has one writer): replicas taking from one bucket at once are serialised by the
row, so no token is handed out twice, the first take of a key included. The token arithmetic is
the domain's; this module only keeps the numbers.
"""

from __future__ import annotations

from server.storage.sql import SqlConnection


class SqlLimits:
    """ports.LimitWrites."""

    connection: SqlConnection
    # How this dialect locks the row it reads for the rest of the transaction.
    lock_row = ""

    def lock_bucket(self, name: str, key: str, capacity: float, now: float) -> tuple[float, float]:
        self.connection.execute(
            "INSERT INTO rate_buckets (bucket, key, tokens, updated_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bucket, key) DO NOTHING",
            (name, key, capacity, now, now),
        )
        tokens, updated = self.connection.execute(
            f"SELECT tokens, updated_at FROM rate_buckets WHERE bucket = ? AND key = ?"
            f"{self.lock_row}",
            (name, key),
        ).fetchone()
        return float(tokens), float(updated)

    def store_bucket(
        self, name: str, key: str, tokens: float, now: float, forget_after: float
    ) -> None:
        self.connection.execute(
            "UPDATE rate_buckets SET tokens = ?, updated_at = ?, expires_at = ?"
            " WHERE bucket = ? AND key = ?",
            (tokens, now, forget_after, name, key),
        )

    def delete_full_buckets(self, now: float) -> int:
        return self.connection.execute(
            "DELETE FROM rate_buckets WHERE expires_at < ?", (now,)
        ).rowcount
