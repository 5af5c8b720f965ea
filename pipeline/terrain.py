"""Slope and aspect of a DEM on a projected grid. Pure NumPy, no I/O.

Gradients follow Horn's method (Horn 1981). For the 3x3 window

    a b c
    d e f
    g h i

with rows running north to south and columns west to east,

    dz/dx (east)  = ((c + 2f + i) - (a + 2d + g)) / (8 dx)
    dz/dy (north) = ((a + 2b + c) - (g + 2h + i)) / (8 dy)

Slope is ``atan(hypot(dz/dx, dz/dy))``. Aspect is the azimuth of the downslope direction
``(-dz/dx, -dz/dy)`` in degrees clockwise from north, so a surface that falls towards the east
has aspect 90.
"""

from __future__ import annotations

import math

import numpy as np


def slope_aspect(
    elevation_m: np.ndarray,
    *,
    spacing_m: tuple[float, float],
    margin: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Compute slope and aspect in degrees with Horn's 3x3 method.

    ``elevation_m`` is a 2-D array of heights in metres on a projected grid whose rows run north
    to south and columns west to east. ``spacing_m`` is the pixel spacing (dy, dx) in metres.
    The array carries ``margin`` extra pixels on every side, read from beyond the chip, and both
    outputs are cropped by ``margin`` on each side. Mark no data as NaN before the call, because
    a NaN anywhere in a pixel's 3x3 window makes its slope and aspect NaN.

    Returns float32 ``(slope, aspect)``. Slope is in [0, 90]. Aspect is in [0, 360), degrees
    clockwise from north towards the downslope direction, and NaN where the slope is exactly 0.

    Raises:
        ValueError: ``margin`` is below 1, the input is not 2-D or is too small for the margin,
            or a spacing is not a positive finite number.
    """
    _validate_inputs(elevation_m, spacing_m, margin)
    dz_dx, dz_dy = _horn_gradients(np.asarray(elevation_m, dtype=np.float64), spacing_m, margin)

    slope = np.degrees(np.arctan(np.hypot(dz_dx, dz_dy)))
    # The azimuth of the vector (east, north) is atan2(east, north).
    aspect = np.degrees(np.arctan2(-dz_dx, -dz_dy)) % 360.0
    aspect[slope == 0.0] = np.nan
    aspect_32 = aspect.astype(np.float32)
    # An azimuth just below 360 can round to exactly 360 in the modulo or the float32 cast.
    aspect_32[aspect_32 >= 360.0] = 0.0
    return slope.astype(np.float32), aspect_32


def _validate_inputs(elevation_m: np.ndarray, spacing_m: tuple[float, float], margin: int) -> None:
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 1:
        raise ValueError(
            f"invalid margin {margin!r}: Horn's method reads one neighbour on every side, so "
            "pass an integer margin of at least 1 and read that many extra pixels around the chip"
        )
    if np.ndim(elevation_m) != 2:
        raise ValueError(
            f"invalid elevation array with shape {np.shape(elevation_m)}: "
            "pass a single 2-D band of heights (rows, cols)"
        )
    rows, cols = np.shape(elevation_m)
    if rows <= 2 * margin or cols <= 2 * margin:
        raise ValueError(
            f"elevation array of shape {(rows, cols)} is too small for margin {margin}: "
            f"each side needs more than {2 * margin} pixels so that the cropped output is not empty"
        )
    if len(spacing_m) != 2 or not all(_is_positive_finite(value) for value in spacing_m):
        raise ValueError(
            f"invalid spacing_m {spacing_m!r}: pass (dy, dx) as two positive pixel sizes in metres "
            "on a projected grid"
        )


def _is_positive_finite(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return math.isfinite(float(value)) and float(value) > 0.0


def _horn_gradients(
    elevation: np.ndarray, spacing_m: tuple[float, float], margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (dz/dx east, dz/dy north) for the pixels inside ``margin``."""
    dy, dx = float(spacing_m[0]), float(spacing_m[1])
    rows, cols = elevation.shape
    # Output pixel (0, 0) is input pixel (margin, margin), so its window starts at margin - 1.
    start = margin - 1

    def window(row_offset: int, col_offset: int) -> np.ndarray:
        top = start + row_offset
        left = start + col_offset
        return elevation[top : rows - 2 * margin + top, left : cols - 2 * margin + left]

    west = window(0, 0) + 2.0 * window(1, 0) + window(2, 0)
    east = window(0, 2) + 2.0 * window(1, 2) + window(2, 2)
    north = window(0, 0) + 2.0 * window(0, 1) + window(0, 2)
    south = window(2, 0) + 2.0 * window(2, 1) + window(2, 2)

    dz_dx = (east - west) / (8.0 * dx)
    dz_dy = (north - south) / (8.0 * dy)
    # Horn's weights skip the centre pixel, but a NaN centre is no data too.
    centre_is_nan = np.isnan(window(1, 1))
    dz_dx[centre_is_nan] = np.nan
    dz_dy[centre_is_nan] = np.nan
    return dz_dx, dz_dy
