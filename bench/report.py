"""The printed table and the goal verdicts, both made from results.json's dict alone.

Each row is a figure measured in this run, what it is compared with (a ceiling or reference
measured in the same run), and its goal with a verdict. A goal stated as a ratio or as a
multiple of a reference is computed from this run's figures, never from a number kept here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SUSTAINED_RATE_GOAL = 12_000.0
SUSTAINED_RATIO_GOAL = 0.9
LATENCY_P99_GOAL_MS = 10.0
DISK_P99_THRESHOLD_MS = 3.0
DISK_MULTIPLE = 3.0
FULL_PATH_GOAL = 1_000.0
RSS_PER_DEVICE_GOAL_KIB = 40.0
UNARY_P99_GOAL_MS = 10.0
CRYPTO_RATIO_GOAL = 2.0
SETUPS_GOAL = 1_000.0
TEMPLATE_RATIO_GOAL = 0.8
REPLICA_RATIO_GOAL = 1.5
STORED_RATIO_GOAL = 0.7


@dataclass
class Goal:
    figure: str
    value: float
    goal: str
    met: bool
    unit: str


def latency_goal_ms(disk_p99_ms: float | None) -> float:
    """p99 ≤ 10 ms; where the disk's own p99 commit exceeds 3 ms, at most 3 times that instead."""
    if disk_p99_ms is not None and disk_p99_ms > DISK_P99_THRESHOLD_MS:
        return max(LATENCY_P99_GOAL_MS, DISK_MULTIPLE * disk_p99_ms)
    return LATENCY_P99_GOAL_MS


