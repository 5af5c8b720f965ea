"""Quicklook PNGs of a chip: its modalities as panels side by side. Only this module uses Pillow.

Every panel uses a fixed stretch, so quicklooks of different chips and releases compare:

- Sentinel-2 true colour: B04, B03, B02 reflectance 0 to 0.3 mapped linearly onto 0-255;
- Sentinel-1 VV: linear power converted to dB for display only, -25 to 0 dB onto grey;
- NDVI: -1 to 1 on a diverging brown-white-teal ramp;
- DEM: the chip's own height range onto grey, the range in the caption (heights differ by
  hundreds of metres between regions, relief within a chip is what shows misalignment);
- slope: 0 to 45 degrees onto grey; coherence: 0 to 1 onto grey;
- hyperspectral: the bands nearest 650, 560 and 480 nm as true colour, 0 to 0.3 reflectance;
- very-high-resolution: bands red, green and blue, from the chip's 2nd to 98th percentile.

NaN pixels are black in every panel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MIN_PANEL_PX = 128  # chips are enlarged by a whole factor (nearest) to at least this many pixels
GAP_PX = 4
CAPTION_PX = 16
S2_TRUE_COLOUR_BANDS = ("B04", "B03", "B02")
S2_REFLECTANCE_STRETCH = (0.0, 0.3)
S1_DB_STRETCH = (-25.0, 0.0)
# Brown (negative) through near-white (zero) to teal (positive), at NDVI -1, -0.5, 0, 0.5, 1.
NDVI_RAMP_STOPS = (-1.0, -0.5, 0.0, 0.5, 1.0)
NDVI_RAMP_COLOURS = (
    (166, 97, 26),
    (223, 194, 125),
    (245, 245, 245),
    (128, 205, 193),
    (1, 133, 113),
)
NODATA_COLOUR = (0, 0, 0)
SLOPE_STRETCH = (0.0, 45.0)
COHERENCE_STRETCH = (0.0, 1.0)
HSI_TRUE_COLOUR_NM = (650.0, 560.0, 480.0)
VHR_TRUE_COLOUR_BANDS = ("red", "green", "blue")

Panel = tuple[str, np.ndarray]  # caption and RGB pixels (y, x, 3) as uint8


def stretch_to_bytes(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly onto 0-255, clipping values outside. NaN becomes 0."""
    scaled = np.clip((values.astype(np.float64) - low) / (high - low), 0.0, 1.0)
    return np.where(np.isnan(scaled), 0, np.round(scaled * 255)).astype(np.uint8)


def s2_true_colour(s2: np.ndarray, bands: Sequence[str]) -> np.ndarray | None:
    """Render bands B04, B03, B02 of a (band, y, x) chip as RGB, or None if one is missing."""
    if not all(band in bands for band in S2_TRUE_COLOUR_BANDS):
        return None
    rgb = np.stack([s2[list(bands).index(band)] for band in S2_TRUE_COLOUR_BANDS], axis=-1)
    image = stretch_to_bytes(rgb, *S2_REFLECTANCE_STRETCH)
    image[np.isnan(rgb).any(axis=-1)] = NODATA_COLOUR
    return image


def s1_vv_db(s1: np.ndarray, polarizations: Sequence[str]) -> np.ndarray | None:
    """Render VV of a (polarization, y, x) linear-power chip in dB as grey, or None without VV."""
    if "VV" not in polarizations:
        return None
    power = s1[list(polarizations).index("VV")].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        db = np.where(power > 0, 10.0 * np.log10(power), np.nan)
    grey = stretch_to_bytes(db, *S1_DB_STRETCH)
    image = np.repeat(grey[..., np.newaxis], 3, axis=-1)
    image[np.isnan(db)] = NODATA_COLOUR
    return image


def ndvi_colours(ndvi: np.ndarray) -> np.ndarray:
    """Render a (y, x) NDVI chip as RGB on the diverging ramp ``NDVI_RAMP_COLOURS``."""
    values = np.clip(ndvi.astype(np.float64), NDVI_RAMP_STOPS[0], NDVI_RAMP_STOPS[-1])
    channels = [
        np.interp(values, NDVI_RAMP_STOPS, [colour[channel] for colour in NDVI_RAMP_COLOURS])
        for channel in range(3)
    ]
    image = np.round(np.stack(channels, axis=-1)).astype(np.uint8)
    image[np.isnan(ndvi)] = NODATA_COLOUR
    return image


def chip_panels(
    arrays: Mapping[str, np.ndarray], labels: Mapping[str, Sequence[str]]
) -> list[Panel]:
    """Render the panels of one chip from the arrays of its variables, where present.

    ``labels`` maps ``s2`` to its band names, ``s1`` to its polarizations and ``hsi`` to its
    wavelengths in nm.
    """
    candidates: list[tuple[str, np.ndarray | None]] = []
    if "s2" in arrays:
        candidates.append(("S2 B04 B03 B02", s2_true_colour(arrays["s2"], labels["s2"])))
    if "s1" in arrays:
        candidates.append(("S1 VV dB", s1_vv_db(arrays["s1"], labels["s1"])))
    if "ndvi" in arrays:
        candidates.append(("NDVI", ndvi_colours(arrays["ndvi"])))
    if "hsi" in arrays:
        candidates.append(("HSI 650 560 480 nm", hsi_true_colour(arrays["hsi"], labels["hsi"])))
    if "vhr" in arrays:
        candidates.append(("VHR red green blue", vhr_true_colour(arrays["vhr"], labels["vhr"])))
    if "dem" in arrays and np.isfinite(arrays["dem"]).any():
        low, high = float(np.nanmin(arrays["dem"])), float(np.nanmax(arrays["dem"]))
        caption = f"DEM {low:.0f}-{high:.0f} m"
        candidates.append((caption, grey(arrays["dem"], low, max(high, low + 1.0))))
    if "slope" in arrays:
        candidates.append(("slope 0-45 deg", grey(arrays["slope"], *SLOPE_STRETCH)))
    if "coherence" in arrays:
        candidates.append(("coherence 0-1", grey(arrays["coherence"], *COHERENCE_STRETCH)))
    return [(caption, pixels) for caption, pixels in candidates if pixels is not None]


