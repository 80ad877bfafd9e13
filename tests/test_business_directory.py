"""Business profiles, templates and the operator's reviews, over a live server and SQLite.

The whole review flow, every refusal with its status and message, and the rules that must hold
with concurrent writers: reviews are conditional (a second review is FAILED_PRECONDITION), a
name change goes back to review while the approved name stays shown, and an approved
template's category can never change.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import psycopg
import pytest
from parley.v1 import account_pb2 as apb
from parley.v1 import admin_pb2 as adm
from parley.v1 import admin_pb2_grpc, business_pb2_grpc
from parley.v1 import business_pb2 as bpb
from parley.v1 import messaging_pb2 as mpb

from server.domain.clock import ManualClock
from server.domain.directory_model import PauseReason
from server.domain.templates import TemplateCatalog
from server.storage.database import Database
from tests.conftest import Device, LiveServer, ServerFactory, register

ADMIN = "operator-secret-token"
OPERATOR = (("authorization", f"Bearer {ADMIN}"),)
BUSINESS_NUMBER = "+15550003333"
PERSON_NUMBER = "+15550004444"
OTHER_BUSINESS = "+15550005555"
NUMBERS = {BUSINESS_NUMBER: "333333", PERSON_NUMBER: "444444", OTHER_BUSINESS: "555555"}


def _fails(call: Callable[[], Any], code: grpc.StatusCode, *needles: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert isinstance(err, grpc.Call)
    assert err.code() == code, (err.code(), err.details())
    details = err.details() or ""
    for needle in needles:
        assert needle in details, details
    return details


class World:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.business = register(server, BUSINESS_NUMBER, apb.ACCOUNT_KIND_BUSINESS)
        self.other = register(server, OTHER_BUSINESS, apb.ACCOUNT_KIND_BUSINESS)
        self.person = register(server, PERSON_NUMBER)
        self.biz = business_pb2_grpc.BusinessServiceStub(server.channel())
        self.admin = admin_pb2_grpc.AdminServiceStub(server.channel())

    def update(self, device: Device, **fields: Any) -> bpb.BusinessProfile:
        request = bpb.UpdateBusinessProfileRequest(fields=bpb.BusinessProfileFields(**fields))
        return self.biz.UpdateBusinessProfile(request, metadata=device.metadata).profile

    def profile(self, reader: Device, of: Device) -> bpb.BusinessProfile:
        return self.biz.GetBusinessProfile(
            bpb.GetBusinessProfileRequest(account_id=of.account_id), metadata=reader.metadata
        ).profile

    def review_name(
        self, account: Device, decision: int, reason: str = "", name: str = ""
    ) -> bpb.BusinessProfile:
        return self.admin.ReviewBusinessName(
            adm.ReviewBusinessNameRequest(
                account_id=account.account_id,
                decision=decision,  # type: ignore[arg-type]
                reason=reason,
                display_name=name,
            ),
            metadata=OPERATOR,
        ).profile

    def create(
        self,
        device: Device | None = None,
        name: str = "order_shipped",
        language: str = "en",
        category: int = mpb.MESSAGE_CATEGORY_UTILITY,
        body: str = "Your order {{1}} ships on {{2}}.",
        **content: Any,
    ) -> bpb.Template:
        return self.biz.CreateTemplate(
            bpb.CreateTemplateRequest(
                name=name,
                language=language,
                category=category,  # type: ignore[arg-type]
                content=bpb.TemplateContent(body=body, **content),
            ),
            metadata=(device or self.business).metadata,
        ).template

    def review_template(self, template_id: str, decision: int, reason: str = "") -> bpb.Template:
        return self.admin.ReviewTemplate(
            adm.ReviewTemplateRequest(
                template_id=template_id,
                decision=decision,  # type: ignore[arg-type]
                reason=reason,
            ),
            metadata=OPERATOR,
        ).template

    def get(self, reader: Device, **key: str) -> bpb.Template:
        return self.biz.GetTemplate(
            bpb.GetTemplateRequest(**key), metadata=reader.metadata
        ).template


@pytest.fixture
def w(make_server: ServerFactory) -> World:
    return World(make_server(test_numbers=NUMBERS, admin_token=ADMIN))


APPROVE = adm.REVIEW_DECISION_APPROVE
REJECT = adm.REVIEW_DECISION_REJECT


def test_name_review_flow(w: World) -> None:
    mine = w.update(
        w.business,
        display_name="Acme Shoes",
        about="Shoes since 1990",
        description="Line one\nline two",
        address="1 Main St",
        email="help@acme.example",
        websites=["https://acme.example", "http://shop.acme.example/x"],
        vertical=bpb.BUSINESS_VERTICAL_RETAIL,
    )
    assert not mine.name_verified
    assert mine.name_review.status == bpb.REVIEW_STATUS_PENDING
    seen = w.profile(w.person, w.business)
    assert seen.fields.display_name == "Acme Shoes" and not seen.name_verified
    assert not seen.HasField("name_review")  # the review is the business's and operator's
    assert list(seen.fields.websites) == ["https://acme.example", "http://shop.acme.example/x"]

    pending = w.admin.ListPendingReviews(adm.ListPendingReviewsRequest(), metadata=OPERATOR)
    assert [p.account_id for p in pending.names] == [w.business.account_id]
    approved = w.review_name(w.business, APPROVE)
    assert approved.name_verified and approved.name_review.status == bpb.REVIEW_STATUS_APPROVED
    assert w.profile(w.person, w.business).name_verified

    # A change goes back to review; the approved name stays the one shown as verified.
    changed = w.update(w.business, display_name="Acme Shoes & Boots", about="new")
    assert changed.name_review.status == bpb.REVIEW_STATUS_PENDING
    assert changed.name_review.display_name == "Acme Shoes & Boots"
    shown = w.profile(w.person, w.business)
    assert (shown.fields.display_name, shown.name_verified) == ("Acme Shoes", True)
    assert shown.fields.about == "new"

    rejected = w.review_name(w.business, REJECT, "Boots are not sold here: show the name you use")
    assert rejected.name_review.status == bpb.REVIEW_STATUS_REJECTED
    assert rejected.name_review.reason.startswith("Boots are not sold")
    assert w.profile(w.person, w.business).fields.display_name == "Acme Shoes"
    # Going back to the approved name needs no new review.
    back = w.update(w.business, display_name="Acme Shoes")
    assert back.name_review.status == bpb.REVIEW_STATUS_APPROVED and back.name_verified
    assert not w.admin.ListPendingReviews(adm.ListPendingReviewsRequest(), metadata=OPERATOR).names


def test_reviewing_a_name_twice_or_a_changed_name_is_refused(w: World) -> None:
    w.update(w.business, display_name="Acme")
    _fails(
        lambda: w.review_name(w.business, APPROVE, name="Something else"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "pending display name",
        "'Acme'",
    )
    w.review_name(w.business, APPROVE, name="Acme")
    _fails(
        lambda: w.review_name(w.business, REJECT, "late"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "already reviewed (APPROVED)",
    )
    _fails(
        lambda: w.review_name(w.other, APPROVE),
        grpc.StatusCode.NOT_FOUND,
        "has no profile to review",
    )
    _fails(lambda: w.review_name(w.business, REJECT), grpc.StatusCode.INVALID_ARGUMENT, "reason")


def test_concurrent_reviews_apply_once(w: World) -> None:
    """Many operators approve/reject the same name and template at once: exactly one review
    applies (a conditional UPDATE), the others are FAILED_PRECONDITION."""
    w.update(w.business, display_name="Acme")
    template = w.create()

    def attempt(i: int) -> grpc.StatusCode:
        try:
            if i % 2:
                w.review_name(w.business, APPROVE if i % 4 == 1 else REJECT, "no")
            else:
                w.review_template(template.template_id, APPROVE if i % 4 == 0 else REJECT, "no")
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(16)))
    names = [c for i, c in enumerate(codes) if i % 2]
    templates = [c for i, c in enumerate(codes) if not i % 2]
    for results in (names, templates):
        assert results.count(grpc.StatusCode.OK) == 1, results
        assert set(results) == {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"display_name": ""}, "display_name is required"),
        ({"display_name": " Acme"}, "must not start or end with white space"),
        ({"display_name": "A" * 65}, "display_name is 65 characters long; at most 64"),
        ({"display_name": "Ac\u202eme"}, "display_name contains the control or invisible"),
        ({"display_name": "Acme", "about": "x" * 140}, "about is 140 characters long; at most 139"),
        ({"display_name": "Acme", "about": "a\nb"}, "about contains the control"),
        ({"display_name": "Acme", "description": "d" * 513}, "at most 512"),
        ({"display_name": "Acme", "description": "a\x00"}, "U+0000"),
        ({"display_name": "Acme", "address": "x" * 257}, "address is 257"),
        ({"display_name": "Acme", "email": "not-an-email"}, "not an e-mail address"),
        ({"display_name": "Acme", "email": "a@b"}, "not an e-mail address"),
        ({"display_name": "Acme", "websites": ["ftp://x.example"]}, "websites[0]"),
        ({"display_name": "Acme", "websites": ["https://"]}, "with a host"),
        (
            {"display_name": "Acme", "websites": ["https://a.example", "https://b", "https://c"]},
            "3 websites given; at most 2",
        ),
        ({"display_name": "Acme", "vertical": 99}, "vertical 99 is not a known BusinessVertical"),
    ],
)
def test_profile_fields_are_validated(w: World, fields: dict[str, Any], needle: str) -> None:
    _fails(lambda: w.update(w.business, **fields), grpc.StatusCode.INVALID_ARGUMENT, needle)


def test_profile_refusals(w: World) -> None:
    _fails(
        lambda: w.update(w.person, display_name="Me"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "only business accounts can have a business profile",
        "--business",
    )
    _fails(lambda: w.profile(w.person, w.other), grpc.StatusCode.NOT_FOUND, "has no profile")
    _fails(
        lambda: w.biz.GetBusinessProfile(
            bpb.GetBusinessProfileRequest(account_id="nope"), metadata=w.person.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "is not a UUID",
    )


def test_template_review_flow(w: World) -> None:
    created = w.create(header="Shipping", footer="Reply STOP to opt out", buttons=["Track", "Help"])
    assert created.status == bpb.REVIEW_STATUS_PENDING and created.parameter_count == 2
    assert created.category == mpb.MESSAGE_CATEGORY_UTILITY
    # Before approval only its business sees it.
    _fails(
        lambda: w.get(w.person, template_id=created.template_id),
        grpc.StatusCode.NOT_FOUND,
        "not approved, and not yours",
    )
    _fails(
        lambda: w.get(
            w.other, business_account_id=w.business.account_id, name="order_shipped", language="en"
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert w.get(w.business, template_id=created.template_id).status == bpb.REVIEW_STATUS_PENDING
    pending = w.admin.ListPendingReviews(adm.ListPendingReviewsRequest(), metadata=OPERATOR)
    assert [t.template_id for t in pending.templates] == [created.template_id]

    approved = w.review_template(created.template_id, APPROVE)
    assert approved.status == bpb.REVIEW_STATUS_APPROVED and approved.HasField("reviewed_at")
    by_key = w.get(
        w.person, business_account_id=w.business.account_id, name="order_shipped", language="en"
    )
    assert by_key.template_id == created.template_id
    assert list(by_key.content.buttons) == ["Track", "Help"]
    assert by_key.content.body == "Your order {{1}} ships on {{2}}."

    _fails(
        lambda: w.review_template(created.template_id, REJECT, "changed my mind"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "already reviewed (APPROVED)",
    )
    # A new wording is a new template: the same name and language cannot be created again.
    _fails(
        lambda: w.create(category=mpb.MESSAGE_CATEGORY_MARKETING),
        grpc.StatusCode.ALREADY_EXISTS,
        "order_shipped_v2",
    )
    assert w.get(w.person, template_id=created.template_id).category == (
        mpb.MESSAGE_CATEGORY_UTILITY
    )
    w.server.clock.advance(1)  # listed oldest first
    other_language = w.create(language="de", body="Ihre Bestellung {{1}}")
    rejected = w.review_template(other_language.template_id, REJECT, "say when it ships")
    assert (rejected.status, rejected.reason) == (bpb.REVIEW_STATUS_REJECTED, "say when it ships")
    _fails(
        lambda: w.get(w.person, template_id=other_language.template_id), grpc.StatusCode.NOT_FOUND
    )
    listed = w.biz.ListTemplates(bpb.ListTemplatesRequest(), metadata=w.business.metadata)
    assert [t.language for t in listed.templates] == ["en", "de"]
    assert not w.biz.ListTemplates(bpb.ListTemplatesRequest(), metadata=w.other.metadata).templates


def test_pause_and_unpause(w: World) -> None:
    template = w.create()
    _fails(
        lambda: w.biz.PauseTemplate(
            bpb.PauseTemplateRequest(template_id=template.template_id), metadata=w.business.metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is PENDING; only an APPROVED template",
    )
    w.review_template(template.template_id, APPROVE)
    request = bpb.PauseTemplateRequest(template_id=template.template_id)
    paused = w.biz.PauseTemplate(request, metadata=w.business.metadata).template
    assert paused.paused and paused.pause_reason == "business"
    assert w.get(w.person, template_id=template.template_id).paused
    _fails(
        lambda: w.biz.PauseTemplate(request, metadata=w.other.metadata),
        grpc.StatusCode.NOT_FOUND,
    )
    _fails(
        lambda: w.biz.PauseTemplate(request, metadata=w.person.metadata),
        grpc.StatusCode.FAILED_PRECONDITION,
        "only business accounts",
    )
    unpause = bpb.UnpauseTemplateRequest(template_id=template.template_id)
    assert not w.biz.UnpauseTemplate(unpause, metadata=w.business.metadata).template.paused
    # Asking for the state a template is in already is not an error (a retry is safe).
    assert not w.biz.UnpauseTemplate(unpause, metadata=w.business.metadata).template.paused


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": ""}, "name is required"),
        ({"name": "Order-Shipped"}, "only lowercase letters a-z, digits and '_'"),
        ({"name": "x" * 513}, "at most 512"),
        ({"language": "english"}, "not a language tag"),
        ({"category": mpb.MESSAGE_CATEGORY_SERVICE}, "not a template category"),
        ({"category": mpb.MESSAGE_CATEGORY_UNSPECIFIED}, "not a template category"),
        ({"body": ""}, "content.body is required"),
        ({"body": "x" * 1025}, "content.body is 1025 characters long; at most 1024"),
        ({"body": "Hi {{2}}"}, "missing {{1}}"),
        ({"body": "Hi {{1}} and {{3}}"}, "missing {{2}}"),
        ({"body": "Hi {{ 1 }}"}, "placeholder '{{ 1 }}'"),
        ({"body": "Hi {{0}}"}, "a number from 1"),
        ({"body": "Hi {{name}}"}, "placeholder"),
        ({"body": "Hi {{1}"}, "unbalanced"),
        ({"body": "Hi\x07"}, "U+0007"),
        ({"header": "h" * 61}, "content.header is 61 characters long; at most 60"),
        ({"header": "Hi {{1}}"}, "content.header may not contain parameters"),
        ({"footer": "f" * 61}, "content.footer is 61"),
        ({"buttons": ["b"] * 11}, "11 buttons given; at most 10"),
        ({"buttons": ["b" * 26]}, "content.buttons[0] is 26 characters long; at most 25"),
        ({"buttons": [" "]}, "content.buttons[0] is empty"),
    ],
)
def test_bad_templates_are_refused(w: World, kwargs: dict[str, Any], needle: str) -> None:
    _fails(lambda: w.create(**kwargs), grpc.StatusCode.INVALID_ARGUMENT, needle)


def test_template_refusals(w: World) -> None:
    _fails(
        lambda: w.create(w.person),
        grpc.StatusCode.FAILED_PRECONDITION,
        "only business accounts can create templates",
    )
    _fails(
        lambda: w.get(w.person),
        grpc.StatusCode.INVALID_ARGUMENT,
        "template_id, or business_account_id with name and language",
    )
    missing = "3f2c1a9e-8b4d-4c1e-9f7a-2b6d5e4c3a10"
    _fails(lambda: w.get(w.person, template_id=missing), grpc.StatusCode.NOT_FOUND)
    _fails(
        lambda: w.review_template(missing, APPROVE),
        grpc.StatusCode.NOT_FOUND,
        "ListPendingReviews",
    )
    template = w.create()
    _fails(
        lambda: w.review_template(template.template_id, REJECT, "  "),
        grpc.StatusCode.INVALID_ARGUMENT,
        "a rejection needs a reason",
    )
    _fails(
        lambda: w.review_template(template.template_id, 0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "decision is required",
    )


def test_admin_token_is_required_and_separate(w: World) -> None:
    listing = adm.ListPendingReviewsRequest()
    _fails(
        lambda: w.admin.ListPendingReviews(listing),
        grpc.StatusCode.UNAUTHENTICATED,
        "Bearer <admin token>",
    )
    _fails(
        lambda: w.admin.ListPendingReviews(listing, metadata=(("authorization", "Bearer nope"),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "the admin token is wrong",
    )
    _fails(
        lambda: w.admin.ListPendingReviews(listing, metadata=w.business.metadata),
        grpc.StatusCode.UNAUTHENTICATED,
        "a device's auth token is not accepted here",
    )
    # ... and the operator token is no device's.
    _fails(
        lambda: w.biz.ListTemplates(bpb.ListTemplatesRequest(), metadata=OPERATOR),
        grpc.StatusCode.UNAUTHENTICATED,
        "not valid",
    )


def test_pending_reviews_are_paged_oldest_first(w: World) -> None:
    first = w.create(name="first")
    w.server.clock.advance(1)
    w.create(name="second")
    page = w.admin.ListPendingReviews(adm.ListPendingReviewsRequest(page_size=1), metadata=OPERATOR)
    assert [t.template_id for t in page.templates] == [first.template_id]
    _fails(
        lambda: w.admin.ListPendingReviews(
            adm.ListPendingReviewsRequest(page_size=201), metadata=OPERATOR
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size 201 is too large; at most 200",
    )


def test_no_admin_token_configured_disables_admin_rpcs(make_server: ServerFactory) -> None:
    server = make_server()
    admin = admin_pb2_grpc.AdminServiceStub(server.channel())
    request = adm.ListPendingReviewsRequest()
    for metadata in ((), OPERATOR):
        with pytest.raises(grpc.RpcError) as info:
            admin.ListPendingReviews(request, metadata=metadata)
        assert isinstance(info.value, grpc.Call)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "the operator must set --admin-token" in (info.value.details() or "")


def test_approved_template_is_frozen_in_storage(w: World) -> None:
    """Whatever code asks, the database refuses to recategorise or reword an approved template,
    or to review a reviewed one again."""
    template = w.create()
    w.review_template(template.template_id, APPROVE)
    for change in (
        "category = 1",
        "body = 'Buy now'",
        "name = 'other'",
        "status = 3",
    ):
        with pytest.raises(
            (sqlite3.IntegrityError, psycopg.IntegrityError), match=r"approved template|keeps its"
        ):
            w.server.sql(
                f"UPDATE templates SET {change} WHERE template_id = ?", (template.template_id,)
            )
    assert w.get(w.person, template_id=template.template_id).category == (
        mpb.MESSAGE_CATEGORY_UTILITY
    )


def test_pause_all_for_quality(tmp_path: Any) -> None:
    """The quality rule's hook pauses every approved template of a business (and only those);
    lifting it leaves the business's own pauses alone."""

    async def run() -> None:
        db = Database(tmp_path / "q.db")
        try:
            await _quality_scenario(db)
        finally:
            db.close()

    asyncio.run(run())


