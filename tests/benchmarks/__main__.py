"""Run the benchmarks: ``python -m tests.benchmarks [NAME ...]`` from the repository folder.

Names: extract, memory, scaling, cluster, feed, torchgeo, codec, search, profile (all when
none is given).
``torchgeo`` prints that it was skipped unless torchgeo is installed. The figures
are printed and also merged as JSON to ``results.json`` in the benchmark cache folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
from collections.abc import Callable

from tests.benchmarks.common import Result, cache_dir

# Benchmark names and their modules, imported only when selected, because feed, codec and
# torchgeo need torch.
BENCHMARKS = {
    "extract": "bench_extract",
    "memory": "bench_memory",
    "scaling": "bench_scaling",
    "cluster": "bench_cluster",
    "feed": "bench_feed",
    "torchgeo": "bench_torchgeo",
    "codec": "bench_codec",
    "search": "bench_search",
    "profile": "bench_profile",
}


def _run_function(name: str) -> Callable[[], Result]:
    module = importlib.import_module(f"tests.benchmarks.{BENCHMARKS[name]}")
    run: Callable[[], Result] = module.run
    return run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME")
    arguments = parser.parse_args()
    names = arguments.names or list(BENCHMARKS)
    print(f"python {platform.python_version()}, cache {cache_dir()}", flush=True)
    path = cache_dir() / "results.json"
    # Results of benchmarks not run this time are kept from earlier runs.
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        results[name] = dataclasses.asdict(_run_function(name)())
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults written to {path}")


# LocalCluster starts its worker processes with the spawn method, which imports this module
# again in each of them, so the benchmarks must run only under this guard.
if __name__ == "__main__":
    main()
