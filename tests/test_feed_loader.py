"""ChipPairLoader: DataLoader workers that write batches into reused shared memory.

The batches must be what ChipPairs returns for the same chips, in the sampler's order, and a
batch the caller keeps must never change, whether the workers had a free slot for the next
batch or not.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import FeedError
from pipeline.feed import ChipPairs

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed; install sensorcube[torch] to run the PyTorch feed tests",
)

KEYS = ("source", "target", "source_valid", "target_valid")


@pytest.fixture(scope="module")
def pairs(sample_run: Path) -> ChipPairs:
    store = sample_run / "cubes" / "sample.zarr"
    manifest = sample_run / "splits" / "sample" / "manifest.json"
    return ChipPairs(store, manifest, split="train", direction="s1->s2", seed=11)


def expected_batch(pairs: ChipPairs, chip_ids: list[str]) -> dict[str, np.ndarray]:
    positions = {chip_id: position for position, chip_id in enumerate(pairs.chip_ids)}
    read = [pairs[positions[chip_id]] for chip_id in chip_ids]
    return {key: np.stack([getattr(pair, key) for pair in read]) for key in KEYS}


def assert_batch_equal(pairs: ChipPairs, batch: dict[str, object]) -> None:
    chip_ids = list(batch["chip_id"])  # type: ignore[call-overload]
    expected = expected_batch(pairs, chip_ids)
    for key in KEYS:
        np.testing.assert_array_equal(batch[key].numpy(), expected[key])  # type: ignore[attr-defined]


def test_epochs_follow_sampler_and_reuse_slots(pairs: ChipPairs) -> None:
    import torch

    from pipeline.feed_torch import ChipPairLoader

    loader = ChipPairLoader(pairs, batch_size=4, num_workers=2)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        ids: list[str] = []
        for batch in loader:
            assert batch["source"].dtype == torch.float32
            assert batch["target_valid"].dtype == torch.bool
            assert_batch_equal(pairs, dict(batch))
            ids.extend(batch["chip_id"])
        assert ids == [pair.chip_id for pair in pairs.iter_epoch(epoch)]
    # 26 train chips make 7 batches per epoch: all of them went through the 2 x 4 slots.
    assert loader.batches_in_new_memory == 0


def test_kept_batches_never_change(pairs: ChipPairs) -> None:
    from pipeline.feed_torch import ChipPairLoader

    loader = ChipPairLoader(pairs, batch_size=2, num_workers=2, slots_per_worker=1)
    kept_batches = list(loader)  # 13 batches, more than the 2 slots: the rest come in new memory
    assert len(kept_batches) == 13
    assert loader.batches_in_new_memory == 11
    for batch in kept_batches:
        assert_batch_equal(pairs, dict(batch))
    # A view of a kept batch keeps its slot in use through the next epoch too.
    first_source = kept_batches[0]["source"][0]
    snapshot = first_source.clone()
    del kept_batches
    loader.set_epoch(1)
    for batch in loader:
        assert_batch_equal(pairs, dict(batch))
    assert (first_source == snapshot).all()


def test_abandoned_epoch_frees_its_slots(pairs: ChipPairs) -> None:
    from pipeline.feed_torch import ChipPairLoader

    loader = ChipPairLoader(pairs, batch_size=4, num_workers=2)
    for batch in loader:
        assert_batch_equal(pairs, dict(batch))
        break
    del batch
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        for batch in loader:
            assert_batch_equal(pairs, dict(batch))
    # Every batch went through the slots: the batches that the abandoned epoch had in flight
    # did not keep theirs, or the workers would have run short of free slots.
    assert loader.batches_in_new_memory == 0


def test_spawned_workers(pairs: ChipPairs) -> None:
    from pipeline.feed_torch import ChipPairLoader

    loader = ChipPairLoader(pairs, batch_size=8, num_workers=1, multiprocessing_context="spawn")
    ids: list[str] = []
    for batch in loader:
        assert_batch_equal(pairs, dict(batch))
        ids.extend(batch["chip_id"])
    assert ids == [pair.chip_id for pair in pairs.iter_epoch(0)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0, "num_workers": 2}, "invalid batch_size 0: give a whole number of 1"),
        ({"batch_size": 2.5, "num_workers": 2}, "invalid batch_size 2.5: give a whole number"),
        (
            {"batch_size": 4, "num_workers": 0},
            "invalid num_workers 0: give a whole number of 1 or more; for reads in this "
            "process, iterate ChipPairs.iter_epoch",
        ),
        (
            {"batch_size": 4, "num_workers": 2, "prefetch_factor": 0},
            "invalid prefetch_factor 0: give a whole number of 1 or more",
        ),
        (
            {"batch_size": 4, "num_workers": 2, "slots_per_worker": 0},
            "invalid slots_per_worker 0: give a whole number of 1 or more",
        ),
    ],
)
def test_invalid_options(pairs: ChipPairs, options: dict[str, float], message: str) -> None:
    from pipeline.feed_torch import ChipPairLoader

    with pytest.raises(FeedError, match=message):
        ChipPairLoader(pairs, **options)


def test_empty_split_rejected(sample_run: Path) -> None:
    from pipeline.feed_torch import ChipPairLoader
    from tests.test_feed import with_chips

    manifest_path = sample_run / "splits" / "sample" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # Every val chip moves to train, so the val split is empty.
    chips = [
        {**chip, "split": "train" if chip["split"] == "val" else chip["split"]}
        for chip in manifest["chips"]
    ]
    pairs = ChipPairs(
        sample_run / "cubes" / "sample.zarr",
        with_chips(manifest, chips),
        split="val",
        direction="s1->s2",
    )
    with pytest.raises(FeedError, match="split 'val' has no chips to load; choose a split"):
        ChipPairLoader(pairs, batch_size=4, num_workers=1)
