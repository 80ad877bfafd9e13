"""The throwaway PostgreSQL cluster (server/storage/postgres/local.py) does what the PostgreSQL
backend's tests rely on: a fresh empty database per test, a real PostgreSQL 15+, a server that
is not root and listens on no TCP port, durability off, and nothing left behind.

Without the server binaries these tests skip with the command that installs them, like every
test of the backend; CI installs them and turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from server.storage.postgres import local as pgc
from server.storage.postgres.local import PostgresCluster, PostgresClusterError, PostgresUnavailable
from tests.tools import REPO

# Relations a test could have left behind: anything outside the system schemas.
USER_RELATIONS = """
    SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%'
"""


def one(url: str, query: str) -> object:
    """The single value `query` returns in the database at `url`."""
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


def dbname(url: str) -> str:
    return str(conninfo.conninfo_to_dict(url)["dbname"])


def test_each_postgres_url_is_a_fresh_empty_database(
    postgres_url: str, postgres_cluster: PostgresCluster
) -> None:
    assert one(postgres_url, USER_RELATIONS) == 0
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE marker (id int)")
        conn.execute("INSERT INTO marker VALUES (1)")
    # Made after the first one was written to: nothing of it shows through.
    other = postgres_cluster.create_database()
    try:
        assert dbname(other) != dbname(postgres_url)
        assert one(other, "SELECT current_database()") == dbname(other)
        assert one(postgres_url, "SELECT current_database()") == dbname(postgres_url)
        assert one(other, USER_RELATIONS) == 0
        assert one(other, "SELECT to_regclass('marker') IS NULL") is True
        assert one(postgres_url, "SELECT count(*) FROM marker") == 1
    finally:
        postgres_cluster.drop_database(other)


def test_the_url_names_everything_so_the_environment_cannot_redirect_it(
    postgres_url: str, postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = re.escape(str(postgres_cluster.socket_dir))
    pattern = rf"postgresql://parley@/parley_test_\d+\?host={host}&port=5432"
    assert re.fullmatch(pattern, postgres_url), postgres_url
    parts = conninfo.conninfo_to_dict(postgres_url)
    assert parts["host"] == str(postgres_cluster.socket_dir)
    assert parts["user"] == "parley" and parts["port"] == "5432"
    # libpq falls back on these for whatever a URL leaves out.
    for name, value in {
        "PGHOST": "/nonexistent",
        "PGPORT": "1",
        "PGUSER": "nobody_here",
        "PGDATABASE": "nothing",
    }.items():
        monkeypatch.setenv(name, value)
    assert one(postgres_url, "SELECT current_user || '/' || current_database()") == (
        f"parley/{dbname(postgres_url)}"
    )


def test_psycopg_talks_to_postgresql_15_or_newer(postgres_url: str) -> None:
    version = str(one(postgres_url, "SELECT version()"))
    assert version.startswith("PostgreSQL "), version
    major = int(version.split()[1].split(".")[0])
    assert major >= 15, version
    with psycopg.connect(postgres_url) as conn:
        assert conn.info.server_version >= 150000


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(u) for u in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def test_the_server_does_not_run_as_root(
    postgres_url: str, postgres_cluster: PostgresCluster
) -> None:
    expected = postgres_cluster.run_as.uid if postgres_cluster.run_as else os.getuid()
    assert expected != 0
    data_dir = Path(str(one(postgres_url, "SELECT current_setting('data_directory')")))
    assert data_dir == postgres_cluster.data_dir
    assert data_dir.stat().st_uid == expected
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert postgres_cluster.socket_dir.stat().st_uid == expected
    assert stat.S_IMODE(postgres_cluster.socket_dir.stat().st_mode) == 0o700
    # The postmaster (setpriv execs it: the pid we started) and a backend serving us, read
    # while its connection is open (the backend exits with it).
    assert _uids(postgres_cluster.pid) == [expected] * 4
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        assert _uids(int(row[0])) == [expected] * 4


def _listening_tcp_inodes() -> set[str]:
    """Socket inodes in LISTEN state (0A) over IPv4 and IPv6, from /proc/net."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def test_it_listens_on_a_unix_socket_only(
    postgres_url: str, postgres_cluster: PostgresCluster
) -> None:
    assert one(postgres_url, "SHOW listen_addresses") == ""
    assert one(postgres_url, "SHOW unix_socket_directories") == str(postgres_cluster.socket_dir)
    # NULL when the connection came over a Unix socket.
    assert one(postgres_url, "SELECT inet_server_addr() IS NULL") is True
    socket = postgres_cluster.socket_dir / ".s.PGSQL.5432"
    assert stat.S_ISSOCK(socket.stat().st_mode)
    # And no socket the postmaster holds is a listening TCP one.
    fds = Path(f"/proc/{postgres_cluster.pid}/fd")
    held = {
        m.group(1)
        for fd in fds.iterdir()
        if (m := re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd)))
    }
    assert held, "the postmaster holds no socket at all: this check would see nothing"
    assert not held & _listening_tcp_inodes()


def test_durability_is_off_and_there_is_room_for_several_pools(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()
            for name in (
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "max_connections",
                "server_encoding",
                "lc_collate",
            )
        }
    assert settings == {
        "fsync": ("off",),
        "synchronous_commit": ("off",),
        "full_page_writes": ("off",),
        "max_connections": ("200",),
        "server_encoding": ("UTF8",),
        "lc_collate": ("C",),
    }


def test_a_database_is_dropped_even_with_sessions_left_open(
    postgres_cluster: PostgresCluster,
) -> None:
    url = postgres_cluster.create_database()
    left_open = psycopg.connect(url)
    try:
        postgres_cluster.drop_database(url)
        admin = postgres_cluster.url("postgres")
        query = f"SELECT count(*) FROM pg_database WHERE datname = '{dbname(url)}'"
        assert one(admin, query) == 0
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("SELECT 1")
    finally:
        left_open.close()


