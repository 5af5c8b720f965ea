"""Scaling of sensorcube extract from 1 to 2 workers (1 thread each) on the same region.

Each worker count gets its own LocalCluster. Both clusters start first, then the runs alternate
between them, so a slow phase of the machine slows both alike, and the best run of each
counts. The machine has as many cores as the larger cluster has workers, so the schedulers
and the client share them.
"""

from __future__ import annotations

import contextlib

from tests.benchmarks import scenes
from tests.benchmarks.bench_extract import load_plan, run_sensorcube, warm_up
from tests.benchmarks.common import Result, cache_dir, format_runs, local_client, measured

CHIPS_PER_SIDE = 8
REPEATS = 3


def run() -> Result:
    plan = load_plan(CHIPS_PER_SIDE)
    chips = len(plan.tasks)
    store = cache_dir() / "outputs" / "scaling.zarr"
    with (
        measured(f"scaling from 1 to 2 workers, {chips} chips") as result,
        contextlib.ExitStack() as stack,
    ):
        clients = {workers: stack.enter_context(local_client(workers)) for workers in (1, 2)}
        runs: dict[int, list[float]] = {1: [], 2: []}
        for client in clients.values():
            warm_up(client)
            run_sensorcube(plan, client, store)  # opens the sources in every worker
        for _ in range(REPEATS):
            for workers, client in clients.items():
                runs[workers].append(run_sensorcube(plan, client, store))
        rates = {workers: chips / min(seconds) for workers, seconds in runs.items()}
        for workers, seconds in runs.items():
            result.figure(
                f"{workers} worker(s): seconds per run",
                min(seconds),
                f"s (runs: {format_runs(seconds)})",
            )
            result.figure(f"{workers} worker(s): throughput", rates[workers], "chips/s")
        result.ratio("throughput 2 workers / 1 worker", rates[2] / rates[1], 1.7)
    scenes.remove_outputs(store)
    return result
