"""Slope and aspect from pipeline.terrain on synthetic planes and on a real Copernicus DEM crop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from pipeline.terrain import slope_aspect

ROWS, COLS = 9, 11


def plane(
    gradient_east: float, gradient_north: float, spacing_m: tuple[float, float]
) -> np.ndarray:
    """Heights z = gradient_east * x + gradient_north * y on a grid whose rows run north to south."""
    dy, dx = spacing_m
    rows, cols = np.mgrid[0:ROWS, 0:COLS]
    easting = cols * dx
    northing = -rows * dy
    return 100.0 + gradient_east * easting + gradient_north * northing


@pytest.mark.parametrize(
    ("gradient_east", "gradient_north", "expected_aspect"),
    [
        (0.0, -0.1, 0.0),  # falls towards the north
        (-0.1, 0.0, 90.0),  # falls towards the east
        (0.0, 0.1, 180.0),  # falls towards the south
        (0.1, 0.0, 270.0),  # falls towards the west
        (-0.1, -0.1, 45.0),  # falls towards the north-east
    ],
)
def test_plane_slope_and_aspect(
    gradient_east: float, gradient_north: float, expected_aspect: float
) -> None:
    slope, aspect = slope_aspect(
        plane(gradient_east, gradient_north, (30.0, 30.0)), spacing_m=(30.0, 30.0)
    )

    expected_slope = math.degrees(math.atan(math.hypot(gradient_east, gradient_north)))
    assert slope.dtype == np.float32
    assert aspect.dtype == np.float32
    np.testing.assert_allclose(slope, expected_slope, rtol=1e-6)
    np.testing.assert_allclose(aspect, expected_aspect, atol=1e-4)


def test_anisotropic_spacing() -> None:
    spacing = (10.0, 40.0)
    slope, aspect = slope_aspect(plane(0.3, -0.4, spacing), spacing_m=spacing)

    np.testing.assert_allclose(slope, math.degrees(math.atan(0.5)), rtol=1e-6)
    np.testing.assert_allclose(aspect, math.degrees(math.atan2(-0.3, 0.4)) % 360.0, atol=1e-4)


def test_double_spacing_halves_tan_slope() -> None:
    heights = plane(0.2, 0.1, (30.0, 30.0))
    slope_30, aspect_30 = slope_aspect(heights, spacing_m=(30.0, 30.0))
    slope_60, aspect_60 = slope_aspect(heights, spacing_m=(60.0, 60.0))

    tan_30 = np.tan(np.radians(slope_30.astype(np.float64)))
    tan_60 = np.tan(np.radians(slope_60.astype(np.float64)))
    np.testing.assert_allclose(tan_60, tan_30 / 2.0, rtol=1e-6)
    np.testing.assert_allclose(aspect_60, aspect_30, atol=1e-4)


def test_flat_surface_has_nan_aspect() -> None:
    slope, aspect = slope_aspect(np.full((5, 6), 250.0), spacing_m=(30.0, 30.0))

    assert slope.shape == (3, 4)
    assert np.all(slope == 0.0)
    assert np.all(np.isnan(aspect))


def test_margin_crops_output() -> None:
    rng = np.random.default_rng(7)
    heights = rng.uniform(0.0, 50.0, size=(12, 14))

    slope_1, aspect_1 = slope_aspect(heights, spacing_m=(30.0, 30.0), margin=1)
    slope_3, aspect_3 = slope_aspect(heights, spacing_m=(30.0, 30.0), margin=3)

    assert slope_1.shape == (10, 12)
    assert slope_3.shape == (6, 8)
    np.testing.assert_array_equal(slope_3, slope_1[2:-2, 2:-2])
    np.testing.assert_array_equal(aspect_3, aspect_1[2:-2, 2:-2])


def test_margin_values_reach_edge() -> None:
    """The first output pixel reads the margin pixels, so a chip edge gets the full window."""
    heights = plane(0.1, 0.0, (30.0, 30.0))
    heights[0, 0] += 80.0

    slope, _ = slope_aspect(heights, spacing_m=(30.0, 30.0))

    assert slope[0, 0] != pytest.approx(slope[0, 2])
    assert slope[0, 1] == pytest.approx(slope[0, 2])


def test_nan_spreads_to_its_window() -> None:
    heights = plane(0.1, 0.05, (30.0, 30.0))
    heights[4, 5] = np.nan

    slope, aspect = slope_aspect(heights, spacing_m=(30.0, 30.0))

    # Input pixel (4, 5) is output pixel (3, 4). Every output whose 3x3 window contains it is NaN.
    expected_nan = np.zeros(slope.shape, dtype=bool)
    expected_nan[2:5, 3:6] = True
    np.testing.assert_array_equal(np.isnan(slope), expected_nan)
    np.testing.assert_array_equal(np.isnan(aspect), expected_nan)


def test_integer_heights_accepted() -> None:
    heights = np.round(plane(0.0, 0.1, (30.0, 30.0))).astype(np.int16)

    slope, aspect = slope_aspect(heights, spacing_m=(30.0, 30.0))

    assert slope.dtype == np.float32
    assert np.all(np.isfinite(slope))
    np.testing.assert_allclose(aspect, 180.0, atol=1.0)


@pytest.mark.parametrize(
    ("heights", "spacing", "margin", "match"),
    [
        (np.zeros((5, 5)), (30.0, 30.0), 0, r"invalid margin 0.*at least 1"),
        (np.zeros((5, 5)), (30.0, 30.0), 1.5, r"invalid margin 1\.5"),
        (np.zeros((2, 5, 5)), (30.0, 30.0), 1, r"shape \(2, 5, 5\).*2-D"),
        (np.zeros((4, 9)), (30.0, 30.0), 2, r"shape \(4, 9\) is too small for margin 2"),
        (np.zeros((5, 5)), (0.0, 30.0), 1, r"invalid spacing_m \(0\.0, 30\.0\).*positive"),
        (np.zeros((5, 5)), (30.0, -30.0), 1, r"invalid spacing_m \(30\.0, -30\.0\)"),
        (np.zeros((5, 5)), (math.nan, 30.0), 1, r"invalid spacing_m \(nan, 30\.0\)"),
    ],
)
def test_invalid_input_raises(
    heights: np.ndarray, spacing: tuple[float, float], margin: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        slope_aspect(heights, spacing_m=spacing, margin=margin)


def warp_to_utm_30m(dem_path: Path) -> tuple[np.ndarray, Affine]:
    """Warp the DEM bilinearly onto a 280 x 280 grid of 30 m pixels in EPSG:32611.

    The grid is centred on the crop (-118.0, 34.0) and its 8.4 km side fits inside the
    0.1 degree crop, so every warped pixel has data.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import Resampling, reproject, transform

    size, pixel = 280, 30.0
    eastings, northings = transform("EPSG:4326", "EPSG:32611", [-118.0], [34.0])
    west = round(eastings[0] - size / 2 * pixel)
    north = round(northings[0] + size / 2 * pixel)
    dst_transform = from_origin(west, north, pixel, pixel)
    warped = np.full((size, size), np.nan, dtype=np.float64)
    with rasterio.open(dem_path) as src:
        reproject(
            source=rasterio.band(src, 1),
            destination=warped,
            dst_transform=dst_transform,
            dst_crs="EPSG:32611",
            dst_nodata=np.nan,
            resampling=Resampling.bilinear,
        )
    return warped, dst_transform


