"""Seeded synthetic Sentinel-2 and Sentinel-1 scenes, catalog and region files for benchmarks.

One Sentinel-2-like item has uint16 COGs with overviews at 10 m (B02, B03, B04, B08), 20 m
(B05, B11) and 60 m (B01) in UTM zone 32N (EPSG:32632). One Sentinel-1-like item has float32
linear power COGs (VV, VH) in EPSG:4326, so every chip read reprojects it. Both cover a block of
``SCENE_CHIPS`` x ``SCENE_CHIPS`` chips of 264 px at 10 m plus a margin. The items are written
to a stac-geoparquet file with a catalog YAML, and region YAMLs cover square blocks of chips.
Everything is generated once into the benchmark cache folder and reused by later runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rustac
import shapely
import shapely.geometry
import yaml
from pyproj import Transformer
from rasterio.transform import from_origin

from pipeline.gdal_io import raster_profile, write_cog
from tests.benchmarks.common import cache_dir

SEED = 20240615
SCENES_VERSION = "1"
EPSG = 32632
CHIP_SIZE_PX = 264
RESOLUTION_M = 10.0
CHIP_EXTENT_M = CHIP_SIZE_PX * RESOLUTION_M
# Lattice indices of the south-west chip of the block, near 9.0 E 45.3 N.
FIRST_COL = 190
FIRST_ROW = 1900
SCENE_CHIPS = 8
MARGIN_M = 960.0
S2_BANDS = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B08": 10, "B11": 20}
S1_BANDS = ("VV", "VH")
S1_PIXEL_DEG = (0.00012, 0.00009)  # (lon, lat), about 9.5 m by 10 m at 45 N
S2_COLLECTION = "bench-s2-l2a"
S1_COLLECTION = "bench-s1-rtc"
S2_DATETIME = "2024-06-15T10:30:21Z"
S1_DATETIME = "2024-06-16T05:41:07Z"
CATALOG_NAME = "bench"
PROJ_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXTENSION = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


def scenes_dir() -> Path:
    """Return the folder of the synthetic catalog, generating it on first use."""
    target = cache_dir() / f"scenes-v{SCENES_VERSION}-seed{SEED}"
    if (target / "catalogs" / f"{CATALOG_NAME}.yaml").is_file():
        return target
    print(f"generating synthetic scenes into {target} (seed {SEED})", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        staging = Path(tmp) / "scenes"
        _generate(staging, target)
        staging.rename(target)
    return target


def region_path(chips_per_side: int) -> Path:
    """Return a region YAML covering ``chips_per_side`` x ``chips_per_side`` chips."""
    if not 1 <= chips_per_side <= SCENE_CHIPS:
        raise ValueError(f"chips_per_side {chips_per_side} outside 1..{SCENE_CHIPS}")
    root = scenes_dir()
    path = root / "regions" / f"bench-{chips_per_side * chips_per_side}.yaml"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(_region(chips_per_side)), encoding="utf-8")
    return path


def catalogs_path() -> Path:
    return scenes_dir() / "catalogs"


def scene_bounds() -> tuple[float, float, float, float]:
    """Bounds of the Sentinel-2 scene in EPSG:32632 metres: the chip block plus the margin."""
    x_min = FIRST_COL * CHIP_EXTENT_M - MARGIN_M
    y_min = FIRST_ROW * CHIP_EXTENT_M - MARGIN_M
    side = SCENE_CHIPS * CHIP_EXTENT_M + 2 * MARGIN_M
    return (x_min, y_min, x_min + side, y_min + side)


def _generate(staging: Path, target: Path) -> None:
    rng = np.random.default_rng(SEED)
    (staging / "cog").mkdir(parents=True)
    s2_item = _s2_item(rng, staging, target)
    s1_item = _s1_item(rng, staging, target)
    rustac.write_sync(str(staging / "items.parquet"), [s2_item, s1_item])
    (staging / "items.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": [s2_item, s1_item]}, indent=1),
        encoding="utf-8",
    )
    (staging / "catalogs").mkdir()
    catalog = staging / "catalogs" / f"{CATALOG_NAME}.yaml"
    catalog.write_text(yaml.safe_dump(_catalog(target / "items.parquet")), encoding="utf-8")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Noise with structure: a coarse random grid upsampled by repetition, plus fine noise."""
    coarse = rng.random((shape[0] // cell + 1, shape[1] // cell + 1))
    field = np.kron(coarse, np.ones((cell, cell)))[: shape[0], : shape[1]]
    return np.asarray(0.7 * field + 0.3 * rng.random(shape))


def _write_cog(array: np.ndarray, path: Path, profile: dict[str, Any]) -> None:
    intermediate = path.with_name(f".{path.stem}.raw.tif")
    with rasterio.open(intermediate, "w", driver="GTiff", **profile) as dataset:
        dataset.write(array[np.newaxis])
    write_cog(intermediate, path)
    intermediate.unlink()


def _asset(href: Path, path: Path, raster_band: dict[str, Any]) -> dict[str, Any]:
    profile = raster_profile(path)
    transform = list(profile["transform"])  # type: ignore[call-overload]
    return {
        "href": str(href),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "proj:shape": list(profile["shape"]),  # type: ignore[call-overload]
        "proj:transform": transform,
        "raster:bands": [{"data_type": profile["dtype"], **raster_band}],
    }


def _s2_item(rng: np.random.Generator, staging: Path, target: Path) -> dict[str, Any]:
    x_min, y_min, x_max, y_max = scene_bounds()
    assets = {}
    for band, resolution in S2_BANDS.items():
        side = round((x_max - x_min) / resolution)
        # DN 1000 to 5000: reflectance 0 to 0.4 after the -1000 DN offset of baseline 05.10.
        values = (1000 + 4000 * _smooth_field(rng, (side, side), 16)).astype(np.uint16)
        profile = {
            "width": side,
            "height": side,
            "count": 1,
            "dtype": "uint16",
            "crs": f"EPSG:{EPSG}",
            "transform": from_origin(x_min, y_max, resolution, resolution),
            "nodata": 0,
        }
        relative = Path("cog") / "s2" / f"{band}.tif"
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        _write_cog(values, staging / relative, profile)
        raster_band = {"nodata": 0, "spatial_resolution": float(resolution)}
        assets[band] = _asset(target / relative, staging / relative, raster_band)
    footprint = _lonlat_footprint((x_min, y_min, x_max, y_max))
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [PROJ_EXTENSION, RASTER_EXTENSION],
        "id": "BENCH_S2_20240615",
        "collection": S2_COLLECTION,
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {
            "datetime": S2_DATETIME,
            "updated": "2024-06-16T00:00:00Z",
            "platform": "sentinel-2a",
            "eo:cloud_cover": 0.0,
            "s2:processing_baseline": "05.10",
            "proj:code": f"EPSG:{EPSG}",
            "proj:bbox": [x_min, y_min, x_max, y_max],
        },
        "assets": assets,
        "links": [],
    }


def _lonlat_footprint(bounds: tuple[float, float, float, float]) -> shapely.Polygon:
    transformer = Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    polygon = shapely.segmentize(shapely.box(*bounds), 500.0)
    return shapely.transform(polygon, lambda xy: np.column_stack(transformer.transform(*xy.T)))


def _s1_item(rng: np.random.Generator, staging: Path, target: Path) -> dict[str, Any]:
    lon_min, lat_min, lon_max, lat_max = _lonlat_footprint(scene_bounds()).bounds
    dlon, dlat = S1_PIXEL_DEG
    width = int(np.ceil((lon_max - lon_min) / dlon))
    height = int(np.ceil((lat_max - lat_min) / dlat))
    transform = from_origin(lon_min, lat_max, dlon, dlat)
    assets = {}
    for polarization, mean in zip(S1_BANDS, (0.08, 0.02), strict=True):
        # Gamma-distributed speckle times a structured field, as linear gamma0.
        speckle = rng.gamma(4.0, 0.25, size=(height, width))
        values = (mean * speckle * (0.5 + _smooth_field(rng, (height, width), 24))).astype(
            np.float32
        )
        profile = {
            "width": width,
            "height": height,
            "count": 1,
            "dtype": "float32",
            "crs": "EPSG:4326",
            "transform": transform,
            "nodata": float("nan"),
        }
        relative = Path("cog") / "s1" / f"{polarization}.tif"
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        _write_cog(values, staging / relative, profile)
        assets[polarization] = _asset(target / relative, staging / relative, {"unit": "linear"})
    bounds = (lon_min, lat_min, lon_min + width * dlon, lat_max)
    footprint = shapely.box(*bounds)
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [PROJ_EXTENSION, RASTER_EXTENSION],
        "id": "BENCH_S1_20240616",
        "collection": S1_COLLECTION,
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {
            "datetime": S1_DATETIME,
            "updated": "2024-06-16T12:00:00Z",
            "platform": "sentinel-1a",
            "sar:polarizations": list(S1_BANDS),
            "sat:orbit_state": "descending",
            "proj:code": "EPSG:4326",
            "proj:bbox": list(bounds),
        },
        "assets": assets,
        "links": [],
    }


