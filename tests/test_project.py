"""Project hygiene that a test can check: stub drift, layer boundaries, documented settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from server.config import OPTIONS, Settings, setting_names
from tests.tools import REPO


def test_generated_stubs_are_up_to_date() -> None:
    import sys

    sys.path.insert(0, str(REPO / "protos"))
    try:
        from generate import stale_files
    finally:
        sys.path.remove(str(REPO / "protos"))
    stale = stale_files()
    assert not stale, f"stale generated stubs {stale}: run `make protos` and commit the result"


def _imports(package: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(REPO))] = names
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        # The domain knows no gRPC types and no generated stubs (servicers convert).
        ("server/domain", {"grpc", "parley", "server.rpc"}),
        # Storage is below the domain: it imports neither the domain nor gRPC.
        ("server/storage", {"grpc", "parley", "server.rpc", "server.domain"}),
    ],
)
def test_layer_boundaries(package: str, forbidden: set[str]) -> None:
    for path, names in _imports(REPO / package).items():
        bad = {n for n in names if _top(n) in forbidden or any(n.startswith(f) for f in forbidden)}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_server_imports_only_the_crypto_core_from_the_client() -> None:
    for path, names in _imports(REPO / "server").items():
        bad = {n for n in names if _top(n) == "client" and not n.startswith("client.crypto")}
        assert not bad, f"{path} imports {sorted(bad)}: the server may use only client.crypto"


def test_every_setting_is_an_option_and_documented_in_readme() -> None:
    readme = (REPO / "README.md").read_text()
    assert {o.name for o in OPTIONS} == set(setting_names())
    for opt in OPTIONS:
        assert opt.env in readme, f"README's configuration table lacks {opt.env}"
    assert Settings().port == 50051 and Settings().host == "localhost"
