"""Hyperspectral scenes: band metadata, reflectance scaling, chip reads and EMIT orthorectification.

EnMAP L2A scenes come as GeoTIFF tiles whose bands carry the GDAL tags ``wavelength``,
``fwhm``, ``wavelength_units`` and ``bbl`` (bad band list, 1 good and 0 bad). The tiles of one
scene share one pixel grid and are read as one mosaic, so chips have no seams at tile borders.
EMIT L2A reflectance comes as a swath in sensor geometry with a geometry lookup table (GLT)
that places swath pixels on a map grid. GDAL reads go through :mod:`pipeline.gdal_io`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import CatalogError, ConfigError, ReadError
from pipeline.gdal_io import DEFAULT_GDAL_OPTIONS, band_tags, warp_mosaic_to_grid

log = logging.getLogger(__name__)

# Reflectance outside this range is not a physical surface reflectance but a processing or
# scaling error. Small negative values occur over water and in shadow, so the lower limit is
# below zero.
MIN_REFLECTANCE = -0.05
MAX_REFLECTANCE = 1.5

# Factors from a ``wavelength_units`` tag to nanometres, keyed by the lower-case unit name.
_NANOMETRES_PER_UNIT = {
    "nanometers": 1.0,
    "nanometres": 1.0,
    "nm": 1.0,
    "micrometers": 1000.0,
    "micrometres": 1000.0,
    "microns": 1000.0,
    "um": 1000.0,
    "µm": 1000.0,
}

# STAC keys of the band centre and width in micrometres. STAC 1.1 ``bands`` keys come first,
# then the ``eo:bands`` keys of STAC 1.0.
_CENTER_KEYS = ("eo:center_wavelength", "center_wavelength")
_FWHM_KEYS = ("eo:full_width_half_max", "full_width_half_max")
# A STAC band is bad when it has ``"sensorcube:bad": true`` or an ENVI/EnMAP ``bbl`` of 0.
STAC_BAD_KEY = "sensorcube:bad"
BAD_BAND_LIST_KEY = "bbl"


def _to_nanometres(value: float) -> float:
    # Rounding to 1e-6 nm makes 0.41824 um and the tag "418.24" nm compare equal.
    return round(value, 6)


@dataclass(frozen=True)
class SpectralBands:
    """Centre wavelengths, widths (FWHM) and good-band flags of a sensor's bands, in band order."""

    wavelength_nm: tuple[float, ...]
    fwhm_nm: tuple[float, ...]
    good: tuple[bool, ...]

    def __post_init__(self) -> None:
        lengths = {len(self.wavelength_nm), len(self.fwhm_nm), len(self.good)}
        if len(lengths) != 1:
            raise ReadError(
                f"spectral band lists differ in length: {len(self.wavelength_nm)} wavelengths, "
                f"{len(self.fwhm_nm)} FWHM values and {len(self.good)} good-band flags; "
                "pass one entry per band in each"
            )

    @classmethod
    def from_band_tags(cls, tags: Sequence[Mapping[str, str]]) -> SpectralBands:
        """Parse per-band GDAL tags in the EnMAP style, band 1 first.

        ``wavelength`` and ``fwhm`` are required and use ``wavelength_units``, which may be
        nanometres or micrometres and is nanometres when the tag is absent. A band is bad when
        ``bbl`` is 0, and good when it is 1 or absent.
        """
        wavelengths, widths, good = [], [], []
        for number, band in enumerate(tags, start=1):
            factor = _tag_unit_factor(band, number)
            wavelengths.append(_to_nanometres(_tag_float(band, "wavelength", number) * factor))
            widths.append(_to_nanometres(_tag_float(band, "fwhm", number) * factor))
            good.append(_bad_band_list_flag(band.get(BAD_BAND_LIST_KEY), number, ReadError))
        return cls(tuple(wavelengths), tuple(widths), tuple(good))

    @classmethod
    def from_stac_bands(cls, bands: Sequence[Mapping[str, Any]]) -> SpectralBands:
        """Parse STAC ``bands`` (STAC 1.1) or ``eo:bands`` (STAC 1.0) entries, band 1 first.

        Centre wavelength and full width at half maximum are in micrometres, as the STAC
        ``eo`` extension defines them, and both are required. A band is bad when it has
        ``"sensorcube:bad": true`` or a ``bbl`` of 0, and good otherwise. When both keys are
        present they must agree.
        """
        wavelengths, widths, good = [], [], []
        for number, band in enumerate(bands, start=1):
            wavelengths.append(_to_nanometres(_stac_float(band, _CENTER_KEYS, number) * 1000.0))
            widths.append(_to_nanometres(_stac_float(band, _FWHM_KEYS, number) * 1000.0))
            good.append(_stac_good(band, number))
        return cls(tuple(wavelengths), tuple(widths), tuple(good))

    def kept_indexes(self) -> tuple[int, ...]:
        """Return the one-based indexes of the good bands, in band order."""
        return tuple(number for number, good in enumerate(self.good, start=1) if good)

    def kept(self) -> SpectralBands:
        """Return the good bands only, which describe the bands of a chip from read_hsi_chip."""
        positions = [number - 1 for number in self.kept_indexes()]
        return SpectralBands(
            tuple(self.wavelength_nm[i] for i in positions),
            tuple(self.fwhm_nm[i] for i in positions),
            tuple(True for _ in positions),
        )


