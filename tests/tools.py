"""Paths of the external tools the tests drive (installed by the project's dev extra)."""

from __future__ import annotations

import shutil
import sys
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
