"""Paths of the external tools the tests drive (installed by the project's dev extra)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server.cluster import wait_for_port

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
        port = wait_for_port(proc, log, timeout)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
