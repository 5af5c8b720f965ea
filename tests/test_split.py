"""Spatial-block splits and the buffer rule of pipeline.split."""

from __future__ import annotations

from collections import Counter

import shapely

from pipeline.config import SplitSpec
from pipeline.grid import Chip, project_geometry
from pipeline.split import BUFFER_LABEL, _distance_m, assign_blocks, assign_splits

SPEC = SplitSpec(
    fractions={"train": 0.6, "val": 0.2, "test": 0.2}, block_size=4, buffer_m=0.0, seed=0
)


def grid_chips(epsg: int = 32633, cols: int = 24, rows: int = 24) -> list[Chip]:
    return [Chip(epsg, 1000 + c, 16000 + r, 32, 10.0) for c in range(cols) for r in range(rows)]


def test_blocks_keep_chips_together() -> None:
    chips = grid_chips()
    labels = assign_blocks(chips, SPEC, "region")
    for chip in chips:
        first = Chip(chip.epsg, chip.col - chip.col % 4, chip.row - chip.row % 4, 32, 10.0)
        assert labels[chip.id] == labels[first.id]


def test_fractions_are_met_by_chip_count() -> None:
    chips = grid_chips()
    counts = Counter(assign_blocks(chips, SPEC, "region").values())
    total = len(chips)
    assert abs(counts["train"] / total - 0.6) <= 16 / total
    assert abs(counts["val"] / total - 0.2) <= 16 / total
    assert abs(counts["test"] / total - 0.2) <= 16 / total


def test_deterministic_and_seeded() -> None:
    chips = grid_chips()
    assert assign_splits(chips, SPEC, "region") == assign_splits(chips, SPEC, "region")
    other_seed = SplitSpec(SPEC.fractions, SPEC.block_size, SPEC.buffer_m, seed=1)
    assert assign_splits(chips, SPEC, "region") != assign_splits(chips, other_seed, "region")
    assert assign_splits(chips, SPEC, "region") != assign_splits(chips, SPEC, "other-region")


def test_buffer_separates_splits_by_distance() -> None:
    chips = grid_chips()
    spec = SplitSpec(SPEC.fractions, 4, buffer_m=320.0, seed=0)
    labels = assign_splits(chips, spec, "region")
    kept = [chip for chip in chips if labels[chip.id] != BUFFER_LABEL]
    assert any(labels[chip.id] == BUFFER_LABEL for chip in chips)
    for chip in kept:
        for other in kept:
            if labels[chip.id] != labels[other.id]:
                assert _distance_m(chip, other) >= 320.0


def test_buffer_counts_chips_of_neighbouring_zones() -> None:
    # One chip either side of the 12E boundary between zones 32 and 33, at 47N.
    boundary = shapely.Point(12.0, 47.0)
    east_point = project_geometry(boundary, src_epsg=4326, dst_epsg=32633)
    west_point = project_geometry(boundary, src_epsg=4326, dst_epsg=32632)
    east = Chip(32633, int(east_point.x // 320) + 1, int(east_point.y // 320), 32, 10.0)
    west = Chip(32632, int(west_point.x // 320) - 1, int(west_point.y // 320), 32, 10.0)
    distance = _distance_m(west, east)
    assert 0 < distance < 2000
    spec = SplitSpec({"train": 0.5, "val": 0.0, "test": 0.5}, 1, buffer_m=distance + 1, seed=0)
    labels = assign_splits([west, east], spec, "zones")
    assert sorted(labels.values()) == [BUFFER_LABEL, "test"]


def test_kept_blocks_split_evenly() -> None:
    # 14 blocks of 4 x 4 chips along a strip, as an AOI that keeps only these blocks leaves them.
    chips = [
        Chip(32633, 4 * block + c, 16000 + r, 32, 10.0)
        for block in range(14)
        for c in range(4)
        for r in range(4)
    ]
    spec = SplitSpec({"train": 0.5, "val": 0.0, "test": 0.5}, 4, buffer_m=0.0, seed=3)
    labels = assign_blocks(chips, spec, "strip")
    blocks = {
        split: {chip.col // 4 for chip in chips if labels[chip.id] == split}
        for split in ("train", "test")
    }
    assert len(blocks["train"]) == 7
    assert len(blocks["test"]) == 7
    assert not blocks["train"] & blocks["test"]
    assert "val" not in labels.values()
