"""EMIT L2A surface reflectance: NetCDF swaths placed on a chip through their lookup table.

An EMIT L2A RFL granule (product version 001) is one NetCDF-4 file with these variables:

- ``reflectance`` (downtrack, crosstrack, bands): float32 reflectance in sensor geometry, with
  ``_FillValue`` -9999;
- ``sensor_band_parameters/wavelengths`` and ``fwhm`` (bands) in nm, and ``good_wavelengths``
  (bands), 1 for a good band and 0 for a band in a water-vapour absorption window;
- ``location/glt_x`` and ``location/glt_y`` (ortho_y, ortho_x): the geometry lookup table (GLT),
  which gives per map pixel the one-based crosstrack column and downtrack row of the swath pixel
  to place there, 0 for none;
- the global attributes ``geotransform`` (GDAL order) and ``spatial_ref`` (WKT), which place the
  GLT's map grid (EPSG:4326 at about 60 m in EMIT products).

A chip reads the GLT window over its footprint, then only the swath rows and columns that the
window names, places them with :func:`pipeline.hyperspectral.orthorectify_glt` and warps the
result from the GLT grid onto the chip grid. Reads go through :mod:`pipeline.gdal_io`.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from affine import Affine

from pipeline.config import ModalitySource
from pipeline.credentials import credentials_env
from pipeline.errors import CatalogError, ReadError
from pipeline.gdal_io import (
    capture_gdal_options,
    read_netcdf_header,
    read_netcdf_variable,
    transform_bounds,
    warp_array_to_grid,
)
from pipeline.hyperspectral import (
    STAC_BAD_KEY,
    SpectralBands,
    orthorectify_glt,
    require_same_bands,
    to_reflectance,
)

log = logging.getLogger(__name__)

REFLECTANCE = "reflectance"
GLT_X = "/location/glt_x"
GLT_Y = "/location/glt_y"
WAVELENGTHS = "/sensor_band_parameters/wavelengths"
FWHM = "/sensor_band_parameters/fwhm"
GOOD_WAVELENGTHS = "/sensor_band_parameters/good_wavelengths"
# Global attributes, which GDAL's HDF5 driver lists among every variable's tags.
GEOTRANSFORM_TAG = "geotransform"
SPATIAL_REF_TAG = "spatial_ref"
FILL_VALUE = -9999.0
# GLT pixels read beyond the chip footprint on each side, so resampling at the chip edge has
# its neighbours.
GLT_MARGIN_PX = 2

GdalOptions = Mapping[str, str | int | bool]


# ----------------------------------------------------------------------------------------------
# Items


def prepare_items(
    features: Sequence[Mapping[str, Any]], source: ModalitySource
) -> list[dict[str, Any]]:
    """Return copies of EMIT items ready for planning and reading.

    The reflectance NetCDF is put under the catalog's asset key, a missing ``datetime`` takes
    ``start_datetime``, and the asset gets ``eo:bands`` read from the first granule's
    ``sensor_band_parameters``, because CMR-STAC items list no bands. Each chip read checks its
    granule's bands against these (:func:`read_chip`).
    """
    asset = source.bands[0].asset
    prepared = [_with_reflectance_asset(feature, asset) for feature in features]
    if not prepared:
        return prepared
    first = min(prepared, key=lambda feature: str(feature["id"]))
    href = str(first["assets"][asset]["href"])
    with credentials_env(source.credentials, [href]):
        bands = read_granule_bands(href, gdal_options=capture_gdal_options())
    log.info(
        "EMIT bands from granule %s: %d bands, %d good",
        first["id"],
        len(bands.good),
        len(bands.kept_indexes()),
    )
    for feature in prepared:
        feature["assets"][asset]["eo:bands"] = _stac_bands(bands)
    return prepared


def _with_reflectance_asset(feature: Mapping[str, Any], asset: str) -> dict[str, Any]:
    """Copy ``feature`` with its reflectance NetCDF under ``asset`` and a ``datetime``.

    CMR-STAC keys an asset by its file name, so the asset whose href ends with ``<item id>.nc``
    is the reflectance file when no asset has the catalog's key.
    """
    item = copy.deepcopy(dict(feature))
    assets = item.setdefault("assets", {})
    if asset not in assets:
        name = f"{item['id']}.nc"
        matches = [
            value
            for value in assets.values()
            if PurePosixPath(urlsplit(str(value.get("href", ""))).path).name == name
        ]
        if not matches:
            raise CatalogError(
                f"EMIT item {item['id']!r} has no asset {asset!r} and no asset whose href ends "
                f"with {name!r}; its assets are {sorted(assets)}. Set the reflectance asset key "
                "under modalities.hsi.bands in the catalog YAML"
            )
        assets[asset] = dict(matches[0])
    properties = item.setdefault("properties", {})
    if not properties.get("datetime"):
        properties["datetime"] = properties.get("start_datetime")
    return item


def _stac_bands(bands: SpectralBands) -> list[dict[str, Any]]:
    return [
        {
            "name": f"band{number}",
            "center_wavelength": wavelength / 1000.0,
            "full_width_half_max": width / 1000.0,
            STAC_BAD_KEY: not good,
        }
        for number, (wavelength, width, good) in enumerate(
            zip(bands.wavelength_nm, bands.fwhm_nm, bands.good, strict=True), 1
        )
    ]


def read_granule_bands(href: str, *, gdal_options: GdalOptions) -> SpectralBands:
    """Read the wavelengths, FWHM (nm) and good-band flags of one granule."""

    def vector(variable: str) -> np.ndarray:
        return np.ravel(read_netcdf_variable(href, variable, gdal_options=gdal_options))

    wavelengths, widths, good = vector(WAVELENGTHS), vector(FWHM), vector(GOOD_WAVELENGTHS)
    return SpectralBands(
        tuple(round(float(value), 6) for value in wavelengths),
        tuple(round(float(value), 6) for value in widths),
        tuple(bool(flag == 1) for flag in good),
    )


# ----------------------------------------------------------------------------------------------
# Chip reads


def read_chip(
    href: str,
    *,
    crs: str,
    transform: tuple[float, ...],
    shape: tuple[int, int],
    bands: SpectralBands,
    resampling: str,
    scale: float,
    gdal_options: GdalOptions,
) -> np.ndarray:
    """Read the good bands of one granule onto a chip grid as float32 reflectance.

    ``bands`` lists every band of the scene as the plan recorded it; the granule must have the
    same. The result has shape (kept bands, height, width) and is NaN where the GLT places no
    swath pixel, where the swath contains its fill value, and outside the granule.
    """
    require_same_bands(
        bands, read_granule_bands(href, gdal_options=gdal_options), what=f"granule {href!r}"
    )
    empty = np.full((len(bands.kept_indexes()), *shape), np.nan, dtype=np.float32)
    header = read_netcdf_header(href, GLT_X, gdal_options=gdal_options)
    glt_crs, glt_transform = _glt_grid(href, header.tags)
    window = _glt_window(
        glt_crs, glt_transform, (header.height, header.width), crs, transform, shape
    )
    if window is None:
        return empty
    glt_x, glt_y = (
        read_netcdf_variable(href, name, window=window, gdal_options=gdal_options)[0]
        for name in (GLT_X, GLT_Y)
    )
    placed = (glt_x != 0) & (glt_y != 0)
    if not placed.any():
        return empty

    row_off, col_off, height, width = _swath_window(
        href, glt_x[placed], glt_y[placed], bands, gdal_options
    )
    # GDAL bands are downtrack rows, GDAL rows are crosstrack columns, and GDAL columns are
    # the spectral bands, so the read returns (downtrack, crosstrack, bands).
    pixels = read_netcdf_variable(
        href,
        REFLECTANCE,
        window=(col_off, 0, width, len(bands.good)),
        indexes=range(row_off + 1, row_off + height + 1),
        gdal_options=gdal_options,
    )
    kept_positions = [index - 1 for index in bands.kept_indexes()]
    swath = np.moveaxis(pixels[:, :, kept_positions], -1, 0)
    ortho = orthorectify_glt(swath, _shift_indexes(glt_x, col_off), _shift_indexes(glt_y, row_off))
    reflectance = to_reflectance(ortho, scale=scale, nodata=FILL_VALUE)
    window_transform = glt_transform * Affine.translation(window[1], window[0])
    return warp_array_to_grid(
        reflectance,
        src_crs=glt_crs,
        src_transform=tuple(window_transform)[:6],
        crs=crs,
        transform=transform,
        shape=shape,
        resampling=resampling,
    )


def _glt_grid(href: str, tags: Mapping[str, str]) -> tuple[str, Affine]:
    """Return the CRS (WKT) and affine transform of a granule's GLT map grid."""
    text = tags.get(GEOTRANSFORM_TAG)
    spatial_ref = tags.get(SPATIAL_REF_TAG)
    if not text or not spatial_ref:
        raise ReadError(
            f"granule {href!r} has no global attributes 'geotransform' and 'spatial_ref' "
            "(found " + ", ".join(sorted(tags)) + "); EMIT L2A granules need both to place the "
            "geometry lookup table"
        )
    try:
        terms = [float(term) for term in re.split(r"[\s,{}()]+", text) if term]
    except ValueError:
        raise ReadError(f"granule {href!r}: geotransform {text!r} is not 6 numbers") from None
    if len(terms) != 6 or terms[2] != 0.0 or terms[4] != 0.0:
        raise ReadError(
            f"granule {href!r}: geotransform {text!r} is not a north-up grid of 6 terms "
            "(x origin, x size, 0, y origin, 0, -y size)"
        )
    return spatial_ref, Affine.from_gdal(*terms)


