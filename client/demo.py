"""``make demo``: a scripted conversation, told step by step, with the real ``parley`` CLI.

It starts ``parley-server`` on a temporary database and a free port, then runs the CLI as a
person would (one subprocess per command) and says in plain words what each step does and
what the server sees. Every step is checked: the story stops with exit status 1 when a command
fails or shows something other than what the narration claims, so the demo doubles as a smoke
test (tests/test_demo.py runs it). Everything lives in a temporary directory (profiles, the
database, the server log, HOME) that is removed at the end, and the server is stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

ALICE, ALICE_CODE = "+15550001111", "111111"
BOB, BOB_CODE = "+15550002222", "222222"
FIRST_TEXT = "Hello Bob, this is Alice"
REPLY_TEXT = "Hi Alice! Got it."
SECOND_TEXT = "Now on both of your devices"
TRACE_LINES = 24
SERVER_START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
SAFETY_NUMBER = re.compile(r"(?:\d{5}\s+){11}\d{5}")


class DemoError(Exception):
    """A step did not do what the story says; the message names the step and the output."""


def _parley_command() -> list[str]:
    """The installed ``parley`` script of this environment, else the same CLI as a module."""
    script = Path(sys.executable).parent / "parley"
    return [str(script)] if script.exists() else [sys.executable, "-m", "client"]


class Server:
    """``parley-server`` in a subprocess on a free port, its JSON log in a file (not a pipe,
    which could fill up and stall it)."""

    def __init__(self, workdir: Path, test_numbers: dict[str, str]) -> None:
        self.log = workdir / "server.log"
        args = [sys.executable, "-m", "server", "--port", "0", "--log-format", "json"]
        args += ["--database", str(workdir / "parley.db")]
        for number, code in test_numbers.items():
            args += ["--test-number", f"{number}={code}"]
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(args, stderr=sink, stdout=subprocess.DEVNULL)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    if str(record.get("msg", "")).startswith("listening on"):
                        return int(record["port"])
            if self.process.poll() is not None:
                raise DemoError(f"the server exited at start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.stop()
        raise DemoError(f"the server did not start in {SERVER_START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """SIGTERM (a clean shutdown, as an operator would), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Story:
    """Narrates and runs the CLI in `workdir`, with its own HOME and the demo server."""

    def __init__(self, workdir: Path, port: int, out: TextIO) -> None:
        self.workdir = workdir
        self.out = out
        self.env = {
            **os.environ,
            "HOME": str(workdir),
            "PARLEY_SERVER": f"localhost:{port}",
        }
        self.env.pop("PARLEY_PROFILE", None)
        self._step = 0

    def step(self, title: str, narration: str) -> None:
        self._step += 1
        self.out.write(f"\n── {self._step}. {title} ──\n")
        self.out.write(textwrap.fill(narration, width=96) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(textwrap.fill(text, width=96) + "\n")
        self.out.flush()

    def parley(self, *args: str, show: bool = True, max_lines: int | None = None) -> str:
        """Run ``parley ARGS``; echo the command and its output; fail the story on error."""
        shown = "parley " + shlex.join(args)
        self.out.write(f"  $ {shown}\n")
        proc = subprocess.run(
            [*_parley_command(), *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise DemoError(
                f"`{shown}` exited with {proc.returncode}:\n{proc.stderr.strip()}"
                f"\n{proc.stdout.strip()}"
            )
        if show:
            lines = proc.stdout.rstrip("\n").splitlines()
            for line in lines[:max_lines]:
                self.out.write(f"    {line}\n")
            if max_lines is not None and len(lines) > max_lines:
                self.out.write(f"    … ({len(lines) - max_lines} more lines)\n")
        self.out.flush()
        return proc.stdout


def expect(output: str, wanted: str, step: str) -> None:
    if wanted not in output:
        raise DemoError(f"{step}: expected {wanted!r} in the output, got:\n{output}")


def play(story: Story) -> None:
    """The scripted story. Each step checks what it claims before the next one starts."""
    story.step(
        "Alice registers",
        f"Alice registers her number {ALICE}. On a real number the server would send a code "
        f"by SMS; this demo server treats {ALICE} and {BOB} as test numbers with fixed codes. "
        "Her device makes its identity key and uploads a signed prekey, 100 one-time EC "
        "prekeys and 100 post-quantum (Kyber) prekeys.",
    )
    out = story.parley("--profile", "alice", "register", ALICE, "--code", ALICE_CODE)
    expect(out, f"registered {ALICE}", "register Alice")

    story.step("Bob registers", f"Bob does the same with {BOB}.")
    out = story.parley("--profile", "bob", "register", BOB, "--code", BOB_CODE)
    expect(out, f"registered {BOB}", "register Bob")

    story.step(
        "Alice sends",
        "Alice writes to Bob. Her client fetches Bob's prekey bundle, runs PQXDH to agree on a "
        "session key, encrypts with the Double Ratchet and sends one ciphertext per device of "
        "Bob. The server stores the ciphertext; it cannot read it.",
    )
    out = story.parley("--profile", "alice", "send", BOB, FIRST_TEXT)
    expect(out, "sent to", "Alice sends")

    story.step(
        "Bob listens",
        "Bob opens his message stream. His client decrypts the message, saves it, and only then "
        "acknowledges it; the acknowledgement deletes the server's copy and marks Alice's "
        "message delivered.",
    )
    out = story.parley("--profile", "bob", "listen", "--once")
    expect(out, FIRST_TEXT, "Bob listens")

    story.step("Bob answers", "Bob replies over the session that Alice's message set up.")
    story.parley("--profile", "bob", "send", ALICE, REPLY_TEXT)

    story.step(
        "Alice listens",
        "Alice gets Bob's reply, and the DELIVERED status of her first message: the server "
        "queued it for her sending device when Bob acknowledged.",
    )
    out = story.parley("--profile", "alice", "listen", "--once")
    expect(out, REPLY_TEXT, "Alice listens")
    expect(out, "delivered to", "Alice's delivery status")

    story.step(
        "Bob links his laptop",
        "Bob's phone (his primary device) asks the server for a one-time linking code; the "
        "laptop uses it to join his account as device 2, with an identity key of its own.",
    )
    out = story.parley("--profile", "bob", "link", "--json")
    code = str(json.loads(out)["linking_code"])
    # `--code=`: a linking code may begin with "-", which argparse would take for an option
    # (one code in 64 does; the demo failed on such a code).
    out = story.parley(
        "--profile", "bob-laptop", "link", f"--code={code}", "--device-name", "laptop"
    )
    expect(out, "device 2", "link the laptop")
    story.parley("--profile", "bob", "devices")

    story.step(
        "Alice writes to both of Bob's devices",
        "Alice's client learns from the server that Bob has a new device, fetches its bundle, "
        "and encrypts the message once for each device.",
    )
    out = story.parley("--profile", "alice", "send", BOB, SECOND_TEXT)
    expect(out, "devices 1, 2", "send to two devices")
    out = story.parley("--profile", "bob-laptop", "listen", "--once")
    expect(out, SECOND_TEXT, "the laptop listens")
    out = story.parley("--profile", "bob", "listen", "--once")
    expect(out, SECOND_TEXT, "the phone listens")

    story.step(
        "Safety numbers",
        "Alice and Bob compare safety numbers, in person or on a call. The number is computed "
        "from the identity keys of every device of both accounts, so if a server (or anyone) "
        "swapped a key, the numbers would differ.",
    )
    alice_view = story.parley("--profile", "alice", "safety-number", BOB)
    bob_view = story.parley("--profile", "bob-laptop", "safety-number", ALICE)
    numbers = [SAFETY_NUMBER.search(view) for view in (alice_view, bob_view)]
    if numbers[0] is None or numbers[1] is None:
        raise DemoError(f"no safety number in:\n{alice_view}\n{bob_view}")
    if numbers[0].group().split() != numbers[1].group().split():
        raise DemoError("Alice and Bob see different safety numbers")
    story.note("They match: nobody is in between.")

    story.step(
        "Under the hood: a protocol trace",
        "`parley trace` runs a short conversation between two in-memory parties and prints "
        "every PQXDH and ratchet step. Secret values stay hidden unless you add "
        "--reveal-secrets. The first lines:",
    )
    out = story.parley("trace", "--messages", "1", max_lines=TRACE_LINES)
    expect(out.lower(), "pqxdh", "trace")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Play the story; return 0 when every step did what it said, 1 otherwise."""
    del argv  # no options: the demo is the same every time
    out = out or sys.stdout
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="parley-demo-"))
    server: Server | None = None
    try:
        out.write("Parley demo: two people, three devices, one server on a temporary database.\n")
        server = Server(workdir, {ALICE: ALICE_CODE, BOB: BOB_CODE})
        out.write(
            f"The server listens on localhost:{server.port}; every command below reaches it "
            f"through PARLEY_SERVER=localhost:{server.port}.\n"
        )
        play(Story(workdir, server.port, out))
    except (DemoError, subprocess.TimeoutExpired) as exc:
        out.write(f"\ndemo failed: {exc}\n")
        return 1
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    out.write(
        f"\nDone in {time.monotonic() - started:.0f} s; the server is stopped and its "
        "temporary files are gone.\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
