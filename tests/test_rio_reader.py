"""Chip reads through ChipRioDriver equal odc.stac.load with odc-loader's own driver, bit for bit.

Each case writes real COGs, describes them as a STAC item and reads one band onto a chip
GeoBox both ways. The cases: window reads, reprojection from another CRS, coarser and finer
sources, nearest resampling with a sub-pixel shift, partial and no overlap, nodata of both
kinds, and a file replaced at the same path while its dataset is open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import odc.stac
import pystac
import pytest
import rasterio
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.loader import RioDriver

from pipeline.errors import ReadError
from pipeline.read import _read_bands
from pipeline.rio_reader import local_path

UTM = "EPSG:32632"
ORIGIN = (500_000.0, 5_000_000.0)
OPTIONS: dict[str, str | int | bool] = {"GDAL_CACHEMAX": 64 * 2**20}


def write_cog(
    path: Path, values: np.ndarray, transform: Affine, crs: str, nodata: float | None
) -> None:
    profile = {
        "driver": "COG",
        "height": values.shape[0],
        "width": values.shape[1],
        "count": 1,
        "dtype": values.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "overview_resampling": "average",
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(values, 1)


def item_for(
    path: Path, values: np.ndarray, transform: Affine, crs: str, nodata: Any
) -> pystac.Item:
    band: dict[str, Any] = {"data_type": values.dtype.name}
    if nodata is not None:
        band["nodata"] = "nan" if isinstance(nodata, float) and np.isnan(nodata) else nodata
    data = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": path.stem,
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        "bbox": [0, 0, 1, 1],
        "properties": {"datetime": "2024-06-01T10:00:00Z", "proj:code": crs},
        "assets": {
            "band": {
                "href": str(path),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "proj:shape": list(values.shape),
                "proj:transform": list(transform)[:6],
                "raster:bands": [band],
            }
        },
        "links": [],
    }
    return pystac.Item.from_dict(data)


def chip_geobox(
    offset_px: tuple[float, float] = (0.0, 0.0), size: int = 64, resolution: float = 10.0
) -> GeoBox:
    x = ORIGIN[0] + 200.0 + offset_px[0] * resolution
    y = ORIGIN[1] - 200.0 - offset_px[1] * resolution
    return GeoBox((size, size), Affine(resolution, 0, x, 0, -resolution, y), UTM)


def compare(item: pystac.Item, geobox: GeoBox, resampling: str, nodata: float | None) -> np.ndarray:
    """Read the band both ways, assert equality and return the values."""
    ours = _read_bands(item, ["band"], geobox, {"band": resampling}, OPTIONS, nodata)[0]
    loaded = odc.stac.load(
        [item],
        bands=["band"],
        geobox=geobox,
        resampling={"band": resampling},
        dtype="float32",
        chunks=None,
        driver=RioDriver(),
    )
    theirs = loaded["band"].values[0].astype(np.float32)
    if nodata is not None and not np.isnan(nodata):
        theirs[theirs == nodata] = np.nan
    np.testing.assert_array_equal(ours, theirs)
    return ours


def utm_scene(
    tmp_path: Path, name: str, resolution: float, dtype: str, nodata: Any
) -> tuple[pystac.Item, np.ndarray]:
    size = int(1280 / resolution)
    generator = np.random.default_rng(size)
    values = generator.integers(1, 5000, (size, size)).astype(dtype)
    if nodata is not None:
        values[:5, :7] = nodata
    transform = Affine(resolution, 0, ORIGIN[0], 0, -resolution, ORIGIN[1])
    path = tmp_path / f"{name}.tif"
    write_cog(path, values, transform, UTM, nodata)
    return item_for(path, values, transform, UTM, nodata), values


@pytest.mark.parametrize(
    ("resolution", "resampling"),
    [
        (10.0, "bilinear"),
        (20.0, "bilinear"),
        (60.0, "average"),
        (5.0, "average"),
        (20.0, "nearest"),
    ],
)
def test_utm_source_equals_odc_stac(tmp_path: Path, resolution: float, resampling: str) -> None:
    item, _ = utm_scene(tmp_path, f"utm{resolution:g}", resolution, "uint16", 0)
    values = compare(item, chip_geobox(), resampling, 0.0)
    assert np.isfinite(values).any()


def test_window_read_is_the_file(tmp_path: Path) -> None:
    item, stored = utm_scene(tmp_path, "paste", 10.0, "uint16", 0)
    values = compare(item, chip_geobox(), "bilinear", 0.0)
    window = stored[20:84, 20:84].astype(np.float32)
    window[window == 0] = np.nan
    np.testing.assert_array_equal(values, window)


def test_nearest_with_subpixel_shift(tmp_path: Path) -> None:
    item, _ = utm_scene(tmp_path, "shift", 10.0, "uint16", 0)
    compare(item, chip_geobox((0.6, 0.7)), "nearest", 0.0)
    compare(item, chip_geobox((0.4, 0.3)), "bilinear", 0.0)


def test_partial_and_no_overlap(tmp_path: Path) -> None:
    item, _ = utm_scene(tmp_path, "edge", 10.0, "uint16", 0)
    partial = compare(item, chip_geobox((-40.0, -30.0)), "bilinear", 0.0)
    assert np.isnan(partial).any()
    assert np.isfinite(partial).any()
    outside = compare(item, chip_geobox((500.0, 500.0)), "bilinear", 0.0)
    assert np.isnan(outside).all()


def test_geographic_float_source_with_nan(tmp_path: Path) -> None:
    generator = np.random.default_rng(3)
    values = generator.random((400, 300)).astype(np.float32)
    values[100:120, 50:90] = np.nan
    transform = Affine(0.00012, 0, 9.0, 0, -0.00009, 45.15)
    path = tmp_path / "s1.tif"
    write_cog(path, values, transform, "EPSG:4326", float("nan"))
    item = item_for(path, values, transform, "EPSG:4326", float("nan"))
    for resampling in ("bilinear", "average", "nearest"):
        result = compare(item, chip_geobox(), resampling, None)
        assert np.isfinite(result).any()


def test_replaced_file_read_again(tmp_path: Path) -> None:
    item, stored = utm_scene(tmp_path, "replaced", 10.0, "uint16", None)
    first = compare(item, chip_geobox(), "bilinear", None)
    path = tmp_path / "replaced.tif"
    transform = Affine(10.0, 0, ORIGIN[0], 0, -10.0, ORIGIN[1])
    write_cog(path, (stored + 1).astype("uint16"), transform, UTM, None)
    second = compare(item, chip_geobox(), "bilinear", None)
    np.testing.assert_array_equal(second, first + 1)


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("/data/a.tif", "/data/a.tif"),
        ("relative/a.tif", "relative/a.tif"),
        ("file:///data/a.tif", "/data/a.tif"),
        ("http://127.0.0.1:8000/a.tif", None),
        ("s3://bucket/a.tif", None),
        ("/vsicurl/http://127.0.0.1:8000/a.tif", None),
        ("/vsizip//data/a.zip/a.tif", None),
    ],
)
def test_local_path(href: str, expected: str | None) -> None:
    assert local_path(href) == expected


def test_missing_asset_rejected(tmp_path: Path) -> None:
    item, _ = utm_scene(tmp_path, "assets", 10.0, "uint16", 0)
    with pytest.raises(
        ReadError, match=r"item 'assets' has no band for assets \['B99'\]: .*check the band assets"
    ):
        _read_bands(item, ["B99"], chip_geobox(), {"B99": "bilinear"}, OPTIONS, 0.0)
