"""The `parley` command as a person or a script uses it: subprocesses against a live server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, ServerFactory
from tests.tools import tool

ALICE = "+14155550123"
BOB = "+442079460123"
CODES = {ALICE: "111111", BOB: "222222"}


def parley(
    server: LiveServer | None, profile: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    target = server.target if server is not None else "localhost:1"
    return subprocess.run(
        [tool("parley"), "--profile", str(profile), "--server", target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.startswith("parley: ")
    return result.stderr


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.fixture
def cli_server(make_server: ServerFactory) -> LiveServer:
    return make_server(test_numbers=CODES)


def test_two_profiles_exchange_messages_with_the_cli(
    cli_server: LiveServer, tmp_path: Path
) -> None:
    server = cli_server
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    (alice,) = lines(
        ok(parley(server, alice_dir, "register", ALICE, "--code", CODES[ALICE], "--json"))
    )
    (bob,) = lines(ok(parley(server, bob_dir, "register", BOB, "--code", CODES[BOB], "--json")))
    assert alice["device_id"] == 1 and bob["device_id"] == 1
    assert alice["account_id"] != bob["account_id"]

    (sent,) = lines(ok(parley(server, alice_dir, "send", BOB, "hello from the cli", "--json")))
    assert sent["recipient_account_id"] == bob["account_id"] and sent["device_ids"] == [1]

    events = lines(ok(parley(server, bob_dir, "listen", "--once", "--json")))
    assert events[-1] == {"kind": "queue_empty"}
    (message,) = [e for e in events if e["kind"] == "message"]
    assert message["text"] == "hello from the cli"
    assert message["sender_account_id"] == alice["account_id"]
    assert message["sender_device_id"] == 1

    # Bob answers by account id; Alice sees the reply and the delivery of her message.
    ok(parley(server, bob_dir, "send", alice["account_id"], "hi alice"))
    events = lines(ok(parley(server, alice_dir, "listen", "--once", "--json")))
    (reply,) = [e for e in events if e["kind"] == "message"]
    assert reply["text"] == "hi alice"
    # Alice wrote to Bob's number, so his messages carry it; Bob never looked Alice up.
    assert reply["sender_phone_number"] == BOB and message["sender_phone_number"] is None
    delivered = [e for e in events if e["kind"] == "delivery"]
    assert [(d["message_id"], d["delivered"]) for d in delivered] == [(sent["message_id"], True)]
    # Nothing is shown twice: the queue is empty now.
    assert lines(ok(parley(server, alice_dir, "listen", "--once", "--json"))) == [
        {"kind": "queue_empty"}
    ]

    # Human-readable output names the contact by number once it is known.
    human = ok(parley(server, alice_dir, "history", BOB))
    assert "→ +442079460123: hello from the cli" in human
    assert "← +442079460123: hi alice" in human

    (a,) = lines(ok(parley(server, alice_dir, "safety-number", BOB, "--json")))
    (b,) = lines(ok(parley(server, bob_dir, "safety-number", alice["account_id"], "--json")))
    assert a == b
    # Twelve groups of five digits, as people compare them; the bare digits for scripts.
    assert re.fullmatch(r"(\d{5} ){11}\d{5}", a["safety_number"])
    assert a["digits"] == a["safety_number"].replace(" ", "")
    shown = ok(parley(server, alice_dir, "safety-number", BOB)).splitlines()
    assert shown[1:4] == [" ".join(a["safety_number"].split()[i : i + 4]) for i in (0, 4, 8)]


def test_linking_a_second_device_with_the_cli(cli_server: LiveServer, tmp_path: Path) -> None:
    server = cli_server
    phone, laptop = tmp_path / "phone", tmp_path / "laptop"
    ok(parley(server, phone, "register", ALICE, "--code", CODES[ALICE]))
    (code,) = lines(ok(parley(server, phone, "link", "--json")))
    joining = f"--code={code['linking_code']}"
    (joined,) = lines(ok(parley(server, laptop, "link", joining, "--json")))
    assert joined["device_id"] == 2
    devices = lines(ok(parley(server, laptop, "devices", "--json")))
    assert [(d["device_id"], d["this_device"]) for d in devices] == [(1, False), (2, True)]
    (bob,) = lines(
        ok(parley(server, tmp_path / "bob", "register", BOB, "--code", CODES[BOB], "--json"))
    )
    ok(parley(server, phone, "send", BOB, "from my phone"))
    events = lines(ok(parley(server, laptop, "listen", "--once", "--json")))
    (copy,) = [e for e in events if e["kind"] == "sync"]
    assert copy["text"] == "from my phone"
    assert copy["destination_account_id"] == bob["account_id"]
    assert copy["sender_device_id"] == 1


def test_errors_are_one_line_messages_and_a_non_zero_exit(
    cli_server: LiveServer, tmp_path: Path
) -> None:
    server = cli_server
    alice_dir = tmp_path / "alice"
    # Not registered yet.
    assert "not registered" in failed(parley(server, alice_dir, "send", BOB, "hi"))
    # The server's own message for a bad number.
    err = failed(parley(server, alice_dir, "register", "555", "--code", "1"))
    assert "invalid argument" in err and "E.164" in err
    ok(parley(server, alice_dir, "register", ALICE, "--code", CODES[ALICE]))
    # A number nobody registered.
    err = failed(parley(server, alice_dir, "send", "+14155550199", "hi"))
    assert "not found" in err
    # Neither a number nor an account id.
    assert "E.164" in failed(parley(server, alice_dir, "send", "bob", "hi"))
    # No server there.
    assert "cannot reach" in failed(parley(None, alice_dir, "devices"))


def test_trace_shows_the_protocol_and_hides_secrets_unless_asked() -> None:
    def run(*args: str) -> str:
        result = subprocess.run(
            [tool("parley"), "trace", "--messages", "2", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return ok(result)

    hidden = lines(run("--json", "--out-of-order"))
    kinds = {e["kind"] for e in hidden}
    assert {"pqxdh.initiator", "pqxdh.responder", "ratchet.dh_step"} <= kinds
    assert "ratchet.skipped_key_used" in kinds
    initiator = next(e for e in hidden if e["kind"] == "pqxdh.initiator")
    assert initiator["values"]["RK"]["hex"] == "<hidden>"
    revealed = lines(run("--json", "--reveal-secrets"))
    initiator = next(e for e in revealed if e["kind"] == "pqxdh.initiator")
    assert len(bytes.fromhex(initiator["values"]["RK"]["hex"])) == 32


def test_listen_rides_out_a_server_restart(cli_server: LiveServer, tmp_path: Path) -> None:
    server = cli_server
    alice_dir, bob_dir = tmp_path / "alice", tmp_path / "bob"
    ok(parley(server, alice_dir, "register", ALICE, "--code", CODES[ALICE]))
    ok(parley(server, bob_dir, "register", BOB, "--code", CODES[BOB]))
    with subprocess.Popen(
        [tool("parley"), "--profile", str(bob_dir), "--server", server.target, "listen", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as listener:
        try:
            assert listener.stdout is not None and listener.stderr is not None
            assert json.loads(listener.stdout.readline()) == {"kind": "queue_empty"}
            server.restart()
            assert "reconnecting" in listener.stderr.readline()
            ok(parley(server, alice_dir, "send", BOB, "after the restart"))
            while True:
                event = json.loads(listener.stdout.readline())
                if event["kind"] == "message":
                    break
            assert event["text"] == "after the restart"
        finally:
            listener.terminate()
