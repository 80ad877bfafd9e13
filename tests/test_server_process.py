"""The real `parley-server` command: starts with no other service, serves, stops cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.tools import REPO, server_process, tool


def test_parley_server_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    args = ["--port", "0", "--database", str(tmp_path / "p.db")]
    args += ["--test-number", "+15550001111=123456"]
    with server_process(*args, log=log) as (proc, port):
        listed = subprocess.run(
            [tool("grpcurl"), "-plaintext", f"localhost:{port}", "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        assert "parley.v1.AccountService" in listed and "grpc.health.v1.Health" in listed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    err = log.read_text()
    messages = [json.loads(line)["msg"] for line in err.splitlines() if line.startswith("{")]
    assert messages[-2:] == ["shutting down", "stopped"]
    assert (tmp_path / "p.db").exists()


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [tool("parley-server"), "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "--test-number" in out and "PARLEY_" in out
    assert REPO.exists()


def test_bad_configuration_is_reported(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--verification-rate", "lots"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "--verification-rate" in proc.stderr and "5/h" in proc.stderr
