"""Scenario runs of the elevation, coherence and hyperspectral modalities on real rasters.

The real fixtures of these modalities do not overlap Sentinel-1 or Sentinel-2 data. So each
scenario is a region that requests only the modalities its folder contains: the Copernicus DEM of Los Angeles
(dem, slope, aspect), PyRate's Mexico City coherence pairs with their DEM, and the EnMAP tiles of
Potsdam. Each runs `sensorcube run` in a real process with a Dask LocalCluster, so the local
raster catalog, the plan, the chip tasks, the store, freeze and verify all take part.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.transform
import rasterio.warp
import xarray as xr
import yaml
from odc.geo.geobox import GeoBox
from scipy import ndimage

from pipeline.coherence import estimate_coherence, expected_estimate
from pipeline.config import load_catalog
from pipeline.errors import CatalogError
from pipeline.local_catalog import raster_item
from pipeline.read import read_plane
from pipeline.store import open_chip_table

pytestmark = pytest.mark.shared_data

SENSORCUBE = str(Path(sys.executable).parent / "sensorcube")


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SENSORCUBE, *args],
        cwd=cwd,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def box(west: float, south: float, east: float, north: float) -> dict[str, Any]:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dem_catalog(path: Path, files: str, *, datetime: str | None, nodata: float | None) -> Path:
    dem: dict[str, Any] = {
        "collection": "cop-dem-glo-30",
        "files": files,
        "nodata": nodata,
        "radiometry": {"units": "m", "vertical_datum": "EGM2008"},
        "bands": {"dem": {"asset": "data", "resampling": "bilinear"}},
    }
    if datetime:
        dem["datetime"] = datetime
    return write_yaml(
        path,
        {
            "name": path.stem,
            "source": {"kind": "raster-files"},
            "licence": "Copernicus DEM GLO-30 licence; test fixture",
            "modalities": {"dem": dem},
        },
    )


def region(path: Path, **fields: Any) -> Path:
    data = {
        "name": path.parent.name,
        "time": {"start": "2018-03-01", "end": "2018-03-31"},
        "split": {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "block_size": 2},
        **fields,
    }
    return write_yaml(path, data)


# ----------------------------------------------------------------------------------------------
# Elevation: Copernicus DEM GLO-30 over Los Angeles


@pytest.fixture(scope="module")
def la_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("la")
    dem_catalog(
        workdir / "catalogs/la-dem.yaml",
        str(shared_data / "cop-dem-los-angeles/los_angeles_dem_geoid.tif"),
        datetime="2021-04-22",
        nodata=None,
    )
    region(
        workdir / "splits/la/region.yaml",
        aoi=box(-118.03, 33.97, -117.99, 34.01),
        grid={"chip_size": 32, "resolution": 30, "coverage": "within"},
        modalities={"dem": {"catalog": "la-dem"}},
        derived=["slope", "aspect"],
    )
    result = run_cli(workdir, "run", "la", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


def test_dem_run_writes_heights_slope_and_aspect(la_run: Path) -> None:
    dataset = xr.open_zarr(la_run / "cubes/la.zarr")
    assert set(dataset.data_vars) >= {"dem", "slope", "aspect"}
    assert dataset["dem"].attrs["units"] == "m"
    assert dataset["slope"].attrs["units"] == "degree"
    heights = dataset["dem"].values
    assert np.isfinite(heights).all()
    # The fixture spans 41..422 m.
    assert np.nanmin(heights) > 30
    assert np.nanmax(heights) < 450
    slope = dataset["slope"].values
    assert np.isfinite(slope).all()  # the read margin gives edge pixels their neighbours
    assert slope.min() >= 0
    assert slope.max() < 90
    table = open_chip_table(la_run / "cubes/la.zarr")
    assert set(table["status"]) == {"ok"}
    assert set(table["processing.dem.vertical_datum"]) == {"EGM2008"}
    assert set(table["items.dem.id"]) == {"los_angeles_dem_geoid"}


def test_dem_heights_match_the_source_at_chip_pixels(la_run: Path, shared_data: Path) -> None:
    """A chip pixel's height equals the source sampled at its centre, within bilinear error."""
    dataset = xr.open_zarr(la_run / "cubes/la.zarr")
    transform = dataset["chip_transform"].values[0]
    crs = str(dataset["chip_crs"].values[0])
    rows, cols = np.meshgrid(np.arange(0, 32, 5), np.arange(0, 32, 5), indexing="ij")
    xs = transform[2] + (cols.ravel() + 0.5) * transform[0]
    ys = transform[5] + (rows.ravel() + 0.5) * transform[4]
    lons, lats = rasterio.warp.transform(crs, "EPSG:4326", xs, ys)
    with rasterio.open(shared_data / "cop-dem-los-angeles/los_angeles_dem_geoid.tif") as source:
        sampled = np.array([value[0] for value in source.sample(zip(lons, lats, strict=True))])
    stored = dataset["dem"].values[0][rows.ravel(), cols.ravel()]
    # Nearest sampling of a 1 arc-second (about 30 m) grid against bilinear: a few metres.
    assert np.abs(stored - sampled).max() < 6.0
    assert abs(float(np.mean(stored - sampled))) < 1.0


