"""SQL for business profiles and message templates (directory_model D1-D5).

The name-review rule sits in `save_profile`'s upsert so it holds with concurrent writers (D1);
reviews are conditional UPDATEs on PENDING rows (D2); a trigger refuses any change to an
approved template's name, language, category or content (D4).
"""

from __future__ import annotations

import json
from typing import Any

from server.domain.directory_model import (
    BusinessVertical,
    ProfileFields,
    ProfileRow,
    ReviewStatus,
    TemplateContent,
    TemplateRow,
)
from server.storage.sql import SqlConnection

_PENDING = int(ReviewStatus.PENDING)
_APPROVED = int(ReviewStatus.APPROVED)
_PROFILE_COLUMNS = (
    "account_id, display_name, about, description, address, email, websites, vertical,"
    " name_status, name_reason, verified_name, name_submitted_at, updated_at"
)
_TEMPLATE_COLUMNS = (
    "template_id, business_account_id, name, language, category, header, body, footer,"
    " buttons, parameter_count, status, reason, pause_reason, created_at, reviewed_at"
)


def _profile(r: Any) -> ProfileRow:
    (account_id, name, about, desc, address, email, websites, vertical, status, reason,
     verified, submitted, updated) = r  # fmt: skip
    fields = ProfileFields(
        name, about, desc, address, email, tuple(json.loads(websites)), BusinessVertical(vertical)
    )
    return ProfileRow(
        account_id, fields, ReviewStatus(status), reason, verified, submitted, updated
    )


def _template(r: Any) -> TemplateRow:
    (tid, business, name, language, category, header, body, footer, buttons, count, status,
     reason, pause, created, reviewed) = r  # fmt: skip
    return TemplateRow(
        tid,
        business,
        name,
        language,
        category,
        TemplateContent(header, body, footer, tuple(json.loads(buttons))),
        count,
        ReviewStatus(status),
        reason,
        pause,
        created,
        reviewed,
    )