def test_a_cluster_stops_and_leaves_nothing_behind(postgres_cluster: PostgresCluster) -> None:
    with PostgresCluster(postgres_cluster.bin_dir) as cluster:
        base, pid = cluster.base, cluster.pid
        assert base is not None and base.is_dir()
        # A session still open must not hold up the shutdown.
        session = psycopg.connect(cluster.create_database())
        assert session.execute("SELECT 1").fetchone() == (1,)
    session.close()
    assert not base.exists()
    assert not Path(f"/proc/{pid}").exists()
    cluster.stop()  # twice is harmless


def test_a_server_that_fails_to_start_reports_its_log_and_cleans_up(
    postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(pgc.SETTINGS, "max_connections", "many")
    # Not tmp_path: pytest makes its folders 0700, which the server's user could not enter.
    parent = Path(tempfile.mkdtemp(prefix="parley-pg-test-", dir=pgc.default_parent()))
    parent.chmod(0o711)
    try:
        cluster = PostgresCluster(postgres_cluster.bin_dir, parent=parent)
        with pytest.raises(PostgresClusterError, match="exited with") as failed:
            cluster.start()
        assert 'invalid value for parameter "max_connections"' in str(failed.value)
        assert cluster.base is None and list(parent.iterdir()) == []
    finally:
        shutil.rmtree(parent)


def test_a_socket_path_too_long_is_refused_before_anything_runs(tmp_path: Path) -> None:
    parent = tmp_path / ("x" * 100)
    parent.mkdir()
    cluster = PostgresCluster(Path("/nonexistent"), parent=parent)
    with pytest.raises(PostgresClusterError, match="longer than 107 bytes"):
        cluster.start()
    assert list(parent.iterdir()) == []


# -- finding the binaries (fake ones: these run everywhere) --------------------------------


def _fake_bin(folder: Path, version: str) -> Path:
    """`folder`/bin, whose `postgres --version` says `version` (Debian names the folder by
    the major version: 15, 16; 9.6 before PostgreSQL 10)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("postgres", "initdb"):
        path = bin_dir / tool
        path.write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) {version} (fake)'\n")
        path.chmod(0o755)
    return bin_dir


def test_no_binaries_is_a_skip_that_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable, match=r"apt-get install -y postgresql"):
        pgc.find_bin_dir({}, root=tmp_path / "absent")
    (tmp_path / "16").mkdir()  # a version folder without its binaries does not count
    with pytest.raises(PostgresUnavailable, match=r"apt-get install -y postgresql"):
        pgc.find_bin_dir({}, root=tmp_path)


def test_without_binaries_the_fixtures_skip_and_ci_fails(tmp_path: Path) -> None:
    """Through pytest itself, on a machine without PostgreSQL (the search folder is pointed
    elsewhere): a skip naming the install command, a failure under PARLEY_REQUIRE_ALL=1."""
    probe = tmp_path / "test_probe_postgres.py"
    probe.write_text("def test_needs_postgres(postgres_url):\n    pass\n")
    (tmp_path / "conftest.py").write_text(
        "from pathlib import Path\n\n"
        "import server.storage.postgres.local\n\n"
        "server.storage.postgres.local.DEBIAN_ROOT = Path('/nonexistent')\n\n"
        "from tests.conftest import *  # noqa: E402, F403\n"
    )

    def run(require_all: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PARLEY_REQUIRE_ALL": require_all, "PYTHONPATH": str(REPO)}
        env.pop("PARLEY_PG_BIN", None)
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(probe)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    relaxed = run("")
    assert relaxed.returncode == 0 and "1 skipped" in relaxed.stdout, relaxed.stdout
    assert "apt-get install -y postgresql" in relaxed.stdout, relaxed.stdout
    strict = run("1")
    assert strict.returncode == 1 and "1 error" in strict.stdout, strict.stdout
    assert "forbids skips" in strict.stdout and "apt-get install -y postgresql" in strict.stdout


def test_the_highest_version_wins_and_older_than_15_is_not_enough(tmp_path: Path) -> None:
    _fake_bin(tmp_path / "9.6", "9.6.24")
    _fake_bin(tmp_path / "13", "13.16")
    _fake_bin(tmp_path / "beta", "18beta1")  # not a version folder: ignored
    with pytest.raises(PostgresUnavailable, match=r"only PostgreSQL 13 .*apt-get install"):
        pgc.find_bin_dir({}, root=tmp_path)
    newest = _fake_bin(tmp_path / "16", "16.4")
    _fake_bin(tmp_path / "15", "15.18")
    assert pgc.find_bin_dir({}, root=tmp_path) == newest


def test_parley_pg_bin_overrides_and_a_wrong_one_is_an_error(tmp_path: Path) -> None:
    chosen = _fake_bin(tmp_path / "custom", "15.18")
    _fake_bin(tmp_path / "debian" / "17", "17.2")
    found = pgc.find_bin_dir({"PARLEY_PG_BIN": str(chosen)}, root=tmp_path / "debian")
    assert found == chosen
    with pytest.raises(PostgresClusterError, match=r"PARLEY_PG_BIN=.* has no executable"):
        pgc.find_bin_dir({"PARLEY_PG_BIN": str(tmp_path)}, root=tmp_path / "debian")
    old = _fake_bin(tmp_path / "old", "14.13")
    with pytest.raises(PostgresClusterError, match="is PostgreSQL 14"):
        pgc.find_bin_dir({"PARLEY_PG_BIN": str(old)}, root=tmp_path / "debian")
