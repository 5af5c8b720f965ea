"""The embedded offline default catalog, built from the PyPI wheel ``bigearthnet-common``.

The wheel ships six real co-located BigEarthNet patches (Sentinel-1 GRD backscatter in dB and
Sentinel-2 L2A bands as DN = reflectance x 10000). On first use they become cloud-optimized
GeoTIFFs plus STAC Items (projection, raster, eo, sar and sat extensions) in a cache folder,
written as stac-geoparquet and as a GeoJSON FeatureCollection.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import rustac
import shapely
import shapely.geometry
from pyproj import CRS, Transformer

from pipeline.errors import CatalogError
from pipeline.gdal_io import raster_profile, write_cog

log = logging.getLogger(__name__)

SAMPLE_VERSION = "1"
S2_COLLECTION = "bigearthnet-s2-l2a"
S1_COLLECTION = "bigearthnet-s1-grd"
ITEMS_PARQUET = "items.parquet"
ITEMS_GEOJSON = "items.json"
CACHE_ENV = "SENSORCUBE_CACHE"

STAC_EXTENSIONS = {
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "sar": "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
}

# Sentinel-2 MSI band names with common names and centre wavelengths in micrometres
# (Sentinel-2A values from the ESA Sentinel-2 User Handbook).
S2_BANDS: dict[str, tuple[str | None, float, int]] = {
    "B01": ("coastal", 0.443, 60),
    "B02": ("blue", 0.490, 10),
    "B03": ("green", 0.560, 10),
    "B04": ("red", 0.665, 10),
    "B05": ("rededge", 0.705, 20),
    "B06": ("rededge", 0.740, 20),
    "B07": ("rededge", 0.783, 20),
    "B08": ("nir", 0.842, 10),
    "B8A": ("nir08", 0.865, 20),
    "B09": ("nir09", 0.945, 60),
    "B11": ("swir16", 1.610, 20),
    "B12": ("swir22", 2.190, 20),
}
S1_POLARIZATIONS = ("VV", "VH")
# Sentinel-1A: relative orbit = (absolute orbit - 73) mod 175 + 1 (ESA Sentinel-1 product spec).
S1A_ORBIT_OFFSET = 73
S1_ORBITS_PER_CYCLE = 175


def cache_root() -> Path:
    """Return the cache folder: ``$SENSORCUBE_CACHE`` or the user cache directory."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path(platformdirs.user_cache_dir("sensorcube"))


def sample_catalog_dir() -> Path:
    """Return the folder of the sample catalog, building it on first use."""
    target = cache_root() / f"bigearthnet-sample-v{SAMPLE_VERSION}"
    if (target / ITEMS_PARQUET).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the sample catalog from bigearthnet-common into %s", target)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        staging = Path(tmp) / "catalog"
        _build(staging, target)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first: its catalog is identical, keep it.
            if not (target / ITEMS_PARQUET).is_file():
                raise
    return target


def _wheel_archives() -> list[Path]:
    package = importlib.resources.files("bigearthnet_common")
    archives = [Path(str(package / f"BigEarthNet-{s}-Example.tar.bz2")) for s in ("S1", "S2")]
    for archive in archives:
        if not archive.is_file():
            raise CatalogError(
                f"sample archive {str(archive)!r} is missing; reinstall it with "
                "pip install --force-reinstall bigearthnet-common==2.8.0"
            )
    return archives


def _build(staging: Path, target: Path) -> None:
    """Build the catalog in ``staging``; asset hrefs point to where it will live, ``target``."""
    raw = staging / "raw"
    raw.mkdir(parents=True)
    mtimes: dict[str, int] = {}
    for archive in _wheel_archives():
        with tarfile.open(archive, "r:bz2") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    patch = Path(member.name).parent.name
                    mtimes[patch] = max(int(member.mtime), mtimes.get(patch, 0))
            tar.extractall(raw, filter="data")

    items: list[dict[str, Any]] = []
    for patch_dir in sorted(raw.glob("BigEarthNet-S2-Example/*")):
        items.append(_s2_item(patch_dir, staging, target, mtimes[patch_dir.name]))
    for patch_dir in sorted(raw.glob("BigEarthNet-S1-Example/*")):
        items.append(_s1_item(patch_dir, staging, target, mtimes[patch_dir.name]))
    shutil.rmtree(raw)

    rustac.write_sync(str(staging / ITEMS_PARQUET), items)
    collection = {"type": "FeatureCollection", "features": items}
    (staging / ITEMS_GEOJSON).write_text(json.dumps(collection, indent=1), encoding="utf-8")