class SqlDirectory:
    """Profiles and templates (directory_model.DirectoryReads/DirectoryWrites)."""

    connection: SqlConnection

    def get_profile(self, account_id: str) -> ProfileRow | None:
        r = self.connection.execute(
            f"SELECT {_PROFILE_COLUMNS} FROM business_profiles WHERE account_id = ?",
            (account_id,),
        ).fetchone()
        return None if r is None else _profile(r)

    def pending_names(self, limit: int) -> list[ProfileRow]:
        rows = self.connection.execute(
            f"SELECT {_PROFILE_COLUMNS} FROM business_profiles WHERE name_status = {_PENDING}"
            " ORDER BY name_submitted_at LIMIT ?",
            (limit,),
        ).fetchall()
        return [_profile(r) for r in rows]

    def save_profile(self, account_id: str, fields: ProfileFields, at: float) -> ProfileRow:
        # In DO UPDATE, `business_profiles.` is the old row, `excluded.` the new values (D1);
        # PostgreSQL wants every column named so.
        same = "excluded.display_name = business_profiles.display_name"
        r = self.connection.execute(
            f"INSERT INTO business_profiles ({_PROFILE_COLUMNS})"
            f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, {_PENDING}, '', '', ?, ?)"
            " ON CONFLICT (account_id) DO UPDATE SET"
            " about = excluded.about, description = excluded.description,"
            " address = excluded.address, email = excluded.email,"
            " websites = excluded.websites, vertical = excluded.vertical,"
            " updated_at = excluded.updated_at,"
            f" name_status = CASE WHEN {same} THEN business_profiles.name_status"
            f"   WHEN excluded.display_name = business_profiles.verified_name THEN {_APPROVED}"
            f"   ELSE {_PENDING} END,"
            f" name_reason = CASE WHEN {same} THEN business_profiles.name_reason ELSE '' END,"
            f" name_submitted_at = CASE WHEN {same} THEN business_profiles.name_submitted_at"
            "   ELSE excluded.name_submitted_at END,"
            " display_name = excluded.display_name"
            f" RETURNING {_PROFILE_COLUMNS}",
            (
                account_id,
                fields.display_name,
                fields.about,
                fields.description,
                fields.address,
                fields.email,
                json.dumps(list(fields.websites)),
                int(fields.vertical),
                at,
                at,
            ),
        ).fetchone()
        return _profile(r)

    def review_name(
        self,
        account_id: str,
        status: ReviewStatus,
        reason: str,
        expected_name: str | None,
    ) -> ProfileRow | None:
        r = self.connection.execute(
            "UPDATE business_profiles SET name_status = ?, name_reason = ?,"
            " verified_name = CASE WHEN ? THEN display_name ELSE verified_name END"
            f" WHERE account_id = ? AND name_status = {_PENDING}"
            " AND (CAST(? AS TEXT) IS NULL OR display_name = ?)"
            f" RETURNING {_PROFILE_COLUMNS}",
            (
                int(status),
                reason,
                status == ReviewStatus.APPROVED,
                account_id,
                expected_name,
                expected_name,
            ),
        ).fetchone()
        return None if r is None else _profile(r)

    def get_template(self, template_id: str) -> TemplateRow | None:
        r = self.connection.execute(
            f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE template_id = ?", (template_id,)
        ).fetchone()
        return None if r is None else _template(r)

    def find_template(
        self, business_account_id: str, name: str, language: str
    ) -> TemplateRow | None:
        r = self.connection.execute(
            f"SELECT {_TEMPLATE_COLUMNS} FROM templates"
            " WHERE business_account_id = ? AND name = ? AND language = ?",
            (business_account_id, name, language),
        ).fetchone()
        return None if r is None else _template(r)

    def list_templates(self, business_account_id: str) -> list[TemplateRow]:
        rows = self.connection.execute(
            f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE business_account_id = ?"
            " ORDER BY created_at, template_id",
            (business_account_id,),
        ).fetchall()
        return [_template(r) for r in rows]

    def pending_templates(self, limit: int) -> list[TemplateRow]:
        rows = self.connection.execute(
            f"SELECT {_TEMPLATE_COLUMNS} FROM templates WHERE status = {_PENDING}"
            " ORDER BY created_at LIMIT ?",
            (limit,),
        ).fetchall()
        return [_template(r) for r in rows]

    def insert_template(self, row: TemplateRow) -> bool:
        c = row.content
        cur = self.connection.execute(
            f"INSERT INTO templates ({_TEMPLATE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (business_account_id, name, language) DO NOTHING",
            (
                row.template_id,
                row.business_account_id,
                row.name,
                row.language,
                int(row.category),
                c.header,
                c.body,
                c.footer,
                json.dumps(list(c.buttons)),
                row.parameter_count,
                int(row.status),
                row.reason,
                row.pause_reason,
                row.created_at,
                row.reviewed_at,
            ),
        )
        return cur.rowcount > 0

    def review_template(
        self, template_id: str, status: ReviewStatus, reason: str, at: float
    ) -> TemplateRow | None:
        r = self.connection.execute(
            "UPDATE templates SET status = ?, reason = ?, reviewed_at = ?"
            f" WHERE template_id = ? AND status = {_PENDING} RETURNING {_TEMPLATE_COLUMNS}",
            (int(status), reason, at, template_id),
        ).fetchone()
        return None if r is None else _template(r)

    def set_template_pause(
        self, template_id: str, expected: str, pause_reason: str
    ) -> TemplateRow | None:
        r = self.connection.execute(
            "UPDATE templates SET pause_reason = ? WHERE template_id = ?"
            f" AND status = {_APPROVED} AND pause_reason = ? RETURNING {_TEMPLATE_COLUMNS}",
            (pause_reason, template_id, expected),
        ).fetchone()
        return None if r is None else _template(r)

    def pause_templates(self, business_account_id: str, pause_reason: str) -> int:
        return self.connection.execute(
            "UPDATE templates SET pause_reason = ? WHERE business_account_id = ?"
            f" AND status = {_APPROVED} AND pause_reason = ''",
            (pause_reason, business_account_id),
        ).rowcount

    def lift_template_pauses(self, business_account_id: str, pause_reason: str) -> int:
        return self.connection.execute(
            "UPDATE templates SET pause_reason = '' WHERE business_account_id = ?"
            " AND pause_reason = ?",
            (business_account_id, pause_reason),
        ).rowcount
