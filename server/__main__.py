"""`parley-server` / `python -m server`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from server import config, logs
from server.app import serve
from server.storage.migrations import SchemaTooNewError


def main(argv: Sequence[str] | None = None) -> None:
    settings = config.load(argv)
    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except SchemaTooNewError as exc:
        sys.exit(f"parley-server: {exc}")
    except OSError as exc:
        sys.exit(f"parley-server: cannot start: {exc}")


if __name__ == "__main__":
    main()
