"""Billing's storage on a real SQLite file: exactly-once money movements, by constraint.

A Hypothesis state machine drives top-ups (with repeated references), reservations (some
short of money), captures and releases (repeated, in any order) and checks after every step
that the money adds up and that every entry of the ledger is right about the balance after it.
The usage report's period is checked against a scan of every charge, on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from server.domain.billing_model import (
    Balance,
    Charge,
    ChargeRun,
    ChargeState,
    EntryKind,
    StatusKind,
)
from server.domain.usage_model import UsageGroup
from server.storage.billing import LONG_RUN
from server.storage.database import connect
from server.storage.migrations import migrate
from server.storage.postgres import migrations as pg_migrations
from server.storage.postgres.connection import PgConnection, configure
from server.storage.postgres.transaction import PostgresTransaction
from server.storage.sql import StorageTransaction
from server.storage.transaction import SqliteTransaction
from server.storage.usage import _KEYS, _SUMS, SqlUsage

SHOP = "shop-account"


def _tx(path: Path) -> tuple[sqlite3.Connection, SqliteTransaction]:
    conn = connect(path)
    migrate(conn)
    return conn, SqliteTransaction(conn)


def charge(message_id: int, amount: int, business: str = SHOP) -> Charge:
    return Charge(
        message_id, business, "user", 1, "DE", amount, 0 if amount else 3, 1,
        int(ChargeState.RESERVED), 1.0, None, None, None,
    )  # fmt: skip


def test_a_reservation_never_overdraws_and_a_refusal_writes_nothing(tmp_path: Path) -> None:
    conn, tx = _tx(tmp_path / "b.db")
    tx.top_up(SHOP, 30_000, "ref-1", 1.0, "")
    first = tx.reserve(charge(1, 25_000), 2.0)
    assert first.accepted and first.balance == Balance(5_000, 25_000)
    short = tx.reserve(charge(2, 25_000), 3.0)
    assert not short.accepted and short.balance == Balance(5_000, 25_000)
    assert tx.get_charge(2) is None
    assert [e.kind for e in tx.ledger_page(SHOP, 0, 10)] == [EntryKind.TOP_UP, EntryKind.RESERVE]
    # The CHECK constraint backs the conditional update: no statement can make it negative.
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        conn.execute("UPDATE balances SET available = -1 WHERE business_account_id = ?", (SHOP,))


def test_a_top_up_counts_once_per_reference(tmp_path: Path) -> None:
    _, tx = _tx(tmp_path / "b.db")
    entry, made = tx.top_up(SHOP, 1_000_000, "wire-42", 1.0, "bank transfer")
    again, made_again = tx.top_up(SHOP, 1_000_000, "wire-42", 2.0, "retry")
    assert made and not made_again and again == entry
    assert tx.get_balance(SHOP) == Balance(1_000_000, 0)
    assert (entry.available_after, entry.reserved_after) == (1_000_000, 0)


def test_a_charge_is_captured_or_released_once(tmp_path: Path) -> None:
    _, tx = _tx(tmp_path / "b.db")
    tx.top_up(SHOP, 100_000, "r", 1.0, "")
    tx.reserve(charge(1, 40_000), 2.0)
    tx.reserve(charge(2, 10_000), 2.0)
    tx.reserve(charge(3, 0), 2.0)  # free: recorded, no money held
    captured = tx.settle_charges([1, 3], ChargeState.CAPTURED, 3.0)
    # By business and amount: the free one (0) and the priced one.
    assert sorted(captured) == [(SHOP, 0, [3]), (SHOP, 40_000, [1])]
    # A second ack, a release racing the capture, a replay after a crash: nothing moves.
    assert tx.settle_charges([1, 3], ChargeState.CAPTURED, 4.0) == []
    assert tx.settle_charges([1], ChargeState.RELEASED, 4.0) == []
    released = tx.settle_charges([2], ChargeState.RELEASED, 5.0)
    assert released == [(SHOP, 10_000, [2])]
    assert tx.get_balance(SHOP) == Balance(60_000, 0)
    kinds = [EntryKind(e.kind).name for e in tx.ledger_page(SHOP, 0, 10)]
    assert kinds == ["TOP_UP", "RESERVE", "RESERVE", "CAPTURE", "RELEASE"]


def test_the_ledger_refuses_a_second_capture_of_a_message(tmp_path: Path) -> None:
    """Even a buggy caller that bypasses the conditional update cannot capture twice: the
    balance's CHECK and the ledger's unique (message_id, kind) index are the last lines, and
    the error rolls the job back."""
    conn, tx = _tx(tmp_path / "b.db")
    tx.top_up(SHOP, 100_000, "r", 1.0, "")
    tx.reserve(charge(1, 40_000), 2.0)
    tx.settle_charges([1], ChargeState.CAPTURED, 3.0)
    conn.execute("UPDATE charges SET state = 0 WHERE message_id = 1")  # the bug
    with pytest.raises(sqlite3.IntegrityError):
        tx.settle_charges([1], ChargeState.CAPTURED, 4.0)


def test_sent_events_are_the_charges_merged_with_the_rows_written_before(
    tmp_path: Path,
) -> None:
    """A charge is its message's SENT event, numbered from the business's counter like the
    appended events; a SENT event stored as a row of its own (before schema 15) still reads in
    its place. Every event once, in sequence order, across both and across pages."""
    conn, tx = _tx(tmp_path / "b.db")
    tx.top_up(SHOP, 1_000_000, "r", 1.0, "")
    # Before: a charge without a sequence, and its SENT event as a row.
    tx.reserve(charge(1, 10_000), 2.0)
    conn.execute("UPDATE charges SET sent_sequence = NULL WHERE message_id = 1")
    conn.execute("UPDATE status_event_counters SET last_sequence = 0")
    tx.append_status_events(SHOP, StatusKind.SENT, [1], 2.0)
    # After: a run long enough for INSERT ... SELECT, a short one, then outcomes.
    long_ids = list(range(10, 10 + LONG_RUN))
    assert tx.reserve_many([ChargeRun(charge(0, 10_000), long_ids)], 3.0)
    assert tx.reserve_many([ChargeRun(charge(0, 0), [5, 6])], 3.0)
    tx.settle_charges([1, 10], ChargeState.CAPTURED, 4.0)
    tx.append_status_events(SHOP, StatusKind.DELIVERED, [1, 10], 4.0)
    want = [
        (1, StatusKind.SENT, 1),
        *((2 + k, StatusKind.SENT, m) for k, m in enumerate(long_ids)),
        (2 + LONG_RUN, StatusKind.SENT, 5),
        (3 + LONG_RUN, StatusKind.SENT, 6),
        (4 + LONG_RUN, StatusKind.DELIVERED, 1),
        (5 + LONG_RUN, StatusKind.DELIVERED, 10),
    ]
    views = tx.status_events_after(SHOP, 0, 100)
    assert [(v.event.sequence, v.event.kind, v.event.message_id) for v in views] == want
    assert all(v.charge.message_id == v.event.message_id for v in views)
    # Paged from any cursor: the same events, none twice, none skipped.
    for cursor in range(len(want)):
        for size in (1, 2, 3):
            page = tx.status_events_after(SHOP, cursor, size)
            assert [v.event.sequence for v in page] == [s for s, _, _ in want[cursor:][:size]]


def test_month_usage_by_category_and_country(tmp_path: Path) -> None:
    _, tx = _tx(tmp_path / "b.db")
    for country in ("DE", "DE", "IN"):
        tx.count_usage(SHOP, "2026-11", 1, country)
    tx.count_usage(SHOP, "2026-12", 1, "DE")
    assert tx.month_usage(SHOP, "2026-11", 1, "DE") == (3, 2)
    assert tx.month_usage(SHOP, "2026-11", 1, "US") == (3, 0)
    assert tx.month_usage(SHOP, "2026-11", 2, "DE") == (0, 0)


class Ledger(RuleBasedStateMachine):
    """Random money movements against the real tables; the books must always balance."""

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.conn, self.tx = _tx(Path(self._dir.name) / "ledger.db")
        self.next_message = 1
        self.pending: set[int] = set()
        self.settled: set[int] = set()
        self.top_ups = 0
        self.captured = 0
        self.references: dict[str, int] = {}

    def teardown(self) -> None:
        self.conn.close()
        self._dir.cleanup()

    @rule(amount=st.integers(1, 200_000), ref=st.sampled_from(["a", "b", "c", "d", "e"]))
    def top_up(self, amount: int, ref: str) -> None:
        entry, made = self.tx.top_up(SHOP, amount, ref, 1.0, "")
        assert made == (ref not in self.references)
        if made:
            self.references[ref] = amount
            self.top_ups += amount
        assert entry.amount == self.references[ref]

    @rule(amount=st.integers(0, 90_000))
    def reserve(self, amount: int) -> None:
        before = self.tx.get_balance(SHOP)
        message_id = self.next_message
        self.next_message += 1
        result = self.tx.reserve(charge(message_id, amount), 2.0)
        assert result.accepted == (before.available >= amount)
        if result.accepted:
            self.pending.add(message_id)

    @rule(
        shape=st.lists(
            st.tuples(st.sampled_from([0, 500, 1_500, 8_900]), st.integers(1, LONG_RUN + 3)),
            min_size=1,
            max_size=4,
        )
    )
    def reserve_a_job(self, shape: list[tuple[int, int]]) -> None:
        """A send job: runs of messages sharing their charge, as `MeteringRule` hands them
        over, short ones (rows of one INSERT) and long ones (one INSERT ... SELECT each)
        mixed; all are held together or none is."""
        before = self.tx.get_balance(SHOP)
        runs: list[ChargeRun] = []
        amounts: list[int] = []
        for amount, count in shape:
            ids = list(range(self.next_message, self.next_message + count))
            self.next_message += count
            runs.append(ChargeRun(charge(0, amount), ids))
            amounts += [amount] * count
        accepted = self.tx.reserve_many(runs, 2.0)
        assert accepted == (before.available >= sum(amounts))
        ids = [m for run in runs for m in run.message_ids]
        stored = [self.tx.get_charge(m) for m in ids]
        if accepted:
            assert [c.amount if c else None for c in stored] == amounts
            self.pending.update(ids)
        else:
            assert stored == [None] * len(ids)

    @precondition(lambda self: self.pending or self.settled)
    @rule(data=st.data(), capture=st.booleans())
    def settle(self, data: st.DataObject, capture: bool) -> None:
        pool = sorted(self.pending | self.settled)
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))
        state = ChargeState.CAPTURED if capture else ChargeState.RELEASED
        moved = self.tx.settle_charges(ids, state, 3.0)
        moved_ids = [m for run in moved for m in run.message_ids]
        assert sorted(moved_ids) == sorted(set(ids) & self.pending)
        for run in moved:
            assert run.business_account_id == SHOP and run.message_ids == sorted(run.message_ids)
            for message_id in run.message_ids:
                charge = self.tx.get_charge(message_id)
                assert charge is not None and charge.amount == run.amount
                self.pending.discard(message_id)
                self.settled.add(message_id)
                if capture:
                    self.captured += run.amount

    @invariant()
    def the_books_balance(self) -> None:
        balance = self.tx.get_balance(SHOP)
        assert balance.available >= 0 and balance.reserved >= 0
        assert balance.available + balance.reserved == self.top_ups - self.captured
        held = sum(c.amount for c in map(self.tx.get_charge, self.pending) if c is not None)
        assert balance.reserved == held

    @invariant()
    def every_entry_knows_the_balance_after_it(self) -> None:
        available = reserved = 0
        captures: set[int] = set()
        for e in self.tx.ledger_page(SHOP, 0, 10_000):
            kind = EntryKind(e.kind)
            if kind is EntryKind.TOP_UP:
                available += e.amount
            elif kind is EntryKind.RESERVE:
                available += e.amount  # negative: money held
                reserved -= e.amount
            elif kind is EntryKind.CAPTURE:
                reserved -= e.amount
                assert e.message_id not in captures
                captures.add(e.message_id or 0)
            elif kind is EntryKind.RELEASE:
                available += e.amount
                reserved -= e.amount
            assert (e.available_after, e.reserved_after) == (available, reserved)


TestLedger = Ledger.TestCase
TestLedger.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_the_pending_charges_of_a_block_are_read_by_index(tmp_path: Path) -> None:
    """A block reads the blocker's queued envelopes by their devices' index and each charge by
    its primary key: never a scan of the charges (there is no index of them by pair)."""
    conn, tx = _tx(tmp_path / "b.db")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    assert tx.pending_charges_to(SHOP, "user") == []
    conn.set_trace_callback(None)
    (sql,) = statements
    plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    assert "SCAN" not in plan and "envelopes_by_device" in plan, plan
    assert "PRIMARY KEY" in plan, plan
    conn.close()


# -- the usage report's period ------------------------------------------------------------------

DAY = 86_400
T0 = 1_795_000_000 - 1_795_000_000 % DAY  # a UTC midnight (2026-11-18)
# Offsets of send times from T0: anywhere in four days, and right at their boundaries.
_OFFSETS = st.one_of(
    st.floats(0, 4 * DAY, allow_nan=False),
    st.sampled_from([d * DAY + e for d in range(1, 4) for e in (-0.5, 0.0, 0.5)]),
)


def _oracle(
    conn: sqlite3.Connection, business: str, start: float, end: float
) -> tuple[list[list[tuple[object, ...]]], int]:
    """What a period holds, by scanning every charge: the usage report's own sums and keys
    (one statement per grouping) and the captured total, read without any index."""
    keys = {**_KEYS, UsageGroup.DAY: SqlUsage.day_sql}
    rows: list[list[tuple[object, ...]]] = []
    for group in UsageGroup:
        rows.append(conn.execute(
            f"SELECT {keys[group]} AS k, {_SUMS} FROM charges NOT INDEXED"
            " WHERE business_account_id = ? AND sent_at >= ? AND sent_at < ? GROUP BY k ORDER BY k",
            (business, start, end),
        ).fetchall())  # fmt: skip
    (captured,) = conn.execute(
        "SELECT COALESCE(SUM(l.amount), 0) FROM charges c NOT INDEXED JOIN ledger l NOT INDEXED"
        " ON l.message_id = c.message_id AND l.kind = ?"
        " WHERE c.business_account_id = ? AND c.sent_at >= ? AND c.sent_at < ?",
        (int(EntryKind.CAPTURE), business, start, end),
    ).fetchone()
    return rows, int(captured)


@settings(max_examples=40, deadline=None)
@given(
    sends=st.lists(
        st.tuples(
            _OFFSETS, st.integers(1, LONG_RUN + 1), st.sampled_from(["new", "legacy", "other"])
        ),
        min_size=1,
        max_size=10,
    ),
    periods=st.lists(
        st.tuples(st.one_of(_OFFSETS, st.floats(-DAY, 0)), st.floats(0.25, 3 * DAY)),
        min_size=1,
        max_size=4,
    ),
)
def test_a_period_reads_exactly_the_charges_sent_in_it(
    sends: list[tuple[float, int, str]], periods: list[tuple[float, float]]
) -> None:
    """Jobs sent at times in any order (so SENT sequences do not follow send times), across
    day boundaries, beside another business's and beside charges of before schema 15 (no
    sequence, no day marked): every period's report and captured total are those of the
    charges sent in it, counted by scanning them all."""
    with tempfile.TemporaryDirectory() as folder:
        conn, tx = _tx(Path(folder) / "u.db")
        play_sends(tx, sends)
        for offset, length in periods:
            start = T0 + offset
            end = start + length
            rows, captured = _oracle(conn, SHOP, start, end)
            got = [[tuple(r) for r in tx.usage_by(SHOP, start, end, g)] for g in UsageGroup]
            assert got == [[tuple(r) for r in group] for group in rows], (start, end)
            assert tx.captured_in(SHOP, start, end) == captured
        conn.close()


def play_sends(tx: StorageTransaction, sends: list[tuple[float, int, str]]) -> None:
    """Send jobs at T0 + offset, `count` messages each, to SHOP ("new", "legacy": its charges
    then lose their sequence, as charges of before schema 15 have none) or to "other"; every
    other message of a job is captured."""
    for business in (SHOP, "other"):
        tx.top_up(business, 10**12, "r", 1.0, "")
    message = 1
    for offset, count, kind in sends:
        at = T0 + offset
        business = "other" if kind == "other" else SHOP
        ids = list(range(message, message + count))
        message += count
        shape = charge(0, 1_000 * (count % 3), business)._replace(sent_at=at)
        assert tx.reserve_many([ChargeRun(shape, ids)], at)
        tx.settle_charges(ids[::2], ChargeState.CAPTURED, at + 1)
        if kind == "legacy":
            for m in ids:
                tx.connection.execute(
                    "UPDATE charges SET sent_sequence = NULL WHERE message_id = ?", (m,)
                )


def test_migration_17_marks_the_days_of_the_charges_on_file(tmp_path: Path) -> None:
    """Charges written before schema 17 (with sequences, and older ones without) are found by
    the report after it: each business day's first and last sequence is marked, and the
    index by send time now holds only the charges without a sequence."""
    conn = connect(tmp_path / "old.db")
    assert migrate(conn, target=16)[-1] == 16
    columns = "message_id, business_account_id, recipient_account_id, category, country," \
        " amount, reason, table_version, state, sent_at, sent_sequence"  # fmt: skip
    conn.executemany(
        f"INSERT INTO charges ({columns}) VALUES (?, ?, 'user', 1, 'DE', 500, 0, 1, 0, ?, ?)",
        [
            (1, SHOP, T0 + 10, None),
            (2, SHOP, T0 + 20, 1),
            (3, SHOP, T0 + DAY + 5, 3),
            (4, SHOP, T0 + 30, 2),
            (5, "other", T0 + 40, 1),
        ],
    )
    assert migrate(conn) == [17]
    days = conn.execute("SELECT * FROM charge_days ORDER BY 1, 2").fetchall()
    base = T0 // DAY
    assert days == [("other", base, 1, 1), (SHOP, base, 1, 2), (SHOP, base + 1, 3, 3)]
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(charges)")}
    assert "charges_by_business" not in indexes and "charges_before_sequences" in indexes
    tx = SqliteTransaction(conn)
    (whole,) = tx.usage_by(SHOP, T0, T0 + 2 * DAY, UsageGroup.CATEGORY)
    assert whole.sent == 4
    (first_day,) = tx.usage_by(SHOP, T0, T0 + DAY, UsageGroup.CATEGORY)
    assert first_day.sent == 3
    conn.close()


def test_postgresql_reads_a_period_as_sqlite_does(postgres_url: str, tmp_path: Path) -> None:
    """The usage report's statements on PostgreSQL: the same sends give the same rows and
    captured total as on SQLite (and as a scan of every charge), for periods within a day,
    across day boundaries and around all the sends."""
    sends = [
        (DAY - 0.5, 3, "new"),
        (0.0, LONG_RUN + 1, "new"),  # sent later, at an earlier time
        (2 * DAY + 7, 2, "legacy"),
        (DAY, 1, "other"),
        (DAY + 30, 4, "new"),
        (3 * DAY - 1, 2, "new"),
        (DAY + 10, 5, "legacy"),
    ]
    periods = [(0, DAY), (DAY - 1, 2), (0.5, 3 * DAY), (-DAY, 5 * DAY), (2 * DAY, 0.25)]
    conn, lite = _tx(tmp_path / "s.db")
    play_sends(lite, sends)
    with psycopg.connect(postgres_url, autocommit=True) as raw:
        pg_migrations.migrate(raw)
        configure(raw)
        raw.execute("BEGIN")
        pg = PostgresTransaction(PgConnection(raw))
        play_sends(pg, sends)
        for offset, length in periods:
            start, end = T0 + offset, T0 + offset + length
            rows, captured = _oracle(conn, SHOP, start, end)
            want = [[tuple(r) for r in group] for group in rows]
            for tx in (lite, pg):
                got = [[tuple(r) for r in tx.usage_by(SHOP, start, end, g)] for g in UsageGroup]
                assert got == want, (type(tx).__name__, offset, length)
                assert tx.captured_in(SHOP, start, end) == captured
        assert any(want for want in _oracle(conn, SHOP, T0, T0 + 4 * DAY)[0])
        raw.execute("ROLLBACK")
    conn.close()
