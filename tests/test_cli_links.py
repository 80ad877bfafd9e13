"""`parley chat-link` as a business and a person use it (subprocesses against a live server):
the link with its QR code in the terminal and in files, opening it and starting the chat, the
counters, number links, and refusals as one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.test_client_cli import failed, lines, ok, parley
from tests.test_landing_pages import decode_qr

ALICE = "+14155550123"
SHOP = "+14155550124"
CODES = {ALICE: "111111", SHOP: "333333"}


@pytest.fixture
def cli_server(make_server: ServerFactory) -> LiveServer:
    return make_server(test_numbers=CODES, http_port=0)


def test_chat_link_commands(cli_server: LiveServer, tmp_path: Path) -> None:
    server = cli_server
    alice, shop = tmp_path / "alice", tmp_path / "shop"
    ok(parley(server, alice, "register", ALICE, "--code", CODES[ALICE]))
    ok(parley(server, shop, "register", SHOP, "--code", CODES[SHOP], "--business"))
    assert "no chat links" in ok(parley(server, shop, "chat-link", "list"))

    png, svg = tmp_path / "qr.png", tmp_path / "qr.svg"
    human = ok(
        parley(
            server,
            shop,
            "chat-link",
            "create",
            "--text",
            "Hi, I'd like a quote",
            "--label",
            "flyer",
            "--png",
            str(png),
            "--svg",
            str(svg),
        )
    )
    url = human.splitlines()[0].split()[0]
    assert url.startswith(f"http://localhost:{server.http_port}/c/")
    assert "[flyer]" in human and "opened 0 times, 0 chats started" in human
    assert "█" in human or "▀" in human  # the QR code, drawn in the terminal
    assert decode_qr(png.read_bytes()) == [url]
    assert svg.read_text().lstrip().startswith("<?xml")

    # Alice opens it: who and what; then starts the chat, carrying the code.
    shown = ok(parley(server, alice, "chat-link", "open", url))
    assert "a business whose name is not verified yet" in shown
    assert 'first message: "Hi, I\'d like a quote"' in shown and "--send` starts it" in shown
    (sent,) = lines(ok(parley(server, alice, "chat-link", "open", url, "--send", "--json")))
    assert sent["prefilled_text"] == "Hi, I'd like a quote" and sent["sent"]["message_id"] > 0
    (listed,) = lines(ok(parley(server, shop, "chat-link", "list", "--json")))
    assert (listed["url"], listed["opens"], listed["chats_started"]) == (url, 2, 1)
    window = ok(parley(server, shop, "--json", "business", "window", ALICE))
    assert '"open": true' in window

    # Number links: the business's is on by default; Alice's is off until she turns it on.
    assert "number links on" in ok(parley(server, shop, "chat-link", "settings"))
    assert "number links off" in ok(parley(server, alice, "chat-link", "settings"))
    refused = failed(parley(server, shop, "chat-link", "open", f"https://x.example/p/{ALICE[1:]}"))
    assert "no account takes chats from a number link" in refused
    turned = ok(parley(server, alice, "chat-link", "settings", "--number-links", "on"))
    assert f"number links on: http://localhost:{server.http_port}/p/{ALICE[1:]}" in turned
    assert "a person on Parley" in ok(
        parley(server, shop, "chat-link", "open", f"parley://chat?phone=%2B{ALICE[1:]}&text=hi")
    )

    assert "not a chat link" in failed(parley(server, alice, "chat-link", "open", "a/b"))
    code = url.rsplit("/", 1)[1]
    assert "no chat link" in failed(parley(server, alice, "chat-link", "delete", code))
    assert "deleted" in ok(parley(server, shop, "chat-link", "delete", url))
    assert "deleted" in failed(parley(server, alice, "chat-link", "open", code))
