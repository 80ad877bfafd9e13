"""The sending rules of businesses over a live server with a ManualClock.

Every refusal is checked with its status and message: the template's state, the category,
the 24-hour window, consent, the tier ladder (exhaustion and promotion over 7 days), the
per-user marketing cap, the business's send rate and the quality rating turning RED.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from parley.v1 import admin_pb2 as adm
from parley.v1 import admin_pb2_grpc
from parley.v1 import business_pb2 as bpb
from parley.v1 import messaging_pb2 as mpb

from server.domain.model import AccountKind, AccountRow
from server.domain.sending import parse_tiers
from server.storage.database import Database
from server.storage.transaction import SqliteTransaction
from tests.conftest import LiveServer, ServerFactory
from tests.test_abuse_limits import retry_after
from tests.test_consent import (
    BLOCKED,
    biz,
    block,
    business,
    member,
    opt_in,
    opt_out,
    record,
    refused,
)
from tests.test_messaging import ALICE, BOB, Member, Stream, failure, send_request, stub

ADMIN = "operator-secret-token"
OPERATOR = (("authorization", f"Bearer {ADMIN}"),)
CAROL = "+14155550130"
DAVE = "+14155550131"
OTHER_SHOP = "+14155550132"
MARKETING = mpb.MESSAGE_CATEGORY_MARKETING
UTILITY = mpb.MESSAGE_CATEGORY_UTILITY
AUTHENTICATION = mpb.MESSAGE_CATEGORY_AUTHENTICATION
SERVICE = mpb.MESSAGE_CATEGORY_SERVICE
FP = grpc.StatusCode.FAILED_PRECONDITION
IA = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DAY = 86_400.0


def make(make_server: ServerFactory, **settings: Any) -> LiveServer:
    return make_server(admin_token=ADMIN, **settings)


@pytest.fixture
def server(make_server: ServerFactory) -> LiveServer:
    return make(make_server)


def template(
    server: LiveServer, shop: Member, category: int, name: str, approve: bool = True
) -> str:
    created = (
        biz(server)
        .CreateTemplate(
            bpb.CreateTemplateRequest(
                name=name,
                language="en",
                category=category,  # type: ignore[arg-type]
                content=bpb.TemplateContent(body="Hello {{1}}"),
            ),
            metadata=shop.device.metadata,
        )
        .template
    )
    if approve:
        review(server, created.template_id, adm.REVIEW_DECISION_APPROVE)
    return created.template_id


def review(server: LiveServer, template_id: str, decision: Any) -> None:
    admin_pb2_grpc.AdminServiceStub(server.channel()).ReviewTemplate(
        adm.ReviewTemplateRequest(template_id=template_id, decision=decision, reason="checked"),
        metadata=OPERATOR,
    )


def send(
    server: LiveServer,
    sender: Member,
    to: Member,
    template_id: str = "",
    category: int = 0,
    online_only: bool = False,
    template_name: str = "",
) -> mpb.SendMessageResponse:
    request = send_request([to], b"ciphertext", online_only=online_only)
    request.business.template_id = template_id
    request.business.category = category  # type: ignore[assignment]
    request.business.template_name = template_name
    return stub(server).SendMessage(request, metadata=sender.device.metadata)


def sends(server: LiveServer, sender: Member, to: Member, **kw: Any) -> bool:
    return send(server, sender, to, **kw).stored


def window(server: LiveServer, shop: Member, user: Member) -> bpb.GetConversationWindowResponse:
    return biz(server).GetConversationWindow(
        bpb.GetConversationWindowRequest(user_account_id=user.device.account_id),
        metadata=shop.device.metadata,
    )


def status(server: LiveServer, shop: Member) -> bpb.GetBusinessStatusResponse:
    return biz(server).GetBusinessStatus(
        bpb.GetBusinessStatusRequest(), metadata=shop.device.metadata
    )


def opted_in(server: LiveServer, shop: Member, *users: Member, cats: Any = (UTILITY,)) -> None:
    for user in users:
        opt_in(server, user.device, shop.device.account_id, list(cats))


def test_free_form_needs_the_window_and_a_template_starts_a_conversation(
    server: LiveServer,
) -> None:
    shop, alice = business(server), member(server, ALICE)
    refused(
        lambda: send(server, shop, alice),
        FP,
        "a free-form message needs an open customer-service window, and this user has never"
        " written to you; send an approved template (template_id) to start a conversation",
    )
    assert not window(server, shop, alice).open
    assert not window(server, shop, alice).HasField("closes_at")
    tid = template(server, shop, UTILITY, "order_update")
    record(server, shop.device, ALICE, [UTILITY])
    assert sends(server, shop, alice, template_id=tid)
    # The envelope carries the server's category and the template's id and name.
    stream = Stream(server, alice)
    (env,) = stream.until_empty()
    stream.close()
    assert (env.business.category, env.business.template_id) == (UTILITY, tid)
    assert env.business.template_name == "order_update"
    # The user answers: the window opens, exactly 24 h from her message.
    opened = server.clock.now()
    assert sends(server, alice, shop)
    state = window(server, shop, alice)
    assert state.open and state.closes_at.ToMicroseconds() == round((opened + DAY) * 1e6)
    assert state.opened_at.ToMicroseconds() == round(opened * 1e6)
    assert sends(server, shop, alice)  # free-form inside the window, stamped SERVICE
    assert sends(server, shop, alice, category=SERVICE)
    # A later message refreshes the window; a day after the last one it is closed.
    server.clock.advance(3600)
    assert sends(server, alice, shop)
    closes = datetime.fromtimestamp(server.clock.now() + DAY, UTC).strftime("%Y-%m-%d %H:%M:%S")
    server.clock.advance(DAY - 1)
    assert sends(server, shop, alice)
    server.clock.advance(1)
    assert not window(server, shop, alice).open
    refused(
        lambda: send(server, shop, alice),
        FP,
        f"the window closed at {closes} UTC, 24 h after their last message; send an approved"
        " template",
    )
    assert sends(server, shop, alice, template_id=tid)  # a template still works


def test_the_stored_metadata_is_the_servers(server: LiveServer) -> None:
    shop, alice = business(server), member(server, ALICE)
    tid = template(server, shop, AUTHENTICATION, "login_code")
    opted_in(server, shop, alice, cats=[AUTHENTICATION])
    sends(server, shop, alice, template_id=tid, category=AUTHENTICATION)
    assert sends(server, alice, shop)
    sends(server, shop, alice)
    rows = server.sql(
        "SELECT category, template_name, template_id FROM envelopes"
        " WHERE sender_account_id = ? ORDER BY envelope_id",
        (shop.device.account_id,),
    )
    assert rows == [(AUTHENTICATION, "login_code", tid), (SERVICE, "", "")]


def test_template_and_category_refusals(server: LiveServer) -> None:
    shop, other, alice = business(server), business(server, OTHER_SHOP), member(server, ALICE)
    opted_in(server, shop, alice, cats=[UTILITY, MARKETING])
    unknown = "00000000-0000-4000-8000-000000000000"
    refused(
        lambda: send(server, shop, alice, template_id=unknown),
        FP,
        f"template {unknown} does not exist",
    )
    theirs = template(server, other, UTILITY, "theirs")
    refused(
        lambda: send(server, shop, alice, template_id=theirs), FP, f"template {theirs} is not yours"
    )
    pending = template(server, shop, UTILITY, "pending_one", approve=False)
    refused(
        lambda: send(server, shop, alice, template_id=pending),
        FP,
        f"template 'pending_one' ({pending}) is pending review; only an APPROVED template",
    )
    rejected = template(server, shop, UTILITY, "rejected_one", approve=False)
    review(server, rejected, adm.REVIEW_DECISION_REJECT)
    refused(lambda: send(server, shop, alice, template_id=rejected), FP, "is rejected")
    paused = template(server, shop, UTILITY, "paused_one")
    biz(server).PauseTemplate(
        bpb.PauseTemplateRequest(template_id=paused), metadata=shop.device.metadata
    )
    refused(
        lambda: send(server, shop, alice, template_id=paused),
        FP,
        "is paused; unpause it (UnpauseTemplate)",
    )
    promo = template(server, shop, MARKETING, "promo")
    refused(
        lambda: send(server, shop, alice, template_id=promo, category=UTILITY),
        IA,
        "business.category is UTILITY, but template 'promo' is MARKETING: the category comes"
        " from the approved template",
    )
    refused(
        lambda: send(server, shop, alice, template_id=promo, template_name="other"),
        IA,
        "business.template_name is 'other', but template_id names 'promo'",
    )
    refused(
        lambda: send(server, shop, alice, template_name="promo"), IA, "without business.template_id"
    )
    assert sends(server, alice, shop)  # inside the window, free-form must still be SERVICE
    refused(
        lambda: send(server, shop, alice, category=MARKETING),
        IA,
        "business.category is MARKETING, but a message without a template is SERVICE",
    )
    refused(lambda: send(server, shop, alice, template_id="nope"), IA, "business.template_id")
    # A person cannot send a template; a person's category is kept as today.
    refused(
        lambda: send(server, alice, member(server, BOB), template_id=promo),
        IA,
        "only business accounts send templates",
    )
    bob = member(server, BOB)
    assert sends(server, alice, bob, category=MARKETING)


def test_starting_needs_consent(server: LiveServer) -> None:
    shop, alice, bob = business(server), member(server, ALICE), member(server, BOB)
    utility = template(server, shop, UTILITY, "receipt")
    promo = template(server, shop, MARKETING, "sale")
    refused(
        lambda: send(server, shop, alice, template_id=utility),
        FP,
        "the user has not opted in to UTILITY messages from you; a UTILITY template needs their"
        " opt-in",
    )
    opted_in(server, shop, alice, cats=[UTILITY, MARKETING])
    assert sends(server, shop, alice, template_id=promo)
    opt_out(server, alice.device, shop.device.account_id, [MARKETING])
    refused(
        lambda: send(server, shop, alice, template_id=promo),
        FP,
        "the user opted out of MARKETING messages from you; only they can opt in again",
    )
    assert sends(server, shop, alice, template_id=utility)  # utility is still allowed
    # Inside a window the user opened, UTILITY needs no opt-in; MARKETING always does.
    assert sends(server, bob, shop)
    assert sends(server, shop, bob, template_id=utility)
    refused(lambda: send(server, shop, bob, template_id=promo), FP, "not opted in to MARKETING")
    block(server, alice.device, shop.device.account_id)
    for kw in ({"template_id": utility}, {}):
        refused(
            lambda kw=kw: send(server, shop, alice, **kw),  # type: ignore[misc]
            grpc.StatusCode.PERMISSION_DENIED,
            BLOCKED,
        )


def test_online_only_business_sends_need_the_window(server: LiveServer) -> None:
    shop, alice = business(server), member(server, ALICE)
    tid = template(server, shop, UTILITY, "typing")
    opted_in(server, shop, alice)
    refused(
        lambda: send(server, shop, alice, template_id=tid, online_only=True),
        FP,
        "an online-only message needs an open customer-service window",
    )
    # A person's online-only message (a typing indicator) opens nothing.
    send(server, alice, shop, online_only=True)
    assert not window(server, shop, alice).open
    assert sends(server, alice, shop)
    assert not send(server, shop, alice, online_only=True).stored  # allowed; nobody online


def test_tier_exhausted_and_a_user_counts_once(make_server: ServerFactory) -> None:
    server = make(make_server, business_tiers=parse_tiers("2"))
    shop = business(server)
    users = [member(server, p) for p in (ALICE, BOB, CAROL)]
    tid = template(server, shop, UTILITY, "notice")
    opted_in(server, shop, *users)
    # Two sends to one new user in one batch count that user once.
    batch = stub(server).SendMessages(
        mpb.SendMessagesRequest(
            requests=[
                send_request([users[0]], b"1", business=mpb.BusinessMetadata(template_id=tid)),
                send_request([users[0]], b"2", business=mpb.BusinessMetadata(template_id=tid)),
            ]
        ),
        metadata=shop.device.metadata,
    )
    assert [r.code for r in batch.results] == [0, 0]
    assert status(server, shop).used_24h == 1
    assert sends(server, shop, users[1], template_id=tid)
    server.clock.advance(1800)
    err = failure(lambda: send(server, shop, users[2], template_id=tid))
    assert "messaging limit reached: at tier 1 you may start conversations with 2 unique users" in (
        err.details() or ""
    )
    # The first starts were in this hour bucket: they stop counting 24 h after its end.
    hour_end = (int((server.clock.now() - 1800) // 3600) + 1) * 3600
    assert retry_after(err) == int(hour_end + DAY - server.clock.now())
    st = status(server, shop)
    assert (st.tier, st.limit, st.used_24h, list(st.tiers)) == (1, 2, 2, [2])
    assert st.next_slot_at.seconds == hour_end + DAY
    assert sends(server, shop, users[0], template_id=tid)  # the same conversation: no new start
    server.clock.advance(retry_after(err))
    assert sends(server, shop, users[2], template_id=tid)


def test_tier_promotion_over_seven_days(make_server: ServerFactory) -> None:
    server = make(make_server, business_tiers=parse_tiers("4,8,unlimited"))
    shop = business(server)
    users = [member(server, p) for p in (ALICE, BOB, CAROL, DAVE)]
    tid = template(server, shop, UTILITY, "notice")
    opted_in(server, shop, *users)
    assert sends(server, shop, users[0], template_id=tid)
    # Eight days later the first start is out of the 7 days: one start is not half of 4.
    server.clock.advance(8 * DAY)
    assert sends(server, shop, users[1], template_id=tid)
    st = status(server, shop)
    assert (st.tier, st.limit, st.used_7d) == (1, 4, 1)
    assert (
        "rises to 8 once you start conversations with 2 unique users within 7 days" in st.promotion
    )
    # Three days later a second start within 7 days reaches half of 4: promoted to 8.
    server.clock.advance(3 * DAY)
    assert sends(server, shop, users[2], template_id=tid)
    st = status(server, shop)
    assert (st.tier, st.limit, st.used_7d) == (2, 8, 2)
    assert "rises to unlimited once you start conversations with 4" in st.promotion


def test_marketing_cap_per_user(server: LiveServer) -> None:
    shop, alice, bob = business(server), member(server, ALICE), member(server, BOB)
    promo = template(server, shop, MARKETING, "sale")
    utility = template(server, shop, UTILITY, "receipt")
    opted_in(server, shop, alice, bob, cats=[MARKETING, UTILITY])
    assert sends(server, shop, alice, template_id=promo)
    server.clock.advance(600)
    assert sends(server, shop, alice, template_id=promo)
    err = failure(lambda: send(server, shop, alice, template_id=promo))
    assert (
        "marketing limit reached: at most 2 marketing templates per user per 24 h from one business"
        in (err.details() or "")
    )
    assert retry_after(err) == DAY - 600
    assert sends(server, shop, bob, template_id=promo)  # another user has their own cap
    # In one batch too: bob's second passes, his third is refused (one job, one count).
    promo_meta = mpb.BusinessMetadata(template_id=promo)
    batch = stub(server).SendMessages(
        mpb.SendMessagesRequest(
            requests=[send_request([bob], b"x", business=promo_meta) for _ in range(2)]
        ),
        metadata=shop.device.metadata,
    )
    assert [r.code for r in batch.results] == [0, EXHAUSTED.value[0]]
    assert "marketing limit reached" in batch.results[1].message
    assert sends(server, shop, alice, template_id=utility)  # other categories are not capped
    server.clock.advance(DAY - 600)
    assert sends(server, shop, alice, template_id=promo)


def test_business_send_rate_and_people_are_not_limited(make_server: ServerFactory) -> None:
    from server.domain.ratelimit import Rate

    server = make(make_server, business_send_rate=Rate.parse("3/s"))
    shop, alice = business(server), member(server, ALICE)
    for _ in range(10):  # a person's messages to a business are never limited by these rules
        assert sends(server, alice, shop)
    for _ in range(3):
        assert sends(server, shop, alice)
    err = failure(lambda: send(server, shop, alice))
    assert "too many messages sent by this business (limit 3 per 1 s)" in (err.details() or "")
    assert retry_after(err) == 1
    server.clock.advance(1)
    assert sends(server, shop, alice)


def test_a_batch_takes_the_send_rate_s_tokens_together_and_gives_back_the_unused(
    make_server: ServerFactory,
) -> None:
    """One job takes the tokens its messages could need at once and gives back what it did
    not use: five replies at 3/s pass three and refuse two; a batch whose messages to a user
    without a window are refused spends a token on each reply only, and the token it did not
    use is there for the next send."""
    from server.domain.ratelimit import Rate

    server = make(make_server, business_send_rate=Rate.parse("3/s"))
    shop, alice, bob = business(server), member(server, ALICE), member(server, BOB)
    assert sends(server, alice, shop)  # alice's window is open; bob never wrote

    def batch(*to: Member) -> list[mpb.SendResult]:
        return list(
            stub(server)
            .SendMessages(
                mpb.SendMessagesRequest(requests=[send_request([m], b"x") for m in to]),
                metadata=shop.device.metadata,
            )
            .results
        )

    results = batch(*[alice] * 5)
    assert [r.code for r in results] == [0, 0, 0] + [EXHAUSTED.value[0]] * 2
    assert "too many messages sent by this business (limit 3 per 1 s)" in results[3].message
    server.clock.advance(1)
    results = batch(bob, alice, bob, alice, bob)
    assert [r.code for r in results] == [FP.value[0], 0, FP.value[0], 0, FP.value[0]]
    assert "needs an open customer-service window" in results[0].message
    assert sends(server, shop, alice)  # the batch's third token, given back
    err = failure(lambda: send(server, shop, alice))
    assert "too many messages sent by this business" in (err.details() or "")


def test_quality_turns_red_pauses_templates_and_stops_promotion(
    make_server: ServerFactory,
) -> None:
    server = make(make_server, business_tiers=parse_tiers("10,20"))
    shop = business(server)
    alice, bob, carol = (member(server, p) for p in (ALICE, BOB, CAROL))
    tid = template(server, shop, UTILITY, "notice")
    opted_in(server, shop, alice, bob, carol, cats=[UTILITY, MARKETING])
    assert sends(server, shop, alice, template_id=tid)
    assert sends(server, shop, bob, template_id=tid)
    assert status(server, shop).quality == bpb.QUALITY_RATING_GREEN
    block(server, alice.device, shop.device.account_id)
    st = status(server, shop)
    assert st.quality == bpb.QUALITY_RATING_YELLOW and st.blocks_7d == 1
    assert (
        "1 blocks and 0 opt-outs in the last 7 days against 2 users contacted" in st.quality_reason
    )
    opt_out(server, bob.device, shop.device.account_id, [MARKETING])
    st = status(server, shop)
    assert (st.quality, st.opt_outs_7d) == (bpb.QUALITY_RATING_RED, 1)
    assert "your templates are paused" in st.quality_reason
    assert st.promotion == "no promotion while your quality is RED"
    got = biz(server).GetTemplate(
        bpb.GetTemplateRequest(template_id=tid), metadata=shop.device.metadata
    )
    assert got.template.paused
    refused(
        lambda: send(server, shop, carol, template_id=tid),
        FP,
        "is paused because your quality rating turned RED",
    )
    # A template approved while RED is refused too, and nothing was counted or promoted.
    fresh = template(server, shop, UTILITY, "fresh")
    refused(
        lambda: send(server, shop, carol, template_id=fresh),
        FP,
        "your templates are paused: your quality rating has been RED since",
    )
    assert (status(server, shop).tier, status(server, shop).used_24h) == (1, 2)
    # A week later the signals are old: GREEN again, the quality pause lifted.
    server.clock.advance(7 * DAY + 1)
    assert status(server, shop).quality == bpb.QUALITY_RATING_GREEN
    assert sends(server, shop, carol, template_id=tid)


def test_status_and_window_refusals(server: LiveServer) -> None:
    alice, shop = member(server, ALICE), business(server)
    call: Callable[[], object]
    for call in (
        lambda: status(server, alice),
        lambda: window(server, alice, shop),
    ):
        refused(call, FP, "only business accounts can")
    refused(
        lambda: biz(server).GetConversationWindow(
            bpb.GetConversationWindowRequest(user_account_id="x"), metadata=shop.device.metadata
        ),
        IA,
        "user_account_id",
    )
    nobody = "00000000-0000-4000-8000-000000000001"
    refused(
        lambda: biz(server).GetConversationWindow(
            bpb.GetConversationWindowRequest(user_account_id=nobody), metadata=shop.device.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
        f"no account {nobody}",
    )
    st = status(server, shop)
    assert (st.tier, st.limit, st.used_24h, st.marketing_per_user) == (1, 250, 0, 2)
    assert list(st.tiers) == [250, 2000, 10000, 100000, 0] and st.send_rate_per_second == 80


def test_parse_tiers() -> None:
    assert parse_tiers("250,2000,unlimited") == (250, 2000, None)
    for bad in ("", "0", "10,5", "unlimited", "unlimited,5", "5,x"):
        with pytest.raises(ValueError, match="tier ladder"):
            parse_tiers(bad)


def test_sending_rule_statements_use_indexes(tmp_path: Path) -> None:
    """Every statement of the sending rules' storage is served by a primary key or an index,
    never a table scan (EXPLAIN QUERY PLAN of what really ran, writes included)."""
    path = tmp_path / "plans.db"
    Database(path).close()  # migrated
    conn = sqlite3.connect(path, isolation_level=None)
    tx = SqliteTransaction(conn)
    user, shop = str(uuid.uuid4()), str(uuid.uuid4())
    tx.insert_account(AccountRow(user, ALICE, AccountKind.PERSON, 0.0))
    tx.insert_account(AccountRow(shop, OTHER_SHOP, AccountKind.BUSINESS, 0.0))
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    tx.template_facts(str(uuid.uuid4()))
    tx.window_opened_at(shop, user)
    tx.conversation_started_at(shop, user)
    tx.starts_by_hour(shop, 0)
    tx.business_standing(shop)
    tx.marketing_sent_since(shop, user, 0.0, 2)
    tx.negative_signals_since(shop, 0.0)
    tx.open_window(shop, user, 10.0)
    assert tx.start_conversation(shop, user, 10.0, DAY)
    assert not tx.start_conversation(shop, user, 20.0, DAY)  # counted once within the day
    assert tx.promote_tier(shop, 0, 30.0) and not tx.promote_tier(shop, 0, 30.0)
    assert tx.set_red(shop, 40.0) and not tx.set_red(shop, 50.0)
    assert tx.business_standing(shop) == (1, 40.0)
    assert tx.set_red(shop, None) and not tx.set_red(shop, None)
    tx.record_marketing(shop, user, 1, 60.0)
    conn.set_trace_callback(None)
    plain = [s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]
    assert len(plain) >= 17, plain
    for sql in plain:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SCAN" not in plan, (sql, plan)
    conn.close()
