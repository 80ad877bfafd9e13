"""SQL for billing: balances, the append-only ledger, charges, price tables, monthly usage.

Each money movement is one conditional statement plus one insert on a unique key
(guarantees B1-B3 of `server.domain.billing_model`), so concurrent writers can neither
overdraw a balance nor charge a message twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from server.domain.billing_model import (
    Balance,
    Charge,
    ChargeRun,
    ChargeState,
    EntryKind,
    LedgerEntry,
    PriceTableRow,
    Reservation,
    SettledRun,
    StatusEventRow,
    StatusEventView,
    StatusKind,
)
from server.storage.errors import StorageConflict
from server.storage.messages import insert_rows
from server.storage.sending import DAY
from server.storage.sql import SqlConnection

_ENTRY_COLUMNS = (
    "entry_id, business_account_id, kind, amount, available_after, reserved_after, message_id,"
    " reference, at, note, message_count"
)
_CHARGE_COLUMNS = (
    "message_id, business_account_id, recipient_account_id, category, country, amount, reason,"
    " table_version, state, sent_at, settled_at, reserve_entry, settle_entry, explanation,"
    " sent_sequence"
)
_EVENT_COLUMNS = "business_account_id, sequence, kind, message_id, at, detail"
_LEDGER_INSERT = (
    "business_account_id, kind, amount, available_after, reserved_after, message_id, reference,"
    " at, note"
)
_RESERVED = int(ChargeState.RESERVED)
_RESERVE_ENTRY = Charge._fields.index("reserve_entry")
_SENT_SEQUENCE = Charge._fields.index("sent_sequence")
# A run of charges alike (but for the message id) at least this long is written by one INSERT
# ... SELECT over its ids; shorter ones go into one multi-row INSERT with the job's other rows.
LONG_RUN = 8


class SqlBilling:
    """Balances, ledger, charges, price tables (billing_model.BillingReads/BillingWrites)."""

    connection: SqlConnection

    # -- reads ------------------------------------------------------------------------------

    def get_balance(self, business_account_id: str) -> Balance:
        r = self.connection.execute(
            "SELECT available, reserved FROM balances WHERE business_account_id = ?",
            (business_account_id,),
        ).fetchone()
        return Balance(0, 0) if r is None else Balance(int(r[0]), int(r[1]))

    def get_charge(self, message_id: int) -> Charge | None:
        r = self.connection.execute(
            f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if r is None else Charge(*r)

    def ledger_page(
        self, business_account_id: str, after_entry_id: int, limit: int
    ) -> list[LedgerEntry]:
        rows = self.connection.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE business_account_id = ? AND entry_id > ?"
            " ORDER BY entry_id LIMIT ?",
            (business_account_id, after_entry_id, limit),
        ).fetchall()
        return [LedgerEntry(*r) for r in rows]

    def entry_for_reference(self, business_account_id: str, reference: str) -> LedgerEntry | None:
        r = self.connection.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger WHERE business_account_id = ? AND reference = ?",
            (business_account_id, reference),
        ).fetchone()
        return None if r is None else LedgerEntry(*r)

    def price_tables(self) -> list[PriceTableRow]:
        rows = self.connection.execute(
            "SELECT version, effective_at, body, created_at, source FROM price_tables"
            " ORDER BY effective_at"
        ).fetchall()
        return [PriceTableRow(*r) for r in rows]

    def month_usage(
        self, business_account_id: str, month: str, category: int, country: str
    ) -> tuple[int, int]:
        rows = self.connection.execute(
            "SELECT country, count FROM usage_months"
            " WHERE business_account_id = ? AND month = ? AND category = ?",
            (business_account_id, month, category),
        ).fetchall()
        total = sum(int(n) for _, n in rows)
        here = next((int(n) for c, n in rows if c == country), 0)
        return total, here

    def status_events_after(
        self, business_account_id: str, after_sequence: int, limit: int
    ) -> list[StatusEventView]:
        charge = ", ".join(f"c.{c.strip()}" for c in _CHARGE_COLUMNS.split(","))
        # The events past the cursor are the first `limit` of two ranges merged (B5): the rows
        # appended (DELIVERED, EXPIRED, FAILED, and the SENT events of charges stored before
        # schema 15) and the charges, each its message's SENT event. A DELIVERED event's
        # ledger entry is its message's CAPTURE, found by the ledger's unique (message_id,
        # kind) key rather than written twice.
        rows = self.connection.execute(
            "SELECT e.business_account_id, e.sequence, e.kind, e.message_id, e.at,"
            f" coalesce(l.entry_id, 0), e.detail, {charge} FROM ("
            " SELECT * FROM (SELECT business_account_id, sequence, kind, message_id, at, detail"
            " FROM status_events WHERE business_account_id = ? AND sequence > ?"
            " ORDER BY sequence LIMIT ?) AS appended"
            " UNION ALL"
            f" SELECT * FROM (SELECT business_account_id, sent_sequence, {int(StatusKind.SENT)},"
            " message_id, sent_at, CAST('' AS TEXT) FROM charges"
            " WHERE business_account_id = ? AND sent_sequence > ?"
            " ORDER BY sent_sequence LIMIT ?) AS sent"
            ") AS e JOIN charges c ON c.message_id = e.message_id"
            f" LEFT JOIN ledger l ON e.kind = {int(StatusKind.DELIVERED)}"
            f" AND l.message_id = e.message_id AND l.kind = {int(EntryKind.CAPTURE)}"
            " ORDER BY e.sequence LIMIT ?",
            (business_account_id, after_sequence, limit) * 2 + (limit,),
        ).fetchall()
        width = len(StatusEventRow._fields)
        return [StatusEventView(StatusEventRow(*r[:width]), Charge(*r[width:])) for r in rows]

    def pending_charges_to(self, business_account_id: str, recipient_account_id: str) -> list[int]:
        # B4: through the recipient's queued envelopes, not an index of charges by pair.
        rows = self.connection.execute(
            "SELECT DISTINCT c.message_id FROM envelopes e"
            " JOIN charges c ON c.message_id = e.message_id"
            " WHERE e.account_id = ? AND e.sender_account_id = ?"
            f" AND c.business_account_id = e.sender_account_id AND c.state = {_RESERVED}"
            " ORDER BY c.message_id",
            (recipient_account_id, business_account_id),
        ).fetchall()
        return [int(r[0]) for r in rows]

    # -- writes -----------------------------------------------------------------------------

    def add_price_table(self, effective_at: float, body: str, at: float, source: str) -> int:
        (version,) = self.connection.execute(
            "INSERT INTO price_tables (effective_at, body, created_at, source) VALUES (?, ?, ?, ?)"
            " RETURNING version",
            (effective_at, body, at, source),
        ).fetchone()
        return int(version)

    def _entry(
        self,
        business_account_id: str,
        kind: EntryKind,
        amount: int,
        balance: Balance,
        at: float,
        *,
        message_id: int | None = None,
        reference: str | None = None,
        note: str = "",
        message_count: int | None = None,
    ) -> int | None:
        """Append a ledger entry; None when its unique key (message and kind, or business and
        reference) is taken (B2, B3)."""
        r = self.connection.execute(
            f"INSERT INTO ledger ({_LEDGER_INSERT}, message_count)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING entry_id",
            (business_account_id, int(kind), amount, *balance, message_id, reference, at, note,
             message_count),
        ).fetchone()  # fmt: skip
        return None if r is None else int(r[0])

    def _book(
        self,
        business_account_id: str,
        kind: EntryKind,
        amount: int,
        move: Balance,
        at: float,
        *,
        message_id: int | None = None,
        reference: str | None = None,
        note: str = "",
    ) -> tuple[int, Balance] | None:
        """Move the balance by `move`, then append the entry with the balance after it. The
        move locks the business's balance row first, so the business's entries take their ids
        in commit order, whatever other writers do: a reader paging the ledger by entry id
        never skips one that commits late. A key taken already (a second capture, a repeated
        reference) moves no money: the move is undone in the same transaction (B2, B3). None
        in that case."""
        r = self.connection.execute(
            "UPDATE balances SET available = available + ?, reserved = reserved + ?"
            " WHERE business_account_id = ? RETURNING available, reserved",
            (*move, business_account_id),
        ).fetchone()
        after = Balance(int(r[0]), int(r[1]))
        entry_id = self._entry(
            business_account_id, kind, amount, after, at,
            message_id=message_id, reference=reference, note=note,
        )  # fmt: skip
        if entry_id is None:
            self.connection.execute(
                "UPDATE balances SET available = available - ?, reserved = reserved - ?"
                " WHERE business_account_id = ?",
                (*move, business_account_id),
            )
            return None
        return entry_id, after

    def top_up(
        self, business_account_id: str, amount: int, reference: str, at: float, note: str
    ) -> tuple[LedgerEntry, bool]:
        self.connection.execute(
            "INSERT INTO balances (business_account_id, available, reserved) VALUES (?, 0, 0)"
            " ON CONFLICT DO NOTHING",
            (business_account_id,),
        )
        booked = self._book(
            business_account_id, EntryKind.TOP_UP, amount, Balance(amount, 0), at,
            reference=reference, note=note,
        )  # fmt: skip
        if booked is None:
            first = self.entry_for_reference(business_account_id, reference)
            assert first is not None  # the conflict was on this very key
            return first, False
        entry_id, after = booked
        return LedgerEntry(
            entry_id, business_account_id, int(EntryKind.TOP_UP), amount, *after, None,
            reference, at, note,
        ), True  # fmt: skip

    def reserve(self, charge: Charge, at: float) -> Reservation:
        accepted = self.reserve_many([ChargeRun(charge, [charge.message_id])], at)
        return Reservation(accepted, self.get_balance(charge.business_account_id), None)

    def reserve_many(self, runs: Sequence[ChargeRun], at: float) -> bool:
        """Record a send job's charges and hold their amounts: per business one conditional
        UPDATE of the total (B1) and one RESERVE entry for it (with the balance after it and
        the number of priced messages), then the charges, each naming its entry and each its
        message's SENT event, numbered from the business's counter (B5). Each long run
        (charges alike but for the message id) is one INSERT ... SELECT over its list of ids,
        not 14 bound values per row.
        False, with nothing written, when a business's balance is short of its total."""
        conn = self.connection
        entries: dict[str, int] = {}
        for business, group in _by_business(
            (c.business_account_id, c.amount, ids) for c, ids in runs
        ):
            total = _total(group)
            if not total:
                continue
            r = conn.execute(
                "UPDATE balances SET available = available - ?, reserved = reserved + ?"
                " WHERE business_account_id = ? AND available >= ? RETURNING available, reserved",
                (total, total, business, total),
            ).fetchone()
            if r is None:
                return False
            priced = sum(len(ids) for amount, ids in group if amount)
            entry = self._entry(
                business, EntryKind.RESERVE, -total, Balance(int(r[0]), int(r[1])), at,
                message_count=priced,
            )  # fmt: skip
            assert entry is not None  # no message or reference: no unique key to be taken
            entries[business] = entry
        # Each new charge is its message's SENT event: a business's are numbered from its
        # counter in the order given (B5), the counter locked after the balance, as every
        # writer locks them.
        counts: dict[str, int] = {}
        for c, ids in runs:
            counts[c.business_account_id] = counts.get(c.business_account_id, 0) + len(ids)
        sequence = {b: self._take_sequences(b, n) for b, n in sorted(counts.items())}
        # New charges: RESERVED, a priced one naming its job's RESERVE entry (a free one none).
        # A long run is one INSERT ... SELECT over its ids; the short ones (a job to many
        # people: one message each) are rows of one multi-row INSERT, as a statement per
        # message would cost more. The charges' primary key keeps one reservation per message.
        columns = _CHARGE_COLUMNS.split(", ", 1)[1]
        shape = ", ".join(_CHARGE_CASTS)
        rows: list[tuple[object, ...]] = []
        days: dict[tuple[str, int], tuple[int, int]] = {}
        for c, ids in runs:
            business = c.business_account_id
            entry = entries.get(business) if c.amount else None
            values = (*c[1:_RESERVE_ENTRY], entry, *c[_RESERVE_ENTRY + 1 : _SENT_SEQUENCE])
            first = sequence[business]
            sequence[business] = first + len(ids)
            # A business's sequences rise from run to run: a day's first is its first run's.
            key = (business, charge_day(c.sent_at))
            days[key] = (days.get(key, (first, 0))[0], first + len(ids) - 1)
            if len(ids) < LONG_RUN:
                rows.extend((m, *values, first + k) for k, m in enumerate(ids))
                continue
            # No ORDER BY: each row is keyed by its own message id and numbered by its place
            # in the list, so the order they go in does not matter, and sorting them would
            # cost a temporary B-tree.
            conn.execute(
                f"INSERT INTO charges (message_id, {columns})"
                f" SELECT value, {shape}, CAST(? AS BIGINT) + key FROM {self._EACH}",
                (*values, first, self._list(ids)),
            )
        insert_rows(conn, f"charges ({_CHARGE_COLUMNS})", len(Charge._fields), rows)
        for (business, day), (low, high) in sorted(days.items()):
            self._mark_day(business, day, low, high)
        return True

    def _mark_day(self, business_account_id: str, day: int, low: int, high: int) -> None:
        """Widen the business's day to cover the SENT sequences low..high (of charges sent
        that day): the usage report reads a period's charges as a range of sequences instead
        of through an index by send time that every charge would write (`SqlUsage`). Min and
        max rather than "the day's first": sequences are taken in commit order, send times on
        each replica's clock, so a late commit may carry an earlier day."""
        self.connection.execute(
            "INSERT INTO charge_days (business_account_id, day, first_sequence, last_sequence)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (business_account_id, day) DO UPDATE SET"
            " first_sequence = CASE WHEN excluded.first_sequence < charge_days.first_sequence"
            " THEN excluded.first_sequence ELSE charge_days.first_sequence END,"
            " last_sequence = CASE WHEN excluded.last_sequence > charge_days.last_sequence"
            " THEN excluded.last_sequence ELSE charge_days.last_sequence END",
            (business_account_id, day, low, high),
        )

    def _take_sequences(self, business_account_id: str, n: int) -> int:
        """Move the business's status event counter on by `n`, holding its row until commit
        (B5); the first of the `n` sequences taken."""
        (last,) = self.connection.execute(
            "INSERT INTO status_event_counters (business_account_id, last_sequence)"
            " VALUES (?, ?) ON CONFLICT (business_account_id) DO UPDATE"
            " SET last_sequence = status_event_counters.last_sequence + excluded.last_sequence"
            " RETURNING last_sequence",
            (business_account_id, n),
        ).fetchone()
        return int(last) - n + 1

    def settle_charges(
        self, message_ids: list[int], state: ChargeState, at: float
    ) -> list[SettledRun]:
        if not message_ids:
            return []
        moved = self._move_charges(message_ids, state, at)
        capture = state is ChargeState.CAPTURED
        kind = EntryKind.CAPTURE if capture else EntryKind.RELEASE
        for business, group in _by_business(moved):
            total = _total(group)
            if not total:
                continue
            r = self.connection.execute(
                "UPDATE balances SET available = available + ?, reserved = reserved - ?"
                " WHERE business_account_id = ? RETURNING available, reserved",
                (0 if capture else total, total, business),
            ).fetchone()
            before = Balance(int(r[0]) - (0 if capture else total), int(r[1]) + total)
            # B2's last line: a second CAPTURE or RELEASE of a message violates the unique
            # key and rolls the whole job back.
            self._entries(business, kind, group, before, at)
        return moved

    def _entries(
        self,
        business_account_id: str,
        kind: EntryKind,
        runs: _Runs,
        before: Balance,
        at: float,
    ) -> None:
        """The ledger entries of one business's money movement just made: one per priced
        message of the runs (amount, message ids), in order, each with the balance after it,
        from `before` on. A long run is one INSERT ... SELECT over its ids (the balance after
        its k-th is the balance before it moved k times), not nine bound values per entry;
        short runs' entries are rows of a multi-row INSERT, written before the next long run
        so that entry ids follow the balances."""
        per_available, per_reserved, sign = _MOVES[kind]
        available, reserved = before
        rows: list[tuple[object, ...]] = []  # the short runs' entries, written in order
        for amount, ids in runs:
            if not amount:
                continue
            if len(ids) < LONG_RUN:
                for m in ids:
                    available += per_available * amount
                    reserved += per_reserved * amount
                    rows.append((business_account_id, int(kind), sign * amount, available,
                                 reserved, m, None, at, ""))  # fmt: skip
                continue
            insert_rows(self.connection, f"ledger ({_LEDGER_INSERT})", 9, rows)
            rows = []
            self.connection.execute(
                f"INSERT INTO ledger ({_LEDGER_INSERT})"
                f" SELECT CAST(? AS TEXT), {int(kind)}, CAST(? AS BIGINT),"
                " CAST(? AS BIGINT) + CAST(? AS BIGINT) * (key + 1),"
                " CAST(? AS BIGINT) + CAST(? AS BIGINT) * (key + 1),"
                f" value, NULL, CAST(? AS DOUBLE PRECISION), '' FROM {self._EACH} ORDER BY key",
                (business_account_id, sign * amount, available, per_available * amount,
                 reserved, per_reserved * amount, at, self._list(ids)),
            )  # fmt: skip
            available += per_available * amount * len(ids)
            reserved += per_reserved * amount * len(ids)
        insert_rows(self.connection, f"ledger ({_LEDGER_INSERT})", 9, rows)

    # The FROM item of a list of ids bound as one value: columns `value` (an id) and `key`
    # (its position, from 0). SQLite reads a JSON array; PostgreSQL overrides both with an
    # array and unnest.
    _EACH = "json_each(?)"

    @staticmethod
    def _list(ids: list[int]) -> object:
        return json.dumps(ids)

    def _move_charges(
        self, message_ids: list[int], state: ChargeState, at: float
    ) -> list[SettledRun]:
        """Settle the still-reserved charges among `message_ids` to `state`; those that moved,
        by business and amount, each run's ids in order."""
        # The charges come back grouped (a batch of acks settles few businesses' messages at
        # few prices), each group's ids as one JSON value, then one conditional UPDATE moves
        # them.
        where = f"state = {_RESERVED} AND message_id IN (SELECT value FROM {self._EACH})"
        ids = self._list(message_ids)
        found = self.connection.execute(
            "SELECT business_account_id, amount, json_group_array(message_id) FROM charges"
            f" WHERE {where} GROUP BY business_account_id, amount",
            (ids,),
        ).fetchall()
        if not found:
            return []
        moved = [SettledRun(str(b), int(a), sorted(json.loads(group))) for b, a, group in found]
        changed = self.connection.execute(
            f"UPDATE charges SET state = ?, settled_at = ? WHERE {where}", (int(state), at, ids)
        ).rowcount
        if changed != sum(len(run.message_ids) for run in moved):
            # another writer moved some in between (B2)
            raise StorageConflict(
                "a charge was settled by another writer at the same moment; retry"
            )
        return moved

    def count_usage(
        self, business_account_id: str, month: str, category: int, country: str, n: int = 1
    ) -> None:
        self.connection.execute(
            "INSERT INTO usage_months (business_account_id, month, category, country, count)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (business_account_id, month, category, country)"
            " DO UPDATE SET count = usage_months.count + excluded.count",
            (business_account_id, month, category, country, n),
        )

    def append_status_events(
        self,
        business_account_id: str,
        kind: StatusKind,
        message_ids: list[int],
        at: float,
        detail: str = "",
    ) -> None:
        if not message_ids:
            return
        first = self._take_sequences(business_account_id, len(message_ids))
        # Numbered from the counter's old value on, in the order given (B5); one INSERT ...
        # SELECT over the ids rather than six bound values per event.
        self.connection.execute(
            f"INSERT INTO status_events ({_EVENT_COLUMNS})"
            f" SELECT CAST(? AS TEXT), CAST(? AS BIGINT) + key, {int(kind)}, value,"
            f" CAST(? AS DOUBLE PRECISION), CAST(? AS TEXT) FROM {self._EACH}",
            (business_account_id, first, at, detail, self._list(message_ids)),
        )


