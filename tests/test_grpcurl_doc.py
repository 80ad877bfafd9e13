"""docs/grpcurl.md runs as written: every ```sh block, in order, in one bash shell, against a
real `python -m server` started with the test numbers the doc's own server command names, with
grpcurl and parley from this virtualenv.

Every command must succeed, except in blocks whose first line is `# expect: Code`: there the
block must fail the way grpcurl reports that status (exit 64 + code, "Code: Code" on stderr).
The block starting with `# server` is the command a reader runs in another terminal; the test
starts that server itself, with the same flags.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from tests.rpc_catalog import all_rpcs
from tests.tools import REPO, server_process, tool

DOC = REPO / "docs" / "grpcurl.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
EXPECT = re.compile(r"# expect: (\w+)\s*$")
GRPCURL_EXIT_BASE = 64


@dataclass(frozen=True)
class Block:
    index: int
    text: str
    expect: str | None  # grpcurl's name of the expected status code, e.g. "NotFound"

    @property
    def status(self) -> grpc.StatusCode:
        assert self.expect is not None
        return grpc.StatusCode[re.sub(r"(?<!^)(?=[A-Z])", "_", self.expect).upper()]


def sh_blocks(text: str) -> list[str]:
    return [m.group(1) for m in SH_BLOCK.finditer(text)]


def runnable(blocks: list[str]) -> list[Block]:
    out = []
    for i, text in enumerate(blocks):
        first = text.splitlines()[0]
        if first == "# server":
            continue
        match = EXPECT.fullmatch(first)
        out.append(Block(i, text, match.group(1) if match else None))
    return out


def script(blocks: list[Block], results: Path, errors: Path) -> str:
    """One bash script: normal blocks under `set -e`, expected failures captured, each block
    reporting to fd 3 so the test knows how far the doc got and how each refusal ended."""
    lines = [
        "set -o pipefail",
        f"exec 3>{shlex.quote(str(results))}",
        "EXPECTING=0",
        'trap \'[ "$EXPECTING" = 1 ] || echo "failed: $BASH_COMMAND" >&3\' ERR',
    ]
    for block in blocks:
        if block.expect is None:
            lines += ["set -e", block.text.rstrip("\n"), "set +e", f"echo 'ok {block.index}' >&3"]
        else:
            err = shlex.quote(str(errors / f"{block.index}.err"))
            lines += [
                "EXPECTING=1",
                "{",
                block.text.rstrip("\n"),
                f"}} 2> {err}",
                f'echo "expect {block.index} $?" >&3',
                "EXPECTING=0",
            ]
    return "\n".join(lines) + "\n"


def test_doc_has_the_blocks_this_test_relies_on() -> None:
    blocks = sh_blocks(DOC.read_text())
    assert sum(b.startswith("# server\n") for b in blocks) == 1
    expected = [b.expect for b in runnable(blocks) if b.expect]
    for code in expected:
        assert isinstance(Block(0, "", code).status, grpc.StatusCode), code
    text = "\n".join(blocks)
    # Every RPC of every served service (listed from the server's own descriptors, so a new
    # RPC needs its recipe here) and health and reflection appear in a command.
    rpcs = [f"{r.method.containing_service.name}/{r.method.name}" for r in all_rpcs()]
    for rpc in [*rpcs, "grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"]:
        assert re.search(rf"{re.escape(rpc)}\b", text), f"docs/grpcurl.md has no command for {rpc}"
    for verb in (" list", " describe "):
        assert verb in text, f"docs/grpcurl.md has no grpcurl{verb.rstrip()}"


def run_blocks(steps: list[Block], port: int, tmp_path: Path) -> tuple[str, str, int, list[str]]:
    """Run the blocks in one bash in a fresh directory, with this virtualenv's commands first on
    PATH and PARLEY_SERVER naming the test's server. Returns stdout, stderr, the exit status
    and the per-block report."""
    results, errors, work = tmp_path / "results.txt", tmp_path / "errors", tmp_path / "work"
    errors.mkdir()
    work.mkdir()
    # The doc's commands, resolved the way every tool test resolves them (missing: a failure).
    bins = dict.fromkeys(str(Path(tool(name)).parent) for name in ("grpcurl", "parley"))
    env = {
        **os.environ,
        "PATH": os.pathsep.join([*bins, str(Path(sys.executable).parent), os.environ["PATH"]]),
        "PARLEY_SERVER": f"localhost:{port}",
        "TMPDIR": str(work),
    }
    env.pop("PARLEY_PROFILE", None)
    run = subprocess.run(
        ["bash", "-c", script(steps, results, errors)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return run.stdout, run.stderr, run.returncode, results.read_text().splitlines()


def test_grpcurl_cookbook_runs_as_written(tmp_path: Path) -> None:
    blocks = sh_blocks(DOC.read_text())
    (server_block,) = [b for b in blocks if b.startswith("# server\n")]
    command = shlex.split(server_block.splitlines()[1])
    assert command[0] == "parley-server", "the doc's server command changed: update this test"
    steps = runnable(blocks)
    database = str(tmp_path / "parley.db")
    with server_process("--port", "0", "--database", database, *command[1:]) as (_, port):
        _, stderr, status, report = run_blocks(steps, port, tmp_path)
    context = f"\nreport: {report}\nstderr:\n{stderr[-3000:]}"
    assert status == 0, f"a command of docs/grpcurl.md failed{context}"
    assert len(report) == len(steps), f"not every block ran{context}"
    for block, line in zip(steps, report, strict=True):
        if block.expect is None:
            assert line == f"ok {block.index}", context
            continue
        _, index, exit_status = line.split()
        err = (tmp_path / "errors" / f"{index}.err").read_text()
        want = GRPCURL_EXIT_BASE + block.status.value[0]
        assert int(exit_status) == want and f"Code: {block.expect}" in err, (
            f"block {index} should fail with {block.expect} (exit {want}), got exit "
            f"{exit_status}:\n{block.text}\n{err}"
        )


def test_readme_grpcurl_session_runs_from_registration_to_delivered(tmp_path: Path) -> None:
    """The README's section alone, with the server of its quick start (which the section says
    to use). Only the port is changed (tests never take 50051, which a developer's own server
    may hold)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## A grpcurl session\n", 1)[1].split("\n## ", 1)[0]
    assert "[Quick start](#quick-start)" in section
    quick_start = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    (flags,) = re.findall(r'^make run ARGS="([^"]*)"$', quick_start, re.M)
    steps = [
        Block(b.index, b.text.replace("localhost:50051", "$PARLEY_SERVER"), b.expect)
        for b in runnable(sh_blocks(section))
    ]
    assert steps and all(b.expect is None for b in steps)
    database = str(tmp_path / "parley.db")
    with server_process("--port", "0", "--database", database, *shlex.split(flags)) as (_, port):
        stdout, stderr, status, _ = run_blocks(steps, port, tmp_path)
    assert status == 0, stderr[-3000:]
    assert "(device 1): Hello Bob" in stdout
    assert '"state": "DELIVERY_STATE_DELIVERED"' in stdout
