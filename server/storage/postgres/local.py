"""A throwaway PostgreSQL cluster, from the machine's own server binaries: for the tests, and
for `make run-cluster` (`server.cluster`) when no database is given.

The PostgreSQL backend has to be tested against a real server, and a shared or long-lived one
would let tests see each other's data and depend on how a machine was set up. So the test
session runs its own cluster: `initdb` into a temporary folder, `postgres` listening on a Unix
socket in that folder and nowhere else (no TCP port to collide with another session, nothing
reachable from the network), every test gets a fresh empty database, and the folder is deleted
at the end.

The binaries are Debian's (`apt-get install -y postgresql`): the highest version found under
`/usr/lib/postgresql/<version>/bin`, or the bin folder that `PARLEY_PG_BIN` names. They are
never downloaded at test time. PostgreSQL 15 or newer is needed (`CREATE DATABASE ... STRATEGY`).

Durability is switched off (`fsync`, `synchronous_commit`, `full_page_writes`, `initdb
--no-sync`): a crash of this cluster loses nothing anyone needs, and syncing would make every
commit wait on the disk of a machine the tests share; for the same reason the folder is in
/dev/shm (memory) when there is room (`default_parent`). `max_connections` is 200 because some
tests run several server replicas at once, each with its own pool.

PostgreSQL refuses to run as root (a compromised server must not own the machine). When the
tests run as root, as CI does, `initdb` and `postgres` run as the `postgres` OS user (or
`nobody` where there is none) through `setpriv`, and the temporary folder belongs to that user
with mode 0700. The test process connects as root, which may enter any folder.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import conninfo, sql

INSTALL_HINT = "apt-get install -y postgresql (Debian, as root; .ci/run does it)"
# Where Debian's postgresql-<version> packages put the server binaries.
DEBIAN_ROOT = Path("/usr/lib/postgresql")
BIN_ENV = "PARLEY_PG_BIN"
MIN_MAJOR = 15
# The superuser that `initdb -U` creates, whatever OS user runs the server: URLs name it.
SUPERUSER = "parley"
# Any port works: the socket file lives in this cluster's private folder, so clusters of other
# sessions (or the machine's own server) never collide. It is spelled out on both sides so a
# PGPORT in the environment, which both postgres and libpq read, changes neither.
PORT = 5432
# The server's settings (see the module docstring for why each).
SETTINGS = {
    "listen_addresses": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
# Memory-backed, where there is one with room: see `default_parent`.
SHM = Path("/dev/shm")
SHM_MIN_FREE = 1 << 30
# sun_path holds 108 bytes with the final NUL; PostgreSQL refuses a longer socket path.
MAX_SOCKET_PATH = 107
# The signal the server gets if the process that started it dies without stopping it (a killed
# pytest): an immediate shutdown, which also stops the server's own children.
ORPHAN_SIGNAL = "SIGQUIT"


class PostgresUnavailable(Exception):
    """No usable server binaries on this machine: the tests that need them skip (the message
    says what to install), and CI turns that skip into a failure."""


class PostgresClusterError(RuntimeError):
    """The binaries are there but the cluster could not be set up or did not start: a real
    failure, never a skip. The message carries the tail of the tool's or the server's log."""


@dataclass(frozen=True)
class RunAs:
    """The unprivileged OS user that runs initdb and postgres when the tests run as root."""

    name: str
    uid: int
    gid: int


def find_bin_dir(environ: Mapping[str, str] | None = None, root: Path | None = None) -> Path:
    """The folder holding `initdb` and `postgres`, version 15 or newer.

    `PARLEY_PG_BIN`, when set, is taken as is: a wrong value is a mistake to report
    (PostgresClusterError), not a reason to skip. Otherwise the highest version under `root`
    wins, and having none (or only older ones) raises PostgresUnavailable with the install
    command, so a developer's run skips with a reason that says what to do.
    """
    env = os.environ if environ is None else environ
    root = DEBIAN_ROOT if root is None else root
    explicit = env.get(BIN_ENV)
    if explicit:
        bin_dir = Path(explicit)
        if not _has_binaries(bin_dir):
            raise PostgresClusterError(
                f"{BIN_ENV}={explicit} has no executable initdb and postgres; point it at a "
                f"PostgreSQL {MIN_MAJOR}+ bin folder or unset it"
            )
        major = server_major(bin_dir)
        if major < MIN_MAJOR:
            raise PostgresClusterError(
                f"{BIN_ENV}={explicit} is PostgreSQL {major}; the tests need {MIN_MAJOR}+"
            )
        return bin_dir
    found = sorted(
        (
            (_version_key(d.name), d / "bin")
            for d in (root.iterdir() if root.is_dir() else [])
            if _version_key(d.name) and _has_binaries(d / "bin")
        ),
        reverse=True,
    )
    if not found:
        raise PostgresUnavailable(
            f"needs the PostgreSQL {MIN_MAJOR}+ server binaries (initdb, postgres) under "
            f"{root}/<version>/bin or in {BIN_ENV}: {INSTALL_HINT}"
        )
    bin_dir = found[0][1]
    major = server_major(bin_dir)
    if major < MIN_MAJOR:
        raise PostgresUnavailable(
            f"found only PostgreSQL {major} ({bin_dir}); the tests need {MIN_MAJOR}+: "
            f"{INSTALL_HINT}"
        )
    return bin_dir


def server_major(bin_dir: Path) -> int:
    """The major version `postgres --version` reports ("postgres (PostgreSQL) 15.18 (...)")."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not match:
        raise PostgresClusterError(f"{bin_dir / 'postgres'} --version said {out!r}")
    return int(match.group(1))


