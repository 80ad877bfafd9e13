"""Click-to-chat, end to end: links, counters, number links, the 72-hour entry window.

`test_link_starts_a_chat_with_an_entry_window_and_no_table_knows_who_opened_it` is issue 10's
"Done when" line: a business makes a link, a user opens it and starts the chat with the
prefilled text (two real clients), the entry window is recorded and visible to the business,
the counters moved, and a scan of every table of the server's database shows that opening the
link wrote no row naming the user and that no row ties the user to the link.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from parley.v1 import account_pb2 as apb
from parley.v1 import business_pb2 as bpb
from parley.v1 import business_pb2_grpc, key_pb2_grpc, messaging_pb2_grpc
from parley.v1 import chat_links_pb2 as lpb
from parley.v1 import messaging_pb2 as mpb

from client.api import ParleyClient, TextMessage
from client.chat_link_api import ChatLinkUsageError, parse_link
from client.errors import FailedPrecondition, NotFound
from server.domain.links import ENTRY_WINDOW
from server.domain.links_model import LinkRow
from tests.client_helpers import closing, drain, registered
from tests.conftest import LiveServer, ServerFactory, register
from tests.keys_helper import DeviceKeyMaker
from tests.test_invariants import transaction

SHOP = "+15550003333"
USER = "+15550001111"
FRIEND = "+15550002222"
CODES = {SHOP: "333333", USER: "123456", FRIEND: "222222"}
TOKEN = "links-operator-token"
HOUR = 3600
TEXT = "Hi Acme! I saw your poster and would like to know more about the spring sale."


@pytest.fixture
def links_server(make_server: ServerFactory) -> LiveServer:
    return make_server(test_numbers=CODES, admin_token=TOKEN)


def rows_naming(server: LiveServer, needle: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table that holds `needle` in any column (text, or bytes)."""
    raw = needle.encode()
    found: dict[str, list[tuple[object, ...]]] = {}
    for table, rows in server.all_rows().items():
        for row in rows:
            if any(
                (isinstance(v, str) and needle in v) or (isinstance(v, bytes) and raw in v)
                for v in row
            ):
                found.setdefault(table, []).append(row)
    return found


async def verified_shop(server: LiveServer, tmp_path: Path) -> ParleyClient:
    shop = await registered(server, tmp_path / "shop", SHOP, business=True)
    await shop.business.update_profile(
        bpb.BusinessProfileFields(display_name="Acme Shoes", about="Shoes since 1990")
    )
    await shop.admin(TOKEN).review_name(shop.account_id, True)
    return shop


def test_link_starts_a_chat_with_an_entry_window_and_no_table_knows_who_opened_it(
    links_server: LiveServer, tmp_path: Path
) -> None:
    asyncio.run(_link_story(links_server, tmp_path))


async def _link_story(server: LiveServer, tmp_path: Path) -> None:
    db = server
    shop = await verified_shop(server, tmp_path)
    user = await registered(server, tmp_path / "user", USER)

    async def body() -> None:
        made = await shop.create_chat_link(TEXT, label="spring poster")
        link = made.link
        assert link.url.endswith(f"/c/{link.code}") and len(link.code) == 16
        assert made.qr_png.startswith(b"\x89PNG") and b"<svg" in made.qr_svg

        # Opening the link: what the user sees, and not one row written that names the user.
        before = rows_naming(db, user.account_id)
        opened = await user.open_chat_link(link.url)
        assert (opened.account_id, opened.business) == (shop.account_id, True)
        assert (opened.verified_name, opened.about) == ("Acme Shoes", "Shoes since 1990")
        assert (opened.prefilled_text, opened.code) == (TEXT, link.code)
        assert rows_naming(db, user.account_id) == before
        (counted,) = await shop.chat_links()
        assert (counted.opens, counted.chats_started) == (1, 0)

        # The chat starts with the prefilled text, carrying the code: the entry window opens.
        await user.start_chat(opened)
        started_at = server.clock.now()
        got = [e for e in await drain(shop) if isinstance(e, TextMessage)]
        assert [m.text for m in got] == [TEXT]
        window = await shop.sending.window(user.account_id)
        assert window.open and window.open_window == lpb.WINDOW_KIND_ENTRY
        assert window.entry.open
        assert window.entry.opened_at.seconds == int(started_at)
        assert window.entry.closes_at.seconds == int(started_at + ENTRY_WINDOW)
        # A second message carrying the code is the same chat: counted once.
        await user.send(shop.account_id, "Also: do you ship abroad?", chat_link_code=link.code)
        (counted,) = await shop.chat_links()
        assert (counted.opens, counted.chats_started) == (1, 1)

        # No row ties the user to the link: the code (and the label) live in the link's row
        # only, which names the business alone; the entry window names the pair, not the link.
        for needle in (link.code, "spring poster"):
            assert set(rows_naming(db, needle)) == {"chat_links"}, needle
        for table, rows in rows_naming(db, user.account_id).items():
            for row in rows:
                assert link.code not in repr(row), (table, row)
        (entry,) = rows_naming(db, user.account_id)["entry_windows"]
        assert entry == (shop.account_id, user.account_id, started_at, started_at + ENTRY_WINDOW)

        # The entry window allows free-form replies after the 24-hour window has closed...
        server.clock.advance(30 * HOUR)
        window = await shop.sending.window(user.account_id)
        assert window.open and window.open_window == lpb.WINDOW_KIND_ENTRY
        await shop.send(user.account_id, "Yes, we ship to 40 countries.")
        # ... and until it closes, 72 hours after the chat started.
        server.clock.advance(ENTRY_WINDOW - 30 * HOUR)
        window = await shop.sending.window(user.account_id)
        assert not window.open and not window.entry.open
        assert window.open_window == lpb.WINDOW_KIND_UNSPECIFIED
        with pytest.raises(FailedPrecondition, match="customer-service window"):
            await shop.send(user.account_id, "Still there?")

        # A new chat from the link after the window closed opens a new one and counts again.
        await user.start_chat(await user.open_chat_link(link.code))
        (counted,) = await shop.chat_links()
        assert (counted.opens, counted.chats_started) == (2, 2)

    await closing([shop, user], body)


