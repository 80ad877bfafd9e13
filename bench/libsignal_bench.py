"""Throughput of libsignal itself (the Node.js package), as a yardstick for Parley's crypto.

Everything is timed inside the Node process (the peer's ``bench`` op), so the JSON-lines
transport is not counted. Each figure is one encrypt + one decrypt (or one full setup) per op:

* ``symmetric_per_s``: one side sends many 256-byte messages (chain-key steps only).
* ``dh_ratchet_per_s``: the sides alternate, so every message is a DH ratchet step (and, since
  both versions speak SPQR, a post-quantum ratchet step too).
* ``session_setup_per_s``: processing a prekey bundle (PQXDH, Kyber1024 encapsulation), the
  first 256-byte message, and its decryption by the responder (bundle generation not counted).

Run: ``.venv/bin/python bench/libsignal_bench.py [0.90|current ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # run as a script: make `tests.interop` importable
    sys.path.insert(0, _ROOT)

from tests.interop.libsignal_peer import V090, VCURRENT, LibsignalPeer  # noqa: E402

__all__ = ["V090", "VCURRENT", "run"]

MESSAGE_SIZE = 256


def run(version: str = V090, scale: float = 1.0) -> dict[str, float]:
    """Return ops/s for the three workloads on libsignal ``version`` (``"0.90"``/``"current"``).

    ``scale`` multiplies the iteration counts (1.0 takes a few seconds per version).
    """

    def n(base: int) -> int:
        return max(1, int(base * scale))

    with LibsignalPeer(version) as peer:
        # Warm up the JIT and the native library before timing.
        peer.bench("symmetric", n(200), MESSAGE_SIZE)
        peer.bench("setup", n(10), MESSAGE_SIZE)
        return {
            "symmetric_per_s": peer.bench("symmetric", n(4000), MESSAGE_SIZE)["per_second"],
            "dh_ratchet_per_s": peer.bench("dh", n(2000), MESSAGE_SIZE)["per_second"],
            "session_setup_per_s": peer.bench("setup", n(300), MESSAGE_SIZE)["per_second"],
        }


def main(argv: list[str]) -> int:
    versions = argv or [V090, VCURRENT]
    for version in versions:
        figures = run(version)
        print(f"libsignal {version}:")
        for name, value in figures.items():
            print(f"  {name:<22} {value:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
