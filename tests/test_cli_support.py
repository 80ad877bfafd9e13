"""The live-support commands of `parley` as a user, a business's primary device and two agents
use them (subprocesses against a live server): human output, --json, the end-to-end device
set followed by `parley send`, and the server's refusals as one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.test_client_cli import failed, lines, ok, parley

USER = "+14155550181"
SHOP = "+14155550182"
CODES = {USER: "181818", SHOP: "828282"}


@pytest.fixture
def cli_server(make_server: ServerFactory) -> LiveServer:
    return make_server(test_numbers=CODES)


def texts(server: LiveServer, profile: Path) -> list[str]:
    """The texts a profile receives now (`parley listen --once`), sync copies left out."""
    events = lines(ok(parley(server, profile, "listen", "--once", "--json")))
    return [e["text"] for e in events if e["kind"] == "message"]


def test_support_commands(cli_server: LiveServer, tmp_path: Path) -> None:
    server = cli_server
    user, shop = tmp_path / "user", tmp_path / "shop"
    ann, bob = tmp_path / "ann", tmp_path / "bob"
    ok(parley(server, shop, "register", SHOP, "--code", CODES[SHOP], "--business"))
    for agent in (ann, bob):
        (code,) = lines(ok(parley(server, shop, "link", "--json")))
        ok(parley(server, agent, "link", f"--code={code['linking_code']}"))
    ok(parley(server, user, "register", USER, "--code", CODES[USER]))

    # The primary device makes its linked devices agents; an agent cannot.
    assert "no agents yet" in ok(parley(server, shop, "business", "agents"))
    error = failed(parley(server, ann, "business", "agents", "--set", "2", "--name", "Ann"))
    assert "only the business's primary device (device 1) sets agents" in error
    ok(parley(server, shop, "business", "agents", "--set", "2", "--name", "Ann"))
    listed = ok(parley(server, shop, "business", "agents", "--set", "3", "--name", "Bob"))
    assert listed.splitlines() == ["device 2: Ann", "device 3: Bob"]
    assert [
        a["display_name"] for a in lines(ok(parley(server, bob, "business", "agents", "--json")))
    ] == [
        "Ann",
        "Bob",
    ]

    # The user asks for help; until an agent claims it, messages reach the primary only.
    opened = ok(parley(server, user, "support", "open", SHOP, "--topic", "broken zip"))
    assert "about 'broken zip': WAITING for an agent" in opened and "(opened;" in opened
    assert "already open" in ok(parley(server, user, "support", "open", SHOP))
    ok(parley(server, user, "send", SHOP, "My zip broke"))
    assert texts(server, shop) == ["My zip broke"]
    assert texts(server, ann) == []

    (event,) = lines(ok(parley(server, ann, "business", "queue", "--json")))
    assert event["kind"] == "SUPPORT_EVENT_KIND_OPENED" and event["topic"] == "broken zip"
    cid = event["conversation_id"]
    assert f"#1 OPENED {cid}" in ok(parley(server, bob, "business", "queue"))
    claimed = ok(parley(server, ann, "business", "claim", cid))
    assert "ASSIGNED to Ann (device 2)" in claimed
    error = failed(parley(server, bob, "business", "claim", cid))
    assert "already claimed by agent 'Ann' (device 2)" in error

    status = ok(parley(server, user, "support", "status", SHOP))
    assert "ASSIGNED to Ann (device 2); your messages go to the business's devices 1, 2 only" in (
        status
    )
    ok(parley(server, user, "send", SHOP, "Can you help?"))  # the client follows the new set
    assert texts(server, ann) == ["Can you help?"]
    assert texts(server, bob) == []
    ok(parley(server, ann, "send", USER, "Yes: send it back, free of charge."))
    assert texts(server, user) == ["Yes: send it back, free of charge."]

    moved = ok(parley(server, ann, "business", "transfer", cid, "3", "--json"))
    assert lines(moved)[0]["agent_display_name"] == "Bob"
    ok(parley(server, user, "send", SHOP, "Where to?"))
    assert texts(server, bob) == ["Where to?"]
    assert texts(server, ann) == []

    closed = ok(parley(server, user, "support", "close", SHOP))
    assert "CLOSED" in closed
    assert "no support conversation is open" in ok(parley(server, user, "support", "close", SHOP))
    history = ok(parley(server, shop, "business", "queue", "--cursor", "1"))
    assert [line.split()[1] for line in history.splitlines()] == [
        "CLAIMED",
        "TRANSFERRED",
        "CLOSED",
    ]
    assert history.splitlines()[-1].endswith("by the user")
    assert "no queue events after #4" in ok(
        parley(server, shop, "business", "queue", "--cursor", "4")
    )
    error = failed(parley(server, user, "business", "queue"))
    assert "only business accounts can watch the support queue" in error