def test_person_links_number_links_and_their_consent(
    links_server: LiveServer, tmp_path: Path
) -> None:
    asyncio.run(_person_links(links_server, tmp_path))


async def _person_links(server: LiveServer, tmp_path: Path) -> None:
    shop = await verified_shop(server, tmp_path)
    user = await registered(server, tmp_path / "user", USER)
    friend = await registered(server, tmp_path / "friend", FRIEND)

    async def body() -> None:
        # A person's link: no name shown, a chat started counts, no entry window.
        made = await friend.create_chat_link("Hey, it's me")
        opened = await user.open_chat_link(made.link.url)
        assert (opened.business, opened.verified_name, opened.about) == (False, "", "")
        await user.start_chat(opened)
        (counted,) = await friend.chat_links()
        assert (counted.opens, counted.chats_started) == (1, 1)
        assert "entry_windows" not in rows_naming(server, friend.account_id)

        # Number links: on by default for a business, off for a person until they allow it.
        assert (await shop.chat_link_settings()).number_links
        settings = await friend.chat_link_settings()
        assert not settings.number_links and settings.number_link_url.endswith("/p/15550002222")
        with pytest.raises(NotFound, match="number link"):
            await user.open_chat_link("https://chat.example/p/15550002222?text=hi")
        await friend.set_number_links(True)
        opened = await user.open_chat_link("https://chat.example/p/15550002222?text=hi%20there")
        assert (opened.account_id, opened.prefilled_text, opened.code) == (
            friend.account_id,
            "hi there",
            "",
        )
        assert (await friend.chat_link_settings()).number_link_opens == 1
        by_number = await user.open_chat_link("parley://chat?phone=%2B15550003333&text=Hello")
        assert (by_number.verified_name, by_number.prefilled_text) == ("Acme Shoes", "Hello")
        await shop.set_number_links(False)
        with pytest.raises(NotFound, match="number link"):
            await user.open_chat_link("parley://chat?phone=%2B15550003333")

        # Deleting: the owner's link only; then it no longer resolves, nor starts a chat.
        with pytest.raises(NotFound, match="no chat link"):
            await user.delete_chat_link(made.link.code)
        await friend.delete_chat_link(made.link.url)
        assert await friend.chat_links() == []
        with pytest.raises(NotFound, match="deleted"):
            await user.open_chat_link(made.link.code)
        with pytest.raises(FailedPrecondition, match="not a live chat link of the recipient"):
            await user.send(friend.account_id, "hi", chat_link_code=made.link.code)

    await closing([shop, user, friend], body)


