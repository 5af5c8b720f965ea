"""Read and normalise one item onto one chip's GeoBox with odc-stac's item model and reader.

Sentinel-2 bands are warped straight onto the chip grid with each band's resampling method.
Sentinel-1 rasters in dB are first read on their own pixel grid, converted to linear power and
only then resampled, because averaging in dB is not averaging power.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import odc.stac
import pystac
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.overlap import compute_reproject_roi
from odc.geo.xr import wrap_xr, xr_reproject
from odc.loader import RasterLoadParams, RasterSource, resolve_load_cfg
from odc.loader.types import AuxDataSource, AuxLoadParams
from odc.stac import ParsedItem

from pipeline.coherence import estimate_coherence
from pipeline.config import ModalitySource
from pipeline.errors import ReadError
from pipeline.gdal_io import read_complex_window
from pipeline.radiometry import (
    LAND_CLASSES,
    ReflectanceRule,
    check_s2_radiometry,
    db_to_linear,
    reflectance_rule,
)
from pipeline.retry import RetryPolicy, mask_secrets
from pipeline.rio_reader import ChipRioDriver
from pipeline.search import sign_item

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChipRead:
    """Pixels of one item on one chip, with the fraction usable and what was applied."""

    values: np.ndarray  # (band, y, x) float32, NaN where invalid
    usable_fraction: float
    processing: Mapping[str, Any]
    # Why the item's reflectance cannot be trusted (radiometry.check_s2_radiometry), or None.
    quarantine: str | None = None


def _to_item(item: pystac.Item | Mapping[str, Any]) -> pystac.Item:
    return item if isinstance(item, pystac.Item) else pystac.Item.from_dict(dict(item))


# odc-stac's metadata of an item (bands, data types, nodata) per worker process. Chips of a run
# read the same few items, and parsing one costs about as much as reading a band. The cache
# keeps each item alive, so its id() is not reused while cached.
_PARSED: dict[int, tuple[pystac.Item, ParsedItem]] = {}
MAX_PARSED_ITEMS = 256


def _parsed(item: pystac.Item) -> ParsedItem:
    cached = _PARSED.get(id(item))
    if cached is not None and cached[0] is item:
        return cached[1]
    if len(_PARSED) >= MAX_PARSED_ITEMS:
        _PARSED.clear()
    parsed = odc.stac.parse_item(item)
    _PARSED[id(item)] = (item, parsed)
    return parsed


def _read_bands(
    item: pystac.Item,
    assets: list[str],
    geobox: GeoBox,
    resampling: Mapping[str, str],
    gdal_options: Mapping[str, str | int | bool],
    nodata: float | None,
) -> np.ndarray:
    """Read assets of one item onto ``geobox`` as float32 (band, y, x), NaN where ``nodata``.

    Each band is read as ``odc.stac.load`` of one item would read it, through an odc-loader
    driver (:class:`pipeline.rio_reader.ChipRioDriver`), straight into one array: no xarray
    Dataset is built around a single chip.
    """
    parsed = _parsed(item)
    try:
        sources = parsed.resolve_bands(assets)
        load_cfg = resolve_load_cfg(
            parsed.collection.resolve_bands(assets),
            dict(resampling),
            dtype="float32",
            fail_on_error=True,
        )
    except ValueError as error:
        raise ReadError(
            f"item {item.id!r} has no band for assets {assets}: {error}; check the band "
            "assets of its collection in the catalog YAML"
        ) from error
    # configure_rio sets the options odc-loader's reader applies in this process. The driver
    # keeps local files open and retries a failed band read of a remote asset.
    options: dict[str, Any] = dict(gdal_options)
    odc.stac.configure_rio(**options)
    driver = ChipRioDriver(RetryPolicy.from_gdal_options(options))
    values = np.empty((len(assets), *geobox.shape.yx), dtype=np.float32)
    try:
        with driver.restore_env(driver.capture_env(), driver.new_load(geobox)) as context:
            for index, asset in enumerate(assets):
                _read_band(driver, context, sources[asset], load_cfg[asset], geobox, values[index])
    except (rasterio.errors.RasterioError, OSError, RuntimeError) as error:
        reason = mask_secrets(str(error))
        raise ReadError(f"reading item {item.id!r} assets {assets} failed: {reason}") from error
    if nodata is not None and not np.isnan(nodata):
        values[values == nodata] = np.nan
    return values


def _read_band(
    driver: ChipRioDriver,
    context: Any,
    source: RasterSource | AuxDataSource | None,
    load_cfg: RasterLoadParams | AuxLoadParams,
    geobox: GeoBox,
    destination: np.ndarray,
) -> None:
    assert isinstance(load_cfg, RasterLoadParams)
    # Pixels the source does not cover keep the fill value, as odc-stac leaves them.
    destination.fill(np.nan if load_cfg.fill_value is None else load_cfg.fill_value)
    if source is None:
        return
    assert isinstance(source, RasterSource)
    driver.open(source, context).read(load_cfg, geobox, dst=destination)


def read_s2(
    item_or_dict: pystac.Item | Mapping[str, Any],
    source: ModalitySource,
    bands: tuple[str, ...],
    geobox: GeoBox,
    gdal_options: Mapping[str, str | int | bool],
) -> ChipRead:
    """Read Sentinel-2 bands as float32 surface reflectance on the chip grid."""
    assert source.s2 is not None and source.mask is not None
    item = sign_item(_to_item(item_or_dict), source)
    specs = [source.band(band) for band in bands]
    assets = [spec.asset for spec in specs]
    # SCL is used where the catalog declares it and the item has it; otherwise nodata alone.
    mask_asset = source.mask.asset if source.mask.kind == "scl" else None
    if mask_asset is not None and mask_asset not in item.assets:
        mask_asset = None
    load_assets = [*assets, mask_asset] if mask_asset else assets
    resampling = {spec.asset: spec.resampling for spec in specs}
    if mask_asset:
        resampling[mask_asset] = "nearest"

    loaded = _read_bands(item, load_assets, geobox, resampling, gdal_options, source.nodata)
    dn = loaded[: len(assets)]

    reflectance = np.empty_like(dn)
    rules: dict[str, str] = {}
    band_rules: dict[str, ReflectanceRule] = {}
    for index, spec in enumerate(specs):
        asset = item.assets[spec.asset].to_dict()
        raster_band = (asset.get("raster:bands") or [None])[0]
        rule = reflectance_rule(source.s2, item.properties, raster_band)
        reflectance[index] = rule.apply(dn[index])
        rules[spec.name] = rule.reason
        band_rules[spec.name] = rule

    valid = np.all(np.isfinite(reflectance), axis=0)
    scl = loaded[len(assets)] if mask_asset else None
    land = None if scl is None else np.isin(scl, LAND_CLASSES)
    quarantine = check_s2_radiometry(item.properties, band_rules, reflectance, land)
    if scl is not None:
        clear = np.isin(scl, source.mask.clear_classes) & valid
        reflectance[:, ~clear] = np.nan
    else:
        clear = valid
    processing = {
        "units": "reflectance (1)",
        "dn_to_reflectance": sorted(set(rules.values())),
        "resampling": {spec.name: spec.resampling for spec in specs},
        "mask": f"SCL clear classes {list(source.mask.clear_classes)} and nodata"
        if mask_asset
        else "nodata",
    }
    return ChipRead(reflectance, float(clear.mean()), processing, quarantine)


def _native_geobox(item: pystac.Item, asset: str) -> GeoBox | None:
    data = item.assets[asset].to_dict()
    shape = data.get("proj:shape") or item.properties.get("proj:shape")
    transform = data.get("proj:transform") or item.properties.get("proj:transform")
    crs = item.properties.get("proj:code") or (
        f"EPSG:{item.properties['proj:epsg']}" if "proj:epsg" in item.properties else None
    )
    if not (shape and transform and crs):
        return None
    return GeoBox(tuple(shape), Affine(*transform[:6]), crs)


def read_s1(
    item_or_dict: pystac.Item | Mapping[str, Any],
    source: ModalitySource,
    bands: tuple[str, ...],
    geobox: GeoBox,
    gdal_options: Mapping[str, str | int | bool],
) -> ChipRead:
    """Read Sentinel-1 backscatter as float32 linear power on the chip grid."""
    assert source.s1 is not None
    if source.s1.units not in ("linear", "dB"):
        raise ReadError(
            f"collection {source.collection!r} stores Sentinel-1 as {source.s1.units!r}, which is "
            "not backscatter; only linear power and dB sources can be read"
        )
    item = sign_item(_to_item(item_or_dict), source)
    specs = [source.band(band) for band in bands]
    assets = [spec.asset for spec in specs]
    radiometry = source.s1

    if radiometry.units == "linear":
        resampling = {spec.asset: spec.resampling for spec in specs}
        linear = _read_bands(item, assets, geobox, resampling, gdal_options, source.nodata)
        conversion = "none: source is linear power"
    else:
        linear = _read_db_as_linear(item, specs, assets, geobox, source.nodata, gdal_options)
        conversion = "10^(dB/10) on the source grid, before resampling"

    valid = np.all(np.isfinite(linear), axis=0)
    processing = {
        "units": f"linear power ({radiometry.quantity})",
        "quantity": radiometry.quantity,
        "product": radiometry.product,
        "terrain_flattening": radiometry.terrain_flattening,
        "source_units": radiometry.units,
        "conversion": conversion,
        "resampling": {spec.name: spec.resampling for spec in specs},
    }
    return ChipRead(linear, float(valid.mean()), processing)


def _read_db_as_linear(
    item: pystac.Item,
    specs: list[Any],
    assets: list[str],
    geobox: GeoBox,
    nodata: float | None,
    gdal_options: Mapping[str, str | int | bool],
) -> np.ndarray:
    native = _native_geobox(item, assets[0])
    if native is None:
        raise ReadError(
            f"item {item.id!r} has no proj:shape, proj:transform and proj:code for asset "
            f"{assets[0]!r}; a dB source must be read on its own grid before conversion, so "
            "add the projection extension fields to the catalog"
        )
    nearest = dict.fromkeys(assets, "nearest")
    exact_crop = native[compute_reproject_roi(native, geobox).roi_src]
    if exact_crop == geobox:
        # The chip is a window of the source grid: nothing to resample.
        return db_to_linear(_read_bands(item, assets, geobox, nearest, gdal_options, nodata))

    native_crop = native[compute_reproject_roi(native, geobox, padding=2).roi_src]
    linear = db_to_linear(_read_bands(item, assets, native_crop, nearest, gdal_options, nodata))
    layers = []
    for index, spec in enumerate(specs):
        array = wrap_xr(linear[index], native_crop, nodata=np.nan)
        warped = xr_reproject(array, geobox, resampling=spec.resampling, dst_nodata=np.nan)
        layers.append(np.asarray(warped.values, dtype=np.float32))
    return np.stack(layers)


def read_plane(
    item_or_dict: pystac.Item | Mapping[str, Any],
    source: ModalitySource,
    geobox: GeoBox,
    gdal_options: Mapping[str, str | int | bool],
) -> np.ndarray:
    """Read a single-band modality (DEM, coherence) as float32 (y, x), NaN where nodata.

    The band's resampling method of the catalog applies (bilinear for heights). GDAL places a
    raster tagged pixel-is-point (``AREA_OR_POINT=Point``) by its pixel centres, so no half-pixel
    shift is added here.
    """
    item = sign_item(_to_item(item_or_dict), source)
    band = source.bands[0]
    nodata = source.nodata
    if nodata is None:
        declared = (item.assets[band.asset].to_dict().get("raster:bands") or [{}])[0]
        nodata = declared.get("nodata")
    resampling = {band.asset: band.resampling}
    values = _read_bands(item, [band.asset], geobox, resampling, gdal_options, nodata)
    plane: np.ndarray = values[0]
    return plane


def read_slc_coherence(
    items: tuple[pystac.Item | Mapping[str, Any], pystac.Item | Mapping[str, Any]],
    source: ModalitySource,
    geobox: GeoBox,
    *,
    looks: tuple[int, int],
    gdal_options: Mapping[str, str | int | bool],
) -> np.ndarray:
    """Estimate coherence from two co-registered complex rasters, then warp it onto the chip.

    The estimate runs on the rasters' own grid over a window padded by half the estimator
    window, so every chip pixel has a whole window and values do not depend on where chips
    are cut. Only the coherence magnitude is resampled (the catalog band's method), never the
    complex values.
    """
    first, second = (_to_item(item) for item in items)
    asset = source.bands[0].asset
    native = _native_geobox(first, asset)
    if native is None or native != _native_geobox(second, asset):
        raise ReadError(
            f"complex rasters {first.id!r} and {second.id!r} are not on one grid (proj:shape, "
            "proj:transform and proj:code must be given and equal); coherence needs "
            "co-registered single-look complex rasters"
        )
    padding = max(looks) // 2 + 2
    roi = compute_reproject_roi(native, geobox, padding=padding).roi_src
    rows, cols = roi
    window = (rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
    hrefs = [str(item.assets[asset].href) for item in (first, second)]
    reference, secondary = (
        read_complex_window(href, window=window, gdal_options=gdal_options) for href in hrefs
    )
    coherence = estimate_coherence(reference, secondary, looks=looks)
    array = wrap_xr(coherence, native[roi], nodata=np.nan)
    warped = xr_reproject(array, geobox, resampling=source.bands[0].resampling, dst_nodata=np.nan)
    return np.asarray(warped.values, dtype=np.float32)
