"""Peak worker memory of sensorcube extract for a region of N chips and one of 4N chips.

Each region runs on a fresh LocalCluster (2 workers, 1 thread each), so both start from the
same worker state. psutil samples the RSS of each worker process every 50 ms. Memory that
grows with the region size shows up as a ratio above 1.
"""

from __future__ import annotations

from tests.benchmarks import scenes
from tests.benchmarks.bench_extract import load_plan, run_sensorcube, warm_up
from tests.benchmarks.common import (
    Result,
    WorkerMemorySampler,
    cache_dir,
    local_client,
    measured,
)

MIB = 1024 * 1024
SMALL_CHIPS_PER_SIDE = 4  # N = 16 chips
LARGE_CHIPS_PER_SIDE = 8  # 4N = 64 chips


def peak_worker_rss(chips_per_side: int) -> tuple[float, float, float]:
    """Return (seconds, idle RSS, peak RSS) in MiB of the worker that peaked highest."""
    plan = load_plan(chips_per_side)
    with local_client(2) as client:
        warm_up(client)
        with WorkerMemorySampler(client) as idle:
            pass
        with WorkerMemorySampler(client) as sampler:
            seconds = run_sensorcube(plan, client, cache_dir() / "outputs" / "memory.zarr")
    return seconds, max(idle.peak_bytes.values()) / MIB, max(sampler.peak_bytes.values()) / MIB


def run() -> Result:
    small = SMALL_CHIPS_PER_SIDE**2
    large = LARGE_CHIPS_PER_SIDE**2
    with measured(f"peak worker memory, {small} and {large} chips") as result:
        peaks = {}
        for chips_per_side in (SMALL_CHIPS_PER_SIDE, LARGE_CHIPS_PER_SIDE):
            count = chips_per_side**2
            seconds, idle, peak = peak_worker_rss(chips_per_side)
            result.figure(f"{count} chips: run time", seconds, "s")
            result.figure(f"{count} chips: worker RSS after warm-up", idle, "MiB")
            result.figure(f"{count} chips: peak worker RSS", peak, "MiB")
            peaks[count] = peak
        result.ratio(
            f"peak RSS {large} chips / {small} chips",
            peaks[large] / peaks[small],
            1.1,
            at_least=False,
        )
    scenes.remove_outputs(cache_dir() / "outputs" / "memory.zarr")
    return result
