"""The consent commands of `parley` as a person and a business use them (subprocesses against a
live server): human output, --json, and the server's refusals as one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.test_client_cli import failed, lines, ok, parley

ALICE = "+14155550123"
BOB = "+442079460123"
SHOP = "+14155550124"
CODES = {ALICE: "111111", BOB: "222222", SHOP: "333333"}


@pytest.fixture
def cli_server(make_server: ServerFactory) -> LiveServer:
    return make_server(test_numbers=CODES)


def test_consent_commands(cli_server: LiveServer, tmp_path: Path) -> None:
    server = cli_server
    alice, bob, shop = tmp_path / "alice", tmp_path / "bob", tmp_path / "shop"
    ok(parley(server, alice, "register", ALICE, "--code", CODES[ALICE]))
    ok(parley(server, bob, "register", BOB, "--code", CODES[BOB]))
    ok(parley(server, shop, "register", SHOP, "--code", CODES[SHOP], "--business"))
    assert "no business" in ok(parley(server, alice, "businesses"))
    assert lines(ok(parley(server, alice, "businesses", "--json"))) == []

    # The business records the number its website collected; Alice sees it, and why.
    recorded = ok(
        parley(
            server,
            shop,
            "business",
            "record-opt-in",
            ALICE,
            "--source",
            "website",
            "--evidence",
            "https://shop.example/signup 10:00",
            "--category",
            "marketing",
            "--category",
            "utility",
        )
    )
    assert f"recorded the opt-in of {ALICE}" in recorded
    human = ok(parley(server, alice, "businesses"))
    assert SHOP in human
    assert "marketing: opted in — the business says you opted in (website:" in human
    (listed,) = lines(ok(parley(server, alice, "businesses", "--json")))
    assert listed["phone_number"] == SHOP and not listed["blocked"]
    assert [(c["category"], c["kind"], c["source"]) for c in listed["categories"]] == [
        ("marketing", "business_asserted", "website"),
        ("utility", "business_asserted", "website"),
    ]

    # Alice stops marketing only, then opts in to service herself.
    (after,) = lines(
        ok(parley(server, alice, "opt-out", SHOP, "--category", "marketing", "--json"))
    )
    assert [(c["category"], c["opted_out"]) for c in after["categories"]] == [
        ("marketing", True),
        ("utility", False),
    ]
    human = ok(parley(server, alice, "opt-in", SHOP, "--category", "service"))
    assert "service: opted in — you opted in" in human and "marketing: opted out" in human
    (everything,) = lines(ok(parley(server, alice, "opt-out", SHOP, "--all", "--json")))
    assert all(c["opted_out"] for c in everything["categories"])
    assert len(everything["categories"]) == 4

    # Alice blocks Bob: his next send fails; unblocking restores it.
    assert "blocked +442079460123" in ok(parley(server, alice, "block", BOB))
    error = failed(parley(server, bob, "send", ALICE, "are you there?"))
    assert (
        error.strip()
        == "parley: permission denied: the recipient does not accept messages from you"
    )
    (unblocked,) = lines(ok(parley(server, alice, "unblock", BOB, "--json")))
    assert unblocked["was_blocked"] is True
    assert "was not blocked" in ok(parley(server, alice, "unblock", BOB))
    ok(parley(server, bob, "send", ALICE, "there you are"))


def test_consent_command_errors(cli_server: LiveServer, tmp_path: Path) -> None:
    server = cli_server
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    ok(parley(server, alice, "register", ALICE, "--code", CODES[ALICE]))
    ok(parley(server, bob, "register", BOB, "--code", CODES[BOB]))
    assert "is a person, not a business" in failed(parley(server, alice, "opt-in", BOB))
    assert "only business accounts" in failed(
        parley(
            server,
            alice,
            "business",
            "record-opt-in",
            BOB,
            "--source",
            "app",
            "--evidence",
            "x",
            "--category",
            "utility",
        )
    )
    assert "cannot block your own account" in failed(parley(server, alice, "block", ALICE))
    usage = parley(server, alice, "opt-out", BOB)  # neither --category nor --all
    assert (
        usage.returncode == 2
        and "one of the arguments --category --all is required" in usage.stderr
    )
    usage = parley(server, alice, "opt-in", BOB, "--category", "spam")
    assert usage.returncode == 2 and "invalid choice: 'spam'" in usage.stderr