def _glt_window(
    glt_crs: str,
    glt_transform: Affine,
    glt_shape: tuple[int, int],
    crs: str,
    transform: tuple[float, ...],
    shape: tuple[int, int],
) -> tuple[int, int, int, int] | None:
    """Return (row_off, col_off, height, width) of the GLT over the chip, or None if outside."""
    a, _, c, _, e, f = transform[:6]
    bounds = (c, f + e * shape[0], c + a * shape[1], f)
    left, bottom, right, top = transform_bounds(crs, glt_crs, bounds)
    inverse = ~glt_transform
    columns, rows = zip(
        *(inverse * corner for corner in ((left, top), (right, bottom))), strict=True
    )
    col_start = max(0, math.floor(min(columns)) - GLT_MARGIN_PX)
    col_stop = min(glt_shape[1], math.ceil(max(columns)) + GLT_MARGIN_PX)
    row_start = max(0, math.floor(min(rows)) - GLT_MARGIN_PX)
    row_stop = min(glt_shape[0], math.ceil(max(rows)) + GLT_MARGIN_PX)
    if col_stop <= col_start or row_stop <= row_start:
        return None
    return row_start, col_start, row_stop - row_start, col_stop - col_start


def _swath_window(
    href: str,
    columns: np.ndarray,
    rows: np.ndarray,
    bands: SpectralBands,
    gdal_options: GdalOptions,
) -> tuple[int, int, int, int]:
    """Return (row_off, col_off, height, width) of the swath pixels that the GLT names.

    GDAL's HDF5 driver shows ``reflectance`` (downtrack, crosstrack, bands) as downtrack
    GDAL bands of crosstrack rows and spectral columns, which is checked against the number
    of wavelengths before any pixel is read.
    """
    header = read_netcdf_header(href, REFLECTANCE, gdal_options=gdal_options)
    downtrack, crosstrack = header.count, header.height
    if header.width != len(bands.good):
        raise ReadError(
            f"granule {href!r}: GDAL reads variable reflectance as {header.count} bands of "
            f"{header.height} x {header.width} pixels, but the granule lists {len(bands.good)} "
            "wavelengths; expected the EMIT layout (downtrack, crosstrack, bands)"
        )
    first_col, last_col = int(np.abs(columns).min()), int(np.abs(columns).max())
    first_row, last_row = int(np.abs(rows).min()), int(np.abs(rows).max())
    if last_col > crosstrack or last_row > downtrack:
        raise ReadError(
            f"granule {href!r}: the GLT names swath row {last_row} and column {last_col}, but "
            f"the swath has {downtrack} rows and {crosstrack} columns; the lookup table does "
            "not belong to this swath"
        )
    return first_row - 1, first_col - 1, last_row - first_row + 1, last_col - first_col + 1


def _shift_indexes(table: np.ndarray, offset: int) -> np.ndarray:
    """Shift one-based GLT indexes to a swath window starting ``offset`` pixels in.

    0 stays 0 (no data), and the sign that marks filled pixels is kept.
    """
    indexes = table.astype(np.int64)
    shifted = np.sign(indexes) * (np.abs(indexes) - offset)
    return np.where(indexes == 0, 0, shifted)
