"""SQL for click-to-chat: links and their counters, number-link settings, entry windows.

Each write is one statement on a unique key (guarantees L1-L4 of
`server.domain.links_model`): counters are bumped in place, and the entry window is one
conditional upsert whose row count says whether this writer opened it.
"""

from __future__ import annotations

from server.domain.links_model import EntryWindowRow, LinkRow, LinkSettingsRow
from server.storage.sql import SqlConnection

_LINK_COLUMNS = "code, account_id, prefilled_text, label, created_at, opens, chats_started"


def _settings(row: tuple[str, int | None, int]) -> LinkSettingsRow:
    return LinkSettingsRow(row[0], None if row[1] is None else bool(row[1]), int(row[2]))


class SqlLinks:
    """Links, settings, entry windows (links_model.LinkReads/LinkWrites)."""

    connection: SqlConnection

    def get_link(self, code: str) -> LinkRow | None:
        r = self.connection.execute(
            f"SELECT {_LINK_COLUMNS} FROM chat_links WHERE code = ?", (code,)
        ).fetchone()
        return None if r is None else LinkRow(*r)

    def links_of(self, account_id: str) -> list[LinkRow]:
        rows = self.connection.execute(
            f"SELECT {_LINK_COLUMNS} FROM chat_links WHERE account_id = ? ORDER BY created_at",
            (account_id,),
        ).fetchall()
        return [LinkRow(*r) for r in rows]

    def link_settings(self, account_id: str) -> LinkSettingsRow | None:
        r = self.connection.execute(
            "SELECT account_id, number_links, number_link_opens FROM chat_link_settings"
            " WHERE account_id = ?",
            (account_id,),
        ).fetchone()
        return None if r is None else _settings(r)

    def entry_window(self, business_account_id: str, user_account_id: str) -> EntryWindowRow | None:
        r = self.connection.execute(
            "SELECT business_account_id, user_account_id, opened_at, closes_at"
            " FROM entry_windows WHERE business_account_id = ? AND user_account_id = ?",
            (business_account_id, user_account_id),
        ).fetchone()
        return None if r is None else EntryWindowRow(*r)

    def insert_link(self, row: LinkRow, max_links: int) -> bool:
        return (
            self.connection.execute(
                f"INSERT INTO chat_links ({_LINK_COLUMNS}) SELECT ?, ?, ?, ?, ?, 0, 0"
                " WHERE (SELECT count(*) FROM chat_links WHERE account_id = ?) < ?",
                (
                    row.code,
                    row.account_id,
                    row.prefilled_text,
                    row.label,
                    row.created_at,
                    row.account_id,
                    max_links,
                ),
            ).rowcount
            > 0
        )

    def delete_link(self, account_id: str, code: str) -> bool:
        return (
            self.connection.execute(
                "DELETE FROM chat_links WHERE code = ? AND account_id = ?", (code, account_id)
            ).rowcount
            > 0
        )

    def count_open(self, code: str) -> LinkRow | None:
        r = self.connection.execute(
            f"UPDATE chat_links SET opens = opens + 1 WHERE code = ? RETURNING {_LINK_COLUMNS}",
            (code,),
        ).fetchone()
        return None if r is None else LinkRow(*r)

    def count_chat_started(self, code: str) -> None:
        self.connection.execute(
            "UPDATE chat_links SET chats_started = chats_started + 1 WHERE code = ?", (code,)
        )

    def set_number_links(self, account_id: str, enabled: bool) -> LinkSettingsRow:
        r = self.connection.execute(
            "INSERT INTO chat_link_settings (account_id, number_links) VALUES (?, ?)"
            " ON CONFLICT (account_id) DO UPDATE SET number_links = excluded.number_links"
            " RETURNING account_id, number_links, number_link_opens",
            (account_id, int(enabled)),
        ).fetchone()
        return _settings(r)

    def count_number_link_open(self, account_id: str) -> None:
        self.connection.execute(
            "INSERT INTO chat_link_settings (account_id, number_links, number_link_opens)"
            " VALUES (?, NULL, 1) ON CONFLICT (account_id)"
            " DO UPDATE SET number_link_opens = chat_link_settings.number_link_opens + 1",
            (account_id,),
        )

    def open_entry_window(
        self, business_account_id: str, user_account_id: str, at: float, closes_at: float
    ) -> bool:
        return (
            self.connection.execute(
                "INSERT INTO entry_windows"
                " (business_account_id, user_account_id, opened_at, closes_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (business_account_id, user_account_id)"
                " DO UPDATE SET opened_at = excluded.opened_at, closes_at = excluded.closes_at"
                " WHERE entry_windows.closes_at <= excluded.opened_at",
                (business_account_id, user_account_id, at, closes_at),
            ).rowcount
            > 0
        )
