"""Run the benchmarks: ``python -m tests.benchmarks [NAME ...]`` from the repository folder.

Names: extract, memory, scaling, cluster, feed, torchgeo, codec, search, profile (all when
none is given).
``torchgeo`` prints that it was skipped unless torchgeo is installed. The figures
are printed and also merged as JSON to ``results.json`` in the benchmark cache folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from collections.abc import Callable

from tests.benchmarks.common import Result, cache_dir


def _benchmarks() -> dict[str, Callable[[], Result]]:
    from tests.benchmarks import (
        bench_cluster,
        bench_codec,
        bench_extract,
        bench_feed,
        bench_memory,
        bench_profile,
        bench_scaling,
        bench_search,
        bench_torchgeo,
    )

    return {
        "extract": bench_extract.run,
        "memory": bench_memory.run,
        "scaling": bench_scaling.run,
        "cluster": bench_cluster.run,
        "feed": bench_feed.run,
        "torchgeo": bench_torchgeo.run,
        "codec": bench_codec.run,
        "search": bench_search.run,
        "profile": bench_profile.run,
    }


def main() -> None:
    benchmarks = _benchmarks()
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *benchmarks], metavar="NAME")
    arguments = parser.parse_args()
    names = arguments.names or list(benchmarks)
    print(f"python {platform.python_version()}, cache {cache_dir()}", flush=True)
    path = cache_dir() / "results.json"
    # Results of benchmarks not run this time are kept from earlier runs.
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        results[name] = dataclasses.asdict(benchmarks[name]())
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults written to {path}")


# LocalCluster starts its worker processes with the spawn method, which imports this module
# again in each of them, so the benchmarks must run only under this guard.
if __name__ == "__main__":
    main()