def test_pixel_is_point_dem_centres(shared_data: Path) -> None:
    """Reading onto the source's own grid returns the source values unchanged.

    The fixture is tagged AREA_OR_POINT=Point with its tie point at -118.05, 34.05. GDAL puts
    pixel centres on the tie points; a reader that added a half-pixel shift would interpolate
    between neighbours here instead.
    """
    path = shared_data / "cop-dem-los-angeles/los_angeles_dem_geoid.tif"
    catalog = dem_catalog(
        Path(os.environ["SENSORCUBE_CACHE"]) / "point-catalog.yaml",
        str(path),
        datetime="2021-04-22",
        nodata=None,
    )
    source = load_catalog(catalog).source("dem")
    item = raster_item(path, source)
    transform = item["assets"]["data"]["proj:transform"]
    assert math.isclose(transform[2] + transform[0] / 2, -118.05, abs_tol=1e-12)
    with rasterio.open(path) as dataset:
        truth = dataset.read(1)
        geobox = GeoBox((40, 50), dataset.transform, "EPSG:4326")[100:140, 200:250]
    values = read_plane(item, source, geobox, {})
    np.testing.assert_allclose(values, truth[100:140, 200:250], rtol=0, atol=1e-3)


def test_undated_raster_without_datetime_key_is_rejected(shared_data: Path, tmp_path: Path) -> None:
    catalog = dem_catalog(
        tmp_path / "undated.yaml",
        str(shared_data / "cop-dem-los-angeles/los_angeles_dem_geoid.tif"),
        datetime=None,
        nodata=None,
    )
    source = load_catalog(catalog).source("dem")
    with pytest.raises(CatalogError, match=r"set modalities\.dem\.datetime in the catalog YAML"):
        raster_item(shared_data / "cop-dem-los-angeles/los_angeles_dem_geoid.tif", source)


# ----------------------------------------------------------------------------------------------
# Coherence and DEM: PyRate's Mexico City pairs