def _tag_float(band: Mapping[str, str], key: str, number: int) -> float:
    text = band.get(key)
    if text is None:
        raise ReadError(
            f"band {number} has no {key!r} tag (tags: {sorted(band)}); EnMAP-style tiles need "
            "'wavelength' and 'fwhm' tags on every band"
        )
    try:
        return float(text)
    except ValueError:
        raise ReadError(f"band {number} tag {key}={text!r} is not a number") from None


def _tag_unit_factor(band: Mapping[str, str], number: int) -> float:
    unit = band.get("wavelength_units", "Nanometers")
    factor = _NANOMETRES_PER_UNIT.get(unit.strip().lower())
    if factor is None:
        raise ReadError(
            f"band {number} has wavelength_units={unit!r}; expected Nanometers or Micrometers"
        )
    return factor


def _bad_band_list_flag(value: object, number: int, error: type[Exception]) -> bool:
    """Return True (good) for a ``bbl`` of 1 or None, False for 0."""
    if value is None:
        return True
    try:
        flag = float(str(value))
    except ValueError:
        flag = -1.0
    if flag not in (0.0, 1.0):
        raise error(f"band {number} has bbl={value!r}; expected 1 (good band) or 0 (bad band)")
    return flag == 1.0


def _stac_float(band: Mapping[str, Any], keys: tuple[str, ...], number: int) -> float:
    for key in keys:
        value = band.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CatalogError(f"band {number} has {key}={value!r}; expected micrometres")
            return float(value)
    raise CatalogError(
        f"band {number} ({band.get('name', 'unnamed')!r}) has none of {list(keys)}; "
        "hyperspectral STAC bands need the centre wavelength and FWHM in micrometres"
    )


def _stac_good(band: Mapping[str, Any], number: int) -> bool:
    marked_bad = band.get(STAC_BAD_KEY)
    if marked_bad is not None and not isinstance(marked_bad, bool):
        raise CatalogError(f"band {number} has {STAC_BAD_KEY}={marked_bad!r}; expected true/false")
    listed = band.get(BAD_BAND_LIST_KEY)
    listed_good = _bad_band_list_flag(listed, number, CatalogError)
    if marked_bad is None:
        return listed_good
    if listed is not None and marked_bad == listed_good:
        raise CatalogError(
            f"band {number} has {STAC_BAD_KEY}={marked_bad} but bbl={listed!r}; the two flags "
            "contradict each other, so keep one of them"
        )
    return not marked_bad


