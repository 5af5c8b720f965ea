"""Benchmarks, run on demand with ``python -m tests.benchmarks`` and never collected by pytest.

Every benchmark measures sensorcube and its baseline in the same run, on the same seeded
synthetic scenes, and prints their ratio next to its target. No wall-clock threshold is
checked anywhere, because timings depend on the machine and on what else runs on it.
"""
