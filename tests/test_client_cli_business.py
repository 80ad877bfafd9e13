"""`parley business ...` and `parley admin ...` against a live server: the review flow as a
business, the operator and a person run it, in human and JSON output, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.test_client_cli import failed, lines, ok, parley

SHOP = "+15550003333"
PERSON = "+15550001111"
CODES = {SHOP: "333333", PERSON: "123456"}
TOKEN = "cli-operator-token"


@pytest.fixture
def biz_server(make_server: ServerFactory) -> LiveServer:
    return make_server(test_numbers=CODES, admin_token=TOKEN)


def test_business_profile_and_template_review_with_the_cli(
    biz_server: LiveServer, tmp_path: Path
) -> None:
    server = biz_server
    shop, person, op = tmp_path / "shop", tmp_path / "person", tmp_path / "operator"
    (me,) = lines(
        ok(parley(server, shop, "register", SHOP, "--code", CODES[SHOP], "--business", "--json"))
    )
    ok(parley(server, person, "register", PERSON, "--code", CODES[PERSON]))

    updated = ok(
        parley(
            server,
            shop,
            "business",
            "profile",
            "update",
            "--name",
            "Acme Shoes",
            "--about",
            "Shoes since 1990",
            "--website",
            "https://acme.example",
            "--vertical",
            "retail",
        )
    )
    assert "Acme Shoes (not verified)" in updated and "pending review" in updated
    # Only the fields given change: the about line stays.
    (profile,) = lines(
        ok(
            parley(
                server, shop, "business", "profile", "update", "--email", "a@acme.example", "--json"
            )
        )
    )
    assert profile["fields"]["about"] == "Shoes since 1990"
    assert profile["fields"]["email"] == "a@acme.example"

    (pending,) = lines(ok(parley(server, op, "admin", "pending", "--admin-token", TOKEN, "--json")))
    assert pending["account_id"] == me["account_id"]
    assert not op.exists()  # the operator needs no profile and leaves none behind
    approved = ok(
        parley(server, op, "admin", "approve-name", me["account_id"], "--admin-token", TOKEN)
    )
    assert "Acme Shoes (✓ verified)" in approved
    shown = ok(parley(server, person, "business", "profile", "show", SHOP))
    assert shown.startswith("Acme Shoes (✓ verified)") and "name '" not in shown

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
                "Your order {{1}} has shipped.",
                "--button",
                "Track",
                "--json",
            )
        )
    )
    assert template["status"] == "REVIEW_STATUS_PENDING"
    tid = template["template_id"]
    assert "not approved, and not yours" in failed(
        parley(server, person, "business", "templates", "show", tid)
    )
    usage = parley(server, op, "admin", "reject-template", tid, "--admin-token", TOKEN)
    assert usage.returncode == 2 and "required: --reason" in usage.stderr
    ok(parley(server, op, "admin", "approve-template", tid, "--admin-token", TOKEN))
    seen = ok(
        parley(server, person, "business", "templates", "show", "order_shipped", "--business", SHOP)
    )
    assert "order_shipped [en, utility] approved" in seen and "Your order {{1}}" in seen
    paused = ok(parley(server, shop, "business", "templates", "pause", tid))
    assert "paused by business" in paused
    (listed,) = lines(ok(parley(server, shop, "business", "templates", "list", "--json")))
    assert listed["paused"] is True
    ok(parley(server, shop, "business", "templates", "unpause", tid))
    assert "nothing waits for review" in ok(
        parley(server, op, "admin", "pending", "--admin-token", TOKEN)
    )


def test_cli_refusals(
    biz_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = biz_server
    person, op = tmp_path / "person", tmp_path / "operator"
    ok(parley(server, person, "register", PERSON, "--code", CODES[PERSON]))
    assert "only business accounts" in failed(
        parley(server, person, "business", "profile", "update", "--name", "Me")
    )
    monkeypatch.delenv("PARLEY_ADMIN_TOKEN", raising=False)
    assert "--admin-token TOKEN or set PARLEY_ADMIN_TOKEN" in failed(
        parley(server, op, "admin", "pending")
    )
    assert "the admin token is wrong" in failed(
        parley(server, op, "admin", "pending", "--admin-token", "guess")
    )
    monkeypatch.setenv("PARLEY_ADMIN_TOKEN", TOKEN)
    assert "nothing waits" in ok(parley(server, op, "admin", "pending"))