def test_refusals_say_what_was_wrong(links_server: LiveServer) -> None:
    server = links_server
    person = register(server, USER)
    shop = register(server, SHOP, apb.ACCOUNT_KIND_BUSINESS)
    maker = DeviceKeyMaker(registration_id=4242)
    key_pb2_grpc.KeyServiceStub(server.channel()).UploadPreKeys(
        maker.first_upload(pre_keys=1, kyber=1), metadata=shop.metadata
    )
    stub = business_pb2_grpc.BusinessServiceStub(server.channel())
    code = stub.CreateChatLink(
        lpb.CreateChatLinkRequest(prefilled_text="hi"), metadata=shop.metadata
    ).link.code
    other = stub.CreateChatLink(lpb.CreateChatLinkRequest(), metadata=person.metadata).link.code
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    cases: list[tuple[Message, grpc.StatusCode, str]] = [
        (lpb.CreateChatLinkRequest(prefilled_text="x" * 141), INVALID, "at most 140"),
        (lpb.CreateChatLinkRequest(label="x" * 65), INVALID, "at most 64"),
        (lpb.CreateChatLinkRequest(prefilled_text="a\x00b"), INVALID, "control characters"),
        (lpb.ResolveChatLinkRequest(), INVALID, "either code"),
        (lpb.ResolveChatLinkRequest(code=code, phone_number=SHOP), INVALID, "not both"),
        (lpb.ResolveChatLinkRequest(code="short"), INVALID, "16 characters"),
        (lpb.ResolveChatLinkRequest(code=code, text="x"), INVALID, "text goes with"),
        (lpb.ResolveChatLinkRequest(phone_number="12"), INVALID, "E.164"),
        (
            lpb.ResolveChatLinkRequest(phone_number=SHOP, text="x" * 141),
            INVALID,
            "text is 141",
        ),
        (lpb.ResolveChatLinkRequest(code="A" * 16), grpc.StatusCode.NOT_FOUND, "no chat link"),
        (lpb.DeleteChatLinkRequest(code=other), grpc.StatusCode.NOT_FOUND, "no chat link"),
        (lpb.DeleteChatLinkRequest(), INVALID, "code is required"),
    ]
    methods: dict[type[Message], Any] = {
        lpb.CreateChatLinkRequest: stub.CreateChatLink,
        lpb.ResolveChatLinkRequest: stub.ResolveChatLink,
        lpb.DeleteChatLinkRequest: stub.DeleteChatLink,
    }
    for request, status, words in cases:
        with pytest.raises(grpc.RpcError) as caught:
            methods[type(request)](request, metadata=shop.metadata)
        assert caught.value.code() == status, (request, caught.value.details())
        assert words in (caught.value.details() or ""), (request, caught.value.details())
    # A send carrying a code: the recipient's live link only, on a stored message to them.
    messaging = messaging_pb2_grpc.MessagingServiceStub(server.channel())
    for link_code, online_only, words in (
        (other, False, "not a live chat link of the recipient"),
        ("bad", False, "16 characters"),
        (code, True, "online-only"),
    ):
        request = mpb.SendMessageRequest(
            request_id=str(uuid.uuid4()),
            recipient_account_id=shop.account_id,
            messages=[
                mpb.OutgoingMessage(
                    device_id=1,
                    registration_id=4242,
                    content_type=mpb.CONTENT_TYPE_WHISPER,
                    content=b"sealed",
                )
            ],
            chat_link_code=link_code,
            online_only=online_only,
        )
        with pytest.raises(grpc.RpcError) as caught:
            messaging.SendMessage(request, metadata=person.metadata)
        assert words in (caught.value.details() or ""), caught.value.details()


def test_parse_link_takes_urls_deep_links_and_codes() -> None:
    assert parse_link("https://x.example/c/ABCDEFGHIJKLMNOP").code == "ABCDEFGHIJKLMNOP"
    assert parse_link("parley://chat?code=ABCDEFGHIJKLMNOP").code == "ABCDEFGHIJKLMNOP"
    assert parse_link("ABCDEFGHIJKLMNOP").code == "ABCDEFGHIJKLMNOP"
    number = parse_link("http://x.example/p/15550003333?text=Hi%21")
    assert (number.phone_number, number.text) == ("+15550003333", "Hi!")
    for bad in ("", "https://x.example/about", "mailto://x", "a/b"):
        with pytest.raises(ChatLinkUsageError):
            parse_link(bad)


# -- the storage guarantees (links_model L2, L3), on the server's database beside its writer ----


def test_entry_window_opens_once_while_open_and_again_after(links_server: LiveServer) -> None:
    """L2: of two writers opening the window of one pair, the second finds it open and does not
    count; once it closed, the next opens it again."""
    shop = register(links_server, SHOP, apb.ACCOUNT_KIND_BUSINESS)
    user = register(links_server, USER)
    pair = (shop.account_id, user.account_id)
    with transaction(links_server, commit=True) as tx:
        assert tx.open_entry_window(*pair, 1000.0, 1000.0 + ENTRY_WINDOW)
    with transaction(links_server, commit=True) as tx:
        assert not tx.open_entry_window(*pair, 2000.0, 2000.0 + ENTRY_WINDOW)
        assert tx.entry_window(*pair) == (*pair, 1000.0, 1000.0 + ENTRY_WINDOW)
        assert tx.open_entry_window(*pair, 1000.0 + ENTRY_WINDOW, 1000.0 + 2 * ENTRY_WINDOW)


def test_link_cap_is_one_conditional_insert(links_server: LiveServer) -> None:
    """L3: the insert counts the owner's links itself; at the cap it inserts nothing."""
    user = register(links_server, USER)
    with transaction(links_server) as tx:
        for i in range(3):
            row = LinkRow(f"{i:016d}", user.account_id, "", "", float(i), 0, 0)
            assert tx.insert_link(row, 3)
        assert not tx.insert_link(LinkRow("x" * 16, user.account_id, "", "", 9.0, 0, 0), 3)
        assert [r.code for r in tx.links_of(user.account_id)] == [f"{i:016d}" for i in range(3)]


def test_codes_and_tokens_never_begin_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat link's code, a linking code and a device token are typed or pasted into command
    lines (`parley chat-link delete CODE`), where a leading "-" reads as an option: a draw that
    begins with one is drawn again."""
    from server.domain import auth, links

    draws = iter(["-leading-dash", "_fine-as-it-is", "-again", "abcdefghijklmnop"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda nbytes: next(draws))
    assert links.new_code() == "_fine-as-it-is"
    assert auth.new_token() == "abcdefghijklmnop"
