"""Template messages end to end: a business sends, the recipient's client renders or refuses.

Two real clients (real encryption) on a live server: a business whose name and templates the
operator approved (AdminService), a person it opted in (business-asserted). The forged messages
are sent by the business's own client through its private send path (``_send_content``), which
encrypts any Content under any cleartext metadata: a client patched to cheat. The forgery always
sits in the encrypted content, where no server rule can see it, so these refusals are the
recipient's client's alone and hold with or without the server's sending rules.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from parley.v1 import business_pb2 as bpb
from parley.v1 import content_pb2 as cpb
from parley.v1 import messaging_pb2 as mpb

from client.api import (
    DeliveryUpdate,
    Event,
    ParleyClient,
    ParleyClientError,
    RejectedTemplateMessage,
    RenderedTemplateMessage,
    SyncedMessage,
    TextMessage,
)
from client.errors import NotFound, ParleyError
from client.templates import MAX_PARAMETER_LENGTH
from tests.client_helpers import closing, drain, linked, registered
from tests.conftest import LiveServer, ServerFactory
from tests.test_client_cli import lines, ok, parley
from tests.test_client_messaging import server_bytes

SHOP = "+15550003333"
OTHER_SHOP = "+15550004444"
PERSON = "+15550001111"
CODES = {SHOP: "333333", OTHER_SHOP: "444444", PERSON: "123456"}
TOKEN = "templates-operator-token"
UTILITY = mpb.MESSAGE_CATEGORY_UTILITY
MARKETING = mpb.MESSAGE_CATEGORY_MARKETING
SHIPPED_BODY = "Hello {{1}}, your order {{2}} has shipped."


@pytest.fixture
def biz_server(make_server: ServerFactory) -> LiveServer:
    return make_server(test_numbers=CODES, admin_token=TOKEN)


async def approved_business(
    server: LiveServer, profile: Path, phone: str, name: str
) -> ParleyClient:
    """A business account whose display name the operator approved."""
    shop = await registered(server, profile, phone, business=True)
    await shop.business.update_profile(bpb.BusinessProfileFields(display_name=name))
    await shop.admin(TOKEN).review_name(shop.account_id, True)
    return shop


async def approved_template(
    shop: ParleyClient,
    name: str,
    category: mpb.MessageCategory.ValueType,
    body: str,
    **content: object,
) -> bpb.Template:
    created = await shop.business.create_template(name, "en", category, body, **content)  # type: ignore[arg-type]
    return await shop.admin(TOKEN).review_template(created.template_id, True)


@dataclass
class World:
    shop: ParleyClient
    user: ParleyClient
    shipped: bpb.Template  # UTILITY, two parameters, header/footer/buttons
    offer: bpb.Template  # MARKETING, one parameter


async def world(server: LiveServer, tmp_path: Path) -> World:
    shop = await approved_business(server, tmp_path / "shop", SHOP, "Acme Shoes")
    user = await registered(server, tmp_path / "user", PERSON)
    shipped = await approved_template(
        shop,
        "order_shipped",
        UTILITY,
        SHIPPED_BODY,
        header="Shipping update",
        footer="Acme Shoes",
        buttons=["Track order"],
    )
    offer = await approved_template(shop, "spring_sale", MARKETING, "{{1}}: 20% off all shoes!")
    await shop.record_opt_in(PERSON, "website", "signup form", ["utility", "marketing"])
    return World(shop, user, shipped, offer)


def in_world(
    server: LiveServer, tmp_path: Path, scenario: Callable[[World], Awaitable[None]]
) -> None:
    """Run ``scenario`` in a fresh :func:`world`, closing its clients afterwards."""

    async def body() -> None:
        w = await world(server, tmp_path)
        await closing([w.shop, w.user], lambda: scenario(w))

    asyncio.run(body())


def only(events: list[Event]) -> Event:
    """The one message among ``events`` (delivery updates of our own sends left out)."""
    messages = [e for e in events if not isinstance(e, DeliveryUpdate)]
    assert len(messages) == 1, messages
    return messages[0]


def test_a_utility_template_is_rendered_from_the_approved_text(
    biz_server: LiveServer, tmp_path: Path
) -> None:
    async def rendered(w: World) -> None:
        sent = await w.shop.send_template(PERSON, w.shipped.template_id, ["Ada", "A-1042"])
        assert sent.recipient_account_id == w.user.account_id
        assert w.user.cached_template(w.shipped.template_id) is None  # nothing kept yet
        event = only(await drain(w.user))
        assert isinstance(event, RenderedTemplateMessage)
        assert event.body == "Hello Ada, your order A-1042 has shipped."
        assert event.text == (
            "Shipping update\nHello Ada, your order A-1042 has shipped.\nAcme Shoes\n[Track order]"
        )
        assert (event.category, event.template_name, event.language) == (
            "utility",
            "order_shipped",
            "en",
        )
        assert event.business_name == "Acme Shoes"
        assert event.sender_account_id == w.shop.account_id
        assert event.timestamp_ms == sent.timestamp_ms
        # The approved template is kept: the next message renders without a GetTemplate.
        kept = w.user.cached_template(w.shipped.template_id)
        assert kept is not None and kept.body == SHIPPED_BODY
        assert [m.text for m in w.user.store.messages(w.shop.account_id)] == [event.text]
        # By name and language too; the business's own history holds what it sent.
        await w.shop.send_template(
            w.user.account_id, "order_shipped", ["Bo", "B-7731-X"], language="en"
        )
        second = only(await drain(w.user))
        assert isinstance(second, RenderedTemplateMessage)
        assert second.body == "Hello Bo, your order B-7731-X has shipped."
        assert [m.text for m in w.shop.store.messages(w.user.account_id)] == [
            event.text,
            second.text,
        ]
        # The server stored the template (it reviewed it), never the rendered text nor a
        # parameter value (markers long enough that random ciphertext cannot hold them by chance:
        # "B-7" turned up in about one run in twenty).
        stored = server_bytes(biz_server)
        assert SHIPPED_BODY.encode() in stored  # we are reading the right files
        for secret in ("A-1042", "B-7731-X", "Hello Ada", "Hello Bo"):
            assert secret.encode() not in stored

    in_world(biz_server, tmp_path, rendered)


def test_a_business_free_form_reply_is_a_service_message(
    biz_server: LiveServer, tmp_path: Path
) -> None:
    async def talk(w: World) -> None:
        await w.user.send(SHOP, "where is my order?")
        question = only(await drain(w.shop))
        assert isinstance(question, TextMessage) and question.category == ""
        await w.shop.send(w.user.account_id, "It left the warehouse today.")
        answer = only(await drain(w.user))
        assert isinstance(answer, TextMessage)
        assert (answer.text, answer.category) == ("It left the warehouse today.", "service")

    in_world(biz_server, tmp_path, talk)


def test_the_sender_checks_its_template_and_parameters_before_sending(
    biz_server: LiveServer, tmp_path: Path
) -> None:
    async def attempts(w: World) -> None:
        with pytest.raises(ParleyClientError, match=r"takes 2 parameter\(s\).*1 given"):
            await w.shop.send_template(PERSON, w.shipped.template_id, ["Ada"])
        with pytest.raises(ParleyClientError, match="line break"):
            await w.shop.send_template(PERSON, w.shipped.template_id, ["Ada", "a\nb"])
        with pytest.raises(ParleyClientError, match=f"at most {MAX_PARAMETER_LENGTH}"):
            await w.shop.send_template(
                PERSON, w.shipped.template_id, ["Ada", "x" * (MAX_PARAMETER_LENGTH + 1)]
            )
        pending = await w.shop.business.create_template("not_yet", "en", UTILITY, "Soon {{1}}")
        with pytest.raises(ParleyClientError, match="not approved"):
            await w.shop.send_template(PERSON, pending.template_id, ["x"])
        await w.shop.business.pause_template(w.offer.template_id)
        with pytest.raises(ParleyClientError, match="is paused; unpause it"):
            await w.shop.send_template(PERSON, "spring_sale", ["Hi"], language="en")
        with pytest.raises(NotFound):
            await w.shop.send_template(PERSON, str(uuid.uuid4()), [])
        # A person cannot send a business's template as its own.
        with pytest.raises(ParleyClientError, match="belongs to another business"):
            await w.user.send_template(SHOP, w.shipped.template_id, ["Ada", "A-1"])
        assert await drain(w.user) == []  # nothing was sent

    in_world(biz_server, tmp_path, attempts)


def forged(template_id: str, parameters: list[str], *, language: str = "en") -> cpb.Content:
    return cpb.Content(
        template=cpb.TemplateMessage(
            template_id=template_id, language=language, parameters=parameters, timestamp_ms=1
        )
    )


def label(template: bpb.Template, category: int | None = None) -> mpb.BusinessMetadata:
    """The cleartext metadata an honest client would set for ``template``."""
    return mpb.BusinessMetadata(
        category=template.category if category is None else category,  # type: ignore[arg-type]
        template_name=template.name,
        template_id=template.template_id,
    )


def test_forged_template_messages_are_refused_by_the_recipients_client(
    biz_server: LiveServer, tmp_path: Path
) -> None:
    async def forgeries(w: World) -> None:
        other = await approved_business(biz_server, tmp_path / "other", OTHER_SHOP, "Bolt Bikes")
        borrowed = await approved_template(other, "ride_ready", UTILITY, "Your bike {{1}} is ready")
        await other.close()
        pending = await w.shop.business.create_template("draft", "en", UTILITY, "Draft {{1}}")
        shipped, offer = w.shipped, w.offer
        cases: list[tuple[str, cpb.Content, mpb.BusinessMetadata]] = [
            # The envelope names the cheap UTILITY template, the content the MARKETING one.
            ("template_mismatch", forged(offer.template_id, ["Spring"]), label(shipped)),
            # Free text under a template category (the envelope names a real template, so a
            # server checking the cleartext has nothing to object to).
            (
                "free_text",
                cpb.Content(data=cpb.DataMessage(text="Buy now!!!", timestamp_ms=2)),
                label(shipped),
            ),
            # Another business's approved template.
            ("other_business", forged(borrowed.template_id, ["X-1"]), label(shipped)),
            # A template the server does not show: never heard of, or still pending.
            ("unknown_template", forged(str(uuid.uuid4()), []), label(shipped)),
            ("unknown_template", forged(pending.template_id, ["x"]), label(shipped)),
            (
                "language_mismatch",
                forged(shipped.template_id, ["Ada", "A-1"], language="de"),
                label(shipped),
            ),
            ("parameter_count", forged(shipped.template_id, ["Ada"]), label(shipped)),
            (
                "parameter_count",
                forged(shipped.template_id, ["Ada", "A-1", "and here is my own text"]),
                label(shipped),
            ),
            (
                "parameter_invalid",
                forged(shipped.template_id, ["Ada", "x" * (MAX_PARAMETER_LENGTH + 1)]),
                label(shipped),
            ),
            (
                "parameter_invalid",
                forged(shipped.template_id, ["Ada", "A-1\n\nBUY NOW at evil.example"]),
                label(shipped),
            ),
        ]
        for expected, content, metadata in cases:
            await w.shop._send_content(w.user.account_id, content, 1, business=metadata)
            event = only(await drain(w.user))
            assert isinstance(event, RejectedTemplateMessage), (expected, event)
            assert event.reason == expected, (event.reason, event.detail)
            assert event.category == "utility"
            assert event.sender_account_id == w.shop.account_id
        # Refused messages were acknowledged (the queue is empty) and are in no history.
        assert await drain(w.user) == []
        assert w.user.store.messages(w.shop.account_id) == []
        # An honest message after all that still renders: the session is intact.
        await w.shop.send_template(PERSON, shipped.template_id, ["Ada", "A-2"])
        assert isinstance(only(await drain(w.user)), RenderedTemplateMessage)

    in_world(biz_server, tmp_path, forgeries)


def test_a_marketing_template_is_never_shown_as_utility(
    biz_server: LiveServer, tmp_path: Path
) -> None:
    """The envelope names the MARKETING template but claims the UTILITY category. Today's server
    relays the claim and the recipient's client refuses it (category_mismatch). With the sending
    rules of branch `rules` the server takes the category from the template named in the
    envelope: it then refuses the send or stores MARKETING, and the message is shown as the
    marketing message it is. Either way it is never shown as utility."""

    async def claim(w: World) -> None:
        content = forged(w.offer.template_id, ["Spring"])
        try:
            await w.shop._send_content(
                w.user.account_id, content, 1, business=label(w.offer, UTILITY)
            )
        except ParleyError:
            return  # the server's rules refused the claim (branch `rules`)
        event = only(await drain(w.user))
        if isinstance(event, RejectedTemplateMessage):
            assert event.reason == "category_mismatch"
            assert "says category utility but template 'spring_sale' is marketing" in (event.detail)
        else:
            assert isinstance(event, RenderedTemplateMessage)
            assert event.category == "marketing"

    in_world(biz_server, tmp_path, claim)


def test_an_unknown_template_is_fetched_again_once_approved(
    biz_server: LiveServer, tmp_path: Path
) -> None:
    """No negative caching: a refusal for an unknown template does not stick to its id."""

    async def later(w: World) -> None:
        late = await w.shop.business.create_template("late", "en", UTILITY, "Late {{1}}")
        content = forged(late.template_id, ["one"])
        # The envelope names an approved template (the server's rules refuse a pending one);
        # the encrypted content names the pending template, which the recipient cannot fetch.
        await w.shop._send_content(w.user.account_id, content, 1, business=label(w.shipped))
        refused = only(await drain(w.user))
        assert isinstance(refused, RejectedTemplateMessage)
        assert refused.reason == "unknown_template"
        assert w.user.cached_template(late.template_id) is None
        await w.shop.admin(TOKEN).review_template(late.template_id, True)
        await w.shop.send_template(PERSON, late.template_id, ["two"])
        shown = only(await drain(w.user))
        assert isinstance(shown, RenderedTemplateMessage) and shown.body == "Late two"

    in_world(biz_server, tmp_path, later)


def test_send_template_and_listen_with_the_cli(biz_server: LiveServer, tmp_path: Path) -> None:
    server = biz_server
    shop, user = tmp_path / "shop", tmp_path / "user"
    (me,) = lines(
        ok(parley(server, shop, "register", SHOP, "--code", CODES[SHOP], "--business", "--json"))
    )
    ok(parley(server, user, "register", PERSON, "--code", CODES[PERSON]))
    ok(parley(server, shop, "business", "profile", "update", "--name", "Acme Shoes"))
    ok(parley(server, shop, "admin", "approve-name", me["account_id"], "--admin-token", TOKEN))
    (template,) = lines(
        ok(
            parley(
                server,
                shop,
                "business",
                "templates",
                "create",
                "order_shipped",
                "--category",
                "utility",
                "--body",
                SHIPPED_BODY,
                "--json",
            )
        )
    )
    ok(
        parley(
            server,
            shop,
            "admin",
            "approve-template",
            template["template_id"],
            "--admin-token",
            TOKEN,
        )
    )
    ok(
        parley(
            server,
            shop,
            "business",
            "record-opt-in",
            PERSON,
            "--source",
            "website",
            "--evidence",
            "form",
            "--category",
            "utility",
        )
    )
    said = ok(
        parley(
            server,
            shop,
            "business",
            "send-template",
            PERSON,
            "order_shipped",
            "--language",
            "en",
            "--param",
            "Ada",
            "--param",
            "A-1042",
        )
    )
    assert said.startswith(f"sent template order_shipped to {PERSON}")
    (sent,) = lines(
        ok(
            parley(
                server,
                shop,
                "business",
                "send-template",
                PERSON,
                template["template_id"],
                "--param",
                "Bo",
                "--param",
                "B-7",
                "--json",
            )
        )
    )
    assert sent["message_id"] > 0
    shown = ok(parley(server, user, "listen", "--once"))
    assert "Acme Shoes ✓ (" in shown and "utility template order_shipped [en]:" in shown
    assert "\n  Hello Ada, your order A-1042 has shipped.\n" in shown
    assert "\n  Hello Bo, your order B-7 has shipped.\n" in shown
    # A bad parameter is refused before anything is sent, with what to fix.
    refused = parley(
        server,
        shop,
        "business",
        "send-template",
        PERSON,
        template["template_id"],
        "--param",
        "Ada",
    )
    assert refused.returncode == 1 and "takes 2 parameter(s)" in refused.stderr


def test_listen_shows_a_refused_template_message(biz_server: LiveServer, tmp_path: Path) -> None:
    async def forge(w: World) -> None:
        content = cpb.Content(data=cpb.DataMessage(text="Buy now!!!", timestamp_ms=2))
        await w.shop._send_content(w.user.account_id, content, 2, business=label(w.shipped))

    in_world(biz_server, tmp_path, forge)
    shown = ok(parley(biz_server, tmp_path / "user", "listen", "--once"))
    assert "REFUSED a business message from" in shown
    assert "claiming category utility, not shown: free_text:" in shown
    assert "Buy now" not in shown
    # Acknowledged when refused: nothing comes again.
    assert ok(parley(biz_server, tmp_path / "user", "listen", "--once")) == ""


def test_the_businesss_other_devices_get_the_rendered_sync_copy(
    biz_server: LiveServer, tmp_path: Path
) -> None:
    async def synced(w: World) -> None:
        laptop = await linked(biz_server, w.shop, tmp_path / "shop-laptop")
        try:
            sent = await w.shop.send_template(PERSON, w.shipped.template_id, ["Ada", "A-9"])
            assert sent.synced_device_ids == (laptop.device_id,)
            copy = only(await drain(laptop))
            assert isinstance(copy, SyncedMessage)
            assert copy.destination_account_id == w.user.account_id
            assert copy.timestamp_ms == sent.timestamp_ms
            assert copy.text.startswith("Shipping update\nHello Ada, your order A-9 has shipped.")
            assert [m.text for m in laptop.store.messages(w.user.account_id)] == [copy.text]
            assert isinstance(only(await drain(w.user)), RenderedTemplateMessage)
        finally:
            await laptop.close()

    in_world(biz_server, tmp_path, synced)
