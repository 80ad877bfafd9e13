"""`parley business window` and `parley business status` against a live server, in human and
JSON output, and their refusal for a person."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LiveServer, ServerFactory
from tests.test_client_cli import failed, lines, ok, parley

SHOP = "+15550003333"
PERSON = "+15550001111"
CODES = {SHOP: "333333", PERSON: "123456"}


def test_window_and_status_with_the_cli(make_server: ServerFactory, tmp_path: Path) -> None:
    server: LiveServer = make_server(test_numbers=CODES)
    shop, person = tmp_path / "shop", tmp_path / "person"
    ok(parley(server, shop, "register", SHOP, "--code", CODES[SHOP], "--business"))
    ok(parley(server, person, "register", PERSON, "--code", CODES[PERSON]))

    never = ok(parley(server, shop, "business", "window", PERSON))
    assert never.startswith(f"{PERSON}: no window — they never wrote to you")
    ok(parley(server, person, "send", SHOP, "is my order on its way?"))
    opened = ok(parley(server, shop, "business", "window", PERSON))
    assert opened.startswith(f"{PERSON}: open until ") and "free-form replies" in opened
    (window,) = lines(ok(parley(server, shop, "business", "window", PERSON, "--json")))
    assert window["open"] is True
    assert window["closes_at"] > window["opened_at"]
    server.clock.advance(86_400)
    closed = ok(parley(server, shop, "business", "window", PERSON))
    assert f"{PERSON}: closed at " in closed and "only approved templates" in closed

    status = ok(parley(server, shop, "business", "status"))
    assert status.startswith("tier 1: 250 unique users per 24 h; 0 started in the last 24 h")
    assert "quality GREEN: 0 blocks and 0 opt-outs" in status
    assert "promotion: rises to 2000 once you start conversations with 125 unique users" in status
    (data,) = lines(ok(parley(server, shop, "business", "status", "--json")))
    assert (data["tier"], data["limit"], data["quality"]) == (1, 250, "QUALITY_RATING_GREEN")

    refusal = failed(parley(server, person, "business", "status"))
    assert "only business accounts can have a sending status" in refusal


def test_window_text_names_the_entry_window_that_outlives_the_service_window() -> None:
    """Opened from a chat link: after 24 h the service window is closed but the 72-hour entry
    window still allows free-form replies; "closed" is said only once both are."""
    from google.protobuf.timestamp_pb2 import Timestamp
    from parley.v1 import business_pb2 as bpb
    from parley.v1 import chat_links_pb2 as lpb

    from client.cli_sending import _window_text

    def ts(seconds: int) -> Timestamp:
        return Timestamp(seconds=seconds)

    start = 1_800_000_000
    service_closes, entry_closes = ts(start + 86_400), ts(start + 3 * 86_400)
    entry_open = lpb.EntryWindow(open=True, opened_at=ts(start), closes_at=entry_closes)
    only_entry = bpb.GetConversationWindowResponse(
        open=True, opened_at=ts(start), closes_at=service_closes, entry=entry_open,
        open_window=lpb.WINDOW_KIND_ENTRY,
    )  # fmt: skip
    text = _window_text("+1", only_entry)
    assert "the 72-hour entry window of a chat link" in text and "allowed" in text
    closed = bpb.GetConversationWindowResponse(
        open=False, opened_at=ts(start), closes_at=service_closes,
        entry=lpb.EntryWindow(open=False, opened_at=ts(start), closes_at=entry_closes),
    )  # fmt: skip
    assert _window_text("+1", closed).startswith("+1: closed at ")
    assert _window_text("+1", closed) != _window_text(
        "+1", bpb.GetConversationWindowResponse(open=False, closes_at=service_closes)
    ), "the later (entry) closing time is the one shown"
