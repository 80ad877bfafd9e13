"""`make demo` plays its story with the real CLI against a real server, fast, and cleans up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from client.demo import FIRST_TEXT, SAFETY_NUMBER
from tests.tools import REPO


def test_make_demo_tells_the_whole_story_within_a_minute(tmp_path: Path) -> None:
    # The demo's temporary directory goes under tmp_path, so the test can see it was removed.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env["TMPDIR"] = str(tmp_path)
    started = time.monotonic()
    proc = subprocess.run(
        # VENV: the environment running this test, which has the project installed.
        ["make", "--no-print-directory", "demo", f"VENV={sys.prefix}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 60
    out = proc.stdout
    # Bob's `listen` shows Alice's text: decrypted by the CLI, not echoed by the narration.
    listen = out.index("$ parley --profile bob listen --once")
    assert FIRST_TEXT in out[listen:].split("$ parley", 2)[1]
    assert "delivered to +15550002222" in out
    assert "sent to +15550002222 (devices 1, 2)" in out
    assert len(SAFETY_NUMBER.findall(out)) == 2 and "They match" in out
    assert re.search(r"── \d+\. Under the hood: a protocol trace ──", out)
    assert list(tmp_path.iterdir()) == [], "the demo left files behind"
