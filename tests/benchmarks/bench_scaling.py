"""Scaling of sensorcube extract from 1 to 2 workers (1 thread each) on the same region.

Each worker count gets a fresh LocalCluster and the best of two runs. The machine has as many
cores as the larger cluster has workers, so the scheduler and the client share them.
"""

from __future__ import annotations

from tests.benchmarks import scenes
from tests.benchmarks.bench_extract import load_plan, run_sensorcube, warm_up
from tests.benchmarks.common import Result, cache_dir, local_client, measured

CHIPS_PER_SIDE = 8
REPEATS = 2


def run() -> Result:
    plan = load_plan(CHIPS_PER_SIDE)
    chips = len(plan.tasks)
    store = cache_dir() / "outputs" / "scaling.zarr"
    with measured(f"scaling from 1 to 2 workers, {chips} chips") as result:
        rates = {}
        for workers in (1, 2):
            with local_client(workers) as client:
                warm_up(client)
                runs = [run_sensorcube(plan, client, store) for _ in range(REPEATS)]
            rates[workers] = chips / min(runs)
            result.figure(f"{workers} worker(s): seconds per run", min(runs), f"s (runs: {runs})")
            result.figure(f"{workers} worker(s): throughput", rates[workers], "chips/s")
        result.ratio("throughput 2 workers / 1 worker", rates[2] / rates[1], 1.7)
    scenes.remove_outputs(store)
    return result
