"""Spatial-block split assignment. Pure: chips in, split labels out.

Chips are grouped into blocks of ``block_size x block_size`` lattice cells per CRS. Blocks are
shuffled deterministically from the region name, the seed and the block key, then assigned one
by one to the split furthest below its target chip count. Chips closer than ``buffer_m`` metres
to a chip of a higher-priority split (test over val over train) are dropped into ``buffer``,
with distances measured in metres in the chip's own CRS so chips of neighbouring zones count.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import shapely

from pipeline.config import SPLIT_NAMES, SplitSpec
from pipeline.grid import Chip, project_geometry

BUFFER_LABEL = "buffer"
# Priority when chips of two splits are too close: the lower-priority chip is dropped.
SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}
METRES_PER_DEGREE_LAT = 110_574.0


def block_key(chip: Chip, block_size: int) -> tuple[int, int, int]:
    return (chip.epsg, chip.col // block_size, chip.row // block_size)


def _block_order(region: str, seed: int, key: tuple[int, int, int]) -> str:
    return hashlib.sha256(f"{region}|{seed}|{key[0]}|{key[1]}|{key[2]}".encode()).hexdigest()


def assign_blocks(chips: Sequence[Chip], spec: SplitSpec, region: str) -> dict[str, str]:
    """Assign every chip to train, val or test by whole blocks; return split by chip id."""
    blocks: dict[tuple[int, int, int], list[Chip]] = defaultdict(list)
    for chip in chips:
        blocks[block_key(chip, spec.block_size)].append(chip)
    order = sorted(blocks, key=lambda key: _block_order(region, spec.seed, key))

    total = len(chips)
    targets = {name: spec.fractions.get(name, 0.0) * total for name in SPLIT_NAMES}
    assigned = dict.fromkeys(SPLIT_NAMES, 0)
    labels: dict[str, str] = {}
    for key in order:
        active = [name for name in SPLIT_NAMES if targets[name] > 0]
        # Largest deficit first; ties by the fixed order train, val, test.
        split = max(
            active, key=lambda name: (targets[name] - assigned[name], -SPLIT_NAMES.index(name))
        )
        for chip in blocks[key]:
            labels[chip.id] = split
        assigned[split] += len(blocks[key])
    return labels


def apply_buffer(
    chips: Sequence[Chip], labels: Mapping[str, str], buffer_m: float
) -> dict[str, str]:
    """Move chips closer than ``buffer_m`` to a higher-priority split into ``buffer``."""
    result = dict(labels)
    if buffer_m <= 0 or not chips:
        return result
    footprints = [chip.footprint_lonlat() for chip in chips]
    tree = shapely.STRtree(footprints)
    # Decide higher-priority chips first, so a chip already dropped never causes another drop.
    for index in sorted(
        range(len(chips)), key=lambda i: (SPLIT_PRIORITY[labels[chips[i].id]], chips[i])
    ):
        chip = chips[index]
        own = labels[chip.id]
        lat = abs(footprints[index].centroid.y)
        for other_index in tree.query(footprints[index].buffer(_degrees(buffer_m, lat))):
            other = chips[int(other_index)]
            if other.id == chip.id or result.get(other.id) == BUFFER_LABEL:
                continue
            if SPLIT_PRIORITY[labels[other.id]] >= SPLIT_PRIORITY[own]:
                continue
            if _distance_m(chip, other) < buffer_m:
                result[chip.id] = BUFFER_LABEL
                break
    return result


def _degrees(metres: float, lat: float) -> float:
    """Search radius in degrees covering ``metres`` at latitude ``lat``, with a 1.5 margin."""
    return metres / METRES_PER_DEGREE_LAT / max(0.02, math.cos(math.radians(min(lat, 89.0)))) * 1.5


def _distance_m(chip: Chip, other: Chip) -> float:
    """Edge-to-edge distance in metres, measured in ``chip``'s CRS."""
    other_polygon = other.footprint()
    if other.epsg != chip.epsg:
        densified = shapely.segmentize(other_polygon, other.extent_m / 8)
        other_polygon = project_geometry(densified, src_epsg=other.epsg, dst_epsg=chip.epsg)
    return float(shapely.distance(chip.footprint(), other_polygon))


def assign_splits(chips: Sequence[Chip], spec: SplitSpec, region: str) -> dict[str, str]:
    """Block assignment followed by the buffer rule; labels are train, val, test or buffer."""
    return apply_buffer(chips, assign_blocks(chips, spec, region), spec.buffer_m)
