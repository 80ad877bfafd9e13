"""SQL for the sending rules: customer-service windows, conversation starts, tiers, caps.

Each write is one statement on a unique key (guarantees S1-S3 of
`server.domain.sending_model`), so concurrent writers cannot count a user twice or lose the
newest window.
"""

from __future__ import annotations

from server.domain.sending_model import TemplateFacts
from server.storage.sql import SqlConnection

HOUR = 3600
DAY = 86_400.0


class SqlSending:
    """Windows, starts, tiers, marketing sends (sending_model.SendingReads/SendingWrites)."""

    connection: SqlConnection

    def template_facts(self, template_id: str) -> TemplateFacts | None:
        r = self.connection.execute(
            "SELECT template_id, business_account_id, name, category, status, pause_reason"
            " FROM templates WHERE template_id = ?",
            (template_id,),
        ).fetchone()
        return None if r is None else TemplateFacts(*r)

    def window_opened_at(self, business_account_id: str, user_account_id: str) -> float | None:
        r = self.connection.execute(
            "SELECT opened_at FROM service_windows"
            " WHERE business_account_id = ? AND user_account_id = ?",
            (business_account_id, user_account_id),
        ).fetchone()
        return None if r is None else float(r[0])

    def conversation_started_at(
        self, business_account_id: str, user_account_id: str
    ) -> float | None:
        r = self.connection.execute(
            "SELECT started_at FROM conversation_starts"
            " WHERE business_account_id = ? AND user_account_id = ?",
            (business_account_id, user_account_id),
        ).fetchone()
        return None if r is None else float(r[0])

    def starts_by_hour(self, business_account_id: str, since_hour: int) -> list[tuple[int, int]]:
        rows = self.connection.execute(
            "SELECT hour, started FROM conversation_hours"
            " WHERE business_account_id = ? AND hour >= ? ORDER BY hour",
            (business_account_id, since_hour),
        ).fetchall()
        return [(int(h), int(n)) for h, n in rows]

    def business_standing(self, business_account_id: str) -> tuple[int, float | None]:
        r = self.connection.execute(
            "SELECT tier, red_since FROM business_tiers WHERE business_account_id = ?",
            (business_account_id,),
        ).fetchone()
        return (0, None) if r is None else (int(r[0]), r[1])

    def marketing_sent_since(
        self, business_account_id: str, user_account_id: str, since: float, limit: int
    ) -> list[float]:
        rows = self.connection.execute(
            "SELECT sent_at FROM marketing_sends WHERE business_account_id = ?"
            " AND user_account_id = ? AND sent_at > ? ORDER BY sent_at LIMIT ?",
            (business_account_id, user_account_id, since, limit),
        ).fetchall()
        return [float(r[0]) for r in rows]

    def negative_signals_since(self, business_account_id: str, since: float) -> tuple[int, int]:
        blocks = self.connection.execute(
            "SELECT count(*) FROM blocks WHERE blocked_account_id = ? AND blocked_at >= ?",
            (business_account_id, since),
        ).fetchone()[0]
        opt_outs = self.connection.execute(
            "SELECT count(DISTINCT user_phone) FROM consents WHERE business_account_id = ?"
            " AND opted_out_at IS NOT NULL AND opted_out_at >= ?",
            (business_account_id, since),
        ).fetchone()[0]
        return int(blocks), int(opt_outs)

    def open_window(self, business_account_id: str, user_account_id: str, at: float) -> None:
        self.connection.execute(
            "INSERT INTO service_windows (business_account_id, user_account_id, opened_at)"
            " VALUES (?, ?, ?) ON CONFLICT (business_account_id, user_account_id) DO UPDATE"
            " SET opened_at = CASE WHEN excluded.opened_at > service_windows.opened_at"
            " THEN excluded.opened_at ELSE service_windows.opened_at END",
            (business_account_id, user_account_id, at),
        )

    def start_conversation(
        self, business_account_id: str, user_account_id: str, at: float, window: float
    ) -> bool:
        changed = self.connection.execute(
            "INSERT INTO conversation_starts (business_account_id, user_account_id, started_at)"
            " VALUES (?, ?, ?) ON CONFLICT (business_account_id, user_account_id) DO UPDATE"
            " SET started_at = excluded.started_at"
            " WHERE conversation_starts.started_at <= excluded.started_at - ?",
            (business_account_id, user_account_id, at, window),
        ).rowcount
        if not changed:
            return False
        hour = int(at // HOUR)
        conn = self.connection
        conn.execute(
            "INSERT INTO conversation_hours (business_account_id, hour, started) VALUES (?, ?, 1)"
            " ON CONFLICT (business_account_id, hour) DO UPDATE"
            " SET started = conversation_hours.started + 1",
            (business_account_id, hour),
        )
        # Buckets older than the 7 days the promotion looks at are never read again.
        conn.execute(
            "DELETE FROM conversation_hours WHERE business_account_id = ? AND hour < ?",
            (business_account_id, hour - 8 * 24),
        )
        return True

    def promote_tier(self, business_account_id: str, expected: int, at: float) -> bool:
        # No row means tier 0, so the insert happens only for expected == 0; a row is moved
        # only from `expected`.
        return bool(
            self.connection.execute(
                "INSERT INTO business_tiers (business_account_id, tier, promoted_at, red_since)"
                " VALUES (?, ?, ?, NULL) ON CONFLICT (business_account_id) DO UPDATE SET"
                " tier = business_tiers.tier + 1, promoted_at = excluded.promoted_at"
                " WHERE business_tiers.tier = ?",
                (business_account_id, expected + 1, at, expected),
            ).rowcount
        )

    def set_red(self, business_account_id: str, at: float | None) -> bool:
        if at is None:
            return bool(
                self.connection.execute(
                    "UPDATE business_tiers SET red_since = NULL"
                    " WHERE business_account_id = ? AND red_since IS NOT NULL",
                    (business_account_id,),
                ).rowcount
            )
        # A standing row is made at tier 0 when there is none; an earlier red_since is kept.
        return bool(
            self.connection.execute(
                "INSERT INTO business_tiers (business_account_id, tier, promoted_at, red_since)"
                " VALUES (?, 0, 0, ?) ON CONFLICT (business_account_id) DO UPDATE SET"
                " red_since = excluded.red_since WHERE business_tiers.red_since IS NULL",
                (business_account_id, at),
            ).rowcount
        )

    def record_marketing(
        self, business_account_id: str, user_account_id: str, message_id: int, at: float
    ) -> None:
        conn = self.connection
        conn.execute(
            "DELETE FROM marketing_sends WHERE business_account_id = ? AND user_account_id = ?"
            " AND sent_at <= ?",
            (business_account_id, user_account_id, at - DAY),
        )
        conn.execute(
            "INSERT INTO marketing_sends (business_account_id, user_account_id, sent_at,"
            " message_id) VALUES (?, ?, ?, ?)",
            (business_account_id, user_account_id, at, message_id),
        )
