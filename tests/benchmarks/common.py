"""Helpers shared by the benchmarks: cache folder, timers, load average, clusters, memory."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import psutil  # type: ignore[import-untyped]  # no stubs installed, types-psutil is not a dependency
from distributed import Client

from pipeline.cluster import local_cluster

CACHE_ENV = "SENSORCUBE_BENCH_CACHE"


def cache_dir() -> Path:
    """Return the benchmark cache folder: ``$SENSORCUBE_BENCH_CACHE`` or the user cache."""
    configured = os.environ.get(CACHE_ENV)
    path = Path(configured) if configured else Path(platformdirs.user_cache_dir("sensorcube-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_average() -> tuple[float, float, float]:
    """Return the 1, 5 and 15 minute load averages of the machine."""
    return os.getloadavg()


@dataclass
class Result:
    """The figures of one benchmark, printed as it runs and kept for the summary."""

    name: str
    figures: dict[str, float] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def figure(self, key: str, value: float, unit: str) -> None:
        self.figures[key] = value
        print(f"  {key}: {value:.4g} {unit}", flush=True)

    def ratio(self, label: str, value: float, target: float, *, at_least: bool = True) -> None:
        """Record a measured ratio and whether it meets its target (at least or at most)."""
        met = value >= target if at_least else value <= target
        relation = ">=" if at_least else "<="
        self.ratios.append(
            {"label": label, "value": value, "target": f"{relation} {target:g}", "met": met}
        )
        verdict = "met" if met else "MISSED"
        print(f"  ratio {label}: {value:.3f} (target {relation} {target:g}: {verdict})", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


@contextmanager
def measured(name: str) -> Iterator[Result]:
    """Print the load average before and after a benchmark and collect its result."""
    result = Result(name, load_before=load_average())
    print(f"\n== {name} (load average before: {_format_load(result.load_before)})", flush=True)
    yield result
    result.load_after = load_average()
    print(f"  load average after: {_format_load(result.load_after)}", flush=True)


def _format_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


def format_runs(values: list[float]) -> str:
    """Return the figures of separate runs with three decimals, for the printed notes."""
    return ", ".join(f"{value:.3f}" for value in values)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``function`` once and return its wall time in seconds and its result."""
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


@contextmanager
def local_client(workers: int) -> Iterator[Client]:
    """A LocalCluster of ``workers`` processes with one thread each, on 127.0.0.1."""
    with (
        local_cluster(workers) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        yield client


def worker_cpu_seconds(client: Client) -> float:
    """Return the CPU time, user and system, that the cluster's worker processes used so far.

    The workers must run on this machine, as those of :func:`local_client` do.
    """
    pids: dict[str, int] = client.run(os.getpid)
    total = 0.0
    for pid in pids.values():
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


class WorkerMemorySampler:
    """Sample the resident set size of each Dask worker process every ``interval_s`` seconds.

    psutil reads RSS from /proc, so the sampler records only peaks that last about one interval
    or longer. One sample is taken on entry and one on exit, however short the block.
    """

    def __init__(self, client: Client, *, interval_s: float = 0.05) -> None:
        pids: dict[str, int] = client.run(os.getpid)
        self._processes = {address: psutil.Process(pid) for address, pid in pids.items()}
        self._interval_s = interval_s
        self.peak_bytes = dict.fromkeys(self._processes, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> WorkerMemorySampler:
        self._sample_once()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample_once()

    def _sample_once(self) -> None:
        for address, process in self._processes.items():
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            self.peak_bytes[address] = max(self.peak_bytes[address], rss)
