"""Radiometric normalisation and derived layers. Pure NumPy, no I/O.

Sentinel-2 L2A products of processing baseline 04.00 and later store
``DN = reflectance * 10000 + 1000``; earlier baselines have no offset, and DN 0 is no data in
every baseline. Sentinel-1 backscatter is kept as linear power. Sources in dB are converted
before any resampling, because the average of dB values, like that of amplitudes, is not the
average power.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import S2Radiometry

BASELINE_OFFSET_DN = -1000.0
FIRST_OFFSET_BASELINE = (4, 0)
NODATA_DN = 0
# Earth Search v1 sets this item property to true where it removed the baseline offset from the
# pixels itself, so its files store reflectance * 10000 whatever the baseline.
OFFSET_APPLIED_FLAG = "earthsearch:boa_offset_applied"
# Scene classification (SCL) classes 4 (vegetation) and 5 (not vegetated): land whose surface
# reflectance is positive in every band, so mostly negative values there mean a wrong offset.
LAND_CLASSES = (4, 5)
MIN_LAND_PIXELS = 100
MAX_NEGATIVE_LAND_FRACTION = 0.5


@dataclass(frozen=True)
class ReflectanceRule:
    """Scale and offset turning one item's DN into reflectance, and why they were chosen."""

    scale: float
    offset_dn: float
    reason: str

    def apply(self, dn: np.ndarray) -> np.ndarray:
        """Return float32 reflectance; NaN where the input is NaN or DN 0 (no data)."""
        values = (dn.astype(np.float64) + self.offset_dn) * self.scale
        values[dn == NODATA_DN] = np.nan
        return values.astype(np.float32)


def parse_baseline(value: object) -> tuple[int, int] | None:
    """Parse ``s2:processing_baseline`` ("04.00", "5.09") into (major, minor)."""
    if not isinstance(value, str):
        return None
    parts = value.split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def reflectance_rule(
    radiometry: S2Radiometry,
    properties: Mapping[str, Any],
    raster_band: Mapping[str, Any] | None,
) -> ReflectanceRule:
    """Decide the DN-to-reflectance rule for one item and asset.

    A ``raster:bands`` scale/offset declared by the catalog wins and is used as given, because it
    already contains the baseline offset. Otherwise the offset is decided from
    ``s2:processing_baseline``. The two are never combined.
    """
    if radiometry.offset != "baseline":
        offset_dn = float(radiometry.offset)
        return ReflectanceRule(radiometry.scale, offset_dn, f"catalog offset {offset_dn:g} DN")

    declared = raster_band or {}
    if "offset" in declared or "scale" in declared:
        scale = float(declared.get("scale", 1.0))
        offset = float(declared.get("offset", 0.0))
        # raster:bands means value = DN * scale + offset; express the offset in DN.
        return ReflectanceRule(
            scale, offset / scale, f"raster:bands scale {scale:g} offset {offset:g}"
        )

    baseline_text = properties.get("s2:processing_baseline")
    baseline = parse_baseline(baseline_text)
    if baseline is None:
        return ReflectanceRule(
            radiometry.scale,
            0.0,
            f"no offset: s2:processing_baseline {baseline_text!r} missing or unparsable",
        )
    if baseline >= FIRST_OFFSET_BASELINE:
        return ReflectanceRule(
            radiometry.scale, BASELINE_OFFSET_DN, f"baseline {baseline_text} >= 04.00: -1000 DN"
        )
    return ReflectanceRule(radiometry.scale, 0.0, f"baseline {baseline_text} < 04.00: no offset")


def expected_offset_dn(properties: Mapping[str, Any]) -> tuple[float | None, str]:
    """Return the DN offset an item's own metadata implies, and the property it comes from.

    The offset is None when the item states neither a parsable ``s2:processing_baseline`` nor
    ``earthsearch:boa_offset_applied: true``.
    """
    if properties.get(OFFSET_APPLIED_FLAG) is True:
        return 0.0, f"{OFFSET_APPLIED_FLAG} true (the provider removed the offset)"
    baseline_text = properties.get("s2:processing_baseline")
    baseline = parse_baseline(baseline_text)
    if baseline is None:
        return None, "no s2:processing_baseline"
    if baseline >= FIRST_OFFSET_BASELINE:
        return BASELINE_OFFSET_DN, f"s2:processing_baseline {baseline_text}"
    return 0.0, f"s2:processing_baseline {baseline_text}"


def check_s2_radiometry(
    properties: Mapping[str, Any],
    rules: Mapping[str, ReflectanceRule],
    reflectance: np.ndarray | None = None,
    land: np.ndarray | None = None,
) -> str | None:
    """Return why an item's reflectance cannot be trusted, or None when nothing contradicts it.

    ``rules`` maps band names to the rules applied, in the band order of ``reflectance``
    (band, y, x). ``land`` marks the pixels of SCL classes 4 and 5. Two checks run: each rule's
    offset must match the offset the item's metadata implies, and at most half of the land
    pixels of any band may be negative (checked when at least 100 land pixels are valid). A
    reason means the item should be quarantined, not read.
    """
    expected, source = expected_offset_dn(properties)
    for band, rule in rules.items():
        if expected is not None and abs(rule.offset_dn - expected) > 0.5:
            return (
                f"band {band}: {rule.reason} adds {rule.offset_dn:+g} DN, but {source} "
                f"implies {expected:+g} DN; the item's metadata contradicts itself"
            )
    if reflectance is None or land is None:
        return None
    for index, (band, rule) in enumerate(rules.items()):
        values = reflectance[index][land]
        values = values[np.isfinite(values)]
        if values.size < MIN_LAND_PIXELS:
            continue
        negative = float(np.mean(values < 0))
        if negative > MAX_NEGATIVE_LAND_FRACTION:
            return (
                f"band {band}: {negative:.0%} of {values.size} land pixels (SCL 4, 5) are "
                f"negative after {rule.reason} ({source}); the files probably have the offset "
                "removed already"
            )
    return None


def db_to_linear(db: np.ndarray) -> np.ndarray:
    """Convert backscatter in dB to linear power as float32 (NaN stays NaN)."""
    return np.power(10.0, db.astype(np.float64) / 10.0).astype(np.float32)


def amplitude_to_power(amplitude: np.ndarray) -> np.ndarray:
    """Square amplitude into power as float32, before any averaging (NaN stays NaN)."""
    return np.square(amplitude.astype(np.float64)).astype(np.float32)


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """NDVI = (NIR - red) / (NIR + red) in float32; NaN where a band is invalid or the sum is 0."""
    red64 = red.astype(np.float64)
    nir64 = nir.astype(np.float64)
    total = nir64 + red64
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(total != 0, (nir64 - red64) / total, np.nan)
    return values.astype(np.float32)


def canonical_nan(values: np.ndarray) -> np.ndarray:
    """Replace every NaN payload with the default quiet NaN so bytes are reproducible."""
    if np.issubdtype(values.dtype, np.floating):
        nan = np.isnan(values)
        if nan.any():
            values = np.where(nan, np.array(np.nan, dtype=values.dtype), values)
    return values