def require_same_bands(expected: SpectralBands, actual: SpectralBands, *, what: str) -> None:
    """Raise ReadError unless ``actual`` equals the reference bands ``expected``.

    ``what`` names the source of ``actual`` in the message, which also names the first band
    whose wavelength, FWHM or good-band flag differs.
    """
    if actual == expected:
        return
    for number, (left, right) in enumerate(
        zip(_rows(expected), _rows(actual), strict=False), start=1
    ):
        if left != right:
            raise ReadError(
                f"{what} has band {number} at {right[0]:g} nm (FWHM {right[1]:g} nm, "
                f"{'good' if right[2] else 'bad'}) where the reference has {left[0]:g} nm (FWHM "
                f"{left[1]:g} nm, {'good' if left[2] else 'bad'}); read only tiles of one scene "
                "and one product version together"
            )
    shorter, longer = sorted((expected, actual), key=lambda bands: len(bands.good))
    extra = longer.wavelength_nm[len(shorter.good)]
    raise ReadError(
        f"{what} has {len(actual.good)} bands where the reference has {len(expected.good)}; the "
        f"first unmatched band is at {extra:g} nm. Read only tiles of one scene together"
    )


def _rows(bands: SpectralBands) -> list[tuple[float, float, bool]]:
    return list(zip(bands.wavelength_nm, bands.fwhm_nm, bands.good, strict=True))


def read_scene_bands(
    hrefs: Sequence[str],
    *,
    gdal_options: Mapping[str, str | int | bool] = DEFAULT_GDAL_OPTIONS,
) -> SpectralBands:
    """Read the band tags of every tile of a scene and check that all tiles share them."""
    if not hrefs:
        raise ConfigError("no tiles were given; pass the hrefs of at least one scene tile")
    scene: SpectralBands | None = None
    for href in hrefs:
        tags = band_tags(href, gdal_options=gdal_options)
        try:
            bands = SpectralBands.from_band_tags(tags)
        except ReadError as error:
            raise ReadError(f"{href!r}: {error}") from error
        if scene is None:
            scene = bands
        else:
            require_same_bands(scene, bands, what=f"tile {href!r}")
    assert scene is not None
    return scene


def to_reflectance(
    values: np.ndarray, *, scale: float = 1e-4, nodata: float = -32768.0
) -> np.ndarray:
    """Convert scaled integers or floats to float32 reflectance with NaN where invalid.

    Pixels equal to ``nodata``, NaN pixels and pixels whose reflectance falls outside
    [MIN_REFLECTANCE, MAX_REFLECTANCE] become NaN. Values inside the range are kept as they are,
    small negative ones included. Nothing is clipped, so an out-of-range pixel is never
    replaced by a plausible-looking value.
    """
    if not np.isfinite(scale) or scale <= 0:
        raise ConfigError(f"reflectance scale {scale!r} is invalid; pass a positive factor")
    reflectance = values.astype(np.float32) * np.float32(scale)
    invalid = ~np.isfinite(reflectance)
    if not np.isnan(nodata):
        invalid |= values == nodata
    outside = ~invalid & ((reflectance < MIN_REFLECTANCE) | (reflectance > MAX_REFLECTANCE))
    outside_count = int(np.count_nonzero(outside))
    if outside_count:
        log.debug(
            "set %d of %d values outside reflectance [%g, %g] to NaN",
            outside_count,
            reflectance.size,
            MIN_REFLECTANCE,
            MAX_REFLECTANCE,
        )
    reflectance[invalid | outside] = np.nan
    return reflectance


