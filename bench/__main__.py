"""`make bench` (`python -m bench [--quick]`): Parley's figures next to ceilings and peers
measured in the same run.

Prints a table, writes bench/results.json and draws bench/results.png. Every figure is
measured here, now, on this machine: each goal is checked against this run's figures (a
ratio to a ceiling, a multiple of the disk's own latency), not against numbers from elsewhere.
`--quick` runs every section scaled down (bench.sizes.QUICK) for CI-sized checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import ceilings, crypto_bench, full_path, libsignal_bench, plot, report
from bench import messaging_bench as mb
from bench.accounts import create_database, prefill_accounts
from bench.delivery import deliver
from bench.fanout import fan_out
from bench.progress import Progress
from bench.sizes import FULL, QUICK, Sizes
from bench.streams import connected_devices
from server.domain.model import AccountKind

RESULTS = Path(__file__).with_name("results.json")
LATENCY_RATE = 1000.0
SHORT_BIN_S = 0.25  # the short runs last seconds: quarter-second bins show their shape
SUSTAINED_BIN_S = 1.0
# Rounds of plain and template sends back to back (business_templates). One round's ratio
# swings by about +-0.05 with the VM's speed (0.71-0.92 within one run of identical rounds);
# the median of seven is about half as wide as one round, for ~5 s more than three rounds.
BUSINESS_ROUNDS = 7
# Conversations of the full path, one after the other (full_path_run).
FULL_PATH_ROUNDS = 3

Results = dict[str, Any]
Section = Callable[[Results, Sizes], None]


@contextmanager
def fresh_server(accounts: int, *extra: str) -> Iterator[mb.Server]:
    """A server on a new temporary SQLite file with `accounts` test numbers; both go after."""
    database = mb.temp_database()
    try:
        with mb.server_process(database, accounts, *extra) as server:
            yield server
    finally:
        shutil.rmtree(database.parent, ignore_errors=True)


def grpc_ceilings(results: Results, sizes: Sizes) -> None:
    results.setdefault("ceilings", {}).update(
        ceilings.grpc_ceilings(sizes.stream_ceiling_writes, sizes.unary_ceiling_calls)
    )


def storage_ceilings(results: Results, sizes: Sizes) -> None:
    results.setdefault("ceilings", {})["storage_delivered_per_s"] = ceilings.storage_ceiling(
        sizes.storage_ceiling_messages
    )
    results["disk"] = ceilings.commit_latency(sizes.commit_samples)


def short_runs(results: Results, sizes: Sizes) -> None:
    """One pair, then `many_pairs` pairs, each on a server of its own (an empty database)."""
    d = results.setdefault("delivery", {})
    d["pairs"] = sizes.many_pairs
    for key, n, per_pair in (
        ("one_pair", 1, sizes.pair_messages),
        ("many_pairs", sizes.many_pairs, sizes.many_pair_messages),
    ):
        with fresh_server(2 * n) as server:
            pairs = asyncio.run(mb.make_pairs(server, n))
            run = asyncio.run(deliver([server], pairs, per_pair=per_pair))
            d[key] = run.summary(SHORT_BIN_S)


def sustained_run(results: Results, sizes: Sizes) -> None:
    """The short many-pairs run's load for `sustained_seconds` (then until all delivered),
    with the database's size at the end: what the store holds after the run (settled
    messages are kept a while for request-id retries, so it grows with the traffic)."""
    with fresh_server(2 * sizes.many_pairs) as server:
        pairs = asyncio.run(mb.make_pairs(server, sizes.many_pairs))
        run = asyncio.run(deliver([server], pairs, seconds=sizes.sustained_seconds))
        database = Path(server.database)
        wal = database.with_name(database.name + "-wal")
        results.setdefault("delivery", {})["sustained"] = {
            **run.summary(SUSTAINED_BIN_S),
            "database_bytes": database.stat().st_size,
            "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        }


def business_templates(results: Results, sizes: Sizes) -> None:
    """Template sends of a business (every sending rule checked: template, consent, window,
    limits, rate), each billed (priced, reserved on send, captured on the ack, with its status
    events), next to plain person-to-person sends, on one server in one run; delivered means
    the same for both: the DELIVERED status acked by the sender.

    One pair of runs says little on a shared VM, whose speed drifts by 10-20% within a
    minute: BUSINESS_ROUNDS rounds each run both kinds back to back (the order alternating,
    so neither always gets the emptier file or the first seconds), and the ratio is the median
    of the rounds' ratios, with its range. The server's CPU per delivered message (user +
    system, from /proc) says where the difference goes."""
    with fresh_server(4, *mb.BUSINESS_FLAGS) as server:
        plain = asyncio.run(mb.make_pairs(server, 1))
        business, template_id = asyncio.run(mb.business_pair(server, 2))
        per_round = max(1, sizes.pair_messages // 2)
        kinds = {"plain": (plain, ""), "template": ([business], template_id)}
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "template": []}
        for i in range(BUSINESS_ROUNDS):
            for kind in ("plain", "template") if i % 2 == 0 else ("template", "plain"):
                pairs, template = kinds[kind]
                before = mb.cpu_seconds([server.pid])
                run = asyncio.run(
                    deliver([server], pairs, per_pair=per_round, template_id=template)
                )
                cpu = (mb.cpu_seconds([server.pid]) - before) / run.messages
                runs[kind].append((run.per_s, cpu * 1e6))
        ratios = [t[0] / p[0] for p, t in zip(runs["plain"], runs["template"], strict=True)]
        results["business"] = {
            "plain_per_s": statistics.median(r[0] for r in runs["plain"]),
            "template_per_s": statistics.median(r[0] for r in runs["template"]),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "plain_cpu_us": statistics.median(r[1] for r in runs["plain"]),
            "template_cpu_us": statistics.median(r[1] for r in runs["template"]),
        }


def replicas(results: Results, sizes: Sizes) -> None:
    """The same load (replica_pairs pairs) on one replica on SQLite, one on PostgreSQL, and two
    on one PostgreSQL database (pairs spread round-robin), in this run. The PostgreSQL cluster
    is the tests' throwaway one (server/storage/postgres/local.py): memory-backed where there
    is room, fsync off; SQLite runs at its default, fsync on every commit, on disk."""
    from server.storage.postgres.local import PostgresCluster, find_bin_dir

    figures = results.setdefault("replicas", {"pairs": sizes.replica_pairs})
    accounts = 2 * sizes.replica_pairs

    def measure(name: str, servers: list[mb.Server], postmaster: int = 0) -> None:
        """Delivered msgs/s, and the cores each party used meanwhile (CPU s / wall s)."""
        pairs = asyncio.run(mb.make_pairs(servers[0], sizes.replica_pairs))
        me = [os.getpid()]
        replicas = [s.pid for s in servers]
        db = [postmaster] if postmaster else []
        before = [mb.cpu_seconds(me), mb.cpu_seconds(replicas), mb.cpu_seconds([], db)]
        started = time.perf_counter()
        run = asyncio.run(deliver(servers, pairs, per_pair=sizes.replica_pair_messages))
        figures[f"{name}_per_s"] = run.per_s
        wall = time.perf_counter() - started
        after = [mb.cpu_seconds(me), mb.cpu_seconds(replicas), mb.cpu_seconds([], db)]
        figures[f"{name}_cores"] = {
            party: round((b - a) / wall, 2)
            for party, a, b in zip(
                ("load generator", "replicas", "PostgreSQL"), before, after, strict=True
            )
        }

    with fresh_server(accounts) as server:
        measure("sqlite_one_replica", [server])
    with PostgresCluster(find_bin_dir()) as cluster:
        with mb.server_process(cluster.create_database(), accounts) as server:
            measure("postgres_one_replica", [server], cluster.pid)
        shared = cluster.create_database()
        with (
            mb.server_process(shared, accounts) as a,
            mb.server_process(shared, accounts) as b,
        ):
            measure("postgres_two_replicas", [a, b], cluster.pid)


def full_path_run(results: Results, sizes: Sizes) -> None:
    """FULL_PATH_ROUNDS conversations of `full_path_messages` one after the other on one
    server, each with new clients; the figure is their median. One round lasts about a
    second, shorter than the VM's speed drifts: single rounds of one run moved by 30%."""
    with fresh_server(4) as server:
        rounds = [full_path.run(server, sizes.full_path_messages) for _ in range(FULL_PATH_ROUNDS)]
        results["full_path"] = {
            "per_s": statistics.median(rounds),
            "rounds": rounds,
            "messages": sizes.full_path_messages,
        }