def charge_day(sent_at: float) -> int:
    """The UTC day (days since 1970-01-01) a charge sent at `sent_at` is marked under in
    `charge_days`."""
    return int(sent_at // DAY)


# One business's runs of a money movement: (amount, message ids), in order.
_Runs = list[tuple[int, list[int]]]


def _by_business(runs: Iterable[tuple[str, int, list[int]]]) -> list[tuple[str, _Runs]]:
    """(business, amount, ids) runs grouped by business, businesses in order: their balances
    are locked in that order by every writer (no deadlock between two jobs)."""
    out: dict[str, _Runs] = {}
    for business, amount, ids in runs:
        out.setdefault(business, []).append((amount, ids))
    return sorted(out.items())


def _total(runs: _Runs) -> int:
    return sum(amount * len(ids) for amount, ids in runs)


# Every column of a charge but its message id, cast to its type: a value bound in a SELECT's
# list has none of its own on PostgreSQL (SQLite takes the casts as no-ops).
_CHARGE_CASTS = (
    "CAST(? AS TEXT)", "CAST(? AS TEXT)", "CAST(? AS BIGINT)", "CAST(? AS TEXT)",
    "CAST(? AS BIGINT)", "CAST(? AS BIGINT)", "CAST(? AS BIGINT)", "CAST(? AS BIGINT)",
    "CAST(? AS DOUBLE PRECISION)", "CAST(? AS DOUBLE PRECISION)", "CAST(? AS BIGINT)",
    "CAST(? AS BIGINT)", "CAST(? AS TEXT)",
)  # fmt: skip
# For each kind of movement: how each entry moves (available, reserved) by its charge's
# amount, and the sign of its amount (billing_model.LedgerEntry).
_MOVES = {
    EntryKind.CAPTURE: (0, -1, 1),
    EntryKind.RELEASE: (1, -1, 1),
}
