"""`make bench`: Parley's figures next to the ceilings and peers measured in the same run.

Prints a table and writes bench/results.json. Every figure is measured here, now, on this
machine: the goals are ratios to ceilings measured in the same run, not numbers from elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ceilings, crypto_bench, full_path, libsignal_bench
from bench import messaging_bench as mb
from bench.progress import Progress

RESULTS = Path(__file__).with_name("results.json")
PAIR_MESSAGES = 30_000
MANY_PAIRS = 8
MANY_PAIR_MESSAGES = 4_000
LATENCY_RATE = 1000.0
LATENCY_SECONDS = 3.0
STORED_ENVELOPES = 1_000_000
REPLICA_PAIRS = 8
REPLICA_PAIR_MESSAGES = 3_000


def main() -> int:
    steps: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("gRPC ceilings (bare stream, unary echo)", _grpc_ceilings),
        ("SQLite ceiling (insert+delete, FULL)", _sqlite_ceiling),
        ("messaging: one pair, server path", _one_pair),
        (f"messaging: {MANY_PAIRS} pairs, server path", _many_pairs),
        ("messaging: business template sends next to plain sends", _business_templates),
        ("replicas: SQLite, one and two PostgreSQL replicas", _replicas),
        ("messaging: one pair, full path (encrypted)", _full_path),
        ("latency at 1,000 msg/s offered", _latency),
        (f"messaging with {STORED_ENVELOPES:,} envelopes stored", _stored),
        ("crypto: Parley's Double Ratchet and PQXDH", _crypto),
        ("crypto: libsignal 0.90 and 0.103 (Node.js)", _libsignal),
    ]
    progress = Progress([name for name, _ in steps])
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "when": time.time()}
    }
    for name, step in steps:
        progress.start(name)
        try:
            step(results)
        except Exception as exc:  # one failed section must not hide the others
            results.setdefault("errors", {})[name] = repr(exc)
        progress.advance()
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(report(results))
    print(f"\nwritten to {RESULTS}")
    return 1 if "errors" in results else 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _grpc_ceilings(results: dict[str, Any]) -> None:
    results["ceilings"] = ceilings.grpc_ceilings()


def _sqlite_ceiling(results: dict[str, Any]) -> None:
    results["ceilings"]["sqlite_insert_delete_per_s_batch100"] = ceilings.sqlite_ceiling()
    results["ceilings"]["sqlite_insert_delete_per_s_batch1"] = ceilings.sqlite_ceiling(
        rows=2_000, batch=1
    )


def _with_server(accounts: int, run: Callable[[mb.Server], None]) -> None:
    database = mb.temp_database()
    try:
        with mb.server_process(database, accounts) as server:
            run(server)
    finally:
        shutil.rmtree(database.parent, ignore_errors=True)


def _one_pair(results: dict[str, Any]) -> None:
    def run(server: mb.Server) -> None:
        pairs = asyncio.run(mb.make_pairs(server, 1))
        results.setdefault("messaging", {})["one_pair_delivered_per_s"] = asyncio.run(
            mb.delivered_per_second(server, pairs, PAIR_MESSAGES)
        )

    _with_server(2, run)


def _many_pairs(results: dict[str, Any]) -> None:
    def run(server: mb.Server) -> None:
        pairs = asyncio.run(mb.make_pairs(server, MANY_PAIRS))
        results["messaging"]["many_pairs_delivered_per_s"] = asyncio.run(
            mb.delivered_per_second(server, pairs, MANY_PAIR_MESSAGES)
        )

    _with_server(2 * MANY_PAIRS, run)


def _replicas(results: dict[str, Any]) -> None:
    """The same load (REPLICA_PAIRS pairs) on one replica on SQLite, one on PostgreSQL, and two
    on one PostgreSQL database (pairs spread round-robin), in this run. The PostgreSQL cluster
    is the tests' throwaway one (server/storage/postgres/local.py): memory-backed where there
    is room, fsync off; SQLite runs at its default, fsync on every commit, on disk."""
    from server.storage.postgres.local import PostgresCluster, find_bin_dir

    figures = results.setdefault("replicas", {})
    accounts = 2 * REPLICA_PAIRS

    def measure(name: str, servers: list[mb.Server], postmaster: int = 0) -> None:
        """Delivered msgs/s, and the cores each party used meanwhile (CPU s / wall s)."""
        pairs = asyncio.run(mb.make_pairs(servers[0], REPLICA_PAIRS))
        me = [os.getpid()]
        replicas = [s.pid for s in servers]
        db = [postmaster] if postmaster else []
        before = [mb.cpu_seconds(me), mb.cpu_seconds(replicas), mb.cpu_seconds([], db)]
        started = time.perf_counter()
        figures[f"{name}_per_s"] = asyncio.run(
            mb.delivered_per_second_across(servers, pairs, REPLICA_PAIR_MESSAGES)
        )
        wall = time.perf_counter() - started
        after = [mb.cpu_seconds(me), mb.cpu_seconds(replicas), mb.cpu_seconds([], db)]
        figures[f"{name}_cores"] = {
            party: round((b - a) / wall, 2)
            for party, a, b in zip(
                ("load generator", "replicas", "PostgreSQL"), before, after, strict=True
            )
        }

    database = mb.temp_database()
    try:
        with mb.server_process(database, accounts) as server:
            measure("sqlite_one_replica", [server])
    finally:
        shutil.rmtree(database.parent, ignore_errors=True)
    with PostgresCluster(find_bin_dir()) as cluster:
        with mb.server_process(cluster.create_database(), accounts) as server:
            measure("postgres_one_replica", [server], cluster.pid)
        shared = cluster.create_database()
        with (
            mb.server_process(shared, accounts) as a,
            mb.server_process(shared, accounts) as b,
        ):
            measure("postgres_two_replicas", [a, b], cluster.pid)


def _business_templates(results: dict[str, Any]) -> None:
    """Template sends of a business (every sending rule checked: template, consent, window,
    limits, rate), each billed (priced, reserved on send, captured on the ack, with its status
    events), next to plain person-to-person sends, on one server in one run. The
    business rate is raised for this: its default (80/s) is a policy, not the path's cost."""
    database = mb.temp_database()
    try:
        with mb.server_process(
            database,
            4,
            "--admin-token",
            mb.BENCH_ADMIN_TOKEN,
            "--business-send-rate",
            "100000000/60s",
        ) as server:
            plain = asyncio.run(mb.make_pairs(server, 1))
            business, template_id = asyncio.run(mb.business_pair(server, 2))
            m = results.setdefault("messaging", {})
            # Plain sends before and after the template sends, averaged: the database grows
            # during the run, so neither kind gets the emptier file.
            before = asyncio.run(mb.delivered_per_second(server, plain, PAIR_MESSAGES // 2))
            m["business_template_delivered_per_s"] = asyncio.run(
                mb.delivered_per_second(server, [business], PAIR_MESSAGES, template_id)
            )
            after = asyncio.run(mb.delivered_per_second(server, plain, PAIR_MESSAGES // 2))
            m["plain_sends_delivered_per_s"] = (before + after) / 2
    finally:
        shutil.rmtree(database.parent, ignore_errors=True)


def _full_path(results: dict[str, Any]) -> None:
    def run(server: mb.Server) -> None:
        results["messaging"]["full_path_delivered_per_s"] = full_path.run(server)

    _with_server(4, run)


def _latency(results: dict[str, Any]) -> None:
    def run(server: mb.Server) -> None:
        pairs = asyncio.run(mb.make_pairs(server, 1))
        results["latency"] = asyncio.run(
            mb.latency(server, pairs[0], LATENCY_RATE, LATENCY_SECONDS)
        )

    _with_server(2, run)


def _stored(results: dict[str, Any]) -> None:
    database = mb.temp_database()
    try:
        with mb.server_process(database, 4) as server:
            pairs = asyncio.run(mb.make_pairs(server, 2))
        mb.prefill(database, STORED_ENVELOPES, pairs[1].receiver, pairs[1].sender)
        with mb.server_process(database, 4) as server:
            results["messaging"]["one_pair_delivered_per_s_1m_stored"] = asyncio.run(
                mb.delivered_per_second(server, pairs[:1], PAIR_MESSAGES)
            )
    finally:
        shutil.rmtree(database.parent, ignore_errors=True)


def _crypto(results: dict[str, Any]) -> None:
    results["crypto"] = {"parley": crypto_bench.run(parallel=False)}


def _libsignal(results: dict[str, Any]) -> None:
    results["crypto"]["libsignal_0.90"] = libsignal_bench.run(libsignal_bench.V090, scale=0.5)
    results["crypto"]["libsignal_current"] = libsignal_bench.run(
        libsignal_bench.VCURRENT, scale=0.5
    )


def report(r: dict[str, Any]) -> str:
    """The table: each figure, what it is compared with, and whether the goal holds."""
    lines = ["", f"{'figure':<52}{'value':>14}  {'goal / comparison':<34}"]

    def row(name: str, value: float | None, note: str, unit: str = "/s") -> None:
        shown = "n/a" if value is None else f"{value:,.0f}{unit}" if unit else f"{value:.2f}"
        lines.append(f"{name:<52}{shown:>14}  {note:<34}")

    c = r.get("ceilings", {})
    m = r.get("messaging", {})
    stream = c.get("grpc_stream_msgs_per_s")
    pair = m.get("one_pair_delivered_per_s")
    lines.append("-- ceilings measured in this run")
    row("bare gRPC server stream (msgs)", stream, "one message per stream write")
    row("bare gRPC unary echo (calls)", c.get("grpc_unary_calls_per_s"), "4 calls in flight")
    row(
        "raw SQLite insert+delete, 100 per txn",
        c.get("sqlite_insert_delete_per_s_batch100"),
        "WAL, synchronous=FULL",
    )
    row(
        "raw SQLite insert+delete, 1 per txn",
        c.get("sqlite_insert_delete_per_s_batch1"),
        "WAL, synchronous=FULL",
    )
    lines.append("-- delivered messages (sent, committed, streamed, acked)")
    row("one pair, server path", pair, "goal >= 10,000/s")
    if pair and stream:
        row("  ratio to bare stream ceiling", pair / stream, "goal >= 0.75", unit="")
    row(f"{MANY_PAIRS} pairs, server path", m.get("many_pairs_delivered_per_s"), "")
    plain = m.get("plain_sends_delivered_per_s")
    templates = m.get("business_template_delivered_per_s")
    row("plain sends, one pair (same run as below)", plain, "")
    row(
        "business template sends, billed, per second",
        templates,
        "every sending rule checked; price reserved on send, captured on the ack",
    )
    if plain and templates:
        row("  ratio to plain sends", templates / plain, "goal >= 0.8", unit="")
    rep = r.get("replicas", {})
    lines.append(f"-- replicas: delivered msgs/s, {REPLICA_PAIRS} pairs, in this run")
    row("1 replica, SQLite", rep.get("sqlite_one_replica_per_s"), "the embedded default")
    one_pg = rep.get("postgres_one_replica_per_s")
    two_pg = rep.get("postgres_two_replicas_per_s")
    row("1 replica, PostgreSQL", one_pg, "")
    row("2 replicas, one PostgreSQL", two_pg, "pairs spread round-robin")
    if one_pg and two_pg:
        row("  ratio of 2 replicas to 1", two_pg / one_pg, "goal >= 1.5", unit="")
    for name in ("sqlite_one_replica", "postgres_one_replica", "postgres_two_replicas"):
        cores = rep.get(f"{name}_cores")
        if cores:
            used = ", ".join(f"{party} {n:.2f}" for party, n in cores.items())
            lines.append(f"  cores used, {name.replace('_', ' ')}: {used}")
    row("one pair, full path (real encryption)", m.get("full_path_delivered_per_s"), "")
    stored = m.get("one_pair_delivered_per_s_1m_stored")
    row(f"one pair with {STORED_ENVELOPES:,} stored", stored, "")
    if stored and pair:
        row("  ratio to empty store", stored / pair, "goal >= 0.7", unit="")
    lat = r.get("latency", {})
    lines.append("-- send-to-receive latency at 1,000 msg/s offered")
    row("p50", lat.get("p50_ms"), "", unit=" ms")
    row("p99", lat.get("p99_ms"), "goal <= 5 ms", unit=" ms")
    crypto = r.get("crypto", {})
    parley = crypto.get("parley", {})
    lines.append(
        "-- crypto, encrypt+decrypt of 256-byte messages (per second, one core), with SPQR"
    )
    for key, label, goal in (
        ("symmetric_msgs_per_s", "triple ratchet, symmetric step", "goal >= 20,000/s"),
        ("dh_ratchet_msgs_per_s", "triple ratchet, DH ratchet step", ""),
        ("setups_per_s", "PQXDH session setups", "goal >= 1,000/s"),
    ):
        row(f"Parley: {label}", parley.get(key), goal)
    for version, name in (
        ("libsignal_0.90", "libsignal 0.90"),
        ("libsignal_current", "libsignal 0.103"),
    ):
        figures = crypto.get(version, {})
        row(f"{name}: symmetric", figures.get("symmetric_per_s"), "same run, Node.js, SPQR on")
        row(f"{name}: DH ratchet", figures.get("dh_ratchet_per_s"), "")
        row(f"{name}: session setups", figures.get("session_setup_per_s"), "")
    for name, error in r.get("errors", {}).items():
        lines.append(f"!! {name} failed: {error}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
