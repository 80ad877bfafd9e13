"""The price book and the cashier over a real SQLite database (no server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from server.domain.billing import Cashier, PriceBook
from server.domain.billing_model import Balance, EntryKind
from server.domain.clock import ManualClock
from server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from server.domain.model import AccountKind, AccountRow, MessageCategory
from server.domain.operator import Operator
from server.domain.pricing import default_table, parse_toml
from server.storage.database import Database

T = TypeVar("T")
SHOP = "00000000-0000-4000-8000-000000000001"
PERSON = "00000000-0000-4000-8000-000000000002"
OP = Operator()


def run(coro: Awaitable[T]) -> T:
    async def wrap() -> T:
        return await coro

    return asyncio.run(wrap())


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "billing.db")

    def setup(tx: object) -> None:
        for account_id, number, kind in (
            (SHOP, "+14155550100", AccountKind.BUSINESS),
            (PERSON, "+14155550101", AccountKind.PERSON),
        ):
            tx.insert_account(AccountRow(account_id, number, kind, 0.0))  # type: ignore[attr-defined]

    run(database.write(setup))
    yield database
    database.close()


def started(db: Database, clock: ManualClock, *args: object) -> PriceBook:
    book = PriceBook(db, clock)
    run(book.start(*args))  # type: ignore[arg-type]
    return book


def test_the_first_start_stores_the_shipped_table_since_always(db: Database) -> None:
    clock = ManualClock()
    book = started(db, clock)
    v = book.in_force(0.0)
    assert v.version == 1 and v.table.effective_at == 0.0
    assert v.table.prices == default_table().prices
    # A restart with the same table adds no version.
    again = started(db, clock)
    assert [x.version for x in again._versions] == [1]


def test_an_edited_file_takes_effect_at_the_restart_not_before(db: Database) -> None:
    clock = ManualClock()
    started(db, clock)
    sent_before = clock.now()
    clock.advance(60)
    text = Path("server/domain/default_prices.toml").read_text()
    edited = parse_toml(text.replace('DE = "0.0890"', 'DE = "0.0700"'))
    book = started(db, clock, edited, "prices.toml")
    assert book.in_force(sent_before).table.prices[MessageCategory.MARKETING]["DE"] == 89_000
    assert book.in_force(clock.now()).table.prices[MessageCategory.MARKETING]["DE"] == 70_000


def test_the_operator_schedules_a_version_never_in_the_past(db: Database) -> None:
    clock = ManualClock()
    book = started(db, clock)
    text = Path("server/domain/default_prices.toml").read_text()
    with pytest.raises(InvalidArgument, match="in the past"):
        run(book.set_table(OP, text, clock.now() - 1))
    with pytest.raises(InvalidArgument, match="not valid: unknown key"):
        run(book.set_table(OP, "surcharge = 1\n" + text, None))
    later = run(book.set_table(OP, text, clock.now() + 3600))
    assert later.version == 2
    assert book.in_force(clock.now()).version == 1
    assert book.next_after(clock.now()) == later
    with pytest.raises(FailedPrecondition, match="at that very time"):
        run(book.set_table(OP, text, clock.now() + 3600))
    clock.advance(3600)
    assert book.in_force(clock.now()).version == 2


def test_top_ups_are_idempotent_by_reference(db: Database) -> None:
    clock = ManualClock()
    cashier = Cashier(db, clock, started(db, clock))
    entry, applied = run(cashier.top_up(OP, SHOP, 5_000_000, "wire-1", "November"))
    again, applied_again = run(cashier.top_up(OP, SHOP, 9_000_000, "wire-1", "retry"))
    assert applied and not applied_again and again == entry
    assert run(cashier.balance(SHOP)) == Balance(5_000_000, 0)
    assert entry.kind == EntryKind.TOP_UP and entry.available_after == 5_000_000


@pytest.mark.parametrize(
    ("account", "amount", "reference", "error", "says"),
    [
        (SHOP, 0, "r", InvalidArgument, "more than 0"),
        (SHOP, 1, "", InvalidArgument, "reference is required"),
        (SHOP, 1, "x" * 129, InvalidArgument, "reference is required"),
        ("not-a-uuid", 1, "r", InvalidArgument, "business_account_id"),
        ("00000000-0000-4000-8000-00000000000f", 1, "r", NotFound, "no account"),
        (PERSON, 1, "r", FailedPrecondition, "only business accounts"),
    ],
)
def test_bad_top_ups_say_what_to_fix(
    db: Database, account: str, amount: int, reference: str, error: type[Exception], says: str
) -> None:
    clock = ManualClock()
    cashier = Cashier(db, clock, started(db, clock))
    with pytest.raises(error, match=says):
        run(cashier.top_up(OP, account, amount, reference, ""))


def test_ledger_pages_neither_skip_nor_repeat_while_entries_are_appended(db: Database) -> None:
    clock = ManualClock()
    cashier = Cashier(db, clock, started(db, clock))
    for i in range(5):
        run(cashier.top_up(OP, SHOP, 1_000, f"r{i}", ""))
    page, token = run(cashier.ledger(SHOP, 2, ""))
    assert [e.reference for e in page] == ["r0", "r1"] and token
    for i in range(5, 7):  # appended between two pages
        run(cashier.top_up(OP, SHOP, 1_000, f"r{i}", ""))
    seen = [e.reference for e in page]
    while token:
        page, token = run(cashier.ledger(SHOP, 2, token))
        seen.extend(e.reference for e in page)
    assert seen == [f"r{i}" for i in range(7)]


def test_a_page_token_is_bound_to_its_ledger(db: Database) -> None:
    clock = ManualClock()
    cashier = Cashier(db, clock, started(db, clock))
    for i in range(3):
        run(cashier.top_up(OP, SHOP, 1_000, f"r{i}", ""))
    _, token = run(cashier.ledger(SHOP, 1, ""))
    for bad in ("garbage!", token[:-2], "QUFBQQ"):
        with pytest.raises(InvalidArgument, match="page_token is not one"):
            run(cashier.ledger(SHOP, 1, bad))
    with pytest.raises(FailedPrecondition):
        run(cashier.ledger(PERSON, 1, ""))