async def _quality_scenario(db: Database) -> None:
    from server.domain.auth import Principal, hash_token
    from server.domain.directory_model import ReviewStatus, TemplateContent
    from server.domain.model import AccountKind, AccountRow, DeviceRow
    from server.domain.operator import Operator

    clock = ManualClock()
    catalog = TemplateCatalog(db, clock)
    owners = []
    for i, account_id in enumerate(
        ("00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002")
    ):
        token = hash_token(f"t{i}")

        def setup(tx: Any, account_id: str = account_id, token: bytes = token, i: int = i) -> None:
            tx.insert_account(AccountRow(account_id, f"+1555000900{i}", AccountKind.BUSINESS, 0))
            tx.insert_device(DeviceRow(account_id, 1, "phone", 0, 0), token, 1)

        await db.write(setup)
        owners.append(Principal(account_id, 1, token))
    body = TemplateContent("", "Hello {{1}}", "", ())
    made = [
        await catalog.create(owners[0], name, "en", mpb.MESSAGE_CATEGORY_UTILITY, body)
        for name in ("a", "b", "c", "pending")
    ]
    other = await catalog.create(owners[1], "a", "en", mpb.MESSAGE_CATEGORY_UTILITY, body)
    for t in (*made[:3], other):
        await catalog.review(Operator(), t.template_id, 1, "")
    await catalog.pause(owners[0], made[2].template_id)

    assert await catalog.pause_all_for_quality(owners[0].account_id) == 2
    rows = await db.read(lambda tx: [tx.get_template(t.template_id) for t in (*made, other)])
    assert [r.pause_reason for r in rows if r] == [
        PauseReason.QUALITY,
        PauseReason.QUALITY,
        PauseReason.BUSINESS,
        PauseReason.NONE,  # still pending: nothing to pause
        PauseReason.NONE,  # another business
    ]
    assert rows[3] is not None and rows[3].status == ReviewStatus.PENDING
    with pytest.raises(Exception, match="quality rating is low"):
        await catalog.unpause(owners[0], made[0].template_id)
    assert await catalog.pause_all_for_quality(owners[0].account_id) == 0  # idempotent
    assert await catalog.lift_quality_pause(owners[0].account_id) == 2
    rows = await db.read(lambda tx: [tx.get_template(t.template_id) for t in made[:3]])
    assert [r.paused for r in rows if r] == [False, False, True]
