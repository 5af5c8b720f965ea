"""Chunk codecs of the store, measured on extraction and on the training feed in one run.

For each codec of ``pipeline.store.CHUNK_CODECS``, the 64-chip region is extracted on one
LocalCluster (2 workers, 1 thread each) into a store created with that codec. The codecs take
turns, REPEATS times, and the best run of each counts. The train chips of each store are then
read as ``s1->s2`` pairs for EPOCHS epochs in one process, with ``ChipPairs`` and with plain
zarr, best of REPEATS. The size is the total of the data variables' chunk files.
"""

from __future__ import annotations

from pathlib import Path

from distributed import Client

from pipeline.extract import extract, hsi_bands, store_attributes
from pipeline.feed import ChipPairs
from pipeline.plan import Plan
from pipeline.store import CHUNK_CODECS, DEFAULT_CHUNK_CODEC, create_store, variable_specs
from tests.benchmarks import scenes
from tests.benchmarks.bench_extract import load_plan, warm_up
from tests.benchmarks.bench_feed import EPOCHS, feed_store, read_pairs, read_zarr, store_indices
from tests.benchmarks.common import (
    Result,
    cache_dir,
    local_client,
    measured,
    timed,
    worker_cpu_seconds,
)

CHIPS_PER_SIDE = 8
REPEATS = 3
MIB = 1024 * 1024
DATA_VARIABLES = ("s2", "s1", "ndvi")


def extract_with_codec(plan: Plan, client: Client, store: Path, codec: str) -> float:
    """Create a store with ``codec`` and extract every chip into it; return the seconds taken.

    ``extract`` resumes the new store because its configuration hash is the plan's, so the
    timed work is what ``extract`` does on a new store, with the codec as the only difference.
    """
    scenes.remove_outputs(store)
    region = plan.region

    def create_and_extract() -> int:
        create_store(
            store,
            chips=[task.chip for task in plan.tasks],
            variables=variable_specs(region, hsi_bands=hsi_bands(plan)),
            attrs=store_attributes(plan),
            codec=codec,
        )
        return extract(plan, store, client).ok

    seconds, written = timed(create_and_extract)
    if written != len(plan.tasks):
        raise RuntimeError(f"codec {codec}: extract wrote {written} of {len(plan.tasks)} chips")
    return seconds


def chunk_bytes(store: Path) -> int:
    """Total size of the chunk files of the data variables."""
    return sum(
        path.stat().st_size
        for variable in DATA_VARIABLES
        for path in (store / variable / "c").rglob("*")
        if path.is_file()
    )


def feed_rates(store: Path, manifest: Path) -> tuple[float, float]:
    """Return the chips per second of ChipPairs and of plain zarr reads, best of REPEATS."""
    pairs = ChipPairs(store, manifest, split="train", direction="s1->s2", seed=0)
    indices = store_indices(pairs, store)
    read_pairs(pairs)  # warm the page cache and open the handles
    feed_runs, zarr_runs = [], []
    for _ in range(REPEATS):
        feed_runs.append(timed(lambda: read_pairs(pairs))[0])
        zarr_runs.append(timed(lambda: read_zarr(store, indices, pairs))[0])
    count = len(pairs) * EPOCHS
    return count / min(feed_runs), count / min(zarr_runs)


def run() -> Result:
    plan = load_plan(CHIPS_PER_SIDE)
    chips = len(plan.tasks)
    # The feed store's manifest fits every codec's store: same region, configuration and chips.
    _, manifest = feed_store()
    folder = cache_dir() / "outputs" / "codec"
    stores = {codec: folder / f"{codec}.zarr" for codec in CHUNK_CODECS}
    with measured(f"chunk codecs: extraction of {chips} chips and the feed") as result:
        result.note(f"codecs {', '.join(CHUNK_CODECS)}; default {DEFAULT_CHUNK_CODEC}")
        extract_runs: dict[str, list[float]] = {codec: [] for codec in CHUNK_CODECS}
        cpu_runs: dict[str, list[float]] = {codec: [] for codec in CHUNK_CODECS}
        with local_client(2) as client:
            warm_up(client)
            for _ in range(REPEATS):
                for codec, store in stores.items():
                    before = worker_cpu_seconds(client)
                    extract_runs[codec].append(extract_with_codec(plan, client, store, codec))
                    cpu_runs[codec].append(worker_cpu_seconds(client) - before)
        for codec, runs in extract_runs.items():
            rates = ", ".join(f"{chips / seconds:.2f}" for seconds in runs)
            result.figure(f"{codec}: extraction", chips / min(runs), f"chips/s (runs: {rates})")
            per_chip = ", ".join(f"{1000 * seconds / chips:.1f}" for seconds in cpu_runs[codec])
            result.figure(
                f"{codec}: worker CPU per chip",
                1000 * min(cpu_runs[codec]) / chips,
                f"ms (runs: {per_chip})",
            )
            result.figure(f"{codec}: chunk files", chunk_bytes(stores[codec]) / MIB, "MiB")

        for codec, store in stores.items():
            feed_rate, zarr_rate = feed_rates(store, manifest)
            result.figure(f"{codec}: ChipPairs, one process", feed_rate, "chips/s")
            result.figure(f"{codec}: zarr chunks, one process", zarr_rate, "chips/s")
    for store in stores.values():
        scenes.remove_outputs(store)
    return result
