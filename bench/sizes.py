"""How much each section of `make bench` does: the full run, and `--quick` for CI-sized checks.

One place for every count, so that `--quick` (and the test that runs the harness at tiny sizes)
scales the whole bench down without a second copy of any section. The full sizes are what the
goals are stated for: a sustained run of at least 60 s, at least 20,000 latency samples, 10,000
connected devices, a fan-out to 1,000 users, 1,000,000 stored envelopes.
"""

from __future__ import annotations

from dataclasses import dataclass

# The shape of the load, the same in every mode and in the ceilings: sends per SendMessages
# call (and envelopes per stream write, the server's stream batch), and the ciphertext size.
BATCH = 500
PAYLOAD_BYTES = 256


@dataclass(frozen=True)
class Sizes:
    name: str
    # ceilings
    stream_ceiling_writes: int  # writes of one full batch on the bare stream
    unary_ceiling_calls: int  # SendMessages-sized unary echo calls
    storage_ceiling_messages: int  # delivered messages' rows through the store's SQL
    commit_samples: int  # fsync'd single-row commits timed one by one
    # delivery
    pair_messages: int
    many_pairs: int
    many_pair_messages: int
    sustained_seconds: float
    latency_seconds: float  # at LATENCY_RATE offered
    stored_envelopes: int
    replica_pairs: int
    replica_pair_messages: int
    full_path_messages: int
    # crypto: multiplies the iteration counts of both sides
    crypto_scale: float
    # connected devices and fan-out
    connected: tuple[int, ...]
    unary_samples: int
    fanout_users: int


FULL = Sizes(
    name="full",
    stream_ceiling_writes=1_000,
    unary_ceiling_calls=400,
    storage_ceiling_messages=100_000,
    commit_samples=10_000,
    pair_messages=30_000,
    many_pairs=8,
    many_pair_messages=4_000,
    sustained_seconds=60.0,
    latency_seconds=20.0,
    stored_envelopes=1_000_000,
    replica_pairs=8,
    replica_pair_messages=3_000,
    full_path_messages=1_000,
    crypto_scale=1.0,
    connected=(1_000, 5_000, 10_000),
    unary_samples=2_000,
    fanout_users=1_000,
)

QUICK = Sizes(
    name="quick",
    stream_ceiling_writes=40,
    unary_ceiling_calls=40,
    storage_ceiling_messages=10_000,
    commit_samples=1_000,
    pair_messages=5_000,
    many_pairs=4,
    many_pair_messages=1_000,
    sustained_seconds=8.0,
    latency_seconds=3.0,
    stored_envelopes=50_000,
    replica_pairs=4,
    replica_pair_messages=1_000,
    full_path_messages=100,
    crypto_scale=0.1,
    connected=(200, 1_000),
    unary_samples=300,
    fanout_users=100,
)
