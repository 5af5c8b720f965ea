"""Where extraction time goes: cProfile of pipeline.chip_task.process_chip in one process.

The chips run one after another in this process, with no Dask, so the profile records every call
that a worker makes for a chip. The profile is printed sorted by cumulative time and by own
time, and saved as ``extract.prof`` in the benchmark cache folder for snakeviz or pstats.
"""

from __future__ import annotations

import cProfile
import io
import pstats

from pipeline.chip_task import process_chip
from pipeline.extract import FrozenTargets, make_jobs, prepare_store
from pipeline.store import chip_ids
from tests.benchmarks import scenes
from tests.benchmarks.bench_extract import load_plan
from tests.benchmarks.common import Result, cache_dir, measured, timed

CHIPS_PER_SIDE = 4
LINES = 25


def run() -> Result:
    plan = load_plan(CHIPS_PER_SIDE)
    store = cache_dir() / "outputs" / "profile.zarr"
    scenes.remove_outputs(store)
    prepare_store(plan, store, overwrite=False)
    indices = {chip_id: index for index, chip_id in enumerate(chip_ids(store))}
    jobs = list(make_jobs(plan, store, indices, FrozenTargets()))
    items = {modality: dict(item_set.items) for modality, item_set in plan.item_sets.items()}
    with measured(f"profile of process_chip, {len(jobs)} chips in one process") as result:
        process_chip(jobs[0], items)  # first imports and GDAL driver set-up
        profiler = cProfile.Profile()

        def profiled() -> None:
            profiler.enable()
            for job in jobs:
                process_chip(job, items)
            profiler.disable()

        seconds, _ = timed(profiled)
        result.figure("time per chip, one process, under cProfile", seconds / len(jobs), "s")
        profiler.dump_stats(cache_dir() / "extract.prof")
        for order in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(LINES)
            print(text.getvalue(), flush=True)
            result.notes.append(text.getvalue())
    scenes.remove_outputs(store)
    return result
