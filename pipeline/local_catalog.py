"""STAC items for local raster files: the ``raster-files`` catalog kind.

A catalog of this kind names, per modality, a glob pattern of GeoTIFF files (relative to the
catalog file, with ``~`` and environment variables expanded). Each file becomes one item whose
single asset contains the projection fields read through GDAL, so the rest of the pipeline reads it
exactly like an item from a STAC API. The acquisition time comes from the file's tags: EnMAP's
``start_time``, the two dates of a coherence pair (``FIRST_DATE``, ``SECOND_DATE``), or TIFF's
``TIFFTAG_DATETIME``; a file without one takes the modality's ``datetime`` key.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import shapely.geometry
from affine import Affine
from odc.geo.geobox import GeoBox

from pipeline.coherence import pair_dates_from_tags
from pipeline.config import CatalogSpec, ModalitySource
from pipeline.errors import CatalogError, ConfigError
from pipeline.gdal_io import DEFAULT_GDAL_OPTIONS, band_tags, dataset_tags, raster_profile
from pipeline.hyperspectral import STAC_BAD_KEY, SpectralBands


def expand_pattern(catalog: CatalogSpec, source: ModalitySource) -> str:
    """Return the modality's glob pattern as an absolute path."""
    assert source.files is not None
    pattern = os.path.expandvars(os.path.expanduser(source.files))
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", pattern)
    if unset:
        raise ConfigError(
            f"catalog {catalog.name!r} ({catalog.path}): modalities.{source.modality}.files "
            f"{source.files!r} uses the environment variable {unset[0]}, which is not set; "
            f"export {unset[0]} or write the path out"
        )
    if not Path(pattern).is_absolute():
        pattern = str(Path(catalog.path).parent / pattern)
    return pattern


def scan_items(catalog: CatalogSpec, source: ModalitySource) -> list[dict[str, Any]]:
    """Build one STAC item dict per file matching the modality's pattern, sorted by path."""
    pattern = expand_pattern(catalog, source)
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ConfigError(
            f"catalog {catalog.name!r} ({catalog.path}): no file matches "
            f"modalities.{source.modality}.files {source.files!r} (expanded to {pattern!r}); "
            "check the pattern and that the folder exists"
        )
    return [raster_item(Path(path), source) for path in paths]


def _parse_tag_time(text: str) -> dt.datetime:
    value = text.strip().replace("Z", "+00:00")
    if len(value) >= 19 and value[4] == ":" and value[7] == ":":
        value = value[:4] + "-" + value[5:7] + "-" + value[8:]  # TIFF "YYYY:MM:DD HH:MM:SS"
    parsed = dt.datetime.fromisoformat(value)
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _time_properties(path: Path, tags: Mapping[str, str], source: ModalitySource) -> dict[str, Any]:
    if "FIRST_DATE" in tags and "SECOND_DATE" in tags:
        first, second = pair_dates_from_tags(tags)
        return {"datetime": None, "start_datetime": _iso(first), "end_datetime": _iso(second)}
    for key in ("start_time", "TIFFTAG_DATETIME", "ACQUISITION_DATE"):
        if key in tags:
            try:
                return {"datetime": _iso(_parse_tag_time(tags[key]))}
            except ValueError:
                raise CatalogError(
                    f"file {str(path)!r}: tag {key} {tags[key]!r} is not a date or datetime"
                ) from None
    if source.datetime_pattern is not None:
        match = re.search(source.datetime_pattern, path.name)
        if match is None:
            raise CatalogError(
                f"file name {path.name!r} does not match modalities.{source.modality}."
                f"datetime_pattern {source.datetime_pattern!r}; fix the pattern or the file name"
            )
        try:
            return {"datetime": _iso(_parse_name_date(match.group(1)))}
        except ValueError:
            raise CatalogError(
                f"file name {path.name!r}: {match.group(1)!r} is not a date (YYYYMMDD or ISO 8601)"
            ) from None
    if source.datetime is None:
        raise CatalogError(
            f"file {str(path)!r} has no acquisition time in its tags (start_time, FIRST_DATE "
            "and SECOND_DATE, TIFFTAG_DATETIME); set modalities."
            f"{source.modality}.datetime in the catalog YAML, for example the DEM release date"
        )
    return {"datetime": _iso(_parse_tag_time(source.datetime))}


def _parse_name_date(text: str) -> dt.datetime:
    if len(text) == 8 and text.isdigit():
        return dt.datetime.strptime(text, "%Y%m%d").replace(tzinfo=dt.UTC)
    return _parse_tag_time(text)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spectral_bands(path: Path) -> list[dict[str, Any]]:
    """STAC ``eo:bands`` of a multi-band file whose bands carry wavelength tags."""
    tags = band_tags(str(path), gdal_options=DEFAULT_GDAL_OPTIONS)
    if not all("wavelength" in band for band in tags):
        return []
    spectral = SpectralBands.from_band_tags(tags)
    return [
        {
            "name": f"band{number}",
            "center_wavelength": wavelength / 1000.0,
            "full_width_half_max": width / 1000.0,
            STAC_BAD_KEY: not good,
        }
        for number, (wavelength, width, good) in enumerate(
            zip(spectral.wavelength_nm, spectral.fwhm_nm, spectral.good, strict=True), 1
        )
    ]


def raster_item(path: Path, source: ModalitySource) -> dict[str, Any]:
    """Describe one raster file as a STAC item of the modality's collection."""
    profile = raster_profile(path)
    if profile["epsg"] is None:
        raise CatalogError(
            f"file {str(path)!r} has no CRS with an EPSG code; give it one (gdal_edit -a_srs)"
        )
    size: tuple[int, int] = profile["shape"]  # type: ignore[assignment]
    shape = (int(size[0]), int(size[1]))
    transform = [float(v) for v in profile["transform"]]  # type: ignore[attr-defined]
    crs = f"EPSG:{profile['epsg']}"
    geobox = GeoBox(shape, Affine(*transform), crs)
    footprint = geobox.footprint("EPSG:4326", npoints=20).geom
    tags = dataset_tags(str(path), gdal_options=DEFAULT_GDAL_OPTIONS)
    asset: dict[str, Any] = {
        "href": str(path.resolve()),
        "type": "image/tiff; application=geotiff",
        "roles": ["data"],
        "proj:code": crs,
        "proj:shape": list(shape),
        "proj:transform": transform,
        "raster:bands": [{"nodata": profile["nodata"], "data_type": profile["dtype"]}],
        "file:size": path.stat().st_size,
    }
    spectral = _spectral_bands(path) if int(profile["count"]) > 1 else []  # type: ignore[call-overload]
    if spectral:
        asset["eo:bands"] = spectral
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": path.stem,
        "collection": source.collection,
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {**_time_properties(path, tags, source), "proj:code": crs},
        "assets": {band.asset: asset for band in source.bands},
        "links": [],
    }