# The latency section's server logs whatever holds it up longer than this (server.watchdog):
# twice the p99 goal, so the stalls that can cost the goal are named, not every commit.
STALL_WARNING_MS = 20


def latency(results: Results, sizes: Sizes) -> None:
    """The earlier sections leave hundreds of MiB of deleted files and a stopped PostgreSQL
    behind; their write-back would land in this section's fsyncs. The disk is flushed first,
    so the tail measured is Parley's, on the disk the reference commit latency was taken on."""
    os.sync()
    time.sleep(1.0)
    with fresh_server(2, "--stall-warning-ms", str(STALL_WARNING_MS)) as server:
        pairs = asyncio.run(mb.make_pairs(server, 1))
        results["latency"] = asyncio.run(
            mb.latency(server, pairs[0], LATENCY_RATE, sizes.latency_seconds)
        )


def stored(results: Results, sizes: Sizes) -> None:
    database = mb.temp_database()
    try:
        with mb.server_process(database, 4) as server:
            pairs = asyncio.run(mb.make_pairs(server, 2))
        mb.prefill(database, sizes.stored_envelopes, pairs[1].receiver, pairs[1].sender)
        with mb.server_process(database, 4) as server:
            run = asyncio.run(deliver([server], pairs[:1], per_pair=sizes.pair_messages))
        results["stored"] = {"envelopes": sizes.stored_envelopes, "per_s": run.per_s}
    finally:
        shutil.rmtree(database.parent, ignore_errors=True)


