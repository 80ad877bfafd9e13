"""`make bench`'s harness at tiny sizes, so that it cannot rot between benchmark runs.

Every section but the replicas (PostgreSQL) and libsignal (Node.js), which their own tests
exercise, runs against real servers with counts far below `--quick`'s; the test checks that
each section recorded its figures, that the goals were judged, and that the plot is a PNG. It
asserts nothing about speed: on a shared machine any such threshold would flap.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from PIL import Image

from bench import instructions, report
from bench.__main__ import BUSINESS_ROUNDS, SECTIONS, run
from bench.sizes import BATCH, QUICK

TINY = replace(
    QUICK,
    name="tiny",
    stream_ceiling_writes=4,
    unary_ceiling_calls=4,
    storage_ceiling_messages=1_000,
    commit_samples=50,
    pair_messages=600,
    many_pairs=2,
    many_pair_messages=300,
    sustained_seconds=1.5,
    latency_seconds=0.3,
    stored_envelopes=1_000,
    full_path_messages=5,
    crypto_scale=0.01,
    connected=(10, 20),
    unary_samples=20,
    fanout_users=10,
)
SKIPPED = {"replicas", "libsignal"}


def test_every_section_records_its_figures_and_the_plot_is_drawn(tmp_path: Path) -> None:
    sections = [(name, f) for name, f in SECTIONS if f.__name__ not in SKIPPED]
    out = tmp_path / "results.json"
    results = run(TINY, sections, out)

    assert "errors" not in results, results.get("errors")
    saved = json.loads(out.read_text())
    assert saved["mode"] == "tiny"
    assert set(saved["ceilings"]) == {
        "grpc_stream_msgs_per_s",
        "grpc_unary_msgs_per_s",
        "storage_delivered_per_s",
    }
    for key in ("p50_ms", "p99_ms", "p999_ms", "cdf_ms"):
        assert key in saved["disk"] and key in saved["latency"]
    assert saved["latency"]["samples"] == 300
    assert saved["latency"]["sender_late_max_ms"] >= 0
    assert saved["latency"]["receiver_loop_late_max_ms"] >= 0
    assert isinstance(saved["latency"]["server_warnings"], list)
    delivery = saved["delivery"]
    for key in ("one_pair", "many_pairs", "sustained"):
        assert delivery[key]["messages"] > 0 and delivery[key]["timeline_per_s"]
    assert delivery["sustained"]["database_bytes"] > 0
    business = saved["business"]
    assert len(business["ratios"]) == BUSINESS_ROUNDS and min(business["ratios"]) > 0
    assert min(business["ratios"]) <= business["ratio"] <= max(business["ratios"])
    assert business["plain_cpu_us"] > 0 and business["template_cpu_us"] > 0
    assert saved["stored"]["envelopes"] == 1_000
    assert saved["full_path"]["per_s"] > 0
    assert set(saved["connected"]["levels"]) == {"10", "20"}
    assert saved["fanout"]["users"] == 10
    assert "symmetric_msgs_per_s_stored_memory" in saved["crypto"]["parley"]
    judged = {g["figure"] for g in saved["goals"]}
    assert "sustained / short run" in judged and "PQXDH setups/s" in judged
    assert "goals (each from this run)" in report.table(saved)
    assert "server stall warnings:" in report.table(saved)

    with Image.open(out.with_suffix(".png")) as image:
        assert image.format == "PNG" and image.size[0] > 500
        image.verify()


def test_the_latency_goal_follows_the_disk_only_when_it_is_slow() -> None:
    assert report.latency_goal_ms(None) == 10.0
    assert report.latency_goal_ms(2.9) == 10.0
    assert report.latency_goal_ms(5.0) == 15.0


def test_the_latency_figures_carry_the_server_s_stall_warnings(tmp_path: Path) -> None:
    """What the server logged about being held up (server.watchdog, the database's rule 9)
    is picked out of its JSON log; other lines and lines that are not JSON are passed over."""
    from bench.messaging_bench import warnings_in

    log = tmp_path / "server.log"
    log.write_text(
        "\n".join(
            [
                json.dumps({"ts": "t1", "level": "INFO", "msg": "listening on 127.0.0.1:1"}),
                "Traceback (most recent call last):",
                json.dumps({"ts": "t2", "level": "WARNING", "msg": "slow write: 3 jobs took 1 ms"}),
                json.dumps({"ts": "t3", "msg": "event loop blocked: a timer ran 900 ms late"}),
            ]
        )
    )
    assert warnings_in(log) == [
        "t2 slow write: 3 jobs took 1 ms",
        "t3 event loop blocked: a timer ran 900 ms late",
    ]
    assert warnings_in(log, limit=1) == ["t2 slow write: 3 jobs took 1 ms"]
    assert warnings_in(tmp_path / "missing.log") == [] and warnings_in(None) == []


def test_the_instruction_count_harness_sends_bills_and_acknowledges(tmp_path: Path) -> None:
    """`make instructions`' child, without valgrind: on a database a real server prepared,
    plain sends leave the sender no billing event, and each template send its SENT and
    DELIVERED (reserved, captured on the acknowledgement); the database it was given is kept
    as it was, so every measured run starts from the same file."""
    database = asyncio.run(instructions.prepare(tmp_path))
    before = sorted(p.name for p in tmp_path.iterdir())
    messages = 2 * BATCH  # whole batches, each acknowledged in several parts
    assert instructions.deliver(database, "plain", messages, count_events=True) == 0
    events = instructions.deliver(database, "template", messages, count_events=True)
    assert events == 2 * messages
    assert sorted(p.name for p in tmp_path.iterdir()) == before
