"""Shared setup for the protocol-core tests."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Each example runs real X25519/ML-KEM; keep the property tests inside the ~30 s budget.
settings.register_profile(
    "crypto",
    max_examples=25,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("crypto")