def _get(r: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def libsignal_best(r: dict[str, Any], key: str) -> float | None:
    """The faster libsignal version's figure: the ratio is taken against the better peer."""
    values = [_get(r, "crypto", v, key) for v in ("libsignal_0.90", "libsignal_current")]
    present = [v for v in values if v is not None]
    return max(present) if present else None


def goals(r: dict[str, Any]) -> list[Goal]:
    """Every goal whose figure was measured in this run, with its verdict."""
    out: list[Goal] = []

    def check(
        figure: str, value: float | None, goal: str, ok: Callable[[float], bool], unit: str
    ) -> None:
        if value is not None:
            out.append(Goal(figure, value, goal, ok(value), unit))

    sustained = _get(r, "delivery", "sustained", "per_s")
    short = _get(r, "delivery", "many_pairs", "per_s")
    check(
        "sustained delivered msgs/s (DELIVERED status acked)",
        sustained,
        f">= {SUSTAINED_RATE_GOAL:,.0f}/s",
        lambda v: v >= SUSTAINED_RATE_GOAL,
        "/s",
    )
    check(
        "sustained / short run",
        _ratio(sustained, short),
        f">= {SUSTAINED_RATIO_GOAL}",
        lambda v: v >= SUSTAINED_RATIO_GOAL,
        "x",
    )
    limit = latency_goal_ms(_get(r, "disk", "p99_ms"))
    check(
        "p99 send->receive at 1,000/s (ms)",
        _get(r, "latency", "p99_ms"),
        f"<= {limit:.1f} ms",
        lambda v: v <= limit,
        " ms",
    )
    check(
        "full path msgs/s, one conversation",
        _get(r, "full_path", "per_s"),
        f">= {FULL_PATH_GOAL:,.0f}/s",
        lambda v: v >= FULL_PATH_GOAL,
        "/s",
    )
    levels = _get(r, "connected", "levels") or {}
    if levels:
        top = max(levels, key=int)
        check(
            f"RSS per idle device at {int(top):,} (KiB)",
            levels[top]["rss_per_stream_kib"],
            f"<= {RSS_PER_DEVICE_GOAL_KIB:.0f} KiB",
            lambda v: v <= RSS_PER_DEVICE_GOAL_KIB,
            " KiB",
        )
        check(
            f"unary p99 with {int(top):,} streams open (ms)",
            levels[top]["unary"]["p99_ms"],
            f"<= {UNARY_P99_GOAL_MS:.0f} ms",
            lambda v: v <= UNARY_P99_GOAL_MS,
            " ms",
        )
    check(
        "ratchet like for like / libsignal (best version)",
        _ratio(
            _get(r, "crypto", "parley", "symmetric_msgs_per_s_stored_memory"),
            libsignal_best(r, "symmetric_per_s"),
        ),
        f">= {CRYPTO_RATIO_GOAL:.0f}x",
        lambda v: v >= CRYPTO_RATIO_GOAL,
        "x",
    )
    check(
        "PQXDH setups/s",
        _get(r, "crypto", "parley", "setups_per_s"),
        f">= {SETUPS_GOAL:,.0f}/s",
        lambda v: v >= SETUPS_GOAL,
        "/s",
    )
    check(
        "business templates / plain sends",
        _get(r, "business", "ratio")
        or _ratio(_get(r, "business", "template_per_s"), _get(r, "business", "plain_per_s")),
        f">= {TEMPLATE_RATIO_GOAL}",
        lambda v: v >= TEMPLATE_RATIO_GOAL,
        "x",
    )
    check(
        "2 PostgreSQL replicas / 1",
        _ratio(
            _get(r, "replicas", "postgres_two_replicas_per_s"),
            _get(r, "replicas", "postgres_one_replica_per_s"),
        ),
        f">= {REPLICA_RATIO_GOAL}",
        lambda v: v >= REPLICA_RATIO_GOAL,
        "x",
    )
    check(
        "stored envelopes / empty store",
        _ratio(_get(r, "stored", "per_s"), _get(r, "delivery", "one_pair", "per_s")),
        f">= {STORED_RATIO_GOAL}",
        lambda v: v >= STORED_RATIO_GOAL,
        "x",
    )
    return out


class _Table:
    def __init__(self) -> None:
        self.lines = ["", f"{'figure':<50}{'value':>13}  {'compared with (same run)':<44}"]

    def section(self, title: str) -> None:
        self.lines.append(f"-- {title}")

    def row(self, name: str, value: float | None, note: str = "", unit: str = "/s") -> None:
        if value is None:
            shown = "n/a"
        elif unit == "x":
            shown = f"{value:.2f}x"
        elif unit in (" ms", " s"):
            shown = f"{value:.2f}{unit}"
        else:
            shown = f"{value:,.0f}{unit}"
        self.lines.append(f"{name:<50}{shown:>13}  {note}")

    def text(self, line: str) -> None:
        self.lines.append(line)


def _of(value: float | None, ceiling: float | None, what: str) -> str:
    ratio = _ratio(value, ceiling)
    return "" if ratio is None else f"{ratio:.3f} of {what}"


def table(r: dict[str, Any]) -> str:
    """The printed report: figures with their ceilings, then the goals with verdicts."""
    t = _Table()
    c = r.get("ceilings", {})
    stream, unary = c.get("grpc_stream_msgs_per_s"), c.get("grpc_unary_msgs_per_s")
    storage = c.get("storage_delivered_per_s")
    t.section("ceilings, same batches (500 x 256 B), sizes and durability as Parley's path")
    t.row("bare gRPC stream, 500 envelopes per write", stream, "messages/s")
    t.row("bare gRPC unary, SendMessages-sized, 4 in flight", unary, "messages/s")
    t.row("storage: a delivered message's rows, 500/txn", storage, "store's SQL, synchronous=FULL")
    disk = r.get("disk", {})
    t.row("disk: fsync'd 1-row commit p50", disk.get("p50_ms"), "", " ms")
    t.row("disk: fsync'd 1-row commit p99", disk.get("p99_ms"), "", " ms")
    t.row("disk: fsync'd 1-row commit p99.9", disk.get("p999_ms"), "", " ms")

    d = r.get("delivery", {})
    pairs = d.get("pairs", "?")
    t.section("delivered: sent, committed, streamed, acked, DELIVERED status acked by sender")
    for key, label in (
        ("one_pair", "one pair, short run"),
        ("many_pairs", f"{pairs} pairs, short run"),
        ("sustained", f"{pairs} pairs, sustained run"),
    ):
        run = d.get(key, {})
        value = run.get("per_s")
        t.row(label, value, _of(value, storage, "storage ceiling"))
        if value:
            t.text(
                f"{'':<65}{_of(value, stream, 'stream ceiling')}, "
                f"{_of(value, unary, 'unary ceiling')}"
            )
    sustained = d.get("sustained", {})
    if sustained:
        t.text(
            f"  sustained: {sustained['messages']:,} messages in {sustained['seconds']:.1f} s;"
            f" database {sustained.get('database_bytes', 0) / 2**20:,.1f} MiB"
            f" + WAL {sustained.get('wal_bytes', 0) / 2**20:,.1f} MiB at the end"
        )
    b = r.get("business", {})
    t.row("plain sends, one pair", b.get("plain_per_s"), "same server, same run")
    t.row("business template sends, billed", b.get("template_per_s"), "every sending rule")
    if b.get("ratios"):
        shown = ", ".join(f"{x:.2f}" for x in b["ratios"])
        t.text(
            f"  template / plain, round by round: {shown} (median {b['ratio']:.2f}); server CPU"
            f" per message {b['plain_cpu_us']:.0f} us plain, {b['template_cpu_us']:.0f} us"
            " template"
        )
    t.row("one pair, stored envelopes", _get(r, "stored", "per_s"), "")
    if _get(r, "stored", "envelopes"):
        t.text(f"  {r['stored']['envelopes']:,} undelivered envelopes stored for another device")
    t.row("full path, real encryption, durable clients", _get(r, "full_path", "per_s"), "")
    if _get(r, "full_path", "rounds"):
        shown = ", ".join(f"{x:,.0f}" for x in r["full_path"]["rounds"])
        t.text(f"  round by round: {shown}/s (the median is the figure)")

    rep = r.get("replicas", {})
    t.section(f"replicas: delivered msgs/s, {rep.get('pairs', '?')} pairs")
    t.row("1 replica, SQLite", rep.get("sqlite_one_replica_per_s"), "the embedded default")
    t.row("1 replica, PostgreSQL", rep.get("postgres_one_replica_per_s"), "")
    t.row("2 replicas, one PostgreSQL", rep.get("postgres_two_replicas_per_s"), "round-robin")
    for name in ("sqlite_one_replica", "postgres_one_replica", "postgres_two_replicas"):
        cores = rep.get(f"{name}_cores")
        if cores:
            used = ", ".join(f"{party} {n:.2f}" for party, n in cores.items())
            t.text(f"  cores used, {name.replace('_', ' ')}: {used}")

    lat = r.get("latency", {})
    t.section(
        f"send->receive latency at {lat.get('offered_per_s', 0):,.0f} msgs/s offered,"
        f" {lat.get('samples', 0):,} samples"
    )
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ref = disk.get(key)
        t.row(label, lat.get(key), "" if ref is None else f"disk commit {ref:.2f} ms", " ms")
    t.row("max", lat.get("max_ms"), "", " ms")
    t.row("sender behind its schedule, at most", lat.get("sender_late_max_ms"), "", " ms")
    t.row("receiver's event loop late, at most", lat.get("receiver_loop_late_max_ms"), "", " ms")
    warnings = lat.get("server_warnings") or []
    t.text(
        f"  server stall warnings: {len(warnings)}" + "".join(f"\n    {w}" for w in warnings[:5])
    )

    con = r.get("connected", {})
    t.section(f"idle connected devices (server RSS {con.get('baseline_rss_kib', 0):,} KiB alone)")
    for level, f in (con.get("levels") or {}).items():
        t.row(f"{int(level):,} streams: RSS per stream", f["rss_per_stream_kib"], "", " KiB")
        t.row(f"{int(level):,} streams: unary p99", f["unary"]["p99_ms"], "GetPreKeyCount", " ms")
    fan = r.get("fanout", {})
    t.section(f"fan-out: one business, a template to {fan.get('users', 0):,} connected users")
    t.row("until every user received it", fan.get("all_received_s"), "", " s")
    t.row("until every DELIVERED status acked", fan.get("all_delivered_s"), "", " s")

    p = _get(r, "crypto", "parley") or {}
    t.section("crypto: encrypt+decrypt of 256 B per second, one core, SPQR on")
    t.row("Parley, sessions in memory (not like for like)", p.get("symmetric_msgs_per_s"))
    t.row("Parley, DH ratchet step, in memory", p.get("dh_ratchet_msgs_per_s"))
    like = p.get("symmetric_msgs_per_s_stored_memory")
    best = libsignal_best(r, "symmetric_per_s")
    t.row("Parley, load+save per message (client store)", like, "like for like")
    t.row("Parley, DH step, load+save per message", p.get("dh_ratchet_msgs_per_s_stored_memory"))
    t.row("Parley, load+save, store on disk (FULL)", p.get("symmetric_msgs_per_s_stored_disk"))
    for version, name in (("libsignal_0.90", "0.90"), ("libsignal_current", "0.103")):
        f = _get(r, "crypto", version) or {}
        t.row(f"libsignal {name}: symmetric, store per message", f.get("symmetric_per_s"))
        t.row(f"libsignal {name}: DH ratchet", f.get("dh_ratchet_per_s"))
        t.row(f"libsignal {name}: session setups", f.get("session_setup_per_s"))
    t.row("like for like / libsignal (best version)", _ratio(like, best), "", "x")
    t.row("Parley: PQXDH session setups", p.get("setups_per_s"))

    t.section("goals (each from this run)")
    for g in goals(r):
        shown = f"{g.value:,.0f}{g.unit}" if g.unit == "/s" else f"{g.value:.2f}{g.unit}"
        verdict = "met" if g.met else "NOT MET"
        t.text(f"{g.figure:<50}{shown:>13}  {g.goal:<14}{verdict}")
    for name, error in r.get("errors", {}).items():
        t.text(f"!! {name} failed: {error}")
    return "\n".join(t.lines)
