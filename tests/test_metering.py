"""Metering on a real SQLite database, through the domain's own services (no gRPC): sends
priced and reserved, captured once on the first delivery, released on expiry and on block,
and a Hypothesis state machine that checks the books after any sequence of those.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from server.domain.admission import RULES, Copy, SendRequest
from server.domain.auth import Principal
from server.domain.billing import Cashier, PriceBook
from server.domain.billing_model import Charge, ChargeState, EntryKind, StatusKind
from server.domain.clock import ManualClock
from server.domain.consent import ConsentBook
from server.domain.errors import DomainError, FailedPrecondition
from server.domain.ids import IdGenerator
from server.domain.mailbox import Mailbox
from server.domain.messaging_policy import MessagingPolicy
from server.domain.metering import MeteringRule
from server.domain.model import (
    AccountKind,
    AccountRow,
    DeviceKeys,
    DeviceRow,
    MessageState,
    SignedKey,
)
from server.domain.operator import Operator
from server.domain.pricing import FreeReason, parse_toml
from server.domain.sending import BusinessRule, SendingPolicy
from server.storage.database import Database
from server.storage.transaction import SqliteTransaction

T = TypeVar("T")
SHOP = "00000000-0000-4000-8000-0000000000a1"
ANA = "00000000-0000-4000-8000-0000000000b1"  # +49: Germany, 2 cents
BEN = "00000000-0000-4000-8000-0000000000b2"  # +1: the default row, 1 cent; two devices
NUMBERS = {SHOP: "+14155550100", ANA: "+4915112345678", BEN: "+14155550101"}
DEVICES = {SHOP: (1,), ANA: (1,), BEN: (1, 2)}
OP = Operator()
# Every category billable, no free rule, no allowance: free-form service replies, the one kind a
# test can send without templates, cost a cent.
ALL_BILLABLE = """
currency = "USD"
[prices.MARKETING]
"*" = "0.05"
[prices.UTILITY]
"*" = "0.05"
[prices.AUTHENTICATION]
"*" = "0.05"
[prices.SERVICE]
"*" = "0.01"
"""
# The same with two cents to Germany, and the entry window free.
PRICES = (
    ALL_BILLABLE
    + """DE = "0.02"