def _metadata(patch_dir: Path) -> dict[str, Any]:
    files = list(patch_dir.glob("*_labels_metadata.json"))
    if len(files) != 1:
        raise CatalogError(f"patch {str(patch_dir)!r} has no single *_labels_metadata.json")
    data: dict[str, Any] = json.loads(files[0].read_text(encoding="utf-8"))
    return data


def _footprint(epsg: int, bounds: tuple[float, float, float, float]) -> shapely.Polygon:
    transformer = Transformer.from_crs(CRS.from_epsg(epsg), CRS.from_epsg(4326), always_xy=True)
    polygon = shapely.segmentize(shapely.box(*bounds), (bounds[2] - bounds[0]) / 4)
    return shapely.transform(polygon, lambda xy: _stack(transformer.transform(*xy.T)))


def _stack(xy: tuple[Any, Any]) -> Any:
    return np.column_stack(xy)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _asset(href: Path, profile: dict[str, Any], band: dict[str, Any]) -> dict[str, Any]:
    resolution = abs(float(profile["transform"][0]))
    raster_band: dict[str, Any] = {
        "data_type": profile["dtype"],
        "spatial_resolution": resolution,
    }
    raster_band.update({k: v for k, v in band.items() if k in ("nodata", "unit")})
    asset: dict[str, Any] = {
        "href": str(href),
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "proj:shape": list(profile["shape"]),
        "proj:transform": list(profile["transform"]),
        "raster:bands": [raster_band],
    }
    if "eo" in band:
        asset["eo:bands"] = [band["eo"]]
    return asset


def _item(
    *,
    item_id: str,
    collection: str,
    epsg: int,
    bounds: tuple[float, float, float, float],
    properties: dict[str, Any],
    assets: dict[str, Any],
    extensions: tuple[str, ...],
) -> dict[str, Any]:
    footprint = _footprint(epsg, bounds)
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [STAC_EXTENSIONS[name] for name in extensions],
        "id": item_id,
        "collection": collection,
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {"proj:code": f"EPSG:{epsg}", "proj:bbox": list(bounds), **properties},
        "assets": assets,
        "links": [],
    }


def _patch_bounds(metadata: dict[str, Any]) -> tuple[float, float, float, float]:
    coords = metadata["coordinates"]
    # The S1 metadata names the lower y "lly", the S2 metadata "lry".
    y_min = coords.get("lry", coords.get("lly"))
    return (float(coords["ulx"]), float(y_min), float(coords["lrx"]), float(coords["uly"]))


def _epsg(metadata: dict[str, Any]) -> int:
    epsg = CRS.from_wkt(metadata["projection"]).to_epsg()
    if epsg is None:
        raise CatalogError(f"patch projection has no EPSG code: {metadata['projection'][:60]!r}")
    return int(epsg)


