"""The runnable examples of examples/ (shown in docs/getting-started.md) run as written
against a live server process: one through the command line, one through the environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.tools import REPO, server_process

NUMBERS = {
    "high_level": ("+15550001111=111111", "+15550002222=222222"),
    "raw_stubs": ("+15550003333=333333", "+15550004444=444444"),
}


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory = tmp_path_factory.mktemp("examples")
    args = ["--port", "0", "--database", str(directory / "parley.db")]
    for pair in NUMBERS.values():
        for number in pair:
            args += ["--test-number", number]
    with server_process(*args, log=directory / "server.log") as (_, bound):
        yield bound


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    alice, bob = NUMBERS[name]
    script = str(REPO / "examples" / f"{name}.py")
    result = subprocess.run(
        [sys.executable, script, "--alice", alice, "--bob", bob, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_the_high_level_example(port: int) -> None:
    out = run_example("high_level", "--server", f"localhost:{port}")
    assert "Bob received from +15550001111: Hello Bob, this is Alice" in out
    assert "Alice received from +15550002222: Hi Alice!" in out
    assert re.search(r"Alice's message \d+ to \+15550002222: delivered", out)
    (number,) = re.findall(r"safety number:\n((?:\d{5} \d{5} \d{5} \d{5}\n?){3})", out)
    assert len(number.split()) == 12


def test_the_raw_stubs_example(port: int) -> None:
    out = run_example("raw_stubs", env={"PARLEY_SERVER": f"localhost:{port}"})
    assert "+15550003333 published keys: 10 one-time EC prekeys" in out
    assert re.search(r"\+15550003333 sent message \d+ to 1 device\(s\)", out)
    assert "+15550004444 received: 'Hello Bob, straight from the stubs'" in out


def test_the_getting_started_guide_shows_the_examples_that_run() -> None:
    """The guide quotes the examples' key lines; they must still be in the files run above."""
    guide = (REPO / "docs" / "getting-started.md").read_text()
    for name in NUMBERS:
        source = (REPO / "examples" / f"{name}.py").read_text()
        assert f"examples/{name}.py" in guide
        for block in re.findall(rf"```python {name}\n(.*?)```", guide, re.DOTALL):
            # Whitespace aside: `ruff format` reflows the guide's snippets (indent, line length).
            assert block.strip() and squeeze(block) in squeeze(source), f"{name}.py changed"


def squeeze(text: str) -> str:
    return "".join(text.split())
