"""Benchmarks (`make bench`): Parley next to the bare ceilings measured in the same run."""
