"""Fixtures for the libsignal interop tests (see libsignal_peer.py for the driver API).

* ``libsignal_090`` / ``libsignal_current``: session-scoped :class:`LibsignalPeer` processes for
  libsignal 0.90.0 and 0.103.0.
* ``libsignal``: the same, parametrized over both versions.

Every test under tests/interop gets the ``interop`` marker. Without ``node``/``npm`` on PATH the
tests are skipped with a reason; when npm cannot install the peer's packages they fail with
npm's output (never a silent pass).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.libsignal_peer import (
    V090,
    VCURRENT,
    LibsignalPeer,
    PeerInstallError,
    ensure_installed,
)

_HERE = Path(__file__).resolve().parent
_NO_NODE_REASON = (
    "libsignal interop tests need Node.js: `node` and `npm` must be on PATH "
    "(Node.js >= 20; the libsignal npm packages are installed on first use)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = shutil.which("node") is None or shutil.which("npm") is None
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)
            if missing:
                item.add_marker(pytest.mark.skip(reason=_NO_NODE_REASON))


@pytest.fixture(scope="session")
def libsignal_installed() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(_NO_NODE_REASON)
    error: PeerInstallError | None = None
    try:
        return ensure_installed()
    except PeerInstallError as e:
        error = e
    # Outside the except block, so the report shows npm's output without a chained traceback.
    pytest.fail(f"could not install the libsignal peer's npm packages:\n{error}", pytrace=False)


def _peer(version: str) -> Iterator[LibsignalPeer]:
    with LibsignalPeer(version) as peer:
        yield peer


@pytest.fixture(scope="session")
def libsignal_090(libsignal_installed: Path) -> Iterator[LibsignalPeer]:
    yield from _peer(V090)


@pytest.fixture(scope="session")
def libsignal_current(libsignal_installed: Path) -> Iterator[LibsignalPeer]:
    yield from _peer(VCURRENT)


@pytest.fixture(params=[V090, VCURRENT], ids=["libsignal-0.90", "libsignal-current"])
def libsignal(request: pytest.FixtureRequest) -> LibsignalPeer:
    name = "libsignal_090" if request.param == V090 else "libsignal_current"
    peer: LibsignalPeer = request.getfixturevalue(name)
    return peer
