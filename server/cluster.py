"""`make run-cluster`: several server replicas on one PostgreSQL database, on this machine.

    python -m server.cluster [--database postgresql://...] [--replicas 2] [--port 50051]
                             [--host localhost] [-- SERVER OPTIONS...]

With `--database` (or PARLEY_DATABASE) naming a PostgreSQL database, the replicas use it. Without
one, a throwaway PostgreSQL is started from Debian's server binaries (`apt-get install -y
postgresql`) in a temporary folder, with durability off: for trying replicas out, never for data
you keep; it is deleted when this command ends. Replica i listens on port + i (each picks a free
port with --port 0). Put them behind one address with any HTTP/2 load balancer, or give gRPC
clients a `dns:///` target that resolves to all of them with round-robin (README, "Several
replicas").

Ctrl-C (SIGINT) or SIGTERM stops every replica gracefully, then the throwaway database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from server.storage.backend import is_postgres_url

START_TIMEOUT_S = 30.0


def _arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    args = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, extra = args[:cut], args[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m server.cluster",
        description="Run several Parley replicas on one PostgreSQL database.",
        epilog="Options after -- go to every replica (e.g. -- --admin-token T).",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get("PARLEY_DATABASE", ""),
        help="postgresql:// URL; without one, a throwaway local PostgreSQL is started",
    )
    parser.add_argument("--replicas", type=int, default=2, help="how many replicas (2)")
    parser.add_argument("--host", default="localhost", help="interface the replicas listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=50051,
        help="first replica's port; the next ones follow (0: free)",
    )
    parsed = parser.parse_args(args)
    if parsed.database and not is_postgres_url(parsed.database):
        parser.error("--database must be a postgresql:// URL: replicas need a shared database")
    if not 1 <= parsed.replicas <= 16:
        parser.error("--replicas must be between 1 and 16")
    return parsed, extra


@contextlib.contextmanager
def _database(url: str) -> Iterator[str]:
    """`url`, or a database of a throwaway cluster that lives as long as the block."""
    if url:
        yield url
        return
    from server.storage.postgres.local import (
        PostgresCluster,
        PostgresUnavailable,
        find_bin_dir,
    )

    try:
        bin_dir = find_bin_dir()
    except PostgresUnavailable as exc:
        raise SystemExit(f"parley cluster: {exc}; or pass --database postgresql://...") from None
    with PostgresCluster(bin_dir) as cluster:
        print(f"parley cluster: a throwaway PostgreSQL in {cluster.data_dir}", flush=True)
        yield cluster.create_database()


def wait_for_port(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> int:
    """The port a `python -m server --log-format json` process bound, read from its
    "listening on" log line in `log`; RuntimeError (with the log) if it exits or takes longer
    than `timeout` seconds. The tests start their server processes with it too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if str(record.get("msg", "")).startswith("listening on"):
                    return int(record["port"])
        if proc.poll() is not None:
            raise RuntimeError(f"parley-server exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.02)
    raise RuntimeError(f"parley-server did not start within {timeout} s:\n{log.read_text()}")


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = _arguments(argv)
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logs = Path(tempfile.mkdtemp(prefix="parley-cluster-"))
    with _database(args.database) as url:
        replicas: list[subprocess.Popen[bytes]] = []
        try:
            for i in range(args.replicas):
                port = 0 if args.port == 0 else args.port + i
                log = logs / f"replica-{i}.log"
                command = [sys.executable, "-m", "server", "--log-format", "json"]
                command += ["--database", url, "--host", args.host, "--port", str(port), *extra]
                with open(log, "wb") as sink:
                    replicas.append(
                        subprocess.Popen(
                            command,
                            stderr=sink,
                            # Ctrl-C reaches this process only: it stops the replicas in order.
                            start_new_session=True,
                        )
                    )
                try:
                    bound = wait_for_port(replicas[-1], log, START_TIMEOUT_S)
                except RuntimeError as exc:
                    raise SystemExit(f"parley cluster: replica {i}: {exc}") from None
                print(
                    f"parley cluster: replica {i} listening on {args.host}:{bound} (log {log})",
                    flush=True,
                )
            print("parley cluster: running; Ctrl-C stops it", flush=True)
            while not stopping and all(p.poll() is None for p in replicas):
                time.sleep(0.2)
            dead = [i for i, p in enumerate(replicas) if p.poll() is not None]
            if dead and not stopping:
                print(f"parley cluster: replica {dead[0]} exited; stopping", file=sys.stderr)
        finally:
            for p in replicas:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in replicas:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
    print("parley cluster: stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
