"""Search and selection over 10,000 items: Arrow/GeoDataFrame tables against pystac objects.

sensorcube turns the item dicts into one GeoDataFrame (pipeline.search.to_item_set) and finds
the items of every chip with one spatial join (pipeline.plan). The baseline builds a pystac
ItemCollection of the same dicts and filters it per chip in Python, first by bounding box and
then by exact intersection with shapely. Both must find the same items for every chip.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pystac
import shapely
import shapely.geometry

from pipeline.config import GridSpec
from pipeline.grid import Chip, chips_for_aoi
from pipeline.plan import _chips_frame, _items_per_chip
from pipeline.search import to_item_set
from tests.benchmarks.common import Result, format_runs, measured, timed

SEED = 7
ITEMS = 10_000
REPEATS = 3
# Items are scattered over this lon/lat box; the chips cover a smaller box inside it.
ITEM_AREA = (6.0, 43.0, 12.0, 48.0)
CHIP_AOI = (8.8, 45.2, 9.3, 45.5)
TILE_DEG = 0.5


def synthetic_items(count: int) -> list[dict[str, Any]]:
    """Sentinel-2-like item dicts with seeded footprints, dates and cloud cover."""
    rng = np.random.default_rng(SEED)
    west, south, east, north = ITEM_AREA
    lons = rng.uniform(west, east - TILE_DEG, count)
    lats = rng.uniform(south, north - TILE_DEG, count)
    days = rng.integers(0, 366, count)
    clouds = rng.uniform(0, 100, count)
    start = dt.datetime(2024, 1, 1, 10, 30, tzinfo=dt.UTC)
    items = []
    for index in range(count):
        footprint = shapely.box(
            lons[index], lats[index], lons[index] + TILE_DEG, lats[index] + TILE_DEG
        )
        when = start + dt.timedelta(days=int(days[index]))
        items.append(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "stac_extensions": [],
                "id": f"S2X_SYNTHETIC_{index:05d}",
                "collection": "bench-s2-l2a",
                "geometry": shapely.geometry.mapping(footprint),
                "bbox": list(footprint.bounds),
                "properties": {
                    "datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "updated": "2025-01-01T00:00:00Z",
                    "eo:cloud_cover": float(clouds[index]),
                },
                "assets": {
                    band: {"href": f"/data/{index:05d}/{band}.tif", "roles": ["data"]}
                    for band in ("B02", "B03", "B04", "B08")
                },
                "links": [],
            }
        )
    return items


def select_with_tables(features: list[dict[str, Any]], chips: list[Chip]) -> dict[int, set[str]]:
    table = to_item_set(features).table.reset_index(drop=True)
    joined = _items_per_chip(_chips_frame(chips), table)
    return {index: set(group["id"]) for index, group in joined.items()}


def select_with_pystac(features: list[dict[str, Any]], chips: list[Chip]) -> dict[int, set[str]]:
    collection = pystac.ItemCollection([pystac.Item.from_dict(f) for f in features])
    shapes = [(item, shapely.geometry.shape(item.geometry)) for item in collection]
    selected: dict[int, set[str]] = {}
    for index, chip in enumerate(chips):
        footprint = chip.footprint_lonlat()
        west, south, east, north = footprint.bounds
        ids = set()
        for item, shape in shapes:
            bbox = item.bbox
            if bbox is None or bbox[0] > east or bbox[2] < west:
                continue
            if bbox[1] > north or bbox[3] < south:
                continue
            if shape.intersects(footprint):
                ids.add(item.id)
        if ids:
            selected[index] = ids
    return selected


def run() -> Result:
    features = synthetic_items(ITEMS)
    grid = GridSpec(chip_size=264, resolution_m=10.0, coverage="within")
    chips = chips_for_aoi(shapely.box(*CHIP_AOI), grid)
    with measured(f"search and selection, {ITEMS} items, {len(chips)} chips") as result:
        table_runs, pystac_runs = [], []
        for _ in range(REPEATS):
            table_seconds, by_table = timed(lambda: select_with_tables(features, chips))
            pystac_seconds, by_pystac = timed(lambda: select_with_pystac(features, chips))
            table_runs.append(table_seconds)
            pystac_runs.append(pystac_seconds)
        if by_table != by_pystac:
            raise RuntimeError("the table join and the pystac filter selected different items")
        matches = sum(len(ids) for ids in by_table.values())
        result.figure("chip-item matches (both agree)", matches, "")
        result.figure(
            "to_item_set + spatial join", min(table_runs), f"s (runs: {format_runs(table_runs)})"
        )
        result.figure(
            "pystac ItemCollection + Python filter",
            min(pystac_runs),
            f"s (runs: {format_runs(pystac_runs)})",
        )
        result.ratio("pystac time / table time", min(pystac_runs) / min(table_runs), 5.0)
    return result
