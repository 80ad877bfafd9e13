"""SQL for consent: opt-ins and opt-outs (by the user's number) and blocks (between accounts).

Every write is one statement on a unique key (guarantees 8 and 9 of
`server.domain.consent_model`): the rules that protect the user are conditions of the upsert
itself, so two writers racing cannot undo them.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.domain.consent_model import BlockRow, ConsentRow, OptInKind
from server.storage.sql import SqlConnection

_CONSENT_COLUMNS = (
    "user_phone, business_account_id, category, kind, source, evidence, opted_in_at, opted_out_at"
)
_USER = int(OptInKind.USER_VERIFIED)
_BUSINESS = int(OptInKind.BUSINESS_ASSERTED)
_NONE = int(OptInKind.NONE)


class SqlConsent:
    """Opt-ins, opt-outs and blocks (consent_model.ConsentReads/ConsentWrites)."""

    connection: SqlConnection

    def consents_of(self, user_phone: str) -> list[ConsentRow]:
        rows = self.connection.execute(
            f"SELECT {_CONSENT_COLUMNS} FROM consents WHERE user_phone = ?"
            " ORDER BY business_account_id, category",
            (user_phone,),
        ).fetchall()
        return [ConsentRow(*r) for r in rows]

    def consent(
        self, user_phone: str, business_account_id: str, category: int
    ) -> ConsentRow | None:
        r = self.connection.execute(
            f"SELECT {_CONSENT_COLUMNS} FROM consents"
            " WHERE user_phone = ? AND business_account_id = ? AND category = ?",
            (user_phone, business_account_id, category),
        ).fetchone()
        return None if r is None else ConsentRow(*r)

    def opt_in_by_user(
        self, user_phone: str, business_account_id: str, categories: Sequence[int], at: float
    ) -> None:
        # The user's own opt-in replaces whatever was there: a business's assertion (now
        # verified) and the user's earlier opt-out (the user changed their mind).
        self.connection.executemany(
            f"INSERT INTO consents ({_CONSENT_COLUMNS}) VALUES (?, ?, ?, ?, 0, '', ?, NULL)"
            " ON CONFLICT (user_phone, business_account_id, category) DO UPDATE SET"
            " kind = excluded.kind, source = 0, evidence = '',"
            " opted_in_at = excluded.opted_in_at, opted_out_at = NULL",
            [(user_phone, business_account_id, c, _USER, at) for c in categories],
        )

    def opt_in_by_business(
        self,
        user_phone: str,
        business_account_id: str,
        categories: Sequence[int],
        source: int,
        evidence: str,
        at: float,
    ) -> None:
        # Only a row that is neither user-verified nor opted out may take the assertion.
        self.connection.executemany(
            f"INSERT INTO consents ({_CONSENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)"
            " ON CONFLICT (user_phone, business_account_id, category) DO UPDATE SET"
            " kind = excluded.kind, source = excluded.source, evidence = excluded.evidence,"
            " opted_in_at = excluded.opted_in_at"
            f" WHERE consents.kind != {_USER} AND consents.opted_out_at IS NULL",
            [
                (user_phone, business_account_id, c, _BUSINESS, source, evidence, at)
                for c in categories
            ],
        )

    def opt_out(
        self, user_phone: str, business_account_id: str, categories: Sequence[int], at: float
    ) -> None:
        self.connection.executemany(
            f"INSERT INTO consents ({_CONSENT_COLUMNS}) VALUES (?, ?, ?, {_NONE}, 0, '', NULL, ?)"
            " ON CONFLICT (user_phone, business_account_id, category) DO UPDATE SET"
            " opted_out_at = COALESCE(consents.opted_out_at, excluded.opted_out_at)",
            [(user_phone, business_account_id, c, at) for c in categories],
        )

    def get_block(self, blocker_account_id: str, blocked_account_id: str) -> BlockRow | None:
        r = self.connection.execute(
            "SELECT blocker_account_id, blocked_account_id, blocked_at FROM blocks"
            " WHERE blocker_account_id = ? AND blocked_account_id = ?",
            (blocker_account_id, blocked_account_id),
        ).fetchone()
        return None if r is None else BlockRow(*r)

    def blocks_by(self, blocker_account_id: str) -> list[BlockRow]:
        rows = self.connection.execute(
            "SELECT blocker_account_id, blocked_account_id, blocked_at FROM blocks"
            " WHERE blocker_account_id = ? ORDER BY blocked_account_id",
            (blocker_account_id,),
        ).fetchall()
        return [BlockRow(*r) for r in rows]

    def block(self, blocker_account_id: str, blocked_account_id: str, at: float) -> BlockRow:
        self.connection.execute(
            "INSERT INTO blocks (blocker_account_id, blocked_account_id, blocked_at)"
            " VALUES (?, ?, ?) ON CONFLICT (blocker_account_id, blocked_account_id) DO NOTHING",
            (blocker_account_id, blocked_account_id, at),
        )
        row = self.get_block(blocker_account_id, blocked_account_id)
        assert row is not None  # inserted, or there already, in this transaction
        return row

    def unblock(self, blocker_account_id: str, blocked_account_id: str) -> bool:
        return (
            self.connection.execute(
                "DELETE FROM blocks WHERE blocker_account_id = ? AND blocked_account_id = ?",
                (blocker_account_id, blocked_account_id),
            ).rowcount
            > 0
        )
