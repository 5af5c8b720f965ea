"""sensorcube extract on its own local cluster against a LocalCluster with Dask's defaults.

Both clusters come from ``pipeline.cluster.local_cluster`` with 2 worker processes of 1 thread
each. They differ only in the settings of ``CLUSTER_SETTINGS`` (worker profiler off, 200 ms
event loop ticks). The clusters take turns, one at a time, because an idle cluster's background
work would slow the other. The worker and scheduler CPU time per chip is printed beside the
wall time.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable

import psutil  # type: ignore[import-untyped]  # no stubs installed, types-psutil is not a dependency
from distributed import Client, LocalCluster

from pipeline.cluster import local_cluster
from tests.benchmarks import scenes
from tests.benchmarks.bench_extract import load_plan, run_sensorcube, warm_up
from tests.benchmarks.common import (
    Result,
    cache_dir,
    format_runs,
    measured,
    worker_cpu_seconds,
)

CHIPS_PER_SIDE = 8
WORKERS = 2
TURNS = 4  # each cluster starts this many times
RUNS_PER_TURN = 3


def dask_defaults_cluster() -> contextlib.AbstractContextManager[LocalCluster]:
    return local_cluster(WORKERS, settings={})


def sensorcube_cluster() -> contextlib.AbstractContextManager[LocalCluster]:
    return local_cluster(WORKERS)


def _process_cpu_seconds() -> float:
    """CPU time of this process, which runs the scheduler, the nannies and the client."""
    times = psutil.Process(os.getpid()).cpu_times()
    return float(times.user + times.system)


def run() -> Result:
    plan = load_plan(CHIPS_PER_SIDE)
    chips = len(plan.tasks)
    store = cache_dir() / "outputs" / "cluster.zarr"
    clusters: dict[str, Callable[[], contextlib.AbstractContextManager[LocalCluster]]] = {
        "dask_defaults": dask_defaults_cluster,
        "sensorcube": sensorcube_cluster,
    }
    seconds: dict[str, list[float]] = {name: [] for name in clusters}
    worker_ms: dict[str, list[float]] = {name: [] for name in clusters}
    client_ms: dict[str, list[float]] = {name: [] for name in clusters}
    with measured(f"cluster settings, {chips} chips, {WORKERS} workers x 1 thread") as result:
        for turn in range(TURNS):
            order = list(clusters) if turn % 2 == 0 else list(reversed(clusters))
            for name in order:
                with clusters[name]() as cluster, Client(cluster) as client:
                    client.wait_for_workers(WORKERS)
                    warm_up(client)
                    run_sensorcube(plan, client, store)  # opens the sources in every worker
                    for _ in range(RUNS_PER_TURN):
                        workers_before = worker_cpu_seconds(client)
                        client_before = _process_cpu_seconds()
                        seconds[name].append(run_sensorcube(plan, client, store))
                        client_after = _process_cpu_seconds()
                        worker_ms[name].append(
                            1000 * (worker_cpu_seconds(client) - workers_before) / chips
                        )
                        client_ms[name].append(1000 * (client_after - client_before) / chips)
        for name in clusters:
            result.figure(
                f"{name}: seconds per run",
                min(seconds[name]),
                f"s (runs: {format_runs(seconds[name])})",
            )
            result.figure(f"{name}: worker CPU per chip", min(worker_ms[name]), "ms (best run)")
            result.figure(
                f"{name}: scheduler, nanny and client CPU per chip",
                min(client_ms[name]),
                "ms (best run; includes removing the previous store)",
            )
        # No target: the settings save CPU outside the chip tasks, and whether that shows in
        # the throughput of 2 workers depends on the run, so both statistics are printed.
        result.figure(
            "throughput sensorcube cluster / Dask defaults, best runs",
            min(seconds["dask_defaults"]) / min(seconds["sensorcube"]),
            "",
        )
        result.figure(
            "throughput sensorcube cluster / Dask defaults, medians",
            statistics.median(seconds["dask_defaults"]) / statistics.median(seconds["sensorcube"]),
            "",
        )
    scenes.remove_outputs(store)
    return result
