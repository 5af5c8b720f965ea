"""Very-high-resolution images on a lattice nested in the base one: real NAIP in NAD83 UTM.

The two NAIP images of the fixture (2018-07-16 and 2019-09-04, 5 m, EPSG:26914) are placed on a
5 m lattice inside 10 m chips in the WGS 84 UTM zone of each chip (EPSG:32614), so every chip of
32 base pixels contains 64 x 64 image pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from pyproj import Transformer
from scipy import ndimage

from pipeline.coregister import measure_offset
from pipeline.store import open_chip_table
from tests.test_modalities import box, region, run_cli, write_yaml

pytestmark = pytest.mark.shared_data

NAIP_2018 = "m_4709963_se_14_1_20180716.tif"


def naip_catalog(path: Path, folder: Path, resampling: str) -> Path:
    bands = {
        name: {"asset": "image", "index": index, "resampling": resampling}
        for index, name in enumerate(("red", "green", "blue", "nir"), 1)
    }
    return write_yaml(
        path,
        {
            "name": path.stem,
            "source": {"kind": "raster-files"},
            "licence": "NAIP imagery: public domain (USDA); opengeos/data, MIT",
            "modalities": {
                "vhr": {
                    "collection": "naip",
                    "files": str(folder / "*.tif"),
                    "datetime_pattern": r"_(\d{8})\.tif$",
                    "nodata": 0,
                    "radiometry": {"units": "dn", "scale": 1},
                    "bands": bands,
                }
            },
        },
    )


def naip_run(
    workdir: Path, folder: Path, *, name: str, time: dict[str, str], resampling: str
) -> Path:
    naip_catalog(workdir / "catalogs/naip.yaml", folder, resampling)
    region(
        workdir / f"splits/{name}/region.yaml",
        aoi=box(-99.17, 47.015, -99.15, 47.025),
        time=time,
        grid={"chip_size": 32, "resolution": 10, "coverage": "within"},
        modalities={
            "vhr": {
                "catalog": "naip",
                "bands": ["red", "green", "blue", "nir"],
                "resolution": 5,
            }
        },
    )
    result = run_cli(workdir, "run", name, "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir / f"cubes/{name}.zarr"


@pytest.fixture(scope="module")
def naip_stores(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    workdir = tmp_path_factory.mktemp("naip")
    folder = shared_data / "naip-north-dakota"
    return {
        "2018": naip_run(
            workdir,
            folder,
            name="naip-2018",
            time={"start": "2018-07-01", "end": "2018-07-31"},
            resampling="bilinear",
        ),
        "2019": naip_run(
            workdir,
            folder,
            name="naip-2019",
            time={"start": "2019-09-01", "end": "2019-09-30"},
            resampling="bilinear",
        ),
    }


def test_vhr_chips_are_on_the_nested_5m_lattice(naip_stores: dict[str, Path]) -> None:
    dataset = xr.open_zarr(naip_stores["2018"])
    vhr = dataset["vhr"]
    assert vhr.dims == ("chip", "vhr_band", "vhr_y", "vhr_x")
    assert vhr.shape[1:] == (4, 64, 64)
    assert vhr.encoding["chunks"] == (1, 4, 64, 64)
    assert vhr.attrs["units"] == "DN"
    assert vhr.attrs["pixel_upsample"] == 2
    assert set(dataset["chip_crs"].values) == {"EPSG:32614"}
    assert np.isfinite(vhr.values).all()
    table = open_chip_table(naip_stores["2018"])
    assert set(table["status"]) == {"ok"}
    assert set(table["items.vhr.id"]) == {"m_4709963_se_14_1_20180716"}
    assert table["processing.vhr.transformation"].str.contains("EPSG:26914 to EPSG:32614").all()


def test_two_dates_pair_as_a_time_series(naip_stores: dict[str, Path]) -> None:
    """Each date's region contains the same chips on the same grid, a year apart."""
    first = open_chip_table(naip_stores["2018"])
    second = open_chip_table(naip_stores["2019"])
    assert list(first.index) == list(second.index)
    assert set(second["items.vhr.id"]) == {"m_4709963_se_14_1_20190904"}
    assert second["time_gap_days.vhr"].max() < 30
    before = xr.open_zarr(naip_stores["2018"])
    after = xr.open_zarr(naip_stores["2019"])
    np.testing.assert_array_equal(before["chip_transform"].values, after["chip_transform"].values)
    # The same ground in two surveys: the red bands correlate, the values are not equal.
    red_before = before["vhr"].values[:, 0].ravel()
    red_after = after["vhr"].values[:, 0].ravel()
    assert np.corrcoef(red_before, red_after)[0, 1] > 0.3
    assert not np.array_equal(red_before, red_after)


def proj_resampled(source_path: Path, transform: Any, shape: tuple[int, int]) -> np.ndarray:
    """Band 1 of the source at the chip's pixel centres, placed by a direct PROJ transformation."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs = transform[2] + (cols + 0.5) * transform[0]
    ys = transform[5] + (rows + 0.5) * transform[4]
    to_source = Transformer.from_crs("EPSG:32614", "EPSG:26914", always_xy=True)
    source_x, source_y = to_source.transform(xs, ys)
    with rasterio.open(source_path) as dataset:
        red = dataset.read(1).astype(np.float64)
        inverse = ~dataset.transform
    col_px, row_px = inverse * (source_x, source_y)
    # map_coordinates indexes pixel centres, which sit at half-pixel positions of the affine.
    return ndimage.map_coordinates(red, [row_px - 0.5, col_px - 0.5], order=1)


def test_vhr_pixels_agree_with_direct_proj_placement(
    naip_stores: dict[str, Path], shared_data: Path
) -> None:
    """A chip's pixels sit where pyproj puts them, within 0.1 m (0.02 of a 5 m pixel).

    PROJ's default transformation between NAD83 and WGS 84 without grid files is EPSG:1188
    ("NAD83 to WGS 84 (1)"), a null shift, so this checks the placement through PROJ rather
    than the size of the datum shift.
    """
    dataset = xr.open_zarr(naip_stores["2018"])
    for position in range(0, dataset.sizes["chip"], 5):
        transform = dataset["chip_transform"].values[position] / np.array([2, 1, 1, 1, 2, 1])
        stored = dataset["vhr"].values[position, 0]
        expected = proj_resampled(
            shared_data / "naip-north-dakota" / NAIP_2018, transform, (64, 64)
        )
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(stored[inner] - expected[inner]).max() < 0.5
        offset = measure_offset(expected.astype(np.float32), stored)
        assert abs(offset.dy_px) * 5.0 < 0.1
        assert abs(offset.dx_px) * 5.0 < 0.1


def test_vhr_resolution_that_does_not_nest_is_rejected(tmp_path: Path) -> None:
    from pipeline.config import load_region
    from pipeline.errors import ConfigError

    path = region(
        tmp_path / "splits/odd/region.yaml",
        aoi=box(-99.17, 47.015, -99.15, 47.025),
        grid={"chip_size": 32, "resolution": 10},
        modalities={"vhr": {"catalog": "naip", "bands": ["red"], "resolution": 3}},
    )
    with pytest.raises(ConfigError, match=r"modalities\.vhr\.resolution 3 m does not nest"):
        load_region(path)