[[free]]
window = "entry_window"
categories = ["*"]
"""
)
PRICE = {ANA: 20_000, BEN: 10_000}


def _token_hash(account: str, device: int) -> bytes:
    return hashlib.sha256(f"{account}/{device}".encode()).digest()


def principal(account: str, device: int = 1) -> Principal:
    return Principal(account, device, _token_hash(account, device))


class World:
    """A business, two people (one with two devices), the money path wired as the app wires
    it, on one event loop."""

    def __init__(self, path: Path, *, table: str = PRICES) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.db = Database(path)
        self.policy = MessagingPolicy()
        self.run(self.db.write(self._setup))
        self.book = PriceBook(self.db, self.clock)
        self.run(self.book.start(parse_toml(table), "test"))
        self.cashier = Cashier(self.db, self.clock, self.book)
        ids = IdGenerator(0)
        rules = (*RULES, BusinessRule(SendingPolicy(), self.clock), MeteringRule(self.book))
        self.woken: list[str] = []
        self.mailbox = Mailbox(self.db, self.clock, self.policy, ids, rules, self.woken.extend)
        self.consent = ConsentBook(
            self.db, self.clock, on_block=self.mailbox.settlement.release_blocked
        )

    def _setup(self, tx: SqliteTransaction) -> None:
        for account, number in NUMBERS.items():
            kind = AccountKind.BUSINESS if account == SHOP else AccountKind.PERSON
            tx.insert_account(AccountRow(account, number, kind, 0.0))
            for device in DEVICES[account]:
                tx.insert_device(
                    DeviceRow(account, device, f"d{device}", 0.0, 0.0),
                    _token_hash(account, device),
                    10,
                )
                key = SignedKey(1, b"k" * 33, b"s" * 64)
                tx.put_device_keys(
                    DeviceKeys(account, device, b"i" * 33, 100 + device, key, 0.0, key)
                )
            if account != SHOP:  # the user wrote first: the business may answer free-form
                tx.open_window(SHOP, account, self.clock.now())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.db.close()
        self.loop.close()

    # -- actions --------------------------------------------------------------------------

    def top_up(self, micros: int, reference: str | None = None) -> None:
        self.run(self.cashier.top_up(OP, SHOP, micros, reference or str(uuid.uuid4()), ""))

    def send(self, user: str) -> int | DomainError:
        """A free-form reply of the shop to `user`, who wrote just before (the window is
        open): the message id, or the refusal."""
        now = self.clock.now()
        self.run(self.db.write(lambda tx: tx.open_window(SHOP, user, now)))
        copies = [Copy(d, 100 + d, 2, b"ciphertext") for d in DEVICES[user]]
        request = SendRequest(str(uuid.uuid4()), user, copies)
        (result,) = self.run(self.mailbox.send_many(principal(SHOP), [request]))
        return result if isinstance(result, DomainError) else result.message_id

    def envelopes(self, user: str, device: int) -> list[int]:
        rows = self.run(self.db.read(lambda tx: tx.envelopes_after(user, device, 0, 10_000, 10**9)))
        return [e.envelope_id for e in rows]

    def ack(self, user: str, device: int) -> None:
        ids = self.envelopes(user, device)
        if ids:
            self.run(self.mailbox.acknowledge(principal(user, device), ids, []))

    def expire(self) -> None:
        self.clock.advance(self.policy.envelope_ttl + 1)
        self.run(self.mailbox.expire())

    def block(self, user: str) -> None:
        self.run(self.consent.block(principal(user), SHOP))

    def unblock(self, user: str) -> None:
        self.run(self.consent.unblock(principal(user), SHOP))

    # -- reads ----------------------------------------------------------------------------

    def q(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        def read(tx: SqliteTransaction) -> list[tuple[Any, ...]]:
            return tx.connection.execute(sql, args).fetchall()

        return self.run(self.db.read(read))

    def balance(self) -> tuple[int, int]:
        return tuple(self.run(self.db.read(lambda tx: tx.get_balance(SHOP))))  # type: ignore[return-value]

    def charge(self, message_id: int) -> Charge:
        found = self.run(self.db.read(lambda tx: tx.get_charge(message_id)))
        assert found is not None
        return found

    def all_events(self) -> list[tuple[int, int, int]]:
        """(sequence, message id, kind) of the shop's status events, as the stream reads them:
        the appended rows and the charges (each its SENT event), merged."""
        views = self.run(self.db.read(lambda tx: tx.status_events_after(SHOP, 0, 1_000_000)))
        return [(v.event.sequence, v.event.message_id, v.event.kind) for v in views]

    def events(self, message_id: int) -> list[str]:
        return [StatusKind(k).name for _, m, k in self.all_events() if m == message_id]

    def captures(self, message_id: int) -> int:
        return len(
            self.q(
                "SELECT 1 FROM ledger WHERE message_id = ? AND kind = ?",
                message_id,
                int(EntryKind.CAPTURE),
            )
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "metering.db")
    yield w
    w.close()


def test_a_send_the_balance_cannot_cover_is_refused_and_leaves_nothing(world: World) -> None:
    world.top_up(15_000)
    refused = world.send(ANA)
    assert isinstance(refused, FailedPrecondition)
    assert str(refused).startswith(
        "insufficient balance: need 0.02 USD, available 0.015 USD (SERVICE to DE: 0.02 USD)"
    )
    assert world.q("SELECT count(*) FROM messages") == [(0,)]
    assert world.q("SELECT count(*) FROM charges") == [(0,)]
    assert world.all_events() == []
    # Enough for Ben (1 cent), not for both in one batch: the second is refused, the first kept.
    sent = world.send(BEN)
    assert isinstance(sent, int)
    assert world.balance() == (5_000, 10_000)
    assert world.events(sent) == ["SENT"] and world.woken == [SHOP]


def test_the_first_ack_captures_and_nothing_after_it_charges_again(world: World) -> None:
    world.top_up(100_000)
    m = world.send(BEN)
    assert isinstance(m, int)
    assert world.balance() == (90_000, 10_000)
    world.ack(BEN, 1)
    assert world.balance() == (90_000, 0)
    assert world.charge(m).state == ChargeState.CAPTURED and world.captures(m) == 1
    # The second device's ack, and the first device acking again: nothing moves.
    world.ack(BEN, 2)
    world.run(world.mailbox.acknowledge(principal(BEN, 1), [m + 1], []))
    assert world.balance() == (90_000, 0) and world.captures(m) == 1
    assert world.events(m) == ["SENT", "DELIVERED"]
    # The DELIVERED event names the capture's ledger entry.
    views = world.run(world.db.read(lambda tx: tx.status_events_after(SHOP, 0, 10)))
    capture = world.q("SELECT entry_id FROM ledger WHERE message_id = ? AND kind = 3", m)
    assert [(v.event.kind, v.event.ledger_entry_id) for v in views] == [
        (StatusKind.SENT, 0),
        (StatusKind.DELIVERED, capture[0][0]),
    ]


def test_a_send_job_holds_its_prices_with_one_reserve_entry_that_each_charge_names(
    world: World,
) -> None:
    """One RESERVE entry per send job: the sum of its priced messages, their count and the
    balance after it; every charge (and so every SENT event) names it, and each message is
    still captured by a ledger entry of its own."""
    world.top_up(1_000_000)
    users = [ANA, BEN, ANA, BEN, ANA]
    now = world.clock.now()
    for user in (ANA, BEN):
        world.run(world.db.write(lambda tx, u=user: tx.open_window(SHOP, u, now)))  # type: ignore[misc]
    requests = [
        SendRequest(str(uuid.uuid4()), u, [Copy(d, 100 + d, 2, b"c") for d in DEVICES[u]])
        for u in users
    ]
    results = world.run(world.mailbox.send_many(principal(SHOP), requests))
    sent = [r.message_id for r in results if not isinstance(r, DomainError)]
    assert len(sent) == 5
    total = sum(PRICE[u] for u in users)
    reserves = world.q(
        "SELECT entry_id, amount, available_after, reserved_after, message_id, message_count"
        " FROM ledger WHERE kind = ?",
        int(EntryKind.RESERVE),
    )
    assert [r[1:] for r in reserves] == [(-total, 1_000_000 - total, total, None, 5)]
    entry = reserves[0][0]
    assert {world.charge(m).reserve_entry for m in sent} == {entry}
    views = world.run(world.db.read(lambda tx: tx.status_events_after(SHOP, 0, 100)))
    assert {v.charge.reserve_entry for v in views} == {entry}
    # A second job holds its own.
    again = world.send(BEN)
    assert isinstance(again, int) and world.charge(again).reserve_entry not in (None, entry)
    for user in (ANA, BEN):
        world.ack(user, 1)
    assert world.balance() == (1_000_000 - total - PRICE[BEN], 0)
    assert all(world.captures(m) == 1 for m in [*sent, again])


def test_concurrent_acks_from_two_devices_capture_once(world: World) -> None:
    world.top_up(1_000_000)
    sent = [world.send(BEN) for _ in range(20)]
    assert all(isinstance(m, int) for m in sent)

    one = world.envelopes(BEN, 1)
    two = world.envelopes(BEN, 2)

    async def both() -> None:
        await asyncio.gather(
            world.mailbox.acknowledge(principal(BEN, 1), one, []),
            world.mailbox.acknowledge(principal(BEN, 2), two, []),
        )

    world.run(both())
    assert world.balance() == (1_000_000 - 20 * 10_000, 0)
    for m in sent:
        assert isinstance(m, int) and world.captures(m) == 1
        assert world.events(m) == ["SENT", "DELIVERED"]


def test_expiry_and_block_release_the_price(world: World) -> None:
    world.top_up(100_000)
    expiring = world.send(ANA)
    assert isinstance(expiring, int)
    world.expire()
    assert world.balance() == (100_000, 0)
    assert world.charge(expiring).state == ChargeState.RELEASED
    assert world.events(expiring) == ["SENT", "EXPIRED"]
    blocked = world.send(BEN)
    assert isinstance(blocked, int) and world.balance() == (90_000, 10_000)
    world.block(BEN)
    assert world.balance() == (100_000, 0)
    assert world.events(blocked) == ["SENT", "FAILED"]
    # Its envelopes are gone: a blocked business's message is neither delivered nor paid.
    assert world.envelopes(BEN, 1) == [] and world.envelopes(BEN, 2) == []
    state = world.q("SELECT state FROM messages WHERE message_id = ?", blocked)
    assert state == [(int(MessageState.FAILED),)]
    kinds = [EntryKind(k).name for (k,) in world.q("SELECT kind FROM ledger ORDER BY entry_id")]
    assert kinds == ["TOP_UP", "RESERVE", "RELEASE", "RESERVE", "RELEASE"]


def test_a_block_releases_only_the_blockers_messages_still_queued(world: World) -> None:
    """A block finds what to release through the blocker's own queue: a message delivered to
    one device (its other copy still queued) stays captured, a message queued on both devices
    is failed and released once, and another person's pending message is left alone."""
    world.top_up(100_000)
    delivered = world.send(BEN)
    assert isinstance(delivered, int)
    world.ack(BEN, 1)
    queued, other = world.send(BEN), world.send(ANA)
    assert isinstance(queued, int) and isinstance(other, int)
    assert world.balance() == (60_000, 30_000)
    world.block(BEN)
    assert world.charge(delivered).state == ChargeState.CAPTURED
    assert world.events(delivered) == ["SENT", "DELIVERED"]
    assert world.charge(queued).state == ChargeState.RELEASED
    assert world.events(queued) == ["SENT", "FAILED"]
    assert world.charge(other).state == ChargeState.RESERVED
    assert world.events(other) == ["SENT"]
    assert world.balance() == (70_000, 20_000)
    releases = world.q("SELECT message_id FROM ledger WHERE kind = ?", int(EntryKind.RELEASE))
    assert releases == [(queued,)]