def grey(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Render a (y, x) chip as grey between ``low`` and ``high``; NaN is black."""
    image = np.repeat(stretch_to_bytes(values, low, high)[..., np.newaxis], 3, axis=-1)
    image[np.isnan(values)] = NODATA_COLOUR
    return image


def vhr_true_colour(vhr: np.ndarray, bands: Sequence[str]) -> np.ndarray | None:
    """Render bands red, green, blue of a (band, y, x) chip as RGB, 2nd to 98th percentile.

    Aerial images are often uncalibrated digital numbers, so the stretch is per chip.
    """
    if not all(band in bands for band in VHR_TRUE_COLOUR_BANDS):
        return None
    rgb = np.stack([vhr[list(bands).index(band)] for band in VHR_TRUE_COLOUR_BANDS], axis=-1)
    finite = rgb[np.isfinite(rgb)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, [2, 98])
    image = stretch_to_bytes(rgb, float(low), float(max(high, low + 1e-6)))
    image[np.isnan(rgb).any(axis=-1)] = NODATA_COLOUR
    return image


def hsi_true_colour(hsi: np.ndarray, wavelengths: Sequence[str]) -> np.ndarray:
    """Render the bands nearest 650, 560 and 480 nm of a (wavelength, y, x) chip as RGB."""
    centres = np.array([float(label) for label in wavelengths])
    rgb = np.stack(
        [hsi[int(np.argmin(np.abs(centres - target)))] for target in HSI_TRUE_COLOUR_NM],
        axis=-1,
    )
    image = stretch_to_bytes(rgb, *S2_REFLECTANCE_STRETCH)
    image[np.isnan(rgb).any(axis=-1)] = NODATA_COLOUR
    return image


def quicklook_size(chip_size: int, panels: int) -> tuple[int, int]:
    """Return the width and height in pixels of ``panels`` panels side by side."""
    side = chip_size * max(1, math.ceil(MIN_PANEL_PX / chip_size))
    return panels * side + (panels - 1) * GAP_PX, CAPTION_PX + side


def compose(panels: Sequence[Panel]) -> Image.Image:
    """Place the enlarged panels side by side on white, each with its caption above it."""
    chip_size = panels[0][1].shape[0]
    width, height = quicklook_size(chip_size, len(panels))
    side = height - CAPTION_PX
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for position, (caption, pixels) in enumerate(panels):
        left = position * (side + GAP_PX)
        panel = Image.fromarray(pixels, mode="RGB").resize((side, side), Image.Resampling.NEAREST)
        canvas.paste(panel, (left, CAPTION_PX))
        draw.text((left + 2, 2), caption, fill=(0, 0, 0))
    return canvas


def write_png(panels: Sequence[Panel], path: Path) -> None:
    """Compose ``panels`` and write them to ``path`` as PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compose(panels).save(path, format="PNG", optimize=True)


# Evaluation figures: blue (prediction below truth) through white to red (above), and a density
# ramp from white (no pixel) to black (the most pixels) with the 1:1 line in red.
ERROR_RAMP_STOPS = (-1.0, 0.0, 1.0)
ERROR_RAMP_COLOURS = ((33, 102, 172), (247, 247, 247), (178, 24, 43))
DIAGONAL_COLOUR = (220, 30, 30)


def error_colours(error: np.ndarray, limit: float) -> np.ndarray:
    """Render a (y, x) error map from ``-limit`` (blue) to ``+limit`` (red); NaN is black."""
    finite = np.where(np.isnan(error), 0.0, error.astype(np.float64))
    scaled = np.clip(finite / limit, -1.0, 1.0) if limit > 0 else np.zeros_like(finite)
    channels = [
        np.interp(scaled, ERROR_RAMP_STOPS, [colour[channel] for colour in ERROR_RAMP_COLOURS])
        for channel in range(3)
    ]
    image = np.round(np.stack(channels, axis=-1)).astype(np.uint8)
    image[np.isnan(error)] = NODATA_COLOUR
    return image


def density_colours(counts: np.ndarray) -> np.ndarray:
    """Render a square grid of pixel counts as grey on a log scale, with the diagonal in red.

    Row 0 is the top of the image, so the diagonal runs from the bottom left to the top right.
    """
    peak = float(counts.max())
    shade = np.log1p(counts) / np.log1p(peak) if peak > 0 else np.zeros_like(counts, float)
    grey_levels = np.round(255 * (1.0 - shade)).astype(np.uint8)
    image = np.repeat(grey_levels[..., np.newaxis], 3, axis=-1)
    size = counts.shape[0]
    image[np.arange(size)[::-1], np.arange(size)] = DIAGONAL_COLOUR
    return image
