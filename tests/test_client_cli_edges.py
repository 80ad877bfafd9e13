"""The `parley` command's edges: two-step registration, JSON errors, no stray profiles,
a listener started before its server, --version, and what it says when nothing can be sent."""

from __future__ import annotations

import importlib.metadata
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from client.cli import UsageError, build_parser
from tests.conftest import LiveServer
from tests.test_client_cli import ALICE, BOB, CODES, cli_server, failed, lines, ok, parley
from tests.tools import tool

__all__ = ["cli_server"]  # the fixture, imported for pytest

CAROL = "+14155550177"
"""Not a test number: her code goes through the (recording) SMS gateway."""


def json_error(result: subprocess.CompletedProcess[str], code: str, status: int = 1) -> str:
    """The one JSON error object a --json run printed on stderr; returns its message."""
    assert result.returncode == status, (result.stdout, result.stderr)
    assert result.stdout == ""
    (error,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert set(error) == {"error", "code"} and error["code"] == code, error
    return str(error["error"])


def alice_and_bob(server: LiveServer, tmp_path: Path) -> tuple[Path, Path]:
    """Two registered profiles (test numbers, one step)."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    ok(parley(server, alice, "register", ALICE, "--code", CODES[ALICE]))
    ok(parley(server, bob, "register", BOB, "--code", CODES[BOB]))
    return alice, bob


def test_register_sends_a_code_and_verify_completes_it(
    cli_server: LiveServer, tmp_path: Path
) -> None:
    server, carol = cli_server, tmp_path / "carol"
    (started,) = lines(ok(parley(server, carol, "register", CAROL, "--json", stdin="")))
    assert started["phone_number"] == CAROL and started["verification_id"]
    assert started["next"] == f"parley --profile {carol} verify CODE"
    code = server.sender.codes[CAROL]  # what the SMS said
    # A wrong code is refused and the verification stays pending: the person can retype it.
    wrong = "000000" if code != "000000" else "111111"
    assert "wrong code" in failed(parley(server, carol, "verify", wrong))
    (done,) = lines(ok(parley(server, carol, "verify", code, "--json")))
    assert done["phone_number"] == CAROL and done["device_id"] == 1
    (device,) = lines(ok(parley(server, carol, "devices", "--json")))
    assert device["this_device"]
    assert "already registered" in failed(parley(server, carol, "verify", code))
    # Carol can talk now, and the human output said what to do next.
    bob = tmp_path / "bob"
    ok(parley(server, bob, "register", BOB, "--code", CODES[BOB]))
    ok(parley(server, carol, "send", BOB, "hi from a real number"))
    human = ok(parley(server, tmp_path / "dave", "register", "+14155550178"))
    assert "verify CODE" in human and "+14155550178" in human


def test_verify_without_a_pending_registration_says_what_to_run(
    cli_server: LiveServer, tmp_path: Path
) -> None:
    profile = tmp_path / "new"
    err = failed(parley(cli_server, profile, "verify", "123456"))
    assert f"parley --profile {profile} register NUMBER" in err
    assert not profile.exists()


def test_json_errors_are_json_objects(cli_server: LiveServer, tmp_path: Path) -> None:
    server, alice = cli_server, tmp_path / "alice"
    assert "not registered" in json_error(parley(server, alice, "--json", "devices"), "CLIENT")
    err = json_error(
        parley(server, alice, "register", "555", "--code", "1", "--json"), "INVALID_ARGUMENT"
    )
    assert "E.164" in err
    ok(parley(server, alice, "register", ALICE, "--code", CODES[ALICE]))
    err = json_error(parley(server, alice, "send", "+14155550199", "hi", "--json"), "NOT_FOUND")
    assert err.startswith("not found: ")
    assert "cannot reach" in json_error(parley(None, alice, "--json", "devices"), "UNAVAILABLE")
    # Usage errors too (exit status 2), wherever --json is.
    err = json_error(parley(server, alice, "--json", "sendd"), "USAGE", status=2)
    assert "sendd" in err
    assert json_error(parley(server, alice, "send", "--json"), "USAGE", status=2)
    # Without --json, usage errors keep argparse's form.
    plain = parley(server, alice, "sendd")
    assert plain.returncode == 2 and "usage: parley" in plain.stderr


def test_json_is_accepted_before_and_after_the_command(
    cli_server: LiveServer, tmp_path: Path
) -> None:
    alice = tmp_path / "alice"
    ok(parley(cli_server, alice, "--json", "register", ALICE, "--code", CODES[ALICE]))
    before = lines(ok(parley(cli_server, alice, "--json", "devices")))
    after = lines(ok(parley(cli_server, alice, "devices", "--json")))
    assert before == after and before[0]["device_id"] == 1


def test_failed_commands_leave_no_profile_behind(cli_server: LiveServer, tmp_path: Path) -> None:
    root = tmp_path / "profiles"
    root.mkdir()
    nested = root / "a" / "b" / "profile"
    failed(parley(cli_server, nested, "register", "555", "--code", "1"))
    failed(parley(None, nested, "register", ALICE, "--code", CODES[ALICE]))
    failed(parley(cli_server, nested, "devices"))
    assert list(root.iterdir()) == []
    # A registration that got as far as a pending code keeps its profile.
    ok(parley(cli_server, nested, "register", CAROL))
    assert (nested / "parley-client.db").exists()


def test_version() -> None:
    result = subprocess.run(
        [tool("parley"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert ok(result).strip() == f"parley {importlib.metadata.version('parley')}"


def test_sending_to_yourself_without_another_device_says_so(
    cli_server: LiveServer, tmp_path: Path
) -> None:
    alice = tmp_path / "alice"
    ok(parley(cli_server, alice, "register", ALICE, "--code", CODES[ALICE]))
    assert "you have no other device; nothing was sent" in failed(
        parley(cli_server, alice, "send", ALICE, "note to self")
    )
    laptop = tmp_path / "laptop"
    (code,) = lines(ok(parley(cli_server, alice, "link", "--json")))
    ok(parley(cli_server, laptop, "link", f"--code={code['linking_code']}"))
    (sent,) = lines(ok(parley(cli_server, alice, "send", ALICE, "note to self", "--json")))
    assert sent["device_ids"] == [2]


def test_a_changed_identity_key_is_reported_by_number_with_the_commands_to_run(
    cli_server: LiveServer, tmp_path: Path
) -> None:
    server = cli_server
    alice, bob = alice_and_bob(server, tmp_path)
    ok(parley(server, alice, "send", BOB, "hello"))
    ok(parley(server, bob, "send", ALICE, "hello back"))  # Bob knows Alice by number too
    ok(parley(server, alice, "listen", "--once"))
    # Bob reinstalls: same number, a new identity key.
    bob_again = tmp_path / "bob-again"
    ok(parley(server, bob_again, "register", BOB, "--code", CODES[BOB]))
    err = failed(parley(server, alice, "send", BOB, "still you?"))
    assert f"the identity key of {BOB}" in err and "nothing was sent" in err
    assert f"`parley --profile {alice} safety-number {BOB}`" in err
    assert f"`parley --profile {alice} trust {BOB}`" in err
    assert "client." not in err and "Python" not in err
    # A message from the new key is held, and the listener says what to run.
    ok(parley(server, bob_again, "send", ALICE, "it is me"))
    held = ok(parley(server, alice, "listen", "--once"))
    assert f"a message from {BOB}" in held and f"trust {BOB}`" in held
    ok(parley(server, alice, "trust", BOB))
    assert "it is me" in ok(parley(server, alice, "listen", "--once"))


def test_listen_waits_for_a_server_that_is_down_at_start(
    cli_server: LiveServer, tmp_path: Path
) -> None:
    server = cli_server
    alice, bob = alice_and_bob(server, tmp_path)
    server.stop()
    # --once is for scripts: it fails at once rather than waiting.
    assert "cannot reach" in failed(parley(server, bob, "listen", "--once"))
    command = [tool("parley"), "--profile", str(bob), "--server", server.target, "listen"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as listener:
        try:
            assert listener.stdout is not None and listener.stderr is not None
            first = listener.stderr.readline()
            assert first.startswith("parley: cannot reach") and "reconnecting in 1s" in first
            assert "reconnecting in 2s" in listener.stderr.readline()  # backing off
            assert listener.poll() is None
            server.start()
            ok(parley(server, alice, "send", BOB, "you were waiting"))
            assert "you were waiting" in listener.stdout.readline()
        finally:
            listener.terminate()


def test_an_exposed_profile_is_used_with_a_warning(cli_server: LiveServer, tmp_path: Path) -> None:
    alice = tmp_path / "alice"
    ok(parley(cli_server, alice, "register", ALICE, "--code", CODES[ALICE]))
    assert stat.S_IMODE(alice.stat().st_mode) == 0o700
    assert stat.S_IMODE((alice / "parley-client.db").stat().st_mode) == 0o600
    os.chmod(alice, 0o755)
    result = parley(cli_server, alice, "devices")
    ok(result)
    assert result.stderr.startswith("parley: warning: ") and f"chmod 700 {alice}" in result.stderr
    (warning,) = [
        json.loads(x) for x in parley(cli_server, alice, "--json", "devices").stderr.splitlines()
    ]
    assert f"chmod 700 {alice}" in warning["warning"]


def test_a_linking_code_that_begins_with_a_dash_is_taken_as_printed() -> None:
    """Codes are URL-safe base64, so one in 64 begins with "-": the printed command uses
    `--code=CODE`, which argparse never takes for an option."""
    args = build_parser().parse_args(["--profile", "p", "link", "--code=-Zx9_abc"])
    assert args.code == "-Zx9_abc"
    with pytest.raises(UsageError, match="expected one argument"):  # the old hint's `--code CODE`
        build_parser().parse_args(["--profile", "p", "link", "--code", "-Zx9_abc"])