def test_a_free_message_costs_nothing_and_still_has_its_events(world: World) -> None:
    world.run(world.db.write(lambda tx: tx.open_entry_window(SHOP, ANA, world.clock.now(), 1e12)))
    m = world.send(ANA)  # no balance at all: free messages need none
    assert isinstance(m, int)
    charge = world.charge(m)
    assert (charge.amount, FreeReason(charge.reason)) == (0, FreeReason.ENTRY_WINDOW)
    assert "entry window" in charge.explanation
    world.ack(ANA, 1)
    assert world.events(m) == ["SENT", "DELIVERED"] and world.captures(m) == 0
    assert world.balance() == (0, 0)


def test_a_price_change_prices_each_message_by_the_table_in_force_when_sent(
    world: World,
) -> None:
    world.top_up(1_000_000)
    before = world.send(ANA)
    world.run(world.book.set_table(OP, PRICES.replace('DE = "0.02"', 'DE = "0.03"'), None))
    world.clock.advance(1)
    after = world.send(ANA)
    assert isinstance(before, int) and isinstance(after, int)
    world.ack(ANA, 1)  # both delivered after the change
    assert (world.charge(before).amount, world.charge(after).amount) == (20_000, 30_000)
    assert world.balance() == (1_000_000 - 50_000, 0)