@pytest.fixture(scope="module")
def mexico_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("mexico")
    folder = shared_data / "pyrate-cropA"
    dem_catalog(
        workdir / "catalogs/cropa-dem.yaml",
        str(folder / "cropA_T005A_dem.tif"),
        datetime="2018-01-01",
        nodata=0,
    )
    write_yaml(
        workdir / "catalogs/cropa-coherence.yaml",
        {
            "name": "cropa-coherence",
            "source": {"kind": "raster-files"},
            "licence": "PyRate test data, Apache-2.0; contains Copernicus Sentinel data 2018",
            "modalities": {
                "coherence": {
                    "collection": "pyrate-coherence",
                    "files": str(folder / "cropA_*_cc.tif"),
                    "nodata": 0,
                    "radiometry": {"kind": "product"},
                    "bands": {"coherence": {"asset": "data", "resampling": "bilinear"}},
                }
            },
        },
    )
    region(
        workdir / "splits/mexico/region.yaml",
        aoi=box(-99.15, 19.39, -99.11, 19.43),
        grid={"chip_size": 32, "resolution": 30, "coverage": "within"},
        modalities={
            "dem": {"catalog": "cropa-dem"},
            "coherence": {"catalog": "cropa-coherence", "max_time_gap_days": 12},
        },
        derived=["slope"],
    )
    result = run_cli(workdir, "run", "mexico", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


def test_coherence_pair_brackets_the_reference_time(mexico_run: Path) -> None:
    table = open_chip_table(mexico_run / "cubes/mexico.zarr")
    assert set(table["status"]) == {"ok"}
    # The middle of March 2018 lies between the acquisitions of 7 and 19 March, the shortest
    # of the pairs that bracket it.
    assert set(table["items.coherence.id"]) == {"cropA_20180307-20180319_VV_8rlks_flat_eqa_cc"}
    assert set(table["time_gap_days.coherence"]) == {0.0}
    assert table["selection.coherence.rule"].str.contains("bracket").all()
    dataset = xr.open_zarr(mexico_run / "cubes/mexico.zarr")
    coherence = dataset["coherence"].values
    assert np.nanmin(coherence) >= 0
    assert np.nanmax(coherence) <= 1
    assert set(dataset.data_vars) >= {"dem", "coherence", "slope"}


def test_manifest_lists_every_variable_and_verify_passes(mexico_run: Path) -> None:
    manifest = json.loads((mexico_run / "splits/mexico/manifest.json").read_text())
    assert set(manifest["catalogs"]) == {"dem", "coherence"}
    for chip in manifest["chips"]:
        assert set(chip["checksums"]) == {"dem", "coherence", "slope"}
    result = run_cli(
        mexico_run,
        "verify",
        "cubes/mexico.zarr",
        "--manifest",
        "splits/mexico/manifest.json",
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------------------
# Hyperspectral: EnMAP tiles over Potsdam


@pytest.fixture(scope="module")
def potsdam_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("potsdam")
    write_yaml(
        workdir / "catalogs/enmap-local.yaml",
        {
            "name": "enmap-local",
            "source": {"kind": "raster-files"},
            "licence": "EnMAP data (c) DLR 2022; EnMAP-Box test data, GPL-3.0",
            "modalities": {
                "hsi": {
                    "collection": "enmap-l2a",
                    "files": str(shared_data / "enmap-potsdam/*.tif"),
                    "nodata": -32768,
                    "radiometry": {"scale": 0.0001},
                    "bands": {"reflectance": {"asset": "data", "resampling": "bilinear"}},
                }
            },
        },
    )
    region(
        workdir / "splits/potsdam/region.yaml",
        # The densest block of the tiles: 2 x 3 chips of 960 m, the southern row 95 % covered.
        aoi=box(13.0312, 52.3816, 13.0658, 52.3965),
        time={"start": "2022-07-01", "end": "2022-07-31"},
        grid={"chip_size": 96, "resolution": 10, "coverage": "intersects"},
        modalities={"hsi": {"catalog": "enmap-local", "resolution": 30}},
    )
    result = run_cli(workdir, "run", "potsdam", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


def test_hsi_is_stored_on_the_nested_30m_lattice(potsdam_run: Path) -> None:
    dataset = xr.open_zarr(potsdam_run / "cubes/potsdam.zarr")
    hsi = dataset["hsi"]
    assert hsi.dims == ("chip", "wavelength", "hsi_y", "hsi_x")
    assert hsi.shape[2:] == (32, 32)  # 96 px at 10 m is 32 px at 30 m
    assert hsi.encoding["chunks"] == (1, hsi.shape[1], 32, 32)
    wavelengths = dataset["wavelength"].values
    assert wavelengths[0] == pytest.approx(418.24, abs=0.01)
    assert np.all(np.diff(wavelengths) != 0)
    assert dataset["fwhm"].attrs["units"] == "nm"
    values = hsi.values
    finite = values[np.isfinite(values)]
    assert np.mean((finite >= -0.05) & (finite <= 1.5)) == 1.0
    assert np.median(finite) < 0.6
    table = open_chip_table(potsdam_run / "cubes/potsdam.zarr")
    ok = table[table["status"] == "ok"]
    assert len(table) == 6
    assert len(ok) == 6
    assert (ok["processing.hsi.resolution_m"] == 30).all()


def test_hsi_chip_origin_on_lattice(potsdam_run: Path) -> None:
    dataset = xr.open_zarr(potsdam_run / "cubes/potsdam.zarr")
    assert dataset["hsi"].attrs["pixel_factor"] == 3
    transforms = dataset["chip_transform"].values
    assert np.all(transforms[:, 2] % 960 == 0)
    assert np.all(transforms[:, 5] % 960 == 0)


# ----------------------------------------------------------------------------------------------
# Coherence estimated from complex rasters: the real UAVSAR SLC and a decorrelated copy

SLC_LOOKS = (5, 5)
# The SLC is in radar geometry. The test gives it a 10 m grid in UTM 14N whose origin lies on
# the 320 m chip lattice, so chips are exact windows of the complex rasters.
SLC_ORIGIN = (640000.0, 5520000.0)
SLC_CRS = "EPSG:32614"


def write_complex_tif(path: Path, values: np.ndarray, when: str) -> None:
    profile = {
        "driver": "GTiff",
        "width": values.shape[1],
        "height": values.shape[0],
        "count": 1,
        "dtype": "complex64",
        "crs": SLC_CRS,
        "transform": rasterio.transform.from_origin(*SLC_ORIGIN, 10.0, 10.0),
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(values, 1)
        dataset.update_tags(TIFFTAG_DATETIME=when)


@pytest.fixture(scope="module")
def slc_pair(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from tests.test_coherence import circular_gaussian, load_slc

    folder = tmp_path_factory.mktemp("slc")
    slc = load_slc(shared_data)
    # True coherence 0.9 in the western half and 0.3 in the eastern half. The noise of each
    # pixel has the SLC's mean power over the estimator window, so real speckle stays.
    true = np.where(np.arange(slc.shape[1]) < 125, 0.9, 0.3)[np.newaxis, :]
    power = ndimage.uniform_filter(np.abs(slc.astype(np.complex128)) ** 2, SLC_LOOKS)
    noise = circular_gaussian(np.random.default_rng(7), slc.shape) * np.sqrt(power)
    secondary = (true * slc + np.sqrt(1.0 - true**2) * noise).astype(np.complex64)
    write_complex_tif(folder / "slc_20120717.tif", slc, "2012:07:17 12:00:00")
    write_complex_tif(folder / "slc_20120729.tif", secondary, "2012:07:29 12:00:00")
    return folder, (slc, secondary)


@pytest.fixture(scope="module")
def slc_run(slc_pair: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, _ = slc_pair
    workdir = tmp_path_factory.mktemp("slc-run")
    write_yaml(
        workdir / "catalogs/slc.yaml",
        {
            "name": "slc",
            "source": {"kind": "raster-files"},
            "licence": "UAVSAR SLC from the isce3 test data, Apache-2.0",
            "modalities": {
                "coherence": {
                    "collection": "uavsar-slc",
                    "files": str(folder / "slc_*.tif"),
                    "radiometry": {"kind": "slc"},
                    "bands": {"coherence": {"asset": "data", "resampling": "bilinear"}},
                }
            },
        },
    )
    west, south = rasterio.warp.transform(SLC_CRS, "EPSG:4326", [640330.0], [5517790.0])
    east, north = rasterio.warp.transform(SLC_CRS, "EPSG:4326", [642230.0], [5519670.0])
    region(
        workdir / "splits/slc/region.yaml",
        aoi=box(west[0], south[0], east[0], north[0]),
        time={"start": "2012-07-01", "end": "2012-08-31"},
        grid={"chip_size": 32, "resolution": 10, "coverage": "within"},
        modalities={
            "coherence": {"catalog": "slc", "looks": list(SLC_LOOKS), "max_time_gap_days": 5}
        },
    )
    result = run_cli(workdir, "run", "slc", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


def test_slc_chips_equal_the_whole_image_estimate(
    slc_run: Path, slc_pair: tuple[Path, Any]
) -> None:
    """Chip borders change nothing: each chip equals the estimate over the whole image."""
    _, (slc, secondary) = slc_pair
    whole = estimate_coherence(slc, secondary, looks=SLC_LOOKS)
    dataset = xr.open_zarr(slc_run / "cubes/slc.zarr")
    assert dataset.sizes["chip"] >= 9
    for position in range(dataset.sizes["chip"]):
        transform = dataset["chip_transform"].values[position]
        col = round((transform[2] - SLC_ORIGIN[0]) / 10.0)
        row = round((SLC_ORIGIN[1] - transform[5]) / 10.0)
        expected = whole[row : row + 32, col : col + 32]
        stored = dataset["coherence"].values[position]
        np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-6)


def test_slc_coherence_follows_the_true_coherence(slc_run: Path) -> None:
    dataset = xr.open_zarr(slc_run / "cubes/slc.zarr")
    table = open_chip_table(slc_run / "cubes/slc.zarr")
    assert set(table["status"]) == {"ok"}
    assert set(table["processing.coherence.looks"].map(tuple)) == {SLC_LOOKS}
    assert set(table["time_gap_days.coherence"]) == {2.5}
    west = dataset["chip_transform"].values[:, 2] + 320 <= SLC_ORIGIN[0] + 1250
    east = dataset["chip_transform"].values[:, 2] >= SLC_ORIGIN[0] + 1250
    values = dataset["coherence"].values
    # 25 looks over speckle whose neighbours correlate have about 18 equivalent looks, so the
    # means lie between the expected estimates for 25 and 18 independent looks.
    for mask, true in ((west, 0.9), (east, 0.3)):
        mean = float(np.nanmean(values[mask]))
        assert expected_estimate(true, 25) - 0.02 <= mean <= expected_estimate(true, 18) + 0.02


def test_hsi_store_rebuilds_from_its_manifest(potsdam_run: Path) -> None:
    """A rebuild fetches every tile of each chip's scene by id and reproduces the checksums."""
    manifest = json.loads((potsdam_run / "splits/potsdam/manifest.json").read_text())
    assert all(isinstance(chip["items"]["hsi"], list) for chip in manifest["chips"])
    result = run_cli(
        potsdam_run,
        "extract",
        "--from-manifest",
        "splits/potsdam/manifest.json",
        "--out",
        "rebuilt/potsdam.zarr",
    )
    assert result.returncode == 0, result.stderr
    table = open_chip_table(potsdam_run / "rebuilt/potsdam.zarr")
    frozen = {chip["id"]: chip["checksums"] for chip in manifest["chips"]}
    for chip_id, checksums in frozen.items():
        assert table.loc[chip_id, "checksums.hsi"] == checksums["hsi"]


def test_release_of_a_dem_and_coherence_region(mexico_run: Path) -> None:
    result = run_cli(mexico_run, "release", "mexico", "--out", "release")
    assert result.returncode == 0, result.stderr
    item = json.loads((mexico_run / "release/mexico/mexico.json").read_text())
    assert {"dem", "coherence", "slope"} <= set(item["properties"]["cube:variables"])
    assert item["properties"]["start_datetime"].startswith("2018-01-01")
    datasheet = (mexico_run / "release/datasheet.md").read_text()
    assert "- coherence selection: the pair whose dates bracket the reference time" in datasheet
    quicklooks = sorted((mexico_run / "release/mexico/quicklooks").glob("*.png"))
    assert quicklooks


def test_overlapping_dem_items_fail_the_chip(shared_data: Path, tmp_path: Path) -> None:
    """The geoid and ellipsoid versions of one DEM cover the same ground: no silent choice."""
    dem_catalog(
        tmp_path / "catalogs/la-both.yaml",
        str(shared_data / "cop-dem-los-angeles/*.tif"),
        datetime="2021-04-22",
        nodata=None,
    )
    region(
        tmp_path / "splits/la-both/region.yaml",
        aoi=box(-118.01, 33.99, -118.0, 34.0),
        grid={"chip_size": 32, "resolution": 30, "coverage": "intersects"},
        modalities={"dem": {"catalog": "la-both"}},
    )
    result = run_cli(tmp_path, "run", "la-both", "--workers", "1")
    assert result.returncode == 1
    assert (
        "DEM items 'los_angeles_dem_ellipsoid' and 'los_angeles_dem_geoid' both cover chip"
        in result.stderr
    )
    assert "narrow modalities.dem.files" in result.stderr


def test_hsi_coregistration_band_outside_the_spectrum(
    potsdam_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from pipeline.config import CoregistrationSpec, load_catalogs, load_region
    from pipeline.errors import ConfigError
    from pipeline.extract import plan_variables
    from pipeline.plan import make_plan

    monkeypatch.chdir(potsdam_run)
    loaded = load_region(Path("splits/potsdam/region.yaml"))
    catalogs = load_catalogs(loaded, Path("catalogs"))
    assert loaded.hsi is not None
    policy = CoregistrationSpec("apply", 1.0, 0.5, "B08", "5000")
    spec = replace(loaded, hsi=replace(loaded.hsi, coregistration=policy))
    with pytest.raises(
        ConfigError,
        match=r"modalities\.hsi\.coregistration\.band 5000 nm is not within the FWHM of any kept "
        r"hyperspectral band \(nearest 2445\.53 nm",
    ):
        plan_variables(make_plan(spec, catalogs))
