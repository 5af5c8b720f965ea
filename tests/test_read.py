"""Reads through odc-stac and GDAL on small seeded synthetic COGs with known expected values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
import shapely.geometry
from rasterio.transform import from_origin

from pipeline.config import BandSpec, MaskSpec, ModalitySource, S1Radiometry, S2Radiometry
from pipeline.gdal_io import DEFAULT_GDAL_OPTIONS
from pipeline.grid import Chip, project_geometry
from pipeline.read import read_s1, read_s2

EPSG = 32633
ORIGIN_X, ORIGIN_Y = 400_000.0, 5_000_640.0


def write_cog(path: Path, values: np.ndarray, resolution: float, nodata: float | None) -> None:
    profile = {
        "driver": "COG",
        "height": values.shape[0],
        "width": values.shape[1],
        "count": 1,
        "dtype": values.dtype.name,
        "crs": f"EPSG:{EPSG}",
        "transform": from_origin(ORIGIN_X, ORIGIN_Y, resolution, resolution),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(values, 1)


def make_item(
    assets: dict[str, tuple[Path, np.ndarray, float, dict[str, Any]]], properties: dict[str, Any]
) -> dict[str, Any]:
    item_assets = {}
    for key, (path, values, resolution, raster_band) in assets.items():
        item_assets[key] = {
            "href": str(path),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "proj:shape": list(values.shape),
            "proj:transform": [resolution, 0.0, ORIGIN_X, 0.0, -resolution, ORIGIN_Y],
            "raster:bands": [raster_band],
        }
    footprint = project_geometry(
        shapely.box(ORIGIN_X, ORIGIN_Y - 640, ORIGIN_X + 640, ORIGIN_Y),
        src_epsg=EPSG,
        dst_epsg=4326,
    )
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "synthetic",
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {
            "datetime": "2023-06-01T10:00:00Z",
            "proj:code": f"EPSG:{EPSG}",
            **properties,
        },
        "assets": item_assets,
        "links": [],
    }


def s1_source(units: str) -> ModalitySource:
    return ModalitySource(
        modality="s1",
        collection="synthetic-s1",
        bands=(BandSpec("VV", "VV", "average"),),
        nodata=None,
        s1=S1Radiometry(units=units, quantity="sigma0", product="GRD", terrain_flattening=False),
    )


def s2_source() -> ModalitySource:
    return ModalitySource(
        modality="s2",
        collection="synthetic-s2",
        bands=(BandSpec("B04", "B04", "bilinear"), BandSpec("B08", "B08", "bilinear")),
        nodata=0,
        s2=S2Radiometry(scale=0.0001, offset="baseline"),
        mask=MaskSpec(kind="nodata"),
    )


def test_db_source_is_averaged_in_linear_power(tmp_path: Path) -> None:
    # A 10 m checkerboard of 0 dB and -10 dB read onto a 20 m chip: each output pixel averages
    # two pixels of each, so linear power is (1 + 0.1) / 2 = 0.55, not 10^(-5/10) = 0.316.
    checker = np.indices((64, 64)).sum(axis=0) % 2
    db = np.where(checker == 0, 0.0, -10.0).astype(np.float32)
    write_cog(tmp_path / "vv.tif", db, 10.0, None)
    item = make_item({"VV": (tmp_path / "vv.tif", db, 10.0, {"unit": "dB"})}, {})
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 16, 20.0)
    result = read_s1(item, s1_source("dB"), ("VV",), chip.geobox(), DEFAULT_GDAL_OPTIONS)
    assert result.values.shape == (1, 16, 16)
    np.testing.assert_allclose(result.values, 0.55, rtol=1e-6)
    assert result.usable_fraction == 1.0
    assert "before resampling" in result.processing["conversion"]


def test_aligned_db_chip_equals_source_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    db = rng.uniform(-25, 5, size=(64, 64)).astype(np.float32)
    write_cog(tmp_path / "vv.tif", db, 10.0, None)
    item = make_item({"VV": (tmp_path / "vv.tif", db, 10.0, {"unit": "dB"})}, {})
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 32, 10.0)
    result = read_s1(item, s1_source("dB"), ("VV",), chip.geobox(), DEFAULT_GDAL_OPTIONS)
    row0 = int((ORIGIN_Y - chip.bounds[3]) / 10)
    col0 = int((chip.bounds[0] - ORIGIN_X) / 10)
    expected = np.power(10.0, db[row0 : row0 + 32, col0 : col0 + 32].astype(np.float64) / 10)
    np.testing.assert_allclose(result.values[0], expected, rtol=1e-6)


def test_linear_source_is_not_converted(tmp_path: Path) -> None:
    linear = np.full((64, 64), 0.25, dtype=np.float32)
    write_cog(tmp_path / "vv.tif", linear, 10.0, None)
    item = make_item({"VV": (tmp_path / "vv.tif", linear, 10.0, {})}, {})
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 32, 10.0)
    result = read_s1(item, s1_source("linear"), ("VV",), chip.geobox(), DEFAULT_GDAL_OPTIONS)
    np.testing.assert_allclose(result.values, 0.25)


@pytest.mark.parametrize(
    ("baseline", "raster_band", "expected"),
    [
        ("02.14", {"nodata": 0}, [np.nan, 0.1, 0.2]),
        ("04.00", {"nodata": 0}, [np.nan, 0.0, 0.1]),
        ("05.09", {"nodata": 0, "scale": 0.0001, "offset": -0.1}, [np.nan, 0.0, 0.1]),
    ],
)
def test_s2_offset_applied_once(
    tmp_path: Path, baseline: str, raster_band: dict[str, Any], expected: list[float]
) -> None:
    dn = np.tile(np.array([0, 1000, 2000], dtype=np.uint16), (32, 1)).repeat(11, axis=1)[:, :32]
    dn = np.vstack([dn, dn])
    write_cog(tmp_path / "b04.tif", dn, 10.0, 0)
    write_cog(tmp_path / "b08.tif", dn, 10.0, 0)
    item = make_item(
        {
            "B04": (tmp_path / "b04.tif", dn, 10.0, raster_band),
            "B08": (tmp_path / "b08.tif", dn, 10.0, raster_band),
        },
        {"s2:processing_baseline": baseline},
    )
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 32, 10.0)
    result = read_s2(item, s2_source(), ("B04", "B08"), chip.geobox(), DEFAULT_GDAL_OPTIONS)
    top = int((ORIGIN_Y - chip.bounds[3]) / 10)
    row = result.values[0, 0]
    source_row = dn[top]
    for value, code in zip(row, source_row, strict=True):
        want = expected[[0, 1000, 2000].index(int(code))]
        if np.isnan(want):
            assert np.isnan(value)
        else:
            assert value == pytest.approx(want, abs=1e-7)
    assert result.usable_fraction == pytest.approx(np.mean(dn[top : top + 32] != 0))


def test_scl_mask_sets_clear_fraction(tmp_path: Path) -> None:
    dn = np.full((64, 64), 2000, dtype=np.uint16)
    scl = np.full((64, 64), 4, dtype=np.uint8)  # 4: vegetation
    scl[:, 16:] = 9  # 9: cloud, high probability
    write_cog(tmp_path / "b04.tif", dn, 10.0, 0)
    write_cog(tmp_path / "b08.tif", dn, 10.0, 0)
    write_cog(tmp_path / "scl.tif", scl, 10.0, 0)
    item = make_item(
        {
            "B04": (tmp_path / "b04.tif", dn, 10.0, {"nodata": 0}),
            "B08": (tmp_path / "b08.tif", dn, 10.0, {"nodata": 0}),
            "SCL": (tmp_path / "scl.tif", scl, 10.0, {"nodata": 0}),
        },
        {"s2:processing_baseline": "02.14"},
    )
    source = ModalitySource(
        modality="s2",
        collection="synthetic-s2",
        bands=(BandSpec("B04", "B04", "bilinear"), BandSpec("B08", "B08", "bilinear")),
        nodata=0,
        s2=S2Radiometry(scale=0.0001, offset="baseline"),
        mask=MaskSpec(kind="scl", asset="SCL", clear_classes=(4, 5, 6, 7, 11)),
    )
    # The chip covers raster columns 0-31, and columns 16 and up are cloud.
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 32, 10.0)
    result = read_s2(item, source, ("B04", "B08"), chip.geobox(), DEFAULT_GDAL_OPTIONS)
    assert result.usable_fraction == 0.5
    assert np.isnan(result.values[:, :, 16:]).all()
    np.testing.assert_allclose(result.values[:, :, :16], 0.2, rtol=1e-6)
    assert result.processing["mask"].startswith("SCL clear classes")

    del item["assets"]["SCL"]
    without_scl = read_s2(item, source, ("B04", "B08"), chip.geobox(), DEFAULT_GDAL_OPTIONS)
    assert without_scl.usable_fraction == 1.0
    assert without_scl.processing["mask"] == "nodata"
