"""Extraction throughput: sensorcube against odc-stac with to_zarr and against per-chip GDAL warps.

All three write or compute the same chips of the same region on the same LocalCluster (2
workers, 1 thread each). The odc-stac baseline loads the whole region as one Dask-chunked
Dataset (264 x 264 px chunks) and writes it with ``to_zarr``. The GDAL baseline warps each chip's
bands with ``rasterio.warp.reproject`` and keeps the arrays in memory, which is the limit for
any pipeline that reads through GDAL.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import odc.stac
import pystac
import rasterio
import rasterio.warp
from distributed import Client
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling

from pipeline.config import load_catalogs, load_region
from pipeline.extract import extract
from pipeline.plan import Plan, make_plan
from tests.benchmarks import scenes
from tests.benchmarks.common import (
    Result,
    cache_dir,
    format_runs,
    local_client,
    measured,
    timed,
    worker_cpu_seconds,
)

CHIPS_PER_SIDE = 8
REPEATS = 2


def load_plan(chips_per_side: int) -> Plan:
    region = load_region(scenes.region_path(chips_per_side))
    return make_plan(region, load_catalogs(region, scenes.catalogs_path()))


def warm_up(client: Client) -> None:
    """Import the reading stack on every worker, so no timing includes first imports."""
    client.run(importlib.import_module, "pipeline.chip_task")
    client.run(importlib.import_module, "odc.stac")


def run_sensorcube(plan: Plan, client: Client, store: Path) -> float:
    scenes.remove_outputs(store)
    seconds, summary = timed(lambda: extract(plan, store, client))
    if summary.ok != len(plan.tasks):
        raise RuntimeError(f"sensorcube extract wrote {summary.ok} of {len(plan.tasks)} chips")
    return seconds


def _items() -> dict[str, pystac.Item]:
    features = json.loads((scenes.scenes_dir() / "items.json").read_text())["features"]
    return {feature["collection"]: pystac.Item.from_dict(feature) for feature in features}


def run_odc_stac(client: Client, store: Path) -> float:
    """Load the region with Dask chunks of one chip, derive the same variables, write Zarr."""
    scenes.remove_outputs(store)
    items = _items()
    geobox = GeoBox.from_bbox(
        scenes.chip_block_bounds(CHIPS_PER_SIDE),
        crs=f"EPSG:{scenes.EPSG}",
        resolution=scenes.RESOLUTION_M,
        tight=True,
    )
    chunks: dict[str, int | Literal["auto"]] = {"x": scenes.CHIP_SIZE_PX, "y": scenes.CHIP_SIZE_PX}
    s2_bands = list(scenes.S2_BANDS)
    s1_bands = list(scenes.S1_BANDS)

    def load_and_write() -> None:
        s2 = odc.stac.load(
            [items[scenes.S2_COLLECTION]],
            bands=s2_bands,
            geobox=geobox,
            chunks=chunks,
            resampling="bilinear",
            dtype="float32",
        )
        s1 = odc.stac.load(
            [items[scenes.S1_COLLECTION]],
            bands=s1_bands,
            geobox=geobox,
            chunks=chunks,
            resampling="average",
            dtype="float32",
        )
        # The same radiometry as sensorcube: nodata 0 to NaN, -1000 DN offset, 1e-4 scale.
        reflectance = s2.where(s2 != 0) * 1e-4 - 0.1
        reflectance["ndvi"] = (reflectance["B08"] - reflectance["B04"]) / (
            reflectance["B08"] + reflectance["B04"]
        )
        for dataset in (reflectance, s1):
            for name in dataset.data_vars:
                dataset[name].encoding.clear()
            dataset.attrs.clear()
        writes = [
            reflectance.to_zarr(store / "s2.zarr", mode="w", compute=False, consolidated=False),
            s1.to_zarr(store / "s1.zarr", mode="w", compute=False, consolidated=False),
        ]
        client.gather(client.compute(writes))

    seconds, _ = timed(load_and_write)
    return seconds


def _warp_chip(
    bounds: tuple[float, float, float, float], bands: list[tuple[str, str, float | None]]
) -> float:
    """Warp each band onto the chip grid with GDAL and return a checksum of the pixels."""
    size = scenes.CHIP_SIZE_PX
    transform = rasterio.transform.from_origin(
        bounds[0], bounds[3], scenes.RESOLUTION_M, scenes.RESOLUTION_M
    )
    total = 0.0
    for path, method, nodata in bands:
        destination = np.full((size, size), np.nan, dtype=np.float32)
        with rasterio.open(path) as source:
            rasterio.warp.reproject(
                source=rasterio.band(source, 1),
                destination=destination,
                src_nodata=nodata,
                dst_transform=transform,
                dst_crs=f"EPSG:{scenes.EPSG}",
                dst_nodata=np.nan,
                resampling=Resampling[method],
            )
        total += float(np.nansum(destination))
    return total


def run_gdal_warp(plan: Plan, client: Client) -> float:
    items = _items()
    bands: list[tuple[str, str, float | None]] = []
    for band in scenes.S2_BANDS:
        bands.append((items[scenes.S2_COLLECTION].assets[band].href, "bilinear", 0.0))
    for band in scenes.S1_BANDS:
        bands.append((items[scenes.S1_COLLECTION].assets[band].href, "average", None))
    chip_bounds = [task.chip.bounds for task in plan.tasks]

    def warp_all() -> list[Any]:
        futures = client.map(_warp_chip, chip_bounds, bands=bands, pure=False)
        return list(client.gather(futures))

    seconds, _ = timed(warp_all)
    return seconds


def run() -> Result:
    plan = load_plan(CHIPS_PER_SIDE)
    chips = len(plan.tasks)
    output = cache_dir() / "outputs"
    with measured(f"extraction throughput, {chips} chips, 2 workers x 1 thread") as result:
        with local_client(2) as client:
            tools: dict[str, Callable[[], float]] = {
                "sensorcube": lambda: run_sensorcube(plan, client, output / "extract.zarr"),
                "odc_stac_to_zarr": lambda: run_odc_stac(client, output / "odc-stac"),
                "gdal_warp": lambda: run_gdal_warp(plan, client),
            }
            times: dict[str, list[float]] = {name: [] for name in tools}
            cpu: dict[str, list[float]] = {name: [] for name in tools}
            warm_up(client)
            # Interleaved repeats, so a slow phase of the machine hits all three alike.
            for _ in range(REPEATS):
                for name, tool in tools.items():
                    before = worker_cpu_seconds(client)
                    times[name].append(tool())
                    cpu[name].append(worker_cpu_seconds(client) - before)
        rates = {name: chips / min(values) for name, values in times.items()}
        for name, values in times.items():
            result.figure(
                f"{name} seconds per run", min(values), f"s (runs: {format_runs(values)})"
            )
            result.figure(f"{name} throughput", rates[name], "chips/s (best run)")
            # Worker CPU time is less sensitive than wall time to other load on the machine.
            per_chip = [1000 * seconds / chips for seconds in cpu[name]]
            result.figure(
                f"{name} worker CPU per chip",
                min(per_chip),
                f"ms (runs: {', '.join(f'{value:.1f}' for value in per_chip)})",
            )
        result.ratio(
            "sensorcube / odc-stac to_zarr", rates["sensorcube"] / rates["odc_stac_to_zarr"], 2.0
        )
        result.ratio("sensorcube / GDAL warp", rates["sensorcube"] / rates["gdal_warp"], 0.5)
    return result
