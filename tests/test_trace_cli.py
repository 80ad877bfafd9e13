"""`parley trace` end to end through a subprocess: seeded runs are byte-identical, a saved
trace verifies anywhere and a tampered one fails at the tampered step, and the excerpts in
docs/protocol.md are what the command prints today."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.tools import tool

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"
SNIPPET = re.compile(
    r"<!-- tested: parley (?P<args>[^>]*?) > (?P<file>\S+) -->\s*```python\n(?P<body>.*?)```", re.S
)
EXCERPT = re.compile(
    r"<!-- trace-excerpt: parley (?P<args>[^>]*?) -->\s*```text\n(?P<body>.*?)```", re.S
)


def trace(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("parley"), "trace", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert not result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.startswith("parley: ")
    return result.stderr


def records(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def value(recs: list[dict[str, Any]], name: str) -> str:
    return str(
        next(v["hex"] for r in recs for v in r.get("values", {}).values() if v["name"] == name)
    )


def test_same_seed_prints_the_same_bytes_and_another_seed_other_keys() -> None:
    first = ok(trace("--seed", "5", "--messages", "2", "--out-of-order"))
    assert first == ok(trace("--seed", "5", "--messages", "2", "--out-of-order"))
    assert "seed: 5" in first and "legend:" in first
    a = records(ok(trace("--seed", "5", "--json")))
    b = records(ok(trace("--seed", "6", "--json")))
    for name in ("IK_A", "IK_B", "EK_A", "SPK_B", "PQPK_B", "CT", "SignalMessage[A1.0]"):
        assert value(a, name) != value(b, name), name
    assert a[0]["seed"] == 5 and a[0]["secrets"] == "hidden"
    assert value(a, "RK_0") == "<hidden>"


def test_verify_recomputes_a_fresh_trace() -> None:
    out = ok(trace("--seed", "2", "--messages", "2", "--out-of-order", "--verify"))
    trace_part, _, report = out.partition("verification (every step recomputed")
    assert "secrets: revealed" in trace_part and "<hidden>" not in trace_part
    assert report.rstrip().endswith("all OK") and "FAILED" not in report
    assert "OK      #" in report and "= X25519(" in report and "HMAC-SHA256" in report
    checks = records(ok(trace("--seed", "2", "--json", "--verify")))
    summary = checks[-1]
    assert summary["kind"] == "verify.summary" and summary["ok"] and summary["failed"] == 0


def test_a_saved_trace_verifies_elsewhere_and_a_tampered_value_fails_its_step(
    tmp_path: Path,
) -> None:
    saved = tmp_path / "trace.jsonl"
    saved.write_text(ok(trace("--seed", "9", "--messages", "2", "--json", "--reveal-secrets")))
    report = ok(trace("--verify-file", str(saved)))
    assert report.rstrip().endswith("all OK")
    assert ok(trace("--verify-file", "-", stdin=saved.read_text())) == report

    recs = records(saved.read_text())
    step = next(r for r in recs if r["kind"] == "ratchet.kdf_rk")
    entry = step["values"]["dh_output"]
    entry["hex"] = entry["hex"][:2] + ("0" if entry["hex"][2] != "0" else "1") + entry["hex"][3:]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(r) + "\n" for r in recs))
    result = trace("--verify-file", str(tampered))
    assert "verification failed" in failed(result)
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    steps = {m.group(1) for line in failures if (m := re.match(r"FAILED\s+#(\d+) ", line))}
    assert steps == {str(step["seq"])}
    assert any(f"{entry['name']} = X25519(" in line for line in failures)

    as_json = records(trace("--verify-file", str(tampered), "--json").stdout)
    bad = {c["seq"] for c in as_json if c["kind"] == "verify.check" and not c["ok"]}
    assert bad - {0} == {step["seq"]}


def test_verify_file_refuses_hidden_secrets_missing_files_and_non_traces(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden.jsonl"
    hidden.write_text(ok(trace("--seed", "1", "--messages", "1", "--json")))
    assert "--reveal-secrets" in failed(trace("--verify-file", str(hidden)))
    assert "cannot read" in failed(trace("--verify-file", str(tmp_path / "missing.jsonl")))
    text = tmp_path / "trace.txt"
    text.write_text(ok(trace("--seed", "1", "--messages", "1")))
    assert "--json" in failed(trace("--verify-file", str(text)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "nothing to verify" in failed(trace("--verify-file", str(empty)))
    assert "not both" in failed(trace("--verify", "--verify-file", str(hidden)))


def test_the_excerpts_in_docs_protocol_are_what_parley_trace_prints_today() -> None:
    excerpts = list(EXCERPT.finditer(PROTOCOL_DOC.read_text()))
    assert excerpts, "docs/protocol.md has no <!-- trace-excerpt: ... --> block"
    for match in excerpts:
        args = match["args"].split()
        assert args[0] == "trace" and "--seed" in args, "excerpts come from seeded runs"
        output = ok(trace(*args[1:])).splitlines()
        excerpt = match["body"].rstrip("\n").splitlines()
        assert 5 <= len(excerpt) <= 60, "keep the excerpt short"
        starts = [i for i, line in enumerate(output) if line == excerpt[0]]
        assert any(output[i : i + len(excerpt)] == excerpt for i in starts), (
            f"the excerpt of `parley {match['args']}` in docs/protocol.md is stale; "
            "replace it with the current output"
        )


def test_the_recompute_by_hand_snippet_in_docs_protocol_runs(tmp_path: Path) -> None:
    snippets = list(SNIPPET.finditer(PROTOCOL_DOC.read_text()))
    assert snippets, "docs/protocol.md has no <!-- tested: ... --> Python block"
    for match in snippets:
        (tmp_path / match["file"]).write_text(ok(trace(*match["args"].split()[1:])))
        result = subprocess.run(
            [sys.executable, "-c", match["body"]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "recomputed" in result.stdout


def test_the_trace_shows_spqr_steps_and_their_keys_only_when_revealed() -> None:
    hidden = records(ok(trace("--seed", "3", "--messages", "4", "--json")))
    shown = records(ok(trace("--seed", "3", "--messages", "4", "--json", "--reveal-secrets")))
    kinds = [r["kind"] for r in shown]
    assert "spqr.send" in kinds and "spqr.receive" in kinds
    # Bob encapsulates to Alice's first header: epoch 1 completes on his side.
    epoch = next(r for r in shown if r["kind"] == "spqr.epoch")
    assert epoch["party"] == "bob" and epoch["values"]["epoch"]["value"] == 1
    assert len(value(shown, "SPQR_root_1")) == 64
    assert value(hidden, "SPQR_root_1") == "<hidden>"
    sent = next(r for r in shown if r["kind"] == "spqr.send")
    assert "HDR chunk 0" in sent["title"]
    # The SPQR key of a message is the salt its message keys step uses (same name, same value).
    key = value(shown, "SPQR_key[A1.0]")
    assert len(key) == 64 and value(hidden, "SPQR_key[A1.0]") == "<hidden>"
    keys = next(r for r in shown if r["kind"] == "ratchet.message_keys")
    assert keys["values"]["salt"]["name"] == "SPQR_key[A1.0]"
    assert keys["values"]["salt"]["hex"] == key
    assert "all OK" in ok(trace("--seed", "3", "--messages", "4", "--verify"))
