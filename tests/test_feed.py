"""The training feed on a real sample store: one `sensorcube run sample` for the whole module.

Expected arrays are read independently through xarray. Tests that need a store with NaN or a
manifest that does not fit copy the store or edit a copy of the manifest.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.errors import FeedError, StoreNotFoundError, UsageError
from pipeline.feed import (
    ChipPairs,
    Direction,
    compute_band_stats,
    load_band_stats,
    parse_direction,
)
from pipeline.manifest import chips_digest
from pipeline.store import chunk_path, open_chip_table

requires_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed; install sensorcube[torch] to run the PyTorch feed tests",
)

# A train chip gets NaN in these places in the NaN store: s1 VV in a block, s2 B04 at one pixel
# and every s2 band at another pixel.
NAN_S1 = (0, slice(0, 4), slice(0, 8))
NAN_S2_ONE_BAND = (3, 10, 10)
NAN_S2_ALL_BANDS = (slice(None), 20, 5)


@pytest.fixture(scope="module")
def sample(sample_run: Path) -> Path:
    return sample_run


@pytest.fixture(scope="module")
def store(sample: Path) -> Path:
    return sample / "cubes" / "sample.zarr"


@pytest.fixture(scope="module")
def manifest_path(sample: Path) -> Path:
    return sample / "splits" / "sample" / "manifest.json"


@pytest.fixture(scope="module")
def manifest(manifest_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(manifest_path.read_text())
    return data


@pytest.fixture(scope="module")
def cube(store: Path) -> xr.Dataset:
    return xr.open_zarr(store)


@pytest.fixture(scope="module")
def nan_store(
    store: Path, manifest: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """Copy the store and write NaN into its first train chip; return (path, chip id)."""
    path = tmp_path_factory.mktemp("nan") / "sample.zarr"
    shutil.copytree(store, path)
    chip_id = split_ids(manifest, "train")[0]
    root = zarr.open_group(str(path), mode="r+")
    index = [str(value) for value in np.asarray(root["chip"][...])].index(chip_id)
    s1 = np.asarray(root["s1"][index])
    s1[NAN_S1] = np.nan
    root["s1"][index] = s1
    s2 = np.asarray(root["s2"][index])
    s2[NAN_S2_ONE_BAND] = np.nan
    s2[NAN_S2_ALL_BANDS] = np.nan
    root["s2"][index] = s2
    return path, chip_id


def with_chips(manifest: dict[str, Any], chips: list[dict[str, Any]]) -> dict[str, Any]:
    """Return a copy of the manifest with another chip list and its digest, as freeze writes it."""
    return {**manifest, "chips": chips, "chips_sha256": chips_digest(chips)}


def split_ids(manifest: dict[str, Any], split: str) -> list[str]:
    return sorted(entry["id"] for entry in manifest["chips"] if entry["split"] == split)


def stored(cube: xr.Dataset, variable: str, chip_id: str) -> np.ndarray:
    return np.asarray(cube[variable].sel(chip=chip_id).values)


# ----------------------------------------------------------------------------------------------
# Pairs, splits and directions


def test_pairs_equal_store_arrays(store: Path, manifest_path: Path, cube: xr.Dataset) -> None:
    pairs = ChipPairs(store, manifest_path, split="train", direction="s1->s2")
    assert len(pairs) > 0
    for pair in pairs:
        np.testing.assert_array_equal(pair.source, stored(cube, "s1", pair.chip_id))
        np.testing.assert_array_equal(pair.target, stored(cube, "s2", pair.chip_id))
        assert pair.source.dtype == np.float32
        assert pair.target.dtype == np.float32
        assert pair.source_valid.all()
        assert pair.target_valid.all()
    assert pairs.source_bands == ("VV", "VH")
    assert pairs.target_bands == tuple(str(band) for band in cube["band"].values)


def test_pairs_kept_in_a_list_keep_their_values(
    store: Path, manifest_path: Path, cube: xr.Dataset
) -> None:
    # The reader reuses an array once nothing refers to it; pairs still held must not change.
    pairs = ChipPairs(store, manifest_path, split="train", direction="s2->s1", shuffle=False)
    kept = [pairs[position] for position in range(len(pairs))] * 2
    kept.extend(pairs)
    for pair in kept:
        np.testing.assert_array_equal(pair.source, stored(cube, "s2", pair.chip_id))
        np.testing.assert_array_equal(pair.target, stored(cube, "s1", pair.chip_id))
        assert pair.source_valid.all()


def test_damaged_chunk_raises_feed_error(
    store: Path, manifest_path: Path, manifest: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "sample.zarr"
    shutil.copytree(store, path)
    chip_id = split_ids(manifest, "train")[0]
    index = [str(value) for value in xr.open_zarr(path)["chip"].values].index(chip_id)
    chunk = chunk_path(path, "s2", index, 4)
    damaged = bytearray(chunk.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    chunk.write_bytes(bytes(damaged))

    pairs = ChipPairs(path, manifest_path, split="train", direction="s1->s2")
    with pytest.raises(FeedError, match="CRC-32C checksum does not match its bytes"):
        pairs[pairs.chip_ids.index(chip_id)]


def test_inverse_swaps_source_and_target(store: Path, manifest_path: Path) -> None:
    forward = ChipPairs(store, manifest_path, split="val", direction="s1->s2", seed=3)
    for backward in (
        forward.inverse(),
        ChipPairs(store, manifest_path, split="val", direction="s2->s1", seed=3),
    ):
        assert backward.direction == Direction("s2", "s1")
        assert backward.chip_ids == forward.chip_ids
        assert list(backward.epoch_order(2)) == list(forward.epoch_order(2))
        for forward_pair, backward_pair in zip(forward, backward, strict=True):
            assert backward_pair.chip_id == forward_pair.chip_id
            np.testing.assert_array_equal(backward_pair.source, forward_pair.target)
            np.testing.assert_array_equal(backward_pair.target, forward_pair.source)
            np.testing.assert_array_equal(backward_pair.source_valid, forward_pair.target_valid)


def test_ndvi_target_keeps_two_dimensions(
    store: Path, manifest_path: Path, cube: xr.Dataset
) -> None:
    pairs = ChipPairs(store, manifest_path, split="test", direction="s2->ndvi")
    pair = pairs[-1]
    assert pair.target.shape == (32, 32)
    assert pair.target_valid.shape == (32, 32)
    assert pairs.target_bands == ("ndvi",)
    np.testing.assert_array_equal(pair.target, stored(cube, "ndvi", pair.chip_id))


def test_splits_come_from_manifest(
    store: Path, manifest_path: Path, manifest: dict[str, Any]
) -> None:
    seen: set[str] = set()
    for split in ("train", "val", "test"):
        pairs = ChipPairs(store, manifest_path, split=split, direction="s1->s2")
        assert list(pairs.chip_ids) == split_ids(manifest, split)
        assert not seen & set(pairs.chip_ids)
        seen |= set(pairs.chip_ids)
    assert not seen & set(split_ids(manifest, "buffer"))


def test_manifest_split_wins_over_chip_table(store: Path, manifest: dict[str, Any]) -> None:
    moved = split_ids(manifest, "train")[0]
    assert open_chip_table(store).loc[moved, "split"] == "train"
    chips = copy.deepcopy(manifest["chips"])
    for entry in chips:
        if entry["id"] == moved:
            entry["split"] = "val"
    other = with_chips(manifest, chips)
    train = ChipPairs(store, other, split="train", direction="s1->s2")
    val = ChipPairs(store, other, split="val", direction="s1->s2")
    assert moved not in train.chip_ids
    assert moved in val.chip_ids
    assert val[val.chip_ids.index(moved)].chip_id == moved


def test_edited_manifest_rejected(store: Path, manifest: dict[str, Any]) -> None:
    chips = copy.deepcopy(manifest["chips"])
    chips[0]["split"] = "test" if chips[0]["split"] != "test" else "val"
    edited = {**manifest, "chips": chips}
    with pytest.raises(FeedError, match="manifest chip list does not match its chips_sha256"):
        ChipPairs(store, edited, split="train", direction="s1->s2")


def test_index_out_of_range(store: Path, manifest_path: Path) -> None:
    pairs = ChipPairs(store, manifest_path, split="val", direction="s1->s2")
    with pytest.raises(
        IndexError, match=f"chip index {len(pairs)} out of range for {len(pairs)} chips"
    ):
        pairs[len(pairs)]
    assert pairs[-len(pairs)].chip_id == pairs.chip_ids[0]


def test_import_does_not_import_torch() -> None:
    code = "import sys, pipeline.feed; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------
# Epoch order


def test_epoch_order_reproducible_per_seed(store: Path, manifest_path: Path) -> None:
    first = ChipPairs(store, manifest_path, split="train", direction="s1->s2", seed=7)
    again = ChipPairs(store, manifest_path, split="train", direction="s1->s2", seed=7)
    other_seed = ChipPairs(store, manifest_path, split="train", direction="s1->s2", seed=8)
    assert list(first.epoch_order(0)) == list(again.epoch_order(0))
    assert list(first.epoch_order(5)) == list(again.epoch_order(5))
    assert list(first.epoch_order(0)) != list(first.epoch_order(1))
    assert list(first.epoch_order(0)) != list(other_seed.epoch_order(0))


def test_every_chip_once_per_epoch(
    store: Path, manifest_path: Path, manifest: dict[str, Any]
) -> None:
    pairs = ChipPairs(store, manifest_path, split="train", direction="s1->s2", seed=1)
    for epoch in range(3):
        ids = [pair.chip_id for pair in pairs.iter_epoch(epoch)]
        assert len(ids) == len(set(ids))
        assert sorted(ids) == split_ids(manifest, "train")
        assert ids == [pairs.chip_ids[i] for i in pairs.epoch_order(epoch)]


def test_no_shuffle_keeps_manifest_order(
    store: Path, manifest_path: Path, manifest: dict[str, Any]
) -> None:
    pairs = ChipPairs(store, manifest_path, split="train", direction="s1->s2", shuffle=False)
    for epoch in (0, 1):
        assert [pair.chip_id for pair in pairs.iter_epoch(epoch)] == split_ids(manifest, "train")


# ----------------------------------------------------------------------------------------------
# NaN policy and normalisation


def test_nan_masks_and_fill(nan_store: tuple[Path, str], manifest_path: Path) -> None:
    path, chip_id = nan_store
    pairs = ChipPairs(path, manifest_path, split="train", direction="s1->s2", nan_fill=-1.0)
    pair = pairs[pairs.chip_ids.index(chip_id)]
    raw = xr.open_zarr(path)
    s1 = stored(raw, "s1", chip_id)
    s2 = stored(raw, "s2", chip_id)

    expected_s1_valid = np.ones(s1.shape, dtype=bool)
    expected_s1_valid[NAN_S1] = False
    np.testing.assert_array_equal(pair.source_valid, expected_s1_valid)
    assert (pair.source[~expected_s1_valid] == -1.0).all()
    np.testing.assert_array_equal(pair.source[expected_s1_valid], s1[expected_s1_valid])

    assert not pair.target_valid[NAN_S2_ONE_BAND]
    assert pair.target_valid[2, 10, 10], "only band 3 of pixel (10, 10) is NaN"
    assert not pair.target_valid[NAN_S2_ALL_BANDS].any()
    assert pair.target_valid.sum() == s2.size - 1 - s2.shape[0]
    assert (pair.target[~pair.target_valid] == -1.0).all()
    assert np.isfinite(pair.target).all()


def test_nan_fill_applies_after_normalisation(
    nan_store: tuple[Path, str], manifest_path: Path
) -> None:
    path, chip_id = nan_store
    stats = compute_band_stats(path, manifest_path, variables=["s1"])
    pairs = ChipPairs(
        path, manifest_path, split="train", direction="s1->s2", normalize=stats, nan_fill=0.0
    )
    pair = pairs[pairs.chip_ids.index(chip_id)]
    assert (pair.source[~pair.source_valid] == 0.0).all()
    raw_vv = stored(xr.open_zarr(path), "s1", chip_id)[0]
    expected = (raw_vv[4:, :] - stats["s1"]["VV"]["mean"]) / stats["s1"]["VV"]["std"]
    np.testing.assert_allclose(pair.source[0, 4:, :], expected, rtol=1e-5, atol=1e-6)


def test_band_stats_ignore_nan(nan_store: tuple[Path, str], manifest: dict[str, Any]) -> None:
    path, _ = nan_store
    stats = compute_band_stats(path, manifest, split="train")
    train = xr.open_zarr(path).sel(chip=split_ids(manifest, "train")).load()
    for variable in ("s1", "s2", "ndvi"):
        array = train[variable]
        labels = (
            [str(label) for label in array[array.dims[1]].values] if array.ndim == 4 else [variable]
        )
        # One row per band, all chips and pixels of the split in the columns.
        values = np.asarray(array.values, dtype=np.float64)
        rows = (
            np.moveaxis(values, 1, 0).reshape(len(labels), -1)
            if array.ndim == 4
            else values.reshape(1, -1)
        )
        assert list(stats[variable]) == labels
        for row, band in zip(rows, labels, strict=True):
            entry = stats[variable][band]
            assert entry["mean"] == pytest.approx(np.nanmean(row), rel=1e-9), band
            assert entry["std"] == pytest.approx(np.nanstd(row), rel=1e-9), band
            assert entry["count"] == np.isfinite(row).sum(), band
    assert stats["s1"]["VV"]["count"] == stats["s1"]["VH"]["count"] - 32


def test_normalized_train_has_zero_mean_unit_std(
    store: Path, manifest_path: Path, tmp_path: Path
) -> None:
    stats_file = tmp_path / "stats.json"
    stats_file.write_text(json.dumps(compute_band_stats(store, manifest_path)))
    stats = load_band_stats(stats_file)
    for direction in ("s1->s2", "s2->ndvi"):
        pairs = ChipPairs(store, manifest_path, split="train", direction=direction, normalize=stats)
        items = list(pairs.iter_epoch(0))
        for name, arrays in (
            ("source", [p.source for p in items]),
            ("target", [p.target for p in items]),
        ):
            stacked = np.stack(arrays).astype(np.float64)
            axes = (0, 2, 3) if stacked.ndim == 4 else (0, 1, 2)
            np.testing.assert_allclose(
                stacked.mean(axis=axes), 0.0, atol=1e-4, err_msg=f"{direction} {name}"
            )
            np.testing.assert_allclose(
                stacked.std(axis=axes), 1.0, atol=1e-4, err_msg=f"{direction} {name}"
            )


def test_partial_stats_normalize_named_variables_only(
    store: Path, manifest_path: Path, cube: xr.Dataset
) -> None:
    stats = compute_band_stats(store, manifest_path, variables=["s2"])
    pairs = ChipPairs(store, manifest_path, split="val", direction="s1->s2", normalize=stats)
    pair = pairs[0]
    np.testing.assert_array_equal(pair.source, stored(cube, "s1", pair.chip_id))
    assert not np.array_equal(pair.target, stored(cube, "s2", pair.chip_id))


# ----------------------------------------------------------------------------------------------
# Rejected input


@pytest.mark.parametrize(
    ("direction", "message"),
    [
        (
            "s1->rgb",
            "invalid direction 's1->rgb': 'rgb' is not a variable of the store; valid variables: 's2', 's1', 'ndvi'",
        ),
        (
            "s1",
            "invalid direction 's1': write it as '<source>-><target>' with two store variables, e.g. 's1->s2'; valid variables: 's2', 's1', 'ndvi'",
        ),
        ("s1->s2->ndvi", "invalid direction 's1->s2->ndvi': write it as '<source>-><target>'"),
        ("s2->s2", "invalid direction 's2->s2': source and target are the same variable"),
    ],
)
def test_bad_direction_rejected(
    store: Path, manifest_path: Path, direction: str, message: str
) -> None:
    with pytest.raises(FeedError) as caught:
        ChipPairs(store, manifest_path, split="train", direction=direction)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)


def test_direction_whitespace_accepted() -> None:
    assert parse_direction(" s2 -> s1 ", ["s2", "s1"]) == Direction("s2", "s1")
    assert str(Direction("s2", "s1").inverse()) == "s1->s2"


@pytest.mark.parametrize("split", ["trian", "buffer", "Train", ""])
def test_bad_split_rejected(store: Path, manifest_path: Path, split: str) -> None:
    expected = f"invalid split {split!r}; valid splits: 'train', 'val', 'test'"
    with pytest.raises(FeedError) as caught:
        ChipPairs(store, manifest_path, split=split, direction="s1->s2")
    assert str(caught.value) == expected


def test_manifest_of_other_region_rejected(store: Path, manifest: dict[str, Any]) -> None:
    other = {**manifest, "region": "alps"}
    with pytest.raises(
        FeedError,
        match=r"manifest is for region 'alps' but store '.*sample\.zarr' was built for region 'sample'; pass splits/sample/manifest\.json",
    ):
        ChipPairs(store, other, split="train", direction="s1->s2")


def test_manifest_with_unknown_chip_rejected(store: Path, manifest: dict[str, Any]) -> None:
    extra = with_chips(manifest, [*manifest["chips"], {**manifest["chips"][0], "id": "32633_1_1"}])
    with pytest.raises(
        FeedError, match=r"does not contain 1 of the manifest's chips \(first: '32633_1_1'\)"
    ):
        ChipPairs(store, extra, split="train", direction="s1->s2")


def test_manifest_of_other_configuration_rejected(store: Path, manifest: dict[str, Any]) -> None:
    rebuilt = {**manifest, "config_hash": "0" * 64}
    with pytest.raises(
        FeedError, match=r"manifest config hash 000000000000\.\.\. differs from store"
    ):
        ChipPairs(store, rebuilt, split="train", direction="s1->s2")


def test_missing_manifest_and_store_rejected(
    store: Path, tmp_path: Path, manifest_path: Path
) -> None:
    with pytest.raises(UsageError, match="manifest not found"):
        ChipPairs(store, tmp_path / "manifest.json", split="train", direction="s1->s2")
    with pytest.raises(FeedError, match="is not a sensorcube manifest"):
        ChipPairs(store, {"chips": []}, split="train", direction="s1->s2")
    with pytest.raises(StoreNotFoundError, match="not found"):
        ChipPairs(tmp_path / "none.zarr", manifest_path, split="train", direction="s1->s2")


def test_seed_and_epoch_checked(store: Path, manifest_path: Path) -> None:
    with pytest.raises(FeedError, match="invalid seed -1: use an integer of 0 or more"):
        ChipPairs(store, manifest_path, split="train", direction="s1->s2", seed=-1)
    with pytest.raises(FeedError, match="invalid seed True: use an integer of 0 or more"):
        ChipPairs(store, manifest_path, split="train", direction="s1->s2", seed=True)
    pairs = ChipPairs(store, manifest_path, split="train", direction="s1->s2", seed=3)
    numpy_seed = ChipPairs(
        store, manifest_path, split="train", direction="s1->s2", seed=np.int64(3)
    )
    assert list(numpy_seed.epoch_order(1)) == list(pairs.epoch_order(1))
    with pytest.raises(FeedError, match="invalid epoch -1: epochs count from 0"):
        pairs.epoch_order(-1)


@pytest.mark.parametrize(
    ("stats", "message"),
    [
        (
            {"rgb": {}},
            "band statistics name unknown variable 'rgb'; valid variables: 's2', 's1', 'ndvi'",
        ),
        (
            {"s1": {"VV": {"mean": 0.1, "std": 0.1}}},
            r"band statistics of 's1' list bands \['VV'\], but the store has \['VV', 'VH'\]",
        ),
        (
            {"s1": {"VV": {"mean": 0.1, "std": 0.0}, "VH": {"mean": 0.1, "std": 0.1}}},
            r"band statistics of 's1' band 'VV' are invalid \(mean 0.1, std 0.0\)",
        ),
        (
            {"s1": {"VV": {"mean": 0.1}, "VH": {"mean": 0.1, "std": 0.1}}},
            "band statistics of 's1' band 'VV' need numbers 'mean' and 'std'",
        ),
    ],
)
def test_bad_stats_rejected(
    store: Path, manifest_path: Path, stats: dict[str, Any], message: str
) -> None:
    with pytest.raises(FeedError, match=message):
        ChipPairs(store, manifest_path, split="train", direction="s1->s2", normalize=stats)


def test_bad_stats_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    with pytest.raises(FeedError, match="band statistics file not found"):
        load_band_stats(path)
    path.write_text("[1, 2]")
    with pytest.raises(FeedError, match="must map variables to bands to"):
        load_band_stats(path)


# ----------------------------------------------------------------------------------------------
# PyTorch


@requires_torch
def test_dataloader_two_workers_each_chip_once(
    store: Path, manifest_path: Path, cube: xr.Dataset
) -> None:
    import torch
    from torch.utils.data import DataLoader

    from pipeline.feed_torch import ChipPairDataset, EpochSampler

    pairs = ChipPairs(store, manifest_path, split="train", direction="s1->s2", seed=4)
    pairs[0]  # opens the Zarr handles in this process before the workers fork
    sampler = EpochSampler(pairs)
    loader = DataLoader(ChipPairDataset(pairs), batch_size=4, sampler=sampler, num_workers=2)
    orders = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        ids: list[str] = []
        for batch in loader:
            assert batch["source"].shape[1:] == (2, 32, 32)
            assert batch["target"].dtype == torch.float32
            assert batch["source_valid"].dtype == torch.bool
            ids.extend(batch["chip_id"])
            first = batch["chip_id"][0]
            np.testing.assert_array_equal(batch["source"][0].numpy(), stored(cube, "s1", first))
            np.testing.assert_array_equal(batch["target"][0].numpy(), stored(cube, "s2", first))
        assert len(ids) == len(set(ids)), f"epoch {epoch} repeats a chip"
        assert set(ids) == set(pairs.chip_ids)
        assert ids == [pair.chip_id for pair in pairs.iter_epoch(epoch)]
        orders.append(ids)
    assert orders[0] != orders[1]


@requires_torch
def test_dataloader_spawned_worker_reads(store: Path, manifest_path: Path) -> None:
    from torch.utils.data import DataLoader

    from pipeline.feed_torch import ChipPairDataset

    pairs = ChipPairs(store, manifest_path, split="val", direction="s2->s1", shuffle=False)
    pairs[0]
    loader = DataLoader(
        ChipPairDataset(pairs),
        batch_size=len(pairs),
        num_workers=1,
        multiprocessing_context="spawn",
    )
    (batch,) = list(loader)
    assert list(batch["chip_id"]) == list(pairs.chip_ids)
    expected = np.stack([pair.source for pair in pairs])
    np.testing.assert_array_equal(batch["source"].numpy(), expected)