class Books(RuleBasedStateMachine):
    """Any sequence of sends, acks (by either of Ben's devices, repeated), expiries, top-ups,
    blocks and unblocks and price changes keeps the books: available + reserved = top-ups -
    captures; every delivered billable message has exactly one capture; no other message has
    one; a message's events never go backwards."""

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.world = World(Path(self._dir.name) / "books.db")
        self.topped = 0
        self.changes = 0

    def teardown(self) -> None:
        self.world.close()
        self._dir.cleanup()

    @rule(amount=st.integers(1, 60_000))
    def top_up(self, amount: int) -> None:
        self.world.top_up(amount)
        self.topped += amount

    @rule(user=st.sampled_from([ANA, BEN]))
    def send(self, user: str) -> None:
        before = self.world.balance()
        result = self.world.send(user)
        if isinstance(result, DomainError):
            assert "insufficient balance" in str(result) or "does not accept" in str(result)
            assert self.world.balance() == before

    @rule(who=st.sampled_from([(ANA, 1), (BEN, 1), (BEN, 2)]))
    def ack(self, who: tuple[str, int]) -> None:
        self.world.ack(*who)

    @rule()
    def expire(self) -> None:
        self.world.expire()

    @rule(user=st.sampled_from([ANA, BEN]))
    def block(self, user: str) -> None:
        self.world.block(user)

    @rule(user=st.sampled_from([ANA, BEN]))
    def unblock(self, user: str) -> None:
        self.world.unblock(user)

    @precondition(lambda self: self.changes < 3)
    @rule(cents=st.integers(1, 9))
    def change_prices(self, cents: int) -> None:
        self.changes += 1
        self.world.clock.advance(1)
        table = PRICES.replace('"*" = "0.01"', f'"*" = "0.0{cents}"')
        self.world.run(self.world.book.set_table(OP, table, None))
        self.world.clock.advance(1)

    @invariant()
    def the_books_balance(self) -> None:
        w = self.world
        available, reserved = w.balance()
        (captured,) = w.q("SELECT coalesce(sum(amount), 0) FROM ledger WHERE kind = 3")[0]
        assert available >= 0 and reserved >= 0
        assert available + reserved == self.topped - captured
        (held,) = w.q("SELECT coalesce(sum(amount), 0) FROM charges WHERE state = 0")[0]
        assert reserved == held

    @invariant()
    def delivered_billable_messages_have_exactly_one_capture(self) -> None:
        rows = self.world.q(
            "SELECT m.state, c.amount, c.state,"
            " (SELECT count(*) FROM ledger l WHERE l.message_id = c.message_id AND l.kind = 3)"
            " FROM charges c JOIN messages m ON m.message_id = c.message_id"
        )
        for message_state, amount, charge_state, captures in rows:
            delivered = message_state == MessageState.DELIVERED
            assert (charge_state == ChargeState.CAPTURED) == delivered
            assert captures == (1 if delivered and amount else 0)

    @invariant()
    def events_never_go_backwards(self) -> None:
        events = self.world.all_events()
        seen: dict[int, list[int]] = {}
        for _, message_id, kind in events:
            seen.setdefault(message_id, []).append(kind)
        for kinds in seen.values():
            assert kinds[0] == StatusKind.SENT and len(kinds) <= 2
        # Every charge is a SENT event, every event is numbered, without gap or duplicate.
        assert len(seen) == self.world.q("SELECT count(*) FROM charges")[0][0]
        sequences = [sequence for sequence, _, _ in events]
        assert sequences == list(range(1, len(sequences) + 1))


TestBooks = Books.TestCase
TestBooks.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
