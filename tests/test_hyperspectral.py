"""Hyperspectral band metadata, reflectance, seamless tile mosaics and EMIT GLT placement.

The EnMAP tests read the real Potsdam L2A tiles. Their pixel grid is offset by half a pixel
from the 30 m lattice of the chips, so every chip pixel centre lies on the corner of four scene
pixels and bilinear resampling returns the mean of those four. The tests rebuild that mean with
NumPy from a mosaic of the tiles' pixels, which does not go through GDAL's warper.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.errors import CatalogError, ConfigError, ReadError
from pipeline.gdal_io import (
    DEFAULT_GDAL_OPTIONS,
    band_tags,
    dataset_tags,
    warp_mosaic_to_grid,
    warp_to_grid,
)
from pipeline.hyperspectral import (
    SpectralBands,
    mosaic_first_valid,
    orthorectify_glt,
    read_hsi_chip,
    read_scene_bands,
    require_same_bands,
    to_reflectance,
)

ENMAP_CRS = "EPSG:32633"
ENMAP_NODATA = -32768.0
PIXEL = 30.0
# A chip on the 30 m lattice that crosses the borders of tiles 64_0, 96_0, 64_32 and 96_32:
# the tile border x = 365055 falls inside chip column 15 and y = 5809005 inside chip row 16.
STRADDLE_ORIGIN = (364590.0, 5809500.0)
BORDER_COLUMN, BORDER_ROW = 15, 16
# A chip on the lattice whose first 10 rows and columns lie north-west of the scene.
OUTSIDE_ORIGIN = (363780.0, 5810280.0)
CHIP_SHAPE = (32, 32)


def enmap_tiles(shared_data: Path) -> list[str]:
    return sorted(str(path) for path in (shared_data / "enmap-potsdam").glob("*.tif"))


def chip_transform(origin: tuple[float, float]) -> tuple[float, ...]:
    return (PIXEL, 0.0, origin[0], 0.0, -PIXEL, origin[1])


def source_canvas(
    hrefs: list[str], origin: tuple[float, float], shape: tuple[int, int], indexes: tuple[int, ...]
) -> np.ndarray:
    """Paste the tiles' pixels (NaN for nodata) onto the scene pixels a bilinear chip needs.

    The canvas starts half a pixel north-west of the chip origin and is one pixel larger than
    the chip in each direction, so canvas pixels i and i + 1 surround chip pixel i.
    """
    left, top = origin[0] - PIXEL / 2, origin[1] + PIXEL / 2
    canvas = np.full((len(indexes), shape[0] + 1, shape[1] + 1), np.nan)
    for href in hrefs:
        with rasterio.open(href) as tile:
            pixels = tile.read(list(indexes)).astype(np.float64)
            column = round((tile.transform.c - left) / PIXEL)
            row = round((top - tile.transform.f) / PIXEL)
        pixels[pixels == ENMAP_NODATA] = np.nan
        top_row, bottom_row = max(row, 0), min(row + tile.height, canvas.shape[1])
        left_column, right_column = max(column, 0), min(column + tile.width, canvas.shape[2])
        if top_row >= bottom_row or left_column >= right_column:
            continue
        canvas[:, top_row:bottom_row, left_column:right_column] = pixels[
            :, top_row - row : bottom_row - row, left_column - column : right_column - column
        ]
    return canvas


def corner_mean(canvas: np.ndarray) -> np.ndarray:
    """Mean of the finite values among the four canvas pixels around each chip pixel centre."""
    corners = np.stack(
        [canvas[:, :-1, :-1], canvas[:, 1:, :-1], canvas[:, :-1, 1:], canvas[:, 1:, 1:]]
    )
    finite = np.isfinite(corners)
    count = finite.sum(axis=0)
    total = np.where(finite, corners, 0.0).sum(axis=0)
    mean = np.full(total.shape, np.nan)
    np.divide(total, count, out=mean, where=count > 0)
    return mean


def write_tile(
    path: Path,
    values: np.ndarray,
    *,
    origin: tuple[float, float],
    nodata: float | None = None,
    crs: str = ENMAP_CRS,
    tags: list[dict[str, str]] | None = None,
) -> str:
    profile = {
        "driver": "GTiff",
        "count": values.shape[0],
        "height": values.shape[1],
        "width": values.shape[2],
        "dtype": values.dtype.name,
        "crs": crs,
        "transform": from_origin(origin[0], origin[1], PIXEL, PIXEL),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(values)
        for number, band in enumerate(tags or [], start=1):
            dataset.update_tags(number, **band)
    return str(path)


def enmap_style_tags(wavelengths: list[float]) -> list[dict[str, str]]:
    return [
        {"wavelength": str(w), "fwhm": "7.0", "bbl": "1", "wavelength_units": "Nanometers"}
        for w in wavelengths
    ]


# ----------------------------------------------------------------------------------------------
# Band metadata


def test_band_tags_micrometres_to_nanometres() -> None:
    tags = [
        {"wavelength": "0.41824", "fwhm": "0.00699561", "wavelength_units": "Micrometers"},
        {
            "wavelength": "2.44553",
            "fwhm": "0.0071581",
            "wavelength_units": "Micrometers",
            "bbl": "0",
        },
    ]

    bands = SpectralBands.from_band_tags(tags)

    assert bands.wavelength_nm == (418.24, 2445.53)
    assert bands.fwhm_nm == (6.99561, 7.1581)
    assert bands.good == (True, False)
    assert bands.kept_indexes() == (1,)


def test_band_tags_missing_wavelength_raises() -> None:
    with pytest.raises(ReadError, match=r"band 2 has no 'wavelength' tag"):
        SpectralBands.from_band_tags([{"wavelength": "500", "fwhm": "7"}, {"fwhm": "7"}])


def test_band_tags_invalid_bbl_raises() -> None:
    with pytest.raises(ReadError, match=r"band 1 has bbl='yes'; expected 1 \(good band\) or 0"):
        SpectralBands.from_band_tags([{"wavelength": "500", "fwhm": "7", "bbl": "yes"}])


def test_band_tags_unknown_unit_raises() -> None:
    with pytest.raises(ReadError, match=r"wavelength_units='Wavenumber'"):
        SpectralBands.from_band_tags(
            [{"wavelength": "500", "fwhm": "7", "wavelength_units": "Wavenumber"}]
        )


def test_stac_bands_match_band_tags() -> None:
    stac = [
        {"name": "b1", "center_wavelength": 0.41824, "full_width_half_max": 0.00699561},
        {"name": "b2", "eo:center_wavelength": 0.9, "eo:full_width_half_max": 0.01, "bbl": 0},
        {
            "name": "b3",
            "center_wavelength": 1.4,
            "full_width_half_max": 0.01,
            "sensorcube:bad": True,
        },
    ]
    tags = [
        {"wavelength": "418.24", "fwhm": "6.99561", "bbl": "1"},
        {"wavelength": "900", "fwhm": "10", "bbl": "0"},
        {"wavelength": "1400", "fwhm": "10", "bbl": "0"},
    ]

    from_stac = SpectralBands.from_stac_bands(stac)

    assert from_stac == SpectralBands.from_band_tags(tags)
    assert from_stac.good == (True, False, False)


def test_stac_bands_conflicting_flags_raise() -> None:
    band = {"center_wavelength": 0.5, "full_width_half_max": 0.01, "bbl": 1, "sensorcube:bad": True}

    with pytest.raises(CatalogError, match=r"band 1 has sensorcube:bad=True but bbl=1"):
        SpectralBands.from_stac_bands([band])


def test_stac_bands_missing_centre_raises() -> None:
    with pytest.raises(CatalogError, match=r"band 1 \('b1'\) has none of"):
        SpectralBands.from_stac_bands([{"name": "b1", "full_width_half_max": 0.01}])


def test_spectral_bands_unequal_lengths_raise() -> None:
    with pytest.raises(ReadError, match=r"2 wavelengths, 1 FWHM values and 2 good-band flags"):
        SpectralBands((500.0, 600.0), (7.0,), (True, True))


def test_kept_bands_drop_bad_bands() -> None:
    bands = SpectralBands((500.0, 600.0, 700.0), (7.0, 8.0, 9.0), (True, False, True))

    good_bands = bands.kept()

    assert bands.kept_indexes() == (1, 3)
    assert good_bands == SpectralBands((500.0, 700.0), (7.0, 9.0), (True, True))


def test_require_same_bands_names_wavelength() -> None:
    scene = SpectralBands((500.0, 600.0, 700.0), (7.0, 7.0, 7.0), (True, True, True))
    shifted = SpectralBands((500.0, 601.5, 700.0), (7.0, 7.0, 7.0), (True, True, True))
    shorter = SpectralBands((500.0, 600.0), (7.0, 7.0), (True, True))
    stac = [{"center_wavelength": w / 1000, "full_width_half_max": 0.007} for w in (500, 600, 700)]

    require_same_bands(scene, SpectralBands.from_stac_bands(stac), what="item A")
    with pytest.raises(
        ReadError, match=r"tile B has band 2 at 601.5 nm .* the reference has 600 nm"
    ):
        require_same_bands(scene, shifted, what="tile B")
    with pytest.raises(ReadError, match=r"tile C has 2 bands where the reference has 3; .* 700 nm"):
        require_same_bands(scene, shorter, what="tile C")


def test_read_scene_bands_rejects_other_tile(tmp_path: Path) -> None:
    values = np.ones((2, 4, 4), dtype=np.float32)
    first = write_tile(
        tmp_path / "a.tif", values, origin=(0.0, 120.0), tags=enmap_style_tags([500.0, 600.0])
    )
    second = write_tile(
        tmp_path / "b.tif", values, origin=(120.0, 120.0), tags=enmap_style_tags([500.0, 610.0])
    )

    with pytest.raises(
        ReadError, match=r"b\.tif' has band 2 at 610 nm .* the reference has 600 nm"
    ):
        read_scene_bands([first, second], gdal_options=DEFAULT_GDAL_OPTIONS)


# ----------------------------------------------------------------------------------------------
# Reflectance and mosaics of arrays


def test_to_reflectance_masks_without_clipping() -> None:
    values = np.array([[-32768, 0, 2500, -400, -600, 15000, 15100]], dtype=np.int16)

    reflectance = to_reflectance(values)

    assert reflectance.dtype == np.float32
    assert np.isnan(reflectance[0, 0])
    np.testing.assert_allclose(reflectance[0, 1:4], [0.0, 0.25, -0.04], rtol=1e-6)
    assert np.isnan(reflectance[0, 4]), "below -0.05 becomes NaN, not 0"
    assert reflectance[0, 5] == pytest.approx(1.5)
    assert np.isnan(reflectance[0, 6]), "above 1.5 becomes NaN, not 1.5"


def test_to_reflectance_custom_scale_and_nodata() -> None:
    values = np.array([0.0, 0.5, math.nan, 255.0], dtype=np.float32)

    reflectance = to_reflectance(values, scale=1.0, nodata=255.0)

    assert reflectance[0] == 0.0
    assert reflectance[1] == 0.5
    assert np.isnan(reflectance[2:]).all()


def test_to_reflectance_invalid_scale_raises() -> None:
    with pytest.raises(ConfigError, match=r"reflectance scale 0.0 is invalid"):
        to_reflectance(np.zeros(3), scale=0.0)


def test_mosaic_first_valid_prefers_first() -> None:
    first = np.array([[1.0, np.nan], [np.inf, np.nan]], dtype=np.float32)
    second = np.array([[2.0, 3.0], [4.0, np.nan]], dtype=np.float32)

    mosaic = mosaic_first_valid([first, second])

    np.testing.assert_array_equal(mosaic, [[1.0, 3.0], [4.0, np.nan]])
    assert np.isnan(first[0, 1]), "the input layers are not modified"


def test_mosaic_first_valid_shape_mismatch_raises() -> None:
    with pytest.raises(ReadError, match=r"layer 2 has shape \(3,\) where layer 1 has \(2,\)"):
        mosaic_first_valid([np.zeros(2), np.zeros(3)])
    with pytest.raises(ReadError, match="no layers"):
        mosaic_first_valid([])


# ----------------------------------------------------------------------------------------------
# Warps of synthetic tiles


def test_mosaic_first_tile_wins_overlap(tmp_path: Path) -> None:
    first_values = np.full((1, 4, 4), 1.0, dtype=np.float32)
    first_values[0, 0, 3] = -9999.0
    first = write_tile(tmp_path / "a.tif", first_values, origin=(0.0, 120.0), nodata=-9999.0)
    second = write_tile(
        tmp_path / "b.tif",
        np.full((1, 4, 4), 2.0, np.float32),
        origin=(60.0, 120.0),
        nodata=-9999.0,
    )

    mosaic = warp_mosaic_to_grid(
        [first, second],
        crs=ENMAP_CRS,
        transform=(PIXEL, 0.0, 0.0, 0.0, -PIXEL, 120.0),
        shape=(4, 6),
        resampling="nearest",
        indexes=[1],
        src_nodata=None,
        gdal_options=DEFAULT_GDAL_OPTIONS,
    )

    np.testing.assert_array_equal(mosaic[0, 1], [1, 1, 1, 1, 2, 2])
    assert mosaic[0, 0, 3] == 2.0, "the second tile shows where the first has nodata"


def test_mosaic_gap_between_tiles_is_nan(tmp_path: Path) -> None:
    values = np.full((1, 2, 2), 5.0, dtype=np.float32)
    first = write_tile(tmp_path / "a.tif", values, origin=(0.0, 60.0))
    second = write_tile(tmp_path / "b.tif", values, origin=(120.0, 60.0))

    mosaic = warp_mosaic_to_grid(
        [first, second],
        crs=ENMAP_CRS,
        transform=(PIXEL, 0.0, 0.0, 0.0, -PIXEL, 60.0),
        shape=(2, 6),
        resampling="nearest",
        indexes=[1],
        src_nodata=None,
        gdal_options=DEFAULT_GDAL_OPTIONS,
    )

    np.testing.assert_array_equal(mosaic[0, 0], [5, 5, np.nan, np.nan, 5, 5])


def test_mosaic_misaligned_tiles_raise(tmp_path: Path) -> None:
    values = np.ones((1, 2, 2), dtype=np.float32)
    first = write_tile(tmp_path / "a.tif", values, origin=(0.0, 60.0))
    shifted = write_tile(tmp_path / "b.tif", values, origin=(70.0, 60.0))
    other_crs = write_tile(tmp_path / "c.tif", values, origin=(60.0, 60.0), crs="EPSG:32632")
    options = {
        "crs": ENMAP_CRS,
        "transform": (PIXEL, 0.0, 0.0, 0.0, -PIXEL, 60.0),
        "shape": (2, 4),
        "resampling": "nearest",
        "indexes": [1],
        "src_nodata": None,
        "gdal_options": DEFAULT_GDAL_OPTIONS,
    }

    with pytest.raises(ReadError, match=r"b\.tif' starts 2\.3333 columns .* not a whole pixel"):
        warp_mosaic_to_grid([first, shifted], **options)  # type: ignore[arg-type]
    with pytest.raises(ReadError, match=r"c\.tif' \(EPSG:32632, 30 x 30\) is not on the grid"):
        warp_mosaic_to_grid([first, other_crs], **options)  # type: ignore[arg-type]


def test_warp_to_grid_invalid_requests_raise(tmp_path: Path) -> None:
    href = write_tile(tmp_path / "a.tif", np.ones((2, 2, 2), np.float32), origin=(0.0, 60.0))
    missing = str(tmp_path / "missing.tif")
    grid = (PIXEL, 0.0, 0.0, 0.0, -PIXEL, 60.0)
    gdal_order = (0.0, PIXEL, 0.0, 60.0, 0.0, -PIXEL)

    def warp(path: str, **changes: object) -> np.ndarray:
        options: dict[str, object] = {
            "crs": ENMAP_CRS,
            "transform": grid,
            "shape": (2, 2),
            "resampling": "bilinear",
            "indexes": [1],
            "src_nodata": None,
            "gdal_options": DEFAULT_GDAL_OPTIONS,
        }
        options.update(changes)
        return warp_to_grid(path, **options)  # type: ignore[arg-type]

    with pytest.raises(ReadError, match=r"opening '.*missing\.tif' failed"):
        warp(missing)
    with pytest.raises(
        ReadError, match=r"band index 3 is out of range for '.*a\.tif', which has 2"
    ):
        warp(href, indexes=[1, 3])
    with pytest.raises(ConfigError, match=r"unknown resampling 'bicubicspline'; use one of: "):
        warp(href, resampling="bicubicspline")
    with pytest.raises(ConfigError, match=r"not a north-up grid in affine order"):
        warp(href, transform=gdal_order)


# ----------------------------------------------------------------------------------------------
# Real EnMAP tiles


@pytest.fixture(scope="module")
def scene(shared_data: Path) -> tuple[list[str], SpectralBands]:
    hrefs = enmap_tiles(shared_data)
    return hrefs, read_scene_bands(hrefs, gdal_options=DEFAULT_GDAL_OPTIONS)


@pytest.mark.shared_data
def test_enmap_bands_parse_from_tags(scene: tuple[list[str], SpectralBands]) -> None:
    hrefs, bands = scene
    with rasterio.open(hrefs[0]) as tile:
        good_in_file = sum(tile.tags(number)["bbl"] == "1" for number in range(1, tile.count + 1))

    assert len(hrefs) == 18
    assert len(bands.wavelength_nm) == 224
    assert bands.wavelength_nm[0] == 418.24
    assert bands.fwhm_nm[0] == 6.99561
    assert bands.wavelength_nm[-1] == 2445.53
    assert len(bands.kept_indexes()) == good_in_file == 218
    assert 130 not in bands.kept_indexes()
    assert band_tags(hrefs[0], gdal_options=DEFAULT_GDAL_OPTIONS)[0]["wavelength"] == "418.24"
    assert dataset_tags(hrefs[0], gdal_options=DEFAULT_GDAL_OPTIONS)["start_time"] == (
        "2022-07-24T10:45:26"
    )


@pytest.mark.shared_data
def test_enmap_tile_grid_reads_exact(scene: tuple[list[str], SpectralBands]) -> None:
    hrefs, bands = scene
    every_band = SpectralBands(bands.wavelength_nm, bands.fwhm_nm, (True,) * len(bands.good))
    with rasterio.open(hrefs[0]) as tile:
        stored = tile.read()
        transform = tuple(tile.transform)[:6]

    chip = read_hsi_chip(
        [hrefs[0]], crs=ENMAP_CRS, transform=transform, shape=CHIP_SHAPE, bands=every_band
    )

    nodata = stored == ENMAP_NODATA
    assert nodata.any(), "the fixture has nodata in its bad bands"
    assert np.isnan(chip[nodata]).all()
    np.testing.assert_allclose(chip[~nodata], stored[~nodata] * np.float32(1e-4), rtol=1e-6)


@pytest.mark.shared_data
def test_enmap_reflectance_mostly_in_range(scene: tuple[list[str], SpectralBands]) -> None:
    hrefs, bands = scene

    chip = read_hsi_chip(
        hrefs,
        crs=ENMAP_CRS,
        transform=chip_transform(STRADDLE_ORIGIN),
        shape=CHIP_SHAPE,
        bands=bands,
    )

    assert chip.shape == (218, *CHIP_SHAPE)
    assert chip.dtype == np.float32
    assert np.isfinite(chip).all()
    assert np.mean((chip >= 0.0) & (chip <= 1.0)) > 0.99


@pytest.mark.shared_data
def test_enmap_chip_across_tiles_seamless(scene: tuple[list[str], SpectralBands]) -> None:
    hrefs, bands = scene
    canvas = source_canvas(hrefs, STRADDLE_ORIGIN, CHIP_SHAPE, bands.kept_indexes())
    expected = corner_mean(canvas) * 1e-4

    chip = read_hsi_chip(
        hrefs,
        crs=ENMAP_CRS,
        transform=chip_transform(STRADDLE_ORIGIN),
        shape=CHIP_SHAPE,
        bands=bands,
    )

    assert np.isfinite(expected).all(), "the chip lies inside the scene"
    assert not np.isnan(chip[:, :, BORDER_COLUMN]).any()
    assert not np.isnan(chip[:, BORDER_ROW, :]).any()
    np.testing.assert_allclose(chip, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.shared_data
def test_per_tile_warp_shows_seam(scene: tuple[list[str], SpectralBands]) -> None:
    """Warping tiles one by one and taking the first valid value leaves a seam.

    This checks that the comparison in the seamless test can detect a seam.
    """
    hrefs, _ = scene
    band = 50
    canvas = source_canvas(hrefs, STRADDLE_ORIGIN, CHIP_SHAPE, (band,))
    expected = corner_mean(canvas)[0]
    layers = [
        warp_to_grid(
            href,
            crs=ENMAP_CRS,
            transform=chip_transform(STRADDLE_ORIGIN),
            shape=CHIP_SHAPE,
            resampling="bilinear",
            indexes=[band],
            src_nodata=ENMAP_NODATA,
            gdal_options=DEFAULT_GDAL_OPTIONS,
        )[0]
        for href in hrefs
    ]

    per_tile = mosaic_first_valid(layers)

    error = np.abs(per_tile - expected)
    inside_tiles = np.ones(CHIP_SHAPE, dtype=bool)
    inside_tiles[BORDER_ROW, :] = False
    inside_tiles[:, BORDER_COLUMN] = False
    assert error[:, BORDER_COLUMN].max() > 10.0, "per-tile warps differ at the border (DN)"
    assert error[BORDER_ROW, :].max() > 10.0
    assert error[inside_tiles].max() < 0.01


@pytest.mark.shared_data
def test_enmap_chip_outside_scene_is_nan(scene: tuple[list[str], SpectralBands]) -> None:
    hrefs, bands = scene
    canvas = source_canvas(hrefs, OUTSIDE_ORIGIN, CHIP_SHAPE, bands.kept_indexes())
    expected = corner_mean(canvas) * 1e-4

    chip = read_hsi_chip(
        hrefs,
        crs=ENMAP_CRS,
        transform=chip_transform(OUTSIDE_ORIGIN),
        shape=CHIP_SHAPE,
        bands=bands,
    )

    assert np.isnan(chip[:, :10, :]).all()
    assert np.isnan(chip[:, :, :10]).all()
    assert np.isfinite(chip[:, 10:, 10:]).all()
    np.testing.assert_array_equal(np.isnan(chip), np.isnan(expected))
    np.testing.assert_allclose(chip, expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# EMIT geometry lookup tables


def emit_swath() -> np.ndarray:
    """A (3 bands, 20 rows, 15 columns) swath whose value encodes band, row and column."""
    band, row, column = np.meshgrid(np.arange(3), np.arange(20), np.arange(15), indexing="ij")
    return (band * 10000 + row * 100 + column).astype(np.float32)


def rotated_glt() -> tuple[np.ndarray, np.ndarray]:
    """A GLT on a (15, 20) grid that rotates the swath by 90 degrees, one-based.

    Output pixel (i, j) takes swath row j and column 14 - i.
    """
    i, j = np.meshgrid(np.arange(15), np.arange(20), indexing="ij")
    glt_x = (14 - i + 1).astype(np.int32)
    glt_y = (j + 1).astype(np.int32)
    return glt_x, glt_y


def test_glt_places_pixels_per_table() -> None:
    swath = emit_swath()
    glt_x, glt_y = rotated_glt()
    glt_x[0, 0] = 0
    glt_y[5, 7] = 0
    glt_x[3, 4], glt_y[3, 4] = -2, -9

    output = orthorectify_glt(swath, glt_x, glt_y)

    assert output.shape == (3, 15, 20)
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output[:, 2, 6], swath[:, 6, 12])
    np.testing.assert_array_equal(output[:, 14, 19], swath[:, 19, 0])
    np.testing.assert_array_equal(output[:, 3, 4], swath[:, 8, 1])
    assert np.isnan(output[:, 0, 0]).all()
    assert np.isnan(output[:, 5, 7]).all()
    assert np.isfinite(output).sum() == 3 * (15 * 20 - 2)


def test_glt_index_beyond_swath_raises() -> None:
    swath = emit_swath()
    glt_x, glt_y = rotated_glt()
    glt_x[4, 2] = 16
    glt_y_bad = glt_y.copy()
    glt_y_bad[1, 1] = -21

    with pytest.raises(ReadError, match=r"glt_x contains 16 at output row 4, column 2, .* 15 col"):
        orthorectify_glt(swath, glt_x, glt_y)
    with pytest.raises(
        ReadError, match=r"glt_y contains -21 at output row 1, column 1, .* 20 rows"
    ):
        orthorectify_glt(swath, rotated_glt()[0], glt_y_bad)


def test_glt_invalid_tables_raise() -> None:
    swath = emit_swath()
    glt_x, glt_y = rotated_glt()

    with pytest.raises(ReadError, match=r"glt_x has dtype float64; GLT indexes must be integers"):
        orthorectify_glt(swath, glt_x.astype(np.float64), glt_y)
    with pytest.raises(ReadError, match=r"glt_x has shape \(15, 20\) and glt_y \(15, 19\)"):
        orthorectify_glt(swath, glt_x, glt_y[:, :19])
    with pytest.raises(ReadError, match=r"swath has shape \(20, 15\)"):
        orthorectify_glt(swath[0], glt_x, glt_y)
