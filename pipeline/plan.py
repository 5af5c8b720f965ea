"""Planning: region spec and catalogs in, one task per chip out. No pixels are read here."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import pandas as pd

from pipeline.config import CatalogSpec, RegionSpec, Selection
from pipeline.grid import Chip, chips_for_aoi
from pipeline.search import ItemSet, search
from pipeline.select import rank_s2_candidates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChipTask:
    """Planned reads of one chip: per modality, the candidate item ids in rank order."""

    chip: Chip
    candidates: Mapping[str, tuple[str, ...]]

    @property
    def s2_candidates(self) -> tuple[str, ...]:
        return self.candidates.get("s2", ())

    @property
    def s1_items(self) -> tuple[str, ...]:
        return self.candidates.get("s1", ())


@dataclass(frozen=True)
class Plan:
    """The chips of a region with their candidate items per modality."""

    region: RegionSpec
    catalogs: Mapping[str, CatalogSpec]
    tasks: tuple[ChipTask, ...]
    item_sets: Mapping[str, ItemSet]

    @property
    def s2(self) -> ItemSet:
        return self.item_sets["s2"]

    @property
    def s1(self) -> ItemSet:
        return self.item_sets["s1"]

    def with_tasks(self, tasks: tuple[ChipTask, ...]) -> Plan:
        return Plan(self.region, self.catalogs, tasks, self.item_sets)

    def summary(self) -> dict[str, Any]:
        zones: dict[str, int] = {}
        for task in self.tasks:
            zones[f"EPSG:{task.chip.epsg}"] = zones.get(f"EPSG:{task.chip.epsg}", 0) + 1
        summary: dict[str, Any] = {
            "region": self.region.name,
            "chips": len(self.tasks),
            "chips_per_crs": zones,
            "chip_size_px": self.region.grid.chip_size,
            "resolution_m": self.region.grid.resolution_m,
        }
        for modality, item_set in self.item_sets.items():
            summary[f"{modality}_items"] = len(item_set.table)
            summary[f"chips_without_{modality}_items"] = sum(
                1 for task in self.tasks if not task.candidates.get(modality)
            )
        return summary

    def comparable(self) -> list[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]]:
        """Return the plan as plain values, to compare plans made through different catalogs."""
        return [(t.chip.id, tuple(sorted(t.candidates.items()))) for t in self.tasks]


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


def search_window(
    region: RegionSpec, modality: str, selection: Selection
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Time range searched for a modality: none for the static DEM, widened by pairing gaps."""
    if modality == "dem":
        return None, None
    margin = dt.timedelta(days=getattr(selection, "max_time_gap_days", 0.0))
    return region.start - margin, region.end + margin


def make_plan(region: RegionSpec, catalogs: Mapping[str, CatalogSpec]) -> Plan:
    """Search every requested modality and list, per chip, the items it may read."""
    chips = chips_for_aoi(region.aoi, region.grid)
    log.info(
        "region %s: %d chips on the %g m lattice",
        region.name,
        len(chips),
        region.grid.chip_extent_m,
    )
    item_sets: dict[str, ItemSet] = {}
    for modality, selection in region.selections().items():
        catalog = catalogs[selection.catalog]
        start, end = search_window(region, modality, selection)
        item_sets[modality] = search(
            catalog, catalog.source(modality), aoi=region.aoi, start=start, end=end
        )

    frame = _chips_frame(chips)
    per_chip = {
        modality: _items_per_chip(frame, item_set.table.reset_index(drop=True))
        for modality, item_set in item_sets.items()
    }
    tasks = []
    for index, chip in enumerate(chips):
        candidates: dict[str, tuple[str, ...]] = {}
        for modality, item_set in item_sets.items():
            rows = per_chip[modality].get(index, item_set.table.iloc[0:0])
            if modality == "s2" and region.s2 is not None:
                candidates[modality] = rank_s2_candidates(rows, region.s2)
            else:
                candidates[modality] = tuple(sorted(rows["id"]))
        tasks.append(ChipTask(chip=chip, candidates=candidates))
    return Plan(region=region, catalogs=catalogs, tasks=tuple(tasks), item_sets=item_sets)