def plane_fit_slope_aspect(
    heights: np.ndarray, dst_transform: Affine, row: int, col: int
) -> tuple[float, float]:
    """Fit z = a + b * easting + c * northing to the 3x3 window by weighted least squares.

    The weights are the outer product of (1, 2, 1), the weighting that Horn's stencil applies,
    and the coordinates come from the grid's affine transform rather than from the stencil.
    """
    equations, targets = [], []
    for row_offset in (-1, 0, 1):
        for col_offset in (-1, 0, 1):
            weight = math.sqrt((2 - abs(row_offset)) * (2 - abs(col_offset)))
            easting, northing = dst_transform @ (col + col_offset + 0.5, row + row_offset + 0.5)
            equations.append([weight, weight * easting, weight * northing])
            targets.append(weight * heights[row + row_offset, col + col_offset])
    (_, b, c), *_ = np.linalg.lstsq(np.array(equations), np.array(targets), rcond=None)
    slope = math.degrees(math.atan(math.hypot(b, c)))
    aspect = math.degrees(math.atan2(-b, -c)) % 360.0
    return slope, aspect


@pytest.mark.shared_data
def test_real_dem_matches_plane_fit(shared_data: Path) -> None:
    heights, dst_transform = warp_to_utm_30m(
        shared_data / "cop-dem-los-angeles" / "los_angeles_dem_geoid.tif"
    )
    assert np.all(np.isfinite(heights))

    slope, aspect = slope_aspect(heights, spacing_m=(30.0, 30.0))
    assert slope.shape == (278, 278)
    # The crop is hilly, so orientation errors would show on many pixels.
    assert np.nanmax(slope) > 15.0

    rng = np.random.default_rng(11)
    for row, col in rng.integers(1, 279, size=(300, 2)):
        fitted_slope, fitted_aspect = plane_fit_slope_aspect(heights, dst_transform, row, col)
        # float32 output against a float64 fit: 1e-4 degrees covers the float32 rounding.
        assert slope[row - 1, col - 1] == pytest.approx(fitted_slope, abs=1e-4)
        if fitted_slope > 0.05:
            difference = (aspect[row - 1, col - 1] - fitted_aspect + 180.0) % 360.0 - 180.0
            assert abs(difference) < 1e-2, (row, col, fitted_slope)
