"""`parley-server` / `python -m server`.

A server that cannot start says why in one line on stderr and exits 1: the operator reads a
sentence that names the problem and the fix, not a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from server import config, logs
from server.app import StartupError, serve
from server.storage.errors import CannotOpenDatabase
from server.storage.migrations import SchemaTooNewError


def main(argv: Sequence[str] | None = None) -> None:
    settings = config.load(argv)
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except (StartupError, CannotOpenDatabase, SchemaTooNewError) as exc:
        sys.exit(f"parley-server: {exc}")
    except OSError as exc:
        sys.exit(f"parley-server: cannot start: {exc}")
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        sys.exit(130)


if __name__ == "__main__":
    main()