def mosaic_first_valid(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Combine layers of the same shape, taking per pixel the first layer's finite value.

    The result is float32 and NaN where no layer has a finite value. Use it to combine chips
    read from different scenes or pixel grids. Tiles of one grid are joined by read_hsi_chip.
    """
    if not layers:
        raise ReadError("no layers were given to mosaic; pass at least one array")
    mosaic = np.array(layers[0], dtype=np.float32)
    for number, layer in enumerate(layers[1:], start=2):
        if layer.shape != mosaic.shape:
            raise ReadError(
                f"layer {number} has shape {layer.shape} where layer 1 has {mosaic.shape}; "
                "mosaic only layers on the same chip grid"
            )
        fill = ~np.isfinite(mosaic) & np.isfinite(layer)
        mosaic[fill] = layer[fill]
    return mosaic


def read_hsi_chip(
    hrefs: Sequence[str],
    *,
    crs: str,
    transform: tuple[float, ...],
    shape: tuple[int, int],
    bands: SpectralBands,
    resampling: str = "bilinear",
    scale: float = 1e-4,
    nodata: float | None = -32768.0,
    gdal_options: Mapping[str, str | int | bool] = DEFAULT_GDAL_OPTIONS,
) -> np.ndarray:
    """Read the good bands of a scene's tiles onto a chip grid as float32 reflectance.

    ``hrefs`` are tiles of one scene on one pixel grid and ``bands`` describes their bands
    (see read_scene_bands). ``transform`` is the chip's affine transform in rasterio order
    (a, b, c, d, e, f). ``nodata`` is the tiles' stored no-data value, and None uses the value
    each tile declares. The tiles are warped as one mosaic, so chips that cross tile borders
    have no seam. The result has shape (kept bands, height, width) and is NaN where no tile
    has data, as well as where to_reflectance rejects a value.
    """
    indexes = bands.kept_indexes()
    if not indexes:
        raise ReadError(f"all {len(bands.good)} bands are marked bad; there is nothing to read")
    log.debug(
        "reading %d bands of %d tiles onto a %dx%d chip in %s",
        len(indexes),
        len(hrefs),
        shape[0],
        shape[1],
        crs,
    )
    # NOTE: resampling runs on the scaled integers before to_reflectance checks the range, so
    # an out-of-range source pixel can still bias its neighbours in a bilinear chip.
    values = warp_mosaic_to_grid(
        hrefs,
        crs=crs,
        transform=transform,
        shape=shape,
        resampling=resampling,
        indexes=indexes,
        src_nodata=nodata,
        gdal_options=gdal_options,
    )
    # The warp has already turned no-data pixels into NaN.
    return to_reflectance(values, scale=scale, nodata=math.nan)


def orthorectify_glt(swath: np.ndarray, glt_x: np.ndarray, glt_y: np.ndarray) -> np.ndarray:
    """Place swath pixels on the map grid of an EMIT geometry lookup table (GLT).

    ``swath`` is (bands, rows, columns). ``glt_x`` and ``glt_y`` have the shape of the output
    grid and give, per output pixel, the one-based swath column and row. A 0 in either table
    means no data, and the output is NaN there. EMIT marks pixels filled from a neighbouring
    swath pixel with negative indexes, so the absolute value is used. The result is a float
    array (float32 for float32 or small integer swaths) of shape (bands, *glt_x.shape).
    """
    _check_glt(swath, glt_x, glt_y)
    columns = _glt_indexes(glt_x, "glt_x", swath.shape[2], "columns")
    rows = _glt_indexes(glt_y, "glt_y", swath.shape[1], "rows")

    empty = (columns == 0) | (rows == 0)
    dtype = np.result_type(swath.dtype, np.float32)
    output = swath[:, np.maximum(rows - 1, 0), np.maximum(columns - 1, 0)].astype(dtype)
    output[:, empty] = np.nan
    return output


def _check_glt(swath: np.ndarray, glt_x: np.ndarray, glt_y: np.ndarray) -> None:
    if swath.ndim != 3:
        raise ReadError(f"swath has shape {swath.shape}; expected (bands, rows, columns)")
    if glt_x.ndim != 2 or glt_x.shape != glt_y.shape:
        raise ReadError(
            f"glt_x has shape {glt_x.shape} and glt_y {glt_y.shape}; both must be the same 2-D "
            "output grid"
        )
    for name, table in (("glt_x", glt_x), ("glt_y", glt_y)):
        if not np.issubdtype(table.dtype, np.integer):
            raise ReadError(f"{name} has dtype {table.dtype}; GLT indexes must be integers")


def _glt_indexes(table: np.ndarray, name: str, limit: int, axis: str) -> np.ndarray:
    """Return the absolute one-based indexes of a GLT, raising ReadError beyond ``limit``."""
    indexes = np.abs(table.astype(np.int64))
    beyond = indexes > limit
    if beyond.any():
        row, column = (int(i) for i in np.argwhere(beyond)[0])
        raise ReadError(
            f"{name} contains {int(table[row, column])} at output row {row}, column {column}, "
            f"but the swath has {limit} {axis} (valid one-based indexes 1 to {limit}, 0 for no "
            "data); check that the GLT belongs to this swath"
        )
    return indexes