def _catalog(href: Path) -> dict[str, Any]:
    return {
        "name": CATALOG_NAME,
        "description": "Seeded synthetic Sentinel-2 and Sentinel-1 scenes for benchmarks.",
        "source": {"kind": "stac-geoparquet", "href": str(href)},
        "licence": "Synthetic data generated by tests/benchmarks/scenes.py; no licence terms.",
        "modalities": {
            "s2": {
                "collection": S2_COLLECTION,
                "nodata": 0,
                "radiometry": {"scale": 0.0001, "offset": "baseline"},
                "mask": {"kind": "nodata"},
                "bands": {band: {"asset": band, "resampling": "bilinear"} for band in S2_BANDS},
            },
            "s1": {
                "collection": S1_COLLECTION,
                "nodata": None,
                "radiometry": {
                    "units": "linear",
                    "quantity": "gamma0",
                    "product": "RTC",
                    "terrain_flattening": True,
                },
                "bands": {band: {"asset": band, "resampling": "average"} for band in S1_BANDS},
            },
        },
    }


def chip_block_bounds(chips_per_side: int) -> tuple[float, float, float, float]:
    """Bounds in EPSG:32632 metres of the block of chips that a region covers."""
    x_min = FIRST_COL * CHIP_EXTENT_M
    y_min = FIRST_ROW * CHIP_EXTENT_M
    side = chips_per_side * CHIP_EXTENT_M
    return (x_min, y_min, x_min + side, y_min + side)