@contextmanager
def prefilled_server(
    devices: int, kind: AccountKind, *extra: str
) -> Iterator[tuple[mb.Server, mb.Account, list[mb.Account]]]:
    """A server whose database holds one account of `kind` and `devices` person accounts,
    written before it starts (bench.accounts)."""
    database = mb.temp_database()
    try:
        create_database(database)
        (first,) = prefill_accounts(database, 1, kind=kind)
        others = prefill_accounts(database, devices, first=1)
        with mb.server_process(database, 0, *extra) as server:
            yield server, first, others
    finally:
        shutil.rmtree(database.parent, ignore_errors=True)


def connected(results: Results, sizes: Sizes) -> None:
    with prefilled_server(max(sizes.connected), AccountKind.PERSON) as (server, caller, devices):
        results["connected"] = connected_devices(
            server, devices, caller, sizes.connected, sizes.unary_samples
        )


def fanout(results: Results, sizes: Sizes) -> None:
    with prefilled_server(sizes.fanout_users, AccountKind.BUSINESS, *mb.BUSINESS_FLAGS) as (
        server,
        business,
        users,
    ):
        results["fanout"] = fan_out(server, business, users)


def crypto(results: Results, sizes: Sizes) -> None:
    results.setdefault("crypto", {})["parley"] = crypto_bench.run(
        parallel=False, scale=sizes.crypto_scale
    )


def libsignal(results: Results, sizes: Sizes) -> None:
    c = results.setdefault("crypto", {})
    scale = sizes.crypto_scale / 2
    c["libsignal_0.90"] = libsignal_bench.run(libsignal_bench.V090, scale=scale)
    c["libsignal_current"] = libsignal_bench.run(libsignal_bench.VCURRENT, scale=scale)


SECTIONS: list[tuple[str, Section]] = [
    ("ceilings: bare gRPC stream and unary, Parley's batches", grpc_ceilings),
    ("ceilings: storage rows of a delivery, fsync'd commits", storage_ceilings),
    ("delivered: one pair and several pairs, short runs", short_runs),
    ("delivered: several pairs, sustained run", sustained_run),
    ("delivered: business template sends next to plain", business_templates),
    ("replicas: SQLite, one and two PostgreSQL replicas", replicas),
    ("delivered: full path (encrypted, durable clients)", full_path_run),
    ("latency at 1,000 msgs/s offered", latency),
    ("delivered with envelopes stored", stored),
    ("connected devices: idle streams", connected),
    ("fan-out: one business to many users", fanout),
    ("crypto: Parley's triple ratchet and PQXDH", crypto),
    ("crypto: libsignal 0.90 and 0.103 (Node.js)", libsignal),
]


def run(
    sizes: Sizes,
    sections: Sequence[tuple[str, Section]] = SECTIONS,
    results_path: Path = RESULTS,
) -> Results:
    """Run `sections` at `sizes`; write the JSON and the PNG beside it; return the results.
    One failed section is recorded under "errors" and does not hide the others."""
    progress = Progress([name for name, _ in sections])
    results: Results = {
        "mode": sizes.name,
        "sizes": asdict(sizes),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count() or 0},
        "started": time.time(),
    }
    for name, section in sections:
        progress.start(name)
        try:
            section(results, sizes)
        except Exception as exc:
            results.setdefault("errors", {})[name] = repr(exc)
        progress.advance()
    results["duration_s"] = time.time() - results["started"]
    results["goals"] = [asdict(g) for g in report.goals(results)]
    results_path.write_text(json.dumps(results, indent=2, sort_keys=True))
    plot.draw(results, results_path.with_suffix(".png"))
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="every section scaled down (well under 2 minutes)"
    )
    args = parser.parse_args(argv)
    results = run(QUICK if args.quick else FULL)
    print(report.table(results))
    print(
        f"\n{results['mode']} run, {results['duration_s']:.0f} s;"
        f" written to {RESULTS} and {RESULTS.with_suffix('.png')}"
    )
    return 1 if "errors" in results else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
