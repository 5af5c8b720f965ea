"""Feed throughput: sensorcube's feed against TorchGeo's RasterDataset and RandomGeoSampler.

sensorcube reads the ``s1->s2`` pairs of the train chips of the feed benchmark's store
(``bench_feed.feed_store``), one float32 chunk per variable and chip. TorchGeo reads the same
9 bands (VV and VH, then the 7 Sentinel-2 bands) of the same region from the synthetic COGs,
as an IntersectionDataset of two RasterDatasets in EPSG:32632 at 10 m. A RandomGeoSampler
draws 264 x 264 px boxes inside the 8 x 8 chip block, as many per epoch as there are train
chips. Both run EPOCHS epochs in one process, then with 2 DataLoader worker processes and
batches of 8 (sensorcube as ChipPairLoader, and as ChipPairDataset in a plain DataLoader),
timed after one epoch that starts the workers. Each measurement runs REPEATS
times, taking turns with the other side, and the best run counts.

torchgeo is imported only inside :func:`run`. Where it is not installed, the benchmark prints
that it was skipped and why. torchgeo 0.8 requires a newer torch than the project venv's, so
this benchmark runs from a separate venv (see docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from pipeline.feed import ChipPairs
from pipeline.feed_torch import ChipPairDataset, EpochSampler
from tests.benchmarks import scenes
from tests.benchmarks.bench_feed import (
    BATCH_SIZE,
    CHIPS_PER_SIDE,
    EPOCHS,
    LOADER_WORKERS,
    REPEATS,
    ConstantSample,
    feed_store,
    iterate_rate,
    loader_rate,
    read_pairs,
    shared_loader_rate,
    spread,
)
from tests.benchmarks.common import Result, measured, timed

TARGET_RATIO = 10.0


def read_torchgeo(dataset: Any, sampler: Any) -> int:
    """Read every sample of the sampler EPOCHS times and return the number of samples read."""
    count = 0
    for _ in range(EPOCHS):
        for query in sampler:
            count += dataset[query]["image"].numel() > 0
    return count


def torchgeo_loader_rate(dataset: Any, sampler: Any, samples: int, collate: Any) -> float:
    """Return samples per second over EPOCHS epochs, after one epoch that starts the workers."""
    loader = DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=sampler,
        num_workers=LOADER_WORKERS,
        persistent_workers=True,
        collate_fn=collate,
    )
    # RandomGeoSampler draws new boxes on every pass; it has no epoch to set.
    return iterate_rate(loader, lambda epoch: None, samples)


def run() -> Result:
    with measured("feed throughput against TorchGeo RasterDataset") as result:
        try:
            import shapely
            import torch
            import torchgeo
            from torchgeo.datasets import stack_samples
            from torchgeo.samplers import RandomGeoSampler

            from tests.benchmarks.torchgeo_scenes import s1_s2_dataset
        except ImportError as error:
            result.note(
                f"skipped: torchgeo is not importable ({error}). torchgeo 0.8 needs a newer "
                "torch than the project venv has, so run this benchmark from a separate venv "
                "with torchgeo installed (see docs/benchmarks.md)"
            )
            return result

        store, manifest = feed_store()
        pairs = ChipPairs(store, manifest, split="train", direction="s1->s2", seed=0)
        chips = len(pairs)
        dataset = s1_s2_dataset()
        roi = shapely.box(*scenes.chip_block_bounds(CHIPS_PER_SIDE))
        sampler = RandomGeoSampler(
            dataset,
            size=scenes.CHIP_SIZE_PX,
            length=chips,
            roi=roi,
            generator=torch.Generator().manual_seed(0),
        )
        result.note(
            f"torch {torch.__version__}, torchgeo {torchgeo.__version__}; {chips} samples "
            f"per epoch, {EPOCHS} epochs, 9 bands of {scenes.CHIP_SIZE_PX} x "
            f"{scenes.CHIP_SIZE_PX} px each"
        )

        # One epoch of each warms the page cache and opens the file handles.
        read_pairs(pairs)
        warm_up_sampler = RandomGeoSampler(dataset, size=scenes.CHIP_SIZE_PX, length=chips, roi=roi)
        for query in warm_up_sampler:
            dataset[query]

        feed_runs, torchgeo_runs = [], []
        for _ in range(REPEATS):
            feed_runs.append(timed(lambda: read_pairs(pairs))[0])
            torchgeo_runs.append(timed(lambda: read_torchgeo(dataset, sampler))[0])
        feed_rates = [chips * EPOCHS / seconds for seconds in feed_runs]
        torchgeo_rates = [chips * EPOCHS / seconds for seconds in torchgeo_runs]
        feed_rate, torchgeo_rate = max(feed_rates), max(torchgeo_rates)
        result.figure("ChipPairs, one process", feed_rate, spread(feed_rates))
        result.figure("TorchGeo RasterDataset, one process", torchgeo_rate, spread(torchgeo_rates))
        result.ratio("ChipPairs / TorchGeo, one process", feed_rate / torchgeo_rate, TARGET_RATIO)

        shared_runs, feed_loader_runs, torchgeo_loader_runs, constant_runs = [], [], [], []
        # Interleaved, so a slow phase of the machine hits all alike. The best run counts.
        for _ in range(REPEATS):
            shared_runs.append(shared_loader_rate(pairs)[0])
            feed_loader_runs.append(loader_rate(ChipPairDataset(pairs), EpochSampler(pairs), chips))
            torchgeo_loader_runs.append(
                torchgeo_loader_rate(dataset, sampler, chips, stack_samples)
            )
            constant_runs.append(loader_rate(ConstantSample(pairs), EpochSampler(pairs), chips))
        torch_rate, torchgeo_loader = max(feed_loader_runs), max(torchgeo_loader_runs)
        shared_rate = max(shared_runs)
        workers = f"DataLoader {LOADER_WORKERS} workers"
        result.figure(f"ChipPairLoader, {workers}", shared_rate, spread(shared_runs))
        result.figure(f"ChipPairDataset, {workers}", torch_rate, spread(feed_loader_runs))
        result.figure(
            f"TorchGeo RasterDataset, {workers}", torchgeo_loader, spread(torchgeo_loader_runs)
        )
        # What the DataLoader alone allows for ChipPairDataset's samples (see bench_feed).
        constant_rate = max(constant_runs)
        result.figure(f"constant sample, {workers}", constant_rate, spread(constant_runs))
        result.note(
            f"a dataset with no read cost reaches {constant_rate / torchgeo_loader:.1f} times "
            "TorchGeo's DataLoader rate in this run"
        )
        result.ratio(
            "ChipPairLoader / TorchGeo, DataLoader", shared_rate / torchgeo_loader, TARGET_RATIO
        )
        result.note(
            f"ChipPairDataset in a plain DataLoader reaches {torch_rate / torchgeo_loader:.1f} "
            "times TorchGeo's DataLoader rate in this run"
        )
    return result