def _region(chips_per_side: int) -> dict[str, Any]:
    # The AOI is the chip block grown by 20 m, so exactly the block's chips lie within it.
    block = shapely.box(*chip_block_bounds(chips_per_side)).buffer(20.0, join_style="mitre")
    transformer = Transformer.from_crs(f"EPSG:{EPSG}", "EPSG:4326", always_xy=True)
    aoi = shapely.transform(
        shapely.segmentize(block, 100.0),
        lambda xy: np.column_stack(transformer.transform(*xy.T)),
    )
    count = chips_per_side * chips_per_side
    return {
        "name": f"bench-{count}",
        "description": f"{count} synthetic chips of 264 px at 10 m in EPSG:32632.",
        "aoi": json.loads(shapely.to_geojson(shapely.set_precision(aoi, 1e-7))),
        "time": {"start": "2024-06-01", "end": "2024-06-30"},
        "grid": {"chip_size": CHIP_SIZE_PX, "resolution": RESOLUTION_M, "coverage": "within"},
        "modalities": {
            "s2": {
                "catalog": CATALOG_NAME,
                "bands": list(S2_BANDS),
                "min_clear_fraction": 0.9,
            },
            "s1": {
                "catalog": CATALOG_NAME,
                "bands": list(S1_BANDS),
                "max_time_gap_days": 3,
                "orbit_state": "any",
            },
        },
        "derived": ["ndvi"],
        "split": {
            "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
            "block_size": 2,
            "buffer_m": 0,
            "seed": 0,
        },
    }


def remove_outputs(path: Path) -> None:
    """Delete a store or folder written by an earlier benchmark run, with its lock file."""
    shutil.rmtree(path, ignore_errors=True)
    path.with_name(f"{path.name}.lock").unlink(missing_ok=True)
