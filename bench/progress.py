"""A small progress bar on stderr: the benchmark's runs, one step at a time."""

from __future__ import annotations

import sys
import time

WIDTH = 30


class Progress:
    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.done = 0
        self.started = time.monotonic()
        self._draw("")

    def _draw(self, label: str) -> None:
        filled = int(WIDTH * self.done / max(1, len(self.steps)))
        bar = "#" * filled + "." * (WIDTH - filled)
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"\r[{bar}] {self.done}/{len(self.steps)} {elapsed:5.1f}s {label:<48.48}")
        sys.stderr.flush()

    def start(self, label: str) -> None:
        self._draw(label)

    def advance(self) -> None:
        self.done += 1
        self._draw("")
        if self.done == len(self.steps):
            sys.stderr.write("\n")
