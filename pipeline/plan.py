"""Planning: region spec and catalogs in, one task per chip out. No pixels are read here."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import pandas as pd

from pipeline.config import CatalogSpec, RegionSpec
from pipeline.grid import Chip, chips_for_aoi
from pipeline.search import ItemSet, search
from pipeline.select import rank_s2_candidates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChipTask:
    """Planned reads of one chip: ranked Sentinel-2 candidates and the Sentinel-1 items over it."""

    chip: Chip
    s2_candidates: tuple[str, ...]
    s1_items: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """The chips of a region with their candidate items."""

    region: RegionSpec
    catalogs: Mapping[str, CatalogSpec]
    tasks: tuple[ChipTask, ...]
    s2: ItemSet
    s1: ItemSet

    def summary(self) -> dict[str, Any]:
        zones: dict[str, int] = {}
        for task in self.tasks:
            zones[f"EPSG:{task.chip.epsg}"] = zones.get(f"EPSG:{task.chip.epsg}", 0) + 1
        return {
            "region": self.region.name,
            "chips": len(self.tasks),
            "chips_per_crs": zones,
            "chip_size_px": self.region.grid.chip_size,
            "resolution_m": self.region.grid.resolution_m,
            "s2_items": len(self.s2.table),
            "s1_items": len(self.s1.table),
            "chips_without_s2_candidates": sum(1 for t in self.tasks if not t.s2_candidates),
            "chips_without_s1_items": sum(1 for t in self.tasks if not t.s1_items),
        }

    def comparable(self) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
        """Return the plan as plain values, to compare plans made through different catalogs."""
        return [(t.chip.id, t.s2_candidates, t.s1_items) for t in self.tasks]


def _chips_frame(chips: list[Chip]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"chip_index": range(len(chips))},
        geometry=[chip.footprint_lonlat() for chip in chips],
        crs="EPSG:4326",
    )


def _items_per_chip(chips: gpd.GeoDataFrame, items: gpd.GeoDataFrame) -> dict[int, pd.DataFrame]:
    if items.empty or chips.empty:
        return {}
    joined = gpd.sjoin(chips, items, how="inner", predicate="intersects")
    return {int(index): group for index, group in joined.groupby("chip_index")}


def make_plan(region: RegionSpec, catalogs: Mapping[str, CatalogSpec]) -> Plan:
    """Search both modalities and list, per chip, the items it may read."""
    chips = chips_for_aoi(region.aoi, region.grid)
    log.info(
        "region %s: %d chips on the %g m lattice",
        region.name,
        len(chips),
        region.grid.chip_extent_m,
    )

    s2_catalog = catalogs[region.s2.catalog]
    s2_items = search(
        s2_catalog, s2_catalog.source("s2"), aoi=region.aoi, start=region.start, end=region.end
    )
    s1_catalog = catalogs[region.s1.catalog]
    margin = dt.timedelta(days=region.s1.max_time_gap_days)
    s1_items = search(
        s1_catalog,
        s1_catalog.source("s1"),
        aoi=region.aoi,
        start=region.start - margin,
        end=region.end + margin,
    )

    frame = _chips_frame(chips)
    s2_by_chip = _items_per_chip(frame, s2_items.table.reset_index(drop=True))
    s1_by_chip = _items_per_chip(frame, s1_items.table.reset_index(drop=True))
    empty = s2_items.table.iloc[0:0]
    tasks = []
    for index, chip in enumerate(chips):
        s2_rows = s2_by_chip.get(index, empty)
        s1_rows = s1_by_chip.get(index, empty)
        tasks.append(
            ChipTask(
                chip=chip,
                s2_candidates=rank_s2_candidates(s2_rows, region.s2),
                s1_items=tuple(sorted(s1_rows["id"])),
            )
        )
    return Plan(region=region, catalogs=catalogs, tasks=tuple(tasks), s2=s2_items, s1=s1_items)
