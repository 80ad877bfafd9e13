"""``client.crypto`` is a sans-IO library: it imports only the standard library,
``cryptography`` and ``xeddsa``, so it can be reviewed and reused without the rest."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRYPTO = ROOT / "client" / "crypto"
ALLOWED_THIRD_PARTY = {"cryptography", "xeddsa"}
FORBIDDEN = ("grpc", "google.protobuf", "sqlite3", "sqlite_utils", "socket", "asyncio", "parley")


def test_static_imports_are_stdlib_cryptography_xeddsa_or_local() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in CRYPTO.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = top in stdlib or top in ALLOWED_THIRD_PARTY or name.startswith("client.crypto")
                assert ok, f"{path.relative_to(ROOT)} imports {name}"
                assert not name.startswith(FORBIDDEN), f"{path.relative_to(ROOT)} imports {name}"


def test_importing_the_core_loads_no_network_or_database_module() -> None:
    code = (
        "import json, sys\n"
        "import client.crypto, client.crypto.session, client.crypto.pqxdh, client.crypto.xeddsa\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if m.startswith(FORBIDDEN) or m == "sqlite3"]
    assert not bad, f"client.crypto pulled in {bad}"
