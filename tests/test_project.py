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


# The domain's way into storage is the transaction protocol (server.domain.ports): it imports
# no database driver and no backend. Backends implement the protocol and store the domain's
# row types, so storage may import those modules of the domain and nothing else of it.
# directory_model, consent_model, sending_model, support_model, links_model, billing_model and
# usage_model are the business directory's, consent's, the sending rules', live support's,
# click-to-chat's, billing's and the usage report's model and ports, each in one module;
# replicas_model is the replica numbers and the wire format of the signals between replicas.
DOMAIN_SEEN_BY_STORAGE = {
    "server.domain.model",
    "server.domain.ports",
    "server.domain.directory_model",
    "server.domain.consent_model",
    "server.domain.sending_model",
    "server.domain.support_model",
    "server.domain.links_model",
    "server.domain.billing_model",
    "server.domain.usage_model",
    "server.domain.replicas_model",
}


@pytest.mark.parametrize(
    ("package", "forbidden", "allowed"),
    [
        # The domain knows no gRPC types, no generated stubs (servicers convert), no SQL.
        (
            "server/domain",
            {"grpc", "parley", "server.rpc", "server.storage", "sqlite3", "sqlite_utils"},
            set(),
        ),
        # Storage is below the domain: it imports neither the domain's rules nor gRPC.
        (
            "server/storage",
            {"grpc", "parley", "server.rpc", "server.domain"},
            DOMAIN_SEEN_BY_STORAGE,
        ),
    ],
)
def test_layer_boundaries(package: str, forbidden: set[str], allowed: set[str]) -> None:
    for path, names in _imports(REPO / package).items():
        bad = {
            n
            for n in names
            if (_top(n) in forbidden or any(n.startswith(f) for f in forbidden))
            and n not in allowed
        }
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


def test_ci_turns_every_skip_into_a_failure(tmp_path: Path) -> None:
    """CI must never pass by skipping: with PARLEY_REQUIRE_ALL=1 (set by .ci/run) a skip fails."""
    import os
    import subprocess
    import sys

    assert "PARLEY_REQUIRE_ALL=1" in (REPO / ".ci" / "run").read_text()
    probe = tmp_path / "test_probe_skip.py"
    probe.write_text(
        "import pytest\n\n"
        "@pytest.mark.skip(reason='needs foo: apt-get install foo')\n"
        "def test_marked():\n    pass\n\n"
        "def test_inside():\n    pytest.skip('needs bar')\n"
    )
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")

    def run(require_all: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PARLEY_REQUIRE_ALL": require_all, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    strict = run("1")
    assert strict.returncode == 1, strict.stdout
    # A skip marker fails in setup (an error), a skip inside the test fails the test.
    assert "1 failed, 1 error" in strict.stdout and "forbids skips: " in strict.stdout
    assert "apt-get install foo" in strict.stdout
    relaxed = run("")
    assert relaxed.returncode == 0 and "2 skipped" in relaxed.stdout, relaxed.stdout
