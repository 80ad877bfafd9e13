"""bench/results.png from results.json: the curves behind the table's numbers.

Left: delivered messages per second over time (the short runs and the sustained one), with
the storage ceiling of the same run as a dashed line. Right: the latency CDFs on a log axis:
send→receive at the offered rate next to the disk's own fsync'd commit, each with its p99.
Run alone (`python -m bench.plot [results.json [out.png]]`) it redraws a saved run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on the machines the bench runs on

import matplotlib.pyplot as plt

RUNS = (
    ("one_pair", "one pair, short"),
    ("many_pairs", "{pairs} pairs, short"),
    ("sustained", "{pairs} pairs, sustained"),
)


def draw(results: dict[str, Any], out: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    delivery = results.get("delivery", {})
    for key, label in RUNS:
        run = delivery.get(key)
        if not run or not run.get("timeline_per_s"):
            continue
        name = label.format(pairs=delivery.get("pairs", "?"))
        (line,) = _steps(
            left, run["bin_s"], run["timeline_per_s"], f"{name}: {run['per_s']:,.0f}/s overall"
        )
        if key == "sustained" and run.get("sent_per_s"):
            # Sent next to delivered: a gap between them is a backlog building up.
            _steps(left, run["bin_s"], run["sent_per_s"], f"{name}: sent", line.get_color(), ":")
    storage = results.get("ceilings", {}).get("storage_delivered_per_s")
    if storage:
        left.axhline(
            storage, linestyle="--", color="grey", label=f"storage ceiling {storage:,.0f}/s"
        )
    left.set_title("delivered messages/s (DELIVERED status acked by the sender)")
    left.set_xlabel("seconds since the first send")
    left.set_ylabel("messages/s")
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    for key, label in (("latency", "send→receive"), ("disk", "disk fsync'd commit")):
        summary = results.get(key)
        if not summary or not summary.get("cdf_ms"):
            continue
        values = [point[0] for point in summary["cdf_ms"]]
        fractions = [point[1] for point in summary["cdf_ms"]]
        (line,) = right.plot(
            values, fractions, label=f"{label}: p99 {summary['p99_ms']:.2f} ms", drawstyle="steps"
        )
        right.axvline(summary["p99_ms"], linestyle=":", color=line.get_color())
    latency = results.get("latency", {})
    right.set_title(
        f"latency CDF at {latency.get('offered_per_s', 0):,.0f} msgs/s offered"
        f" ({latency.get('samples', 0):,} samples)"
    )
    right.set_xscale("log")
    right.set_xlabel("ms (log)")
    right.set_ylabel("fraction of samples")
    right.set_ylim(0, 1.01)
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8, loc="lower right")
    mode = results.get("mode", "?")
    figure.suptitle(f"make bench ({mode}), {results.get('machine', {}).get('cpus', '?')} CPUs")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def _steps(
    axes: Any,
    bin_s: float,
    rates: list[float],
    label: str,
    color: str | None = None,
    style: str = "-",
) -> Any:
    """Each bin's rate held over the bin: [i * bin_s, (i + 1) * bin_s)."""
    times = [bin_s * i for i in range(len(rates) + 1)]
    return axes.step(
        times, [*rates, rates[-1]], where="post", label=label, color=color, linestyle=style
    )


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else Path(__file__).with_name("results.json")
    out = Path(argv[1]) if len(argv) > 1 else source.with_suffix(".png")
    draw(json.loads(source.read_text()), out)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
