"""Consent over a live server: opt-in, business-recorded opt-in, opt-out, block, the user's list.

Every refusal is checked with its status and message; the block is checked on every way of
sending (unary, batch, stream, online-only), person to person and business to person.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import business_pb2 as bpb
from parley.v1 import business_pb2_grpc
from parley.v1 import messaging_pb2 as mpb

from server.domain.clock import ManualClock
from server.domain.consent import StartVerdict, may_start
from server.domain.consent_model import OptInKind, OptInSource
from server.domain.model import AccountKind, AccountRow, MessageCategory
from server.storage.database import Database
from server.storage.transaction import SqliteTransaction
from tests.conftest import Device, LiveServer, link, register
from tests.keys_helper import DeviceKeyMaker
from tests.test_keys import keys
from tests.test_messaging import ALICE, BOB, Member, failure, send_request, stub

SHOP = "+14155550124"  # a business
BANK = "+14155550125"  # another business
NEWCOMER = "+14155550126"  # a person who registers only later
MARKETING = mpb.MESSAGE_CATEGORY_MARKETING
UTILITY = mpb.MESSAGE_CATEGORY_UTILITY
AUTHENTICATION = mpb.MESSAGE_CATEGORY_AUTHENTICATION
SERVICE = mpb.MESSAGE_CATEGORY_SERVICE
BLOCKED = "the recipient does not accept messages from you"


def biz(server: LiveServer) -> business_pb2_grpc.BusinessServiceStub:
    return business_pb2_grpc.BusinessServiceStub(server.channel())


def member(server: LiveServer, phone: str, kind: int = apb.ACCOUNT_KIND_PERSON) -> Member:
    device = register(server, phone, kind=kind)
    maker = DeviceKeyMaker(registration_id=2000 + len(phone))
    keys(server).UploadPreKeys(maker.first_upload(pre_keys=1, kyber=1), metadata=device.metadata)
    return Member(device, maker.registration_id)


def business(server: LiveServer, phone: str = SHOP) -> Member:
    return member(server, phone, apb.ACCOUNT_KIND_BUSINESS)


def refused(call: Callable[[], object], code: grpc.StatusCode, text: str) -> str:
    """The call fails with `code` and a message containing `text`; returns the message."""
    error = failure(call)
    assert error.code() == code, error.details()
    assert text in (error.details() or ""), error.details()
    return error.details() or ""


def listing(server: LiveServer, who: Device) -> list[bpb.BusinessConsent]:
    reply = biz(server).ListMyBusinesses(bpb.ListMyBusinessesRequest(), metadata=who.metadata)
    return list(reply.businesses)


def states(consent: bpb.BusinessConsent) -> dict[int, tuple[bool, int, int]]:
    """category -> (opted_out, kind, source)."""
    return {c.category: (c.opted_out, c.kind, c.source) for c in consent.categories}


def record(
    server: LiveServer,
    shop: Device,
    phone: str,
    categories: list[Any],
    source: Any = bpb.OPT_IN_SOURCE_WEBSITE,
    evidence: str = "https://shop.example/signup 2026-11-28T10:00Z",
) -> None:
    biz(server).RecordOptIn(
        bpb.RecordOptInRequest(
            phone_number=phone, source=source, evidence=evidence, categories=categories
        ),
        metadata=shop.metadata,
    )


def opt_in(
    server: LiveServer, who: Device, business_id: str, categories: list[Any]
) -> bpb.BusinessConsent:
    return (
        biz(server)
        .OptIn(
            bpb.OptInRequest(business_account_id=business_id, categories=categories),
            metadata=who.metadata,
        )
        .business
    )


def opt_out(
    server: LiveServer, who: Device, business_id: str, categories: list[Any], all: bool = False
) -> bpb.BusinessConsent:
    return (
        biz(server)
        .OptOut(
            bpb.OptOutRequest(business_account_id=business_id, categories=categories, all=all),
            metadata=who.metadata,
        )
        .business
    )


def block(server: LiveServer, who: Device, account_id: str) -> bpb.BlockAccountResponse:
    return biz(server).BlockAccount(
        bpb.BlockAccountRequest(account_id=account_id), metadata=who.metadata
    )


def unblock(server: LiveServer, who: Device, account_id: str) -> bool:
    return (
        biz(server)
        .UnblockAccount(bpb.UnblockAccountRequest(account_id=account_id), metadata=who.metadata)
        .was_blocked
    )


# -- opt-in and opt-out ---------------------------------------------------------------------------


def test_user_opt_in_is_user_verified_and_listed(server: LiveServer) -> None:
    alice, shop = member(server, ALICE), business(server)
    consent = opt_in(server, alice.device, shop.device.account_id, [UTILITY, MARKETING, UTILITY])
    assert consent.business_account_id == shop.device.account_id
    assert consent.phone_number == SHOP
    verified = (False, bpb.OPT_IN_KIND_USER_VERIFIED, bpb.OPT_IN_SOURCE_UNSPECIFIED)
    assert states(consent) == {MARKETING: verified, UTILITY: verified}
    assert not consent.blocked and not consent.HasField("blocked_at")
    assert all(
        c.HasField("opted_in_at") and not c.HasField("opted_out_at") for c in consent.categories
    )
    assert listing(server, alice.device) == [consent]


def test_business_recorded_opt_in_is_visible_with_source_and_evidence(server: LiveServer) -> None:
    alice, shop = member(server, ALICE), business(server)
    record(
        server,
        shop.device,
        ALICE,
        [MARKETING, UTILITY],
        source=bpb.OPT_IN_SOURCE_IN_STORE,
        evidence="till 4, receipt 1189",
    )
    (consent,) = listing(server, alice.device)
    asserted = (False, bpb.OPT_IN_KIND_BUSINESS_ASSERTED, bpb.OPT_IN_SOURCE_IN_STORE)
    assert states(consent) == {MARKETING: asserted, UTILITY: asserted}
    assert {c.evidence for c in consent.categories} == {"till 4, receipt 1189"}
    assert listing(server, shop.device) == []  # the business's own list is its own consents


def test_opt_in_recorded_before_the_number_registers_applies_once_it_does(
    server: LiveServer,
) -> None:
    shop = business(server)
    reply = biz(server).RecordOptIn(
        bpb.RecordOptInRequest(
            phone_number=NEWCOMER,
            source=bpb.OPT_IN_SOURCE_APP,
            evidence="app signup #42",
            categories=[UTILITY],
        ),
        metadata=shop.device.metadata,
    )
    assert reply == bpb.RecordOptInResponse()  # the same answer as for a registered number
    newcomer = member(server, NEWCOMER)
    (consent,) = listing(server, newcomer.device)
    assert states(consent) == {
        UTILITY: (False, bpb.OPT_IN_KIND_BUSINESS_ASSERTED, bpb.OPT_IN_SOURCE_APP)
    }


def test_opt_out_beats_a_business_assertion_until_the_user_opts_in(server: LiveServer) -> None:
    alice, shop = member(server, ALICE), business(server)
    record(server, shop.device, ALICE, [MARKETING, UTILITY])
    after = opt_out(server, alice.device, shop.device.account_id, [MARKETING])
    assert states(after)[MARKETING][0] is True and states(after)[UTILITY][0] is False
    out_at = next(c.opted_out_at for c in after.categories if c.category == MARKETING)
    # The business records again: the opt-out stands (and keeps its time).
    record(server, shop.device, ALICE, [MARKETING], evidence="second form")
    (consent,) = listing(server, alice.device)
    marketing = next(c for c in consent.categories if c.category == MARKETING)
    assert marketing.opted_out and marketing.opted_out_at == out_at
    assert marketing.evidence != "second form"
    # Opting out again keeps the first time (what the quality rating counts).
    again = opt_out(server, alice.device, shop.device.account_id, [MARKETING])
    assert next(c for c in again.categories if c.category == MARKETING).opted_out_at == out_at
    # Only the user's own opt-in lifts it.
    server.clock.advance(10)
    lifted = opt_in(server, alice.device, shop.device.account_id, [MARKETING])
    assert states(lifted)[MARKETING] == (
        False,
        bpb.OPT_IN_KIND_USER_VERIFIED,
        bpb.OPT_IN_SOURCE_UNSPECIFIED,
    )


def test_opt_out_of_everything_and_without_any_opt_in(server: LiveServer) -> None:
    alice, shop = member(server, ALICE), business(server)
    consent = opt_out(server, alice.device, shop.device.account_id, [], all=True)
    assert states(consent) == {
        c: (True, bpb.OPT_IN_KIND_UNSPECIFIED, bpb.OPT_IN_SOURCE_UNSPECIFIED)
        for c in (MARKETING, UTILITY, AUTHENTICATION, SERVICE)
    }
    assert not any(c.HasField("opted_in_at") for c in consent.categories)
    record(server, shop.device, ALICE, [UTILITY])  # cannot lift an opt-out made beforehand
    assert listing(server, alice.device) == [consent]


def test_user_verified_opt_in_is_never_downgraded(server: LiveServer) -> None:
    alice, shop = member(server, ALICE), business(server)
    mine = opt_in(server, alice.device, shop.device.account_id, [UTILITY])
    server.clock.advance(5)
    record(server, shop.device, ALICE, [UTILITY, MARKETING])
    (consent,) = listing(server, alice.device)
    assert states(consent) == {
        UTILITY: (False, bpb.OPT_IN_KIND_USER_VERIFIED, bpb.OPT_IN_SOURCE_UNSPECIFIED),
        MARKETING: (False, bpb.OPT_IN_KIND_BUSINESS_ASSERTED, bpb.OPT_IN_SOURCE_WEBSITE),
    }
    utility = next(c for c in consent.categories if c.category == UTILITY)
    assert utility == mine.categories[0]  # untouched, time included


def test_repeated_calls_are_harmless(server: LiveServer) -> None:
    """Writes are upserts on unique keys: concurrent repeats leave one row each."""
    alice, shop = member(server, ALICE), business(server)
    requests = [
        lambda: opt_in(server, alice.device, shop.device.account_id, [MARKETING, UTILITY]),
        lambda: record(server, shop.device, ALICE, [MARKETING, SERVICE]),
        lambda: opt_out(server, alice.device, shop.device.account_id, [SERVICE]),
        lambda: block(server, alice.device, shop.device.account_id),
    ]

    async def hammer() -> None:
        await asyncio.gather(*(asyncio.to_thread(r) for r in requests * 5))

    asyncio.run(hammer())
    (consent,) = listing(server, alice.device)
    assert [c.category for c in consent.categories] == [MARKETING, UTILITY, SERVICE]
    assert states(consent)[UTILITY] == (
        False,
        bpb.OPT_IN_KIND_USER_VERIFIED,
        bpb.OPT_IN_SOURCE_UNSPECIFIED,
    )
    assert states(consent)[SERVICE][0] is True
    assert consent.blocked
    first = block(server, alice.device, shop.device.account_id).blocked_at
    server.clock.advance(60)
    assert block(server, alice.device, shop.device.account_id).blocked_at == first


def test_list_shows_every_business_with_a_block_or_consent(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    shop, bank = business(server, SHOP), business(server, BANK)
    opt_in(server, alice.device, bank.device.account_id, [AUTHENTICATION])
    block(server, alice.device, shop.device.account_id)
    block(server, alice.device, bob.device.account_id)  # a person: not in the list
    listed = listing(server, alice.device)
    assert [b.phone_number for b in listed] == [SHOP, BANK]
    assert listed[0].blocked and listed[0].HasField("blocked_at") and not listed[0].categories
    assert not listed[1].blocked and [c.category for c in listed[1].categories] == [AUTHENTICATION]
    assert listing(server, bob.device) == []


def test_deleting_the_account_deletes_its_consents(server: LiveServer) -> None:
    alice, shop = member(server, ALICE), business(server)
    opt_in(server, alice.device, shop.device.account_id, [UTILITY])
    server.accounts().DeleteAccount(apb.DeleteAccountRequest(), metadata=alice.device.metadata)
    again = member(server, ALICE)  # the number registers again: a fresh account, no consent
    assert listing(server, again.device) == []


# -- refusals ---------------------------------------------------------------------------------


def test_refusals(server: LiveServer) -> None:
    alice, bob, shop = member(server, ALICE), member(server, BOB), business(server)
    FP, IA, NF = (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    )
    shop_id, bob_id = shop.device.account_id, bob.device.account_id
    # RecordOptIn by a person.
    refused(lambda: record(server, alice.device, BOB, [UTILITY]), FP, "only business accounts")
    # Unknown business, a person as the target, oneself.
    nobody = str(uuid.uuid4())
    refused(lambda: opt_in(server, alice.device, nobody, [UTILITY]), NF, f"no account {nobody}")
    refused(lambda: opt_out(server, alice.device, nobody, [UTILITY]), NF, f"no account {nobody}")
    refused(
        lambda: opt_in(server, alice.device, bob_id, [UTILITY]), FP, "is a person, not a business"
    )
    refused(lambda: opt_out(server, alice.device, bob_id, [UTILITY]), FP, "BlockAccount")
    refused(lambda: opt_in(server, shop.device, shop_id, [UTILITY]), IA, "your own account")
    refused(lambda: opt_in(server, alice.device, "shop", [UTILITY]), IA, "business_account_id")
    # Bad categories.
    refused(lambda: opt_in(server, alice.device, shop_id, []), IA, "categories is empty")
    refused(lambda: opt_in(server, alice.device, shop_id, [0]), IA, "categories[0] is 0")
    refused(lambda: opt_in(server, alice.device, shop_id, [UTILITY, 9]), IA, "categories[1] is 9")
    refused(lambda: record(server, shop.device, ALICE, []), IA, "categories is empty")
    refused(lambda: opt_out(server, alice.device, shop_id, []), IA, "categories is empty")
    refused(lambda: opt_out(server, alice.device, shop_id, [UTILITY], all=True), IA, "not both")
    # RecordOptIn's own fields.
    refused(
        lambda: record(server, shop.device, ALICE, [UTILITY], evidence="x" * 513),
        IA,
        "evidence is 513 characters; at most 512",
    )
    record(server, shop.device, ALICE, [UTILITY], evidence="x" * 512)  # the limit itself is fine
    refused(
        lambda: record(server, shop.device, ALICE, [UTILITY], evidence="  "),
        IA,
        "evidence is empty",
    )
    refused(lambda: record(server, shop.device, ALICE, [UTILITY], source=0), IA, "source must")
    refused(lambda: record(server, shop.device, ALICE, [UTILITY], source=77), IA, "source must")
    refused(lambda: record(server, shop.device, "0155", [UTILITY]), IA, "E.164")
    refused(lambda: record(server, shop.device, SHOP, [UTILITY]), IA, "your own number")
    # Blocking.
    refused(
        lambda: block(server, alice.device, alice.device.account_id),
        IA,
        "cannot block your own account",
    )
    refused(
        lambda: unblock(server, alice.device, alice.device.account_id),
        IA,
        "cannot unblock your own account",
    )
    refused(lambda: block(server, alice.device, nobody), NF, f"no account {nobody}")
    refused(lambda: unblock(server, alice.device, nobody), NF, f"no account {nobody}")
    refused(lambda: block(server, alice.device, ""), IA, "account_id is required")
    # Nothing of the above left a trace.
    assert listing(server, alice.device)[0].categories[0].evidence == "x" * 512
    assert len(listing(server, alice.device)) == 1 and listing(server, bob.device) == []


# -- the block on the send path ------------------------------------------------------------------


def _send_all_ways(server: LiveServer, sender: Member, to: Member) -> list[tuple[int, str]]:
    """(status code, message) of one send each: unary, batch, stream, online-only."""
    out: list[tuple[int, str]] = []
    try:
        stub(server).SendMessage(send_request([to], b"unary"), metadata=sender.device.metadata)
        out.append((0, ""))
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        out.append((exc.code().value[0], exc.details() or ""))
    batch = stub(server).SendMessages(
        mpb.SendMessagesRequest(requests=[send_request([to], b"batch")]),
        metadata=sender.device.metadata,
    )
    out.extend((r.code, r.message) for r in batch.results)
    streamed = stub(server).SendMessageStream(
        iter([mpb.SendMessageStreamRequest(request=send_request([to], b"stream"))]),
        metadata=sender.device.metadata,
        timeout=10,
    )
    out.extend((r.result.code, r.result.message) for r in streamed)
    try:
        stub(server).SendMessage(
            send_request([to], b"online", online_only=True), metadata=sender.device.metadata
        )
        out.append((0, ""))
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        out.append((exc.code().value[0], exc.details() or ""))
    return out


DENIED = (grpc.StatusCode.PERMISSION_DENIED.value[0], BLOCKED)


@pytest.mark.parametrize("sender_kind", ["person", "business"])
def test_block_is_effective_at_once_on_every_send_and_unblock_restores(
    server: LiveServer, sender_kind: str
) -> None:
    alice = member(server, ALICE)
    sender = member(server, BOB) if sender_kind == "person" else business(server)
    if sender_kind == "business":  # alice writes first: the business may answer free-form
        assert _send_all_ways(server, alice, sender) == [(0, "")] * 4
    assert _send_all_ways(server, sender, alice) == [(0, "")] * 4
    block(server, alice.device, sender.device.account_id)
    assert _send_all_ways(server, sender, alice) == [DENIED] * 4
    # The block is one-way: alice may still write to the account she blocked.
    assert _send_all_ways(server, alice, sender) == [(0, "")] * 4
    assert unblock(server, alice.device, sender.device.account_id) is True
    assert unblock(server, alice.device, sender.device.account_id) is False
    assert _send_all_ways(server, sender, alice) == [(0, "")] * 4


def test_a_business_blocks_a_user(server: LiveServer) -> None:
    alice, shop = member(server, ALICE), business(server)
    block(server, shop.device, alice.device.account_id)
    assert _send_all_ways(server, alice, shop) == [DENIED] * 4
    assert listing(server, alice.device) == []  # the user's list shows the user's own blocks


def test_blocked_sender_learns_nothing_of_the_device_list(server: LiveServer) -> None:
    alice, bob = member(server, ALICE), member(server, BOB)
    block(server, alice.device, bob.device.account_id)
    request = send_request([alice], b"x")
    request.messages[0].registration_id = 1  # stale: would be FAILED_PRECONDITION with details
    refused(
        lambda: stub(server).SendMessage(request, metadata=bob.device.metadata),
        grpc.StatusCode.PERMISSION_DENIED,
        BLOCKED,
    )


def test_block_in_a_batch_refuses_only_the_blocked_recipient(server: LiveServer) -> None:
    alice, bob, shop = member(server, ALICE), member(server, BOB), business(server)
    # bob wrote to the shop (its answer is free-form, inside his window); alice blocked it.
    stub(server).SendMessage(send_request([shop], b"hi"), metadata=bob.device.metadata)
    block(server, alice.device, shop.device.account_id)
    reply = stub(server).SendMessages(
        mpb.SendMessagesRequest(requests=[send_request([alice], b"1"), send_request([bob], b"2")]),
        metadata=shop.device.metadata,
    )
    assert [(r.code, r.message) for r in reply.results] == [DENIED, (0, "")]


def test_self_sends_are_never_blocked(server: LiveServer) -> None:
    alice = member(server, ALICE)
    laptop_device = link(server, alice.device)
    maker = DeviceKeyMaker(registration_id=3333)
    keys(server).UploadPreKeys(
        maker.first_upload(pre_keys=1, kyber=1), metadata=laptop_device.metadata
    )
    laptop = Member(laptop_device, maker.registration_id)
    reply = stub(server).SendMessage(
        send_request([laptop], b"note to self"), metadata=alice.device.metadata
    )
    assert reply.stored


# -- the domain's question for the later sending rules --------------------------------------------


def test_may_start_answers_with_the_reason(tmp_path: Path) -> None:
    db = Database(tmp_path / "consent.db")
    user = AccountRow(str(uuid.uuid4()), ALICE, AccountKind.PERSON, 0.0)
    shop = AccountRow(str(uuid.uuid4()), SHOP, AccountKind.BUSINESS, 0.0)
    clock = ManualClock()

    async def scenario() -> list[StartVerdict]:
        async def verdict(category: MessageCategory) -> StartVerdict:
            return await db.read(
                lambda tx: may_start(tx, shop.account_id, user.account_id, category)
            )

        def accounts(tx: object) -> None:
            tx.insert_account(user)  # type: ignore[attr-defined]
            tx.insert_account(shop)  # type: ignore[attr-defined]

        await db.write(accounts)
        seen = [await verdict(MessageCategory.MARKETING)]
        await db.write(
            lambda tx: tx.opt_in_by_business(
                ALICE, shop.account_id, [MessageCategory.MARKETING], 1, "form", clock.now()
            )
        )
        seen.append(await verdict(MessageCategory.MARKETING))
        seen.append(await verdict(MessageCategory.UTILITY))
        await db.write(
            lambda tx: tx.opt_out(ALICE, shop.account_id, [MessageCategory.MARKETING], clock.now())
        )
        seen.append(await verdict(MessageCategory.MARKETING))
        await db.write(
            lambda tx: tx.opt_in_by_user(
                ALICE, shop.account_id, [MessageCategory.MARKETING], clock.now()
            )
        )
        seen.append(await verdict(MessageCategory.MARKETING))
        await db.write(lambda tx: tx.block(user.account_id, shop.account_id, clock.now()))
        seen.append(await verdict(MessageCategory.MARKETING))
        await db.write(lambda tx: tx.unblock(user.account_id, shop.account_id))
        seen.append(await verdict(MessageCategory.MARKETING))
        # An opt-out with no opt-in at all is "opted out", not "no opt-in".
        await db.write(
            lambda tx: tx.opt_out(ALICE, shop.account_id, [MessageCategory.SERVICE], clock.now())
        )
        seen.append(await verdict(MessageCategory.SERVICE))
        row = await db.read(lambda tx: tx.consent(ALICE, shop.account_id, MessageCategory.SERVICE))
        assert row is not None and row.kind == OptInKind.NONE
        return seen

    try:
        assert asyncio.run(scenario()) == [
            StartVerdict.NO_OPT_IN,
            StartVerdict.OK,
            StartVerdict.NO_OPT_IN,
            StartVerdict.OPTED_OUT,
            StartVerdict.OK,
            StartVerdict.BLOCKED,
            StartVerdict.OK,
            StartVerdict.OPTED_OUT,
        ]
    finally:
        db.close()


def test_consent_lookups_use_indexes(tmp_path: Path) -> None:
    """Every statement of the consent area, and the quality rating's future counts, is served
    by a primary key or an index, never a table scan (EXPLAIN QUERY PLAN of what really ran)."""
    path = tmp_path / "plans.db"
    Database(path).close()  # migrated
    conn = sqlite3.connect(path, isolation_level=None)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    tx = SqliteTransaction(conn)
    user, shop = str(uuid.uuid4()), str(uuid.uuid4())
    for account_id, phone in ((user, ALICE), (shop, SHOP)):
        tx.insert_account(AccountRow(account_id, phone, AccountKind.PERSON, 0.0))
    statements.clear()
    tx.consents_of(ALICE)
    tx.consent(ALICE, shop, 1)
    tx.get_block(user, shop)
    tx.blocks_by(user)
    tx.unblock(user, shop)
    conn.execute(
        "SELECT count(*) FROM consents WHERE business_account_id = ? AND opted_out_at >= ?",
        (shop, 0.0),
    )
    conn.execute(
        "SELECT count(*) FROM blocks WHERE blocked_account_id = ? AND blocked_at >= ?", (shop, 0.0)
    )
    conn.set_trace_callback(None)
    assert len(statements) == 7
    for sql in statements:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "USING" in plan and "SCAN" not in plan, (sql, plan)
    conn.close()


def test_domain_enums_match_the_protos() -> None:
    """Servicers pass these enums to the wire as plain ints: their numbers must agree."""
    assert {k.name: int(k) for k in OptInKind if k} == {
        n.removeprefix("OPT_IN_KIND_"): v
        for n, v in bpb.OptInKind.items()
        if v != bpb.OPT_IN_KIND_UNSPECIFIED
    }
    assert {s.name: int(s) for s in OptInSource} == {
        n.removeprefix("OPT_IN_SOURCE_"): v for n, v in bpb.OptInSource.items()
    }


@pytest.mark.sqlite_only  # traces the SQLite writer's statements
@pytest.mark.parametrize("blocked", [False, True])
def test_the_block_is_looked_up_once_per_recipient_and_job(
    server: LiveServer, blocked: bool
) -> None:
    """A batch of sends to one recipient probes `blocks` once (the rule's per-job cache),
    whether the sends pass or are refused; the writer's own statements are traced."""
    alice, bob = member(server, ALICE), member(server, BOB)
    if blocked:
        block(server, alice.device, bob.device.account_id)
    live = server._server
    assert live is not None
    statements: list[str] = []
    assert isinstance(live.db, Database)
    writer = live.db._writer_conn
    writer.set_trace_callback(statements.append)
    try:
        reply = stub(server).SendMessages(
            mpb.SendMessagesRequest(requests=[send_request([alice], b"%d" % i) for i in range(20)]),
            metadata=bob.device.metadata,
        )
    finally:
        writer.set_trace_callback(None)
    assert [(r.code, r.message) for r in reply.results] == [DENIED if blocked else (0, "")] * 20
    assert sum("FROM blocks" in s for s in statements) == 1, statements
