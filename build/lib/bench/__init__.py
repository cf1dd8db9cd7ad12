"""Benchmarks: speed goals live here, never in timed unit tests."""
