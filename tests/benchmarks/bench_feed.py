"""Feed throughput: pipeline.feed.ChipPairs and its torch Dataset against plain zarr reads.

The store contains the 64 chips of the 8 x 8 region, built once with sensorcube and frozen. Every
reader reads the same chunks (s1 and s2 of each train chip) in the same order. The zarr
baseline decodes the chunks with zarr and does nothing else. The torch comparison runs both as
DataLoader datasets with 2 worker processes and batches of 8, next to a dataset that returns
one constant sample, which measures what the DataLoader itself costs, and next to
ChipPairLoader, whose workers write batches into reused shared memory.

The comparison with TorchGeo's RasterDataset and RandomGeoSampler is ``bench_torchgeo.py``.
It runs only where torchgeo is installed (see docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from pipeline.config import load_catalogs, load_region
from pipeline.feed import ChipPairs
from pipeline.feed_torch import ChipPairDataset, ChipPairLoader, EpochSampler
from pipeline.manifest import freeze
from pipeline.store import DEFAULT_CHUNK_CODEC, chip_ids
from tests.benchmarks import scenes
from tests.benchmarks.bench_extract import load_plan, run_sensorcube, warm_up
from tests.benchmarks.common import Result, cache_dir, local_client, measured, timed

CHIPS_PER_SIDE = 8
EPOCHS = 10
REPEATS = 3
BATCH_SIZE = 8
LOADER_WORKERS = 2


def feed_store() -> tuple[Path, Path]:
    """Return the store and manifest of the feed benchmark, building them on first use."""
    # The folder name carries the default chunk codec, so a change of codec builds a new store.
    folder = cache_dir() / f"feed-v{scenes.SCENES_VERSION}-{DEFAULT_CHUNK_CODEC}"
    store = folder / "bench.zarr"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return store, manifest
    region = load_region(scenes.region_path(CHIPS_PER_SIDE))
    with local_client(2) as client:
        warm_up(client)
        run_sensorcube(load_plan(CHIPS_PER_SIDE), client, store)
    freeze(store, region, load_catalogs(region, scenes.catalogs_path()), manifest)
    return store, manifest


class ZarrChunks(Dataset[dict[str, Any]]):
    """The s1 and s2 chunks of the given store indices as tensors, read with zarr only."""

    def __init__(self, store: Path, indices: list[int]) -> None:
        self.store = store
        self.indices = indices
        self._arrays: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any]:
        if self._arrays is None:
            root = zarr.open_group(str(self.store), mode="r")
            self._arrays = {"s1": root["s1"], "s2": root["s2"]}
        index = self.indices[position]
        return {name: torch.from_numpy(array[index]) for name, array in self._arrays.items()}

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "indices": self.indices, "_arrays": None}


class ConstantSample(Dataset[dict[str, Any]]):
    """The first pair of ``pairs`` for every index, as ChipPairDataset returns it.

    Nothing is read per item, so its DataLoader rate is what the worker processes, the
    collate function and the transfer of the batches to the main process cost by themselves
    for samples of this size.
    """

    def __init__(self, pairs: ChipPairs) -> None:
        self.count = len(pairs)
        self.sample = ChipPairDataset(pairs)[0]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, position: int) -> dict[str, Any]:
        return dict(self.sample)


def store_indices(pairs: ChipPairs, store: Path) -> list[int]:
    """Return the store indices of the pairs' chips, in the pairs' order."""
    positions = {chip_id: index for index, chip_id in enumerate(chip_ids(store))}
    return [positions[chip_id] for chip_id in pairs.chip_ids]


def read_pairs(pairs: ChipPairs) -> int:
    count = 0
    for epoch in range(EPOCHS):
        for pair in pairs.iter_epoch(epoch):
            count += pair.source.size > 0
    return count


def read_zarr(store: Path, indices: list[int], pairs: ChipPairs) -> int:
    dataset = ZarrChunks(store, indices)
    count = 0
    for epoch in range(EPOCHS):
        for position in pairs.epoch_order(epoch).tolist():
            chunks = dataset[position]
            count += chunks["s1"].numel() > 0
    return count


def loader_rate(dataset: Dataset[Any], sampler: EpochSampler, chips: int) -> float:
    """Return the chips per second of a DataLoader over ``dataset`` (see :func:`iterate_rate`)."""
    loader = DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=sampler,
        num_workers=LOADER_WORKERS,
        persistent_workers=True,
    )
    return iterate_rate(loader, sampler.set_epoch, chips)


def shared_loader_rate(pairs: ChipPairs) -> tuple[float, int]:
    """Return the chips per second of a ChipPairLoader with the DataLoader settings of the
    others, and how many of its batches came in new memory instead of a slot."""
    loader = ChipPairLoader(pairs, batch_size=BATCH_SIZE, num_workers=LOADER_WORKERS)
    rate = iterate_rate(loader, loader.set_epoch, len(pairs))
    return rate, loader.batches_in_new_memory


def iterate_rate(loader: Iterable[Any], set_epoch: Callable[[int], None], chips: int) -> float:
    """Return the chips per second over EPOCHS epochs, after one epoch that starts the workers."""

    def epochs(count: int) -> None:
        for epoch in range(count):
            set_epoch(epoch)
            for _ in loader:
                pass

    epochs(1)
    seconds, _ = timed(lambda: epochs(EPOCHS))
    return chips * EPOCHS / seconds


def run() -> Result:
    store, manifest = feed_store()
    pairs = ChipPairs(store, manifest, split="train", direction="s1->s2", seed=0)
    chips = len(pairs)
    indices = store_indices(pairs, store)
    with measured(f"feed throughput, {chips} train chips x {EPOCHS} epochs") as result:
        read_pairs(pairs)  # warm the page cache and open the handles
        feed_runs, zarr_runs = [], []
        for _ in range(REPEATS):
            feed_runs.append(timed(lambda: read_pairs(pairs))[0])
            zarr_runs.append(timed(lambda: read_zarr(store, indices, pairs))[0])
        feed_seconds, zarr_seconds = min(feed_runs), min(zarr_runs)
        feed_rate = chips * EPOCHS / feed_seconds
        zarr_rate = chips * EPOCHS / zarr_seconds
        result.figure("ChipPairs, one process", feed_rate, f"chips/s (best of {REPEATS})")
        result.figure("zarr chunks, one process", zarr_rate, f"chips/s (best of {REPEATS})")
        result.ratio("ChipPairs / zarr, one process", feed_rate / zarr_rate, 0.8)

        sampler = EpochSampler(pairs)
        runs: dict[str, list[float]] = {"shared": [], "feed": [], "zarr": [], "constant": []}
        in_new_memory = 0
        # Interleaved, so a slow phase of the machine hits all alike. The best run counts.
        for _ in range(REPEATS):
            rate, unslotted = shared_loader_rate(pairs)
            runs["shared"].append(rate)
            in_new_memory += unslotted
            runs["feed"].append(loader_rate(ChipPairDataset(pairs), sampler, chips))
            runs["zarr"].append(loader_rate(ZarrChunks(store, indices), sampler, chips))
            runs["constant"].append(loader_rate(ConstantSample(pairs), sampler, chips))
        torch_rate, plain_rate = max(runs["feed"]), max(runs["zarr"])
        shared_rate = max(runs["shared"])
        workers = f"DataLoader {LOADER_WORKERS} workers"
        result.figure(f"ChipPairLoader, {workers}", shared_rate, spread(runs["shared"]))
        result.figure("ChipPairLoader batches in new memory, all runs", in_new_memory, "")
        result.figure(f"ChipPairDataset, {workers}", torch_rate, spread(runs["feed"]))
        result.figure(f"zarr Dataset, {workers}", plain_rate, spread(runs["zarr"]))
        result.figure(
            f"constant sample of ChipPairDataset's shapes, {workers}",
            max(runs["constant"]),
            spread(runs["constant"]),
        )
        result.ratio("ChipPairLoader / zarr Dataset, DataLoader", shared_rate / plain_rate, 0.8)
        result.ratio("ChipPairDataset / zarr Dataset, DataLoader", torch_rate / plain_rate, 0.8)
    return result


def spread(rates: list[float]) -> str:
    """Unit text of a best-of figure that lists every run."""
    return f"chips/s (best of {len(rates)}: {', '.join(f'{rate:.1f}' for rate in rates)})"
