"""The real `parley-server` command: starts with no other service, serves, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.tools import REPO, tool


def start_server(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PARLEY_LOG_FORMAT="json")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--port",
            "0",
            "--database",
            str(tmp_path / "p.db"),
            *extra,
        ],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        record = json.loads(line)
        if record["msg"].startswith("listening on"):
            return proc, int(record["port"])
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read()}")


def test_parley_server_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc, port = start_server(tmp_path, "--test-number", "+15550001111=123456")
    try:
        listed = subprocess.run(
            [tool("grpcurl"), "-plaintext", f"localhost:{port}", "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        assert "parley.v1.AccountService" in listed and "grpc.health.v1.Health" in listed
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
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