def _has_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "postgres"))


def _version_key(name: str) -> tuple[int, ...]:
    """Sorts "9.6" below "15" (a plain string sort would not); () for a non-version name."""
    return tuple(int(p) for p in name.split(".")) if re.fullmatch(r"\d+(\.\d+)*", name) else ()


def unprivileged_user() -> RunAs | None:
    """Whom to run the server as: None (ourselves) unless we are root, else `postgres`, which
    Debian's package creates, or `nobody`, which every system has."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    raise PostgresClusterError("running as root, and neither a postgres nor a nobody user exists")


def default_parent() -> Path:
    """Where the cluster's folder goes: /dev/shm when it is a tmpfs with 1 GiB free, else the
    temporary folder (TMPDIR).

    Every CREATE DATABASE writes about 7 MB of files. On a disk shared with other work, the
    kernel's write-back throttling made that 45-250 ms (median) in /tmp on the machine this was
    written on, against 9-11 ms in /dev/shm, where nothing is ever written back. The data is
    lost when the machine stops, which is all a throwaway cluster needs. (A container's
    /dev/shm is often 64 MB, hence the free-space check.)
    """
    try:
        stat = os.statvfs(SHM)
    except OSError:
        return Path(tempfile.gettempdir())
    if os.access(SHM, os.W_OK | os.X_OK) and stat.f_bavail * stat.f_frsize >= SHM_MIN_FREE:
        return SHM
    return Path(tempfile.gettempdir())


class PostgresCluster:
    """One throwaway cluster: `start()` (or `with`) creates and starts it, `stop()` ends it and
    deletes its folder; `create_database()` hands out fresh empty databases by URL.

    The server is started through `setpriv --pdeathsig`, so if the starting *thread* dies
    without calling `stop()` (pytest killed with SIGKILL), the server shuts itself down; only
    the temporary folder (`parley-pg-*`) is then left behind. Start it from a thread that outlives
    it, as pytest's fixtures do (they run on the main thread).
    """

    def __init__(
        self, bin_dir: Path, *, parent: Path | None = None, start_timeout: float = 30.0
    ) -> None:
        self.bin_dir = bin_dir
        self.start_timeout = start_timeout
        self.run_as = unprivileged_user()
        # Where the cluster's folder is made; None: default_parent(). Keep it short, the
        # socket path must fit in 107 bytes.
        self.parent = parent
        self.base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin: psycopg.Connection[tuple[object, ...]] | None = None
        self._lock = threading.Lock()
        self._count = 0

    # -- where things are ------------------------------------------------------------------

    def _base(self) -> Path:
        assert self.base is not None, "the cluster is not started"
        return self.base

    @property
    def socket_dir(self) -> Path:
        """The folder holding the server's Unix socket (and everything else of the cluster)."""
        return self._base()

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgres.log"

    @property
    def pid(self) -> int:
        """The postmaster's pid (setpriv execs it, so it is the process we started)."""
        assert self._proc is not None, "the cluster is not started"
        return self._proc.pid

    def url(self, dbname: str) -> str:
        """A libpq URL for `dbname` over the socket, e.g.
        `postgresql://parley@/parley_test_1?host=/dev/shm/parley-pg-x1y2&port=5432`.

        The host is a folder, so it goes in the query (a URL's host part cannot hold a path);
        user, database, host and port are all named, so PGUSER, PGDATABASE, PGHOST or PGPORT
        in the environment cannot send a connection elsewhere.
        """
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{quote(dbname, safe='')}?host={host}&port={PORT}"

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """initdb, start the server, wait until it accepts connections; cleans up on failure."""
        assert self.base is None, "the cluster is already started"
        self.base = Path(tempfile.mkdtemp(prefix="parley-pg-", dir=self.parent or default_parent()))
        try:
            self._check_socket_path()
            if self.run_as is not None:
                os.chown(self.base, self.run_as.uid, self.run_as.gid)
            os.chmod(self.base, 0o700)
            self._initdb()
            self._start_server()
            self._admin = self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: open sessions are ended, no waiting for clients), SIGKILL if
        that takes longer than `timeout`, then delete the folder. Safe to call twice."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        killed = False
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout)
                    killed = True
            self._proc = None
        if self.base is not None:
            # After a SIGKILL the server's children may still be exiting and writing.
            shutil.rmtree(self.base, ignore_errors=killed)
            self.base = None

    def _check_socket_path(self) -> None:
        socket = self.socket_dir / f".s.PGSQL.{PORT}"
        if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
            raise PostgresClusterError(
                f"the socket path {socket} is longer than {MAX_SOCKET_PATH} bytes, which "
                "PostgreSQL refuses; set TMPDIR to a shorter folder (e.g. /tmp)"
            )

    def _command(self, tool: str, *args: str, orphan_signal: bool = False) -> list[str]:
        """`tool args`, run as the unprivileged user when we are root."""
        prefix: list[str] = []
        setpriv = shutil.which("setpriv")
        if self.run_as is not None:
            if setpriv is None:
                raise PostgresClusterError(
                    "running as root needs setpriv (util-linux) to start PostgreSQL as "
                    f"{self.run_as.name}; PostgreSQL refuses to run as root"
                )
            prefix = [
                setpriv,
                f"--reuid={self.run_as.uid}",
                f"--regid={self.run_as.gid}",
                "--init-groups",
            ]
        elif setpriv is not None and orphan_signal:
            prefix = [setpriv]
        if orphan_signal and prefix:
            prefix.append(f"--pdeathsig={ORPHAN_SIGNAL}")
        return [*prefix, str(self.bin_dir / tool), *args]

    def _env(self) -> dict[str, str]:
        """Our environment without PG* variables: PGDATA, PGPORT, PGOPTIONS... would change
        what initdb and postgres do."""
        return {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def _initdb(self) -> None:
        # --locale=C: sorting and case rules that do not depend on the machine's locales
        # (and need none installed); UTF8 so any text can be stored.
        done = subprocess.run(
            self._command(
                "initdb",
                f"--pgdata={self.data_dir}",
                f"--username={SUPERUSER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ),
            cwd=self.base,  # the unprivileged user may not be able to enter ours
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise PostgresClusterError(
                f"initdb failed ({done.returncode}) in {self.base}:\n"
                + _tail(done.stdout + done.stderr)
            )

    def _start_server(self) -> None:
        settings = [f"{k}={v}" for k, v in SETTINGS.items()]
        settings.append(f"unix_socket_directories={self.socket_dir}")
        args = ["-D", str(self.data_dir), "-p", str(PORT)]
        for setting in settings:
            args += ["-c", setting]
        # The log is a file, never a pipe nobody reads (a full pipe would block the server).
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self._command("postgres", *args, orphan_signal=True),
                cwd=self.base,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches pytest, whose teardown
                # stops the server, rather than the server directly, mid-test.
                start_new_session=True,
            )

    def _wait_until_ready(self) -> psycopg.Connection[tuple[object, ...]]:
        """Connect until the server answers; the connection is kept for CREATE DATABASE."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PostgresClusterError(
                    f"postgres exited with {self._proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            try:
                return psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5)
            except psycopg.OperationalError as exc:  # no socket yet, or "starting up"
                last = exc
            time.sleep(0.05)
        raise PostgresClusterError(
            f"postgres did not accept connections within {self.start_timeout} s "
            f"(last error: {last}):\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        if self.base is None:
            return "(no server log: the cluster is not started)"
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError as exc:
            return f"(no server log: {exc})"

    # -- databases -------------------------------------------------------------------------

    def create_database(self, template: str = "template0") -> str:
        """A new database, a copy of `template`; returns its URL (see `url`).

        By default a copy of template0, never template1: template0 is pristine by definition
        (nobody can connect to it, so nothing a test does leaks into later databases) and, for
        the same reason, copying it never fails with "source database is being accessed by
        other users". Another template must have no open session either (`make_template`
        closes its own). STRATEGY FILE_COPY copies the files instead of writing every page to
        the WAL (15's default, WAL_LOG), which halves what is written: about 9 ms in /dev/shm
        here, with fewer outliers than WAL_LOG (12 ms, up to 30 ms).
        """
        with self._lock:
            if self._admin is None:
                raise PostgresClusterError("the cluster is not running")
            self._count += 1
            name = f"parley_test_{self._count}"
            self._admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return self.url(name)

    def make_template(self, name: str, prepare: Callable[[str], None]) -> str:
        """A database `name` that `prepare(url)` sets up once (e.g. migrates), for
        `create_database(template=name)` to copy: every copy starts where `prepare` left it,
        for the price of a file copy. `prepare` must close its connections."""
        with self._lock:
            if self._admin is None:
                raise PostgresClusterError("the cluster is not running")
            self._admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        prepare(self.url(name))
        return name

    def drop_database(self, url: str, timeout: float = 5.0) -> None:
        """Drop a database `create_database` made; each copy takes about 7 MB.

        Its sessions are ended first (a pool a test left open must not keep the database),
        and their end is awaited here, polling every millisecond: DROP DATABASE, like
        `pg_terminate_backend(pid, timeout)`, sleeps 100 ms whenever it finds a backend still
        on its way out, which a connection the test has just closed usually is. That made a
        drop take 100 ms instead of 6 ms for about a third of the tests. WITH (FORCE) covers
        a session that connects in between.
        """
        name = str(conninfo.conninfo_to_dict(url)["dbname"])
        with self._lock:
            if self._admin is None:
                raise PostgresClusterError("the cluster is not running")
            admin = self._admin
            sessions = "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            admin.execute(f"SELECT pg_terminate_backend(pid) {sessions}", [name])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                left = admin.execute(f"SELECT count(*) {sessions}", [name]).fetchone()
                if left is None or left[0] == 0:
                    break
                time.sleep(0.001)
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
