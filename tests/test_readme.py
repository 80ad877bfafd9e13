"""The README works as written, and the docs refer only to what is in the repository.

The README-following test clones the repository's HEAD (so it checks committed content),
starts the server with the README's own command, then runs every ```sh block of the README in
one bash shell, as a newcomer would type them into a second terminal.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server.cluster import wait_for_port
from tests.tools import REPO

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SERVER_COMMAND = re.compile(r"^make run\b")
# `make test` runs this test: running it from here would recurse.
TEST_COMMAND = re.compile(r"^make test\b")
README_ADDRESS = "localhost:50051"
# The landing pages' port in the README's server command, mapped to a free one like gRPC's.
README_HTTP_PORT = "8080"
README_HTTP_ADDRESS = f"localhost:{README_HTTP_PORT}"
# Spelled in two pieces so that this file does not match its own check.
OUTSIDE_REFERENCES = ("../" + "shared", "DESIGN" + ".md", "STYLE" + ".md")


def fenced_blocks(markdown: str, language: str) -> list[tuple[int, str]]:
    """(first line number, body) of each block fenced as `language`, outside HTML comments."""
    text = HTML_COMMENT.sub(lambda m: "\n" * m.group().count("\n"), markdown)
    return [
        (text.count("\n", 0, m.start()) + 2, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) == language
    ]


def test_fenced_blocks_skip_comments_and_other_languages() -> None:
    md = "<!--\n```sh\nhidden\n```\n-->\n```sh\nls\n```\n```text\nout\n```\n```sh\npwd\n```\n"
    assert fenced_blocks(md, "sh") == [(7, "ls\n"), (13, "pwd\n")]


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
    ).stdout
    return [REPO / name for name in listed.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None  # binary fixtures, or a file deleted but not yet committed


def test_no_file_refers_to_anything_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_files():
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(ref in line for ref in OUTSIDE_REFERENCES):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, (
        "these lines point outside the repository; say the reason in place or point to "
        "docs/architecture.md:\n" + "\n".join(offenders)
    )


def _markdown_files() -> list[Path]:
    return sorted([*REPO.glob("*.md"), *REPO.glob("docs/**/*.md")])


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    """Heading anchors, and explicit ones (`<a id="...">`, as the generated API reference uses)."""
    text = FENCE.sub("", markdown)
    headings = {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}
    explicit = set(re.findall(r"<a (?:id|name)=\"([^\"]+)\"", text))
    return headings | explicit


def test_relative_links_in_the_docs_point_to_files_and_headings_that_exist() -> None:
    broken = []
    for doc in _markdown_files():
        text = FENCE.sub("", doc.read_text())
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto: ...
            path_part, _, anchor = target.partition("#")
            dest = (doc.parent / path_part).resolve() if path_part else doc
            where = f"{doc.relative_to(REPO)} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                broken.append(f"{where}: no heading with that anchor")
    assert not broken, "\n".join(broken)


def test_sections_of_architecture_md_cited_in_code_exist() -> None:
    """A comment cites a section as the file name, a comma and the heading in double quotes;
    the heading must be there."""
    headings = {
        m.group(1)
        for m in re.finditer(r"^#+\s+(.+?)\s*$", (REPO / "docs/architecture.md").read_text(), re.M)
    }
    cited = []
    for path in _tracked_files():
        text = _text(path)
        if text is not None:
            cited += [(path, s) for s in re.findall(r'docs/architecture\.md, "([^"]+)"', text)]
    assert cited, "the code cites no section: this test would check nothing"
    missing = [f"{p.relative_to(REPO)}: {s!r}" for p, s in cited if s not in headings]
    assert not missing, f"sections cited but not in docs/architecture.md: {missing}"


def _newcomer_env(home: Path) -> dict[str, str]:
    """A fresh shell: nothing of this test's virtualenv on PATH, no Parley settings, own HOME.

    pip keeps its configuration and uses the machine's download cache, so the clone's install
    really runs but does not download again what this machine already has.
    """
    drop: set[str] = set()
    if sys.prefix != sys.base_prefix:
        drop.add(str(Path(sys.prefix) / "bin"))
    drop.add(str(REPO / ".venv" / "bin"))
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in drop]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PARLEY_", "MAKE", "PYTHON", "VIRTUAL_ENV", "PYTEST"))
    }
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pip"
    env.setdefault("PIP_CACHE_DIR", str(cache))
    env.update(HOME=str(home), PATH=os.pathsep.join(path))
    return env


def _script(readme: str, port: int, http_port: int = 0) -> tuple[str, str]:
    """The server command, and a bash script of every other ```sh block, in README order."""
    servers: list[str] = []
    parts = ["set -x"]
    for line_number, body in fenced_blocks(readme, "sh"):
        kept = []
        for line in body.splitlines():
            if SERVER_COMMAND.match(line):
                servers.append(line)
            elif not TEST_COMMAND.match(line):
                line = line.replace(README_ADDRESS, f"localhost:{port}")
                kept.append(line.replace(README_HTTP_ADDRESS, f"localhost:{http_port}"))
        parts.append(f"# README.md line {line_number}\n" + "\n".join(kept))
    assert len(servers) == 1, f"the README must have exactly one server command: {servers}"
    return servers[0], "\n".join(parts) + "\n"


def _http_port(log: Path) -> int:
    """The landing pages' bound port, from the server's "landing pages on" log line (written
    before "listening on", which the caller waited for)."""
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if str(record.get("msg", "")).startswith("landing pages on"):
                return int(record["http_port"])
    raise AssertionError(f"the server logged no landing pages port:\n{log.read_text()}")


@pytest.mark.timeout(900)
def test_readme_runs_as_written_on_a_clean_clone(tmp_path: Path) -> None:
    """Install, serve and every ```sh block, as written (the README's fixed port 50051 is
    mapped to a free one, so the test can run next to a server already on it)."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    clone = tmp_path / "parley"
    for git in (["clone", str(REPO), str(clone)], ["-C", str(clone), "checkout", "--detach", head]):
        subprocess.run(["git", "--no-pager", *git, "--quiet"], check=True, timeout=120)
    home = tmp_path / "home"
    home.mkdir()
    env = _newcomer_env(home)
    readme = (clone / "README.md").read_text()
    assert len(fenced_blocks(readme, "sh")) >= 3, "the README has lost its commands"

    server_line, _ = _script(readme, 0)
    assert "--test-number" in server_line, "the README's server needs test numbers"
    http_flag = f"--http-port {README_HTTP_PORT}"
    assert http_flag in server_line, "the README's server serves the landing pages"
    server_line = server_line.replace(http_flag, "--http-port 0")
    log = tmp_path / "server.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", server_line],
            cwd=clone,
            env={**env, "PARLEY_PORT": "0"},  # a free port; the log line says which
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the server: one group to stop together
        )
    try:
        port = wait_for_port(server, log, timeout=600)  # includes the first install
        _, script = _script(readme, port, _http_port(log))
        (tmp_path / "readme.sh").write_text(script)
        run = subprocess.run(
            ["bash", "-euo", "pipefail", str(tmp_path / "readme.sh")],
            cwd=clone,
            env={**env, "PARLEY_SERVER": f"localhost:{port}"},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, (
            f"a README command failed (exit {run.returncode}):\n{run.stderr[-6000:]}"
            f"\n--- stdout ---\n{run.stdout[-3000:]}"
        )
        assert server.poll() is None, f"the server died:\n{log.read_text()}"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
    assert '"msg": "stopped"' in log.read_text(), "the server did not shut down cleanly"
    # `make run` installed the runtime and the README's `make tools` grpcurl, not the dev tools.
    venv = clone / ".venv"
    assert (venv / "bin" / "grpcurl").exists() and not (venv / "bin" / "pytest").exists()
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    assert size < 200 * 2**20, f"the runtime virtualenv takes {size / 2**20:.0f} MiB"
