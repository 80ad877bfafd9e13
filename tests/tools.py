"""Paths of the external tools the tests drive (installed by the project's dev extra)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """A tool from this virtualenv, else from PATH; fail loudly when missing (no silent skip)."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} is not installed; run `make install` (pip install -e .[dev])"
        )
    return found


@contextmanager
def server_process(
    *args: str, env: dict[str, str] | None = None, log: Path | None = None, timeout: float = 30
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run `python -m server ARGS` (JSON logs into a file, never a pipe that could fill up).

    Yields the process and the port it bound (from its "listening" log line); kills it on exit.
    """
    log = log or Path(tempfile.mkdtemp(prefix="parley-log-")) / "server.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--log-format", "json", *args],
            env={**os.environ, **(env or {})},
            stderr=sink,
            cwd=REPO,
        )
    try:
        port = _wait_for_port(proc, log, timeout)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _wait_for_port(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if str(record.get("msg", "")).startswith("listening on"):
                    return int(record["port"])
        if proc.poll() is not None:
            raise RuntimeError(f"parley-server exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.02)
    raise RuntimeError(f"parley-server did not start within {timeout} s:\n{log.read_text()}")