def _s2_item(patch_dir: Path, staging: Path, target: Path, mtime: int) -> dict[str, Any]:
    metadata = _metadata(patch_dir)
    name = patch_dir.name
    product = metadata["tile_source"]
    baseline = re.search(r"_N(\d{2})(\d{2})_", product)
    tile = re.search(r"_T(\d{2})([C-X])([A-Z]{2})_", product)
    if baseline is None or tile is None:
        raise CatalogError(f"cannot parse baseline and tile from product name {product!r}")
    acquired = dt.datetime.fromisoformat(metadata["acquisition_date"]).replace(tzinfo=dt.UTC)
    epsg = _epsg(metadata)

    assets: dict[str, Any] = {}
    for band, (common_name, wavelength, _) in S2_BANDS.items():
        src = patch_dir / f"{name}_{band}.tif"
        relative = Path("cog") / name / f"{band}.tif"
        dst = staging / relative
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_cog(src, dst, nodata=0)
        eo_band: dict[str, Any] = {"name": band, "center_wavelength": wavelength}
        if common_name:
            eo_band["common_name"] = common_name
        profile = raster_profile(dst)
        assets[band] = _asset(target / relative, profile, {"nodata": 0, "eo": eo_band})

    platform = {"S2A": "sentinel-2a", "S2B": "sentinel-2b"}[name[:3]]
    properties = {
        "datetime": _iso(acquired),
        "updated": _iso(dt.datetime.fromtimestamp(mtime, dt.UTC)),
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "s2:processing_baseline": f"{baseline.group(1)}.{baseline.group(2)}",
        "s2:product_uri": product,
        "s2:product_type": "S2MSI2A",
        "mgrs:utm_zone": int(tile.group(1)),
        "mgrs:latitude_band": tile.group(2),
        "mgrs:grid_square": tile.group(3),
        "bigearthnet:labels": metadata["labels"],
    }
    return _item(
        item_id=name,
        collection=S2_COLLECTION,
        epsg=epsg,
        bounds=_patch_bounds(metadata),
        properties=properties,
        assets=assets,
        extensions=("proj", "raster", "eo"),
    )


def orbit_state_from_local_time(acquired: dt.datetime, lon: float) -> str:
    """Derive the Sentinel-1 pass direction from local mean solar time.

    Sentinel-1 flies a dawn-dusk sun-synchronous orbit with its ascending node at 18:00 local
    time, so evening acquisitions are ascending and morning ones descending.
    """
    hours = acquired.hour + acquired.minute / 60 + lon / 15.0
    return "ascending" if 12.0 <= hours % 24 < 24.0 else "descending"


def _s1_item(patch_dir: Path, staging: Path, target: Path, mtime: int) -> dict[str, Any]:
    metadata = _metadata(patch_dir)
    name = patch_dir.name
    product = metadata["scene_source"]
    parts = product.split("_")
    absolute_orbit = int(parts[6])
    acquired = dt.datetime.fromisoformat(metadata["acquisition_time"]).replace(tzinfo=dt.UTC)
    epsg = _epsg(metadata)
    bounds = _patch_bounds(metadata)
    centre_lon = _footprint(epsg, bounds).centroid.x

    assets: dict[str, Any] = {}
    for polarization in S1_POLARIZATIONS:
        src = patch_dir / f"{name}_{polarization}.tif"
        relative = Path("cog") / name / f"{polarization}.tif"
        dst = staging / relative
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_cog(src, dst)
        assets[polarization] = _asset(target / relative, raster_profile(dst), {"unit": "dB"})

    properties = {
        "datetime": _iso(acquired),
        "updated": _iso(dt.datetime.fromtimestamp(mtime, dt.UTC)),
        "platform": "sentinel-1a",
        "constellation": "sentinel-1",
        "instruments": ["c-sar"],
        "sar:instrument_mode": parts[1],
        "sar:frequency_band": "C",
        "sar:center_frequency": 5.405,
        "sar:polarizations": list(S1_POLARIZATIONS),
        "sar:product_type": "GRD",
        "sat:absolute_orbit": absolute_orbit,
        "sat:relative_orbit": (absolute_orbit - S1A_ORBIT_OFFSET) % S1_ORBITS_PER_CYCLE + 1,
        "sat:orbit_state": orbit_state_from_local_time(acquired, centre_lon),
        "s1:product_uri": product,
        "bigearthnet:s2_patch": metadata["corresponding_s2_patch"],
    }
    return _item(
        item_id=name,
        collection=S1_COLLECTION,
        epsg=epsg,
        bounds=bounds,
        properties=properties,
        assets=assets,
        extensions=("proj", "raster", "sar", "sat"),
    )
