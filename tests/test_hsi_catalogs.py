"""The EnMAP (DLR) and EMIT (CMR-STAC) catalog files, run end to end against servers on 127.0.0.1.

Each scenario copies the shipped catalog file and changes only two things. ``source.url`` points
at a ``rustac serve`` of items in the shape of that API, and the login goes to the test file
server, which rejects any other login with 401. No request leaves 127.0.0.1.

- EnMAP: one item per real tile of the Potsdam L2A scene, with the asset key, ids and properties
  of DLR's ENMAP_HSI_L2A items, read over HTTP with a DLR login (HTTP Basic).
- EMIT: one granule written by :func:`write_emit_granule` in the EMIT L2A NetCDF layout. Its
  geometry lookup table (GLT) places known swath pixels at known map positions. The item looks
  as CMR-STAC lists it (asset keyed by file name, no bands), and reads send an Earthdata token.

The logins are distinctive fake strings, and each test searches every output file, log and
message for them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr
import yaml
from pyproj import Transformer

from pipeline.config import load_catalog
from pipeline.credentials import CredentialsSpec
from pipeline.hyperspectral import read_hsi_chip, read_scene_bands
from pipeline.local_catalog import raster_item
from pipeline.store import open_chip_table
from tests.auth_server import AuthServer, basic_authorization, serve_with_auth
from tests.stac_fixtures import serve_items

REPO_ROOT = Path(__file__).resolve().parents[1]
SENSORCUBE = str(Path(sys.executable).parent / "sensorcube")
DLR_USER = "sensorcube-test"
DLR_PASSWORD = "Fake-DLR-Passw0rd-7c41e9"
WRONG_PASSWORD = "Wrong-DLR-Passw0rd-55d2a0"
EARTHDATA_TOKEN = "FakeEarthdataToken-0e5b8d2f93a1"
WRONG_TOKEN = "WrongEarthdataToken-a7f0c3d19e44"
SECRETS = (DLR_PASSWORD, WRONG_PASSWORD, EARTHDATA_TOKEN, WRONG_TOKEN)
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def run_cli(cwd: Path, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SENSORCUBE, *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def base_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without any login, and a netrc file that does not exist."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DLR_", "EARTHDATA_"))
    }
    env["NETRC"] = str(tmp_path / "no-netrc")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1"
    return env


def files_containing(root: Path, secrets: tuple[str, ...]) -> list[str]:
    """Return the files under ``root`` whose bytes contain one of ``secrets``."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found.extend(f"{path}: {secret}" for secret in secrets if secret.encode() in data)
    return found


def working_folder(root: Path, catalog: str, url: str, hosts: list[str]) -> Path:
    """Copy a shipped catalog into ``root/catalogs`` with another API URL and login hosts."""
    data = yaml.safe_load((REPO_ROOT / "catalogs" / f"{catalog}.yaml").read_text("utf-8"))
    data["source"]["url"] = url
    data["source"]["credentials"] = {"kind": data["source"]["credentials"], "hosts": hosts}
    (root / "catalogs").mkdir(parents=True)
    (root / "catalogs" / f"{catalog}.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return root


def write_region(root: Path, name: str, **fields: Any) -> None:
    data = {
        "name": name,
        "split": {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "block_size": 2},
        **fields,
    }
    path = root / "splits" / name / "region.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def box(west: float, south: float, east: float, north: float) -> dict[str, Any]:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def assert_no_secret(workdir: Path, result: subprocess.CompletedProcess[str]) -> None:
    for secret in SECRETS:
        assert secret not in result.stdout
        assert secret not in result.stderr
    assert files_containing(workdir, SECRETS) == []


# ----------------------------------------------------------------------------------------------
# EnMAP L2A from DLR's STAC API

ENMAP_SCENE = "ENMAP01-____L2A-DT0000004950_20220724T104526Z_002_V010111_20230101T000000Z"
# A block of two chips where the tiles cover each chip completely.
ENMAP_AOI = box(13.0312, 52.3816, 13.0480, 52.3870)


def enmap_items(tiles: list[Path], base_url: str) -> list[dict[str, Any]]:
    """Items of the Potsdam tiles in the shape of DLR's ENMAP_HSI_L2A items, one per tile."""
    source = load_catalog(REPO_ROOT / "catalogs" / "enmap-dlr.yaml").source("hsi")
    items = []
    for tile in tiles:
        item = raster_item(tile, source)
        item["id"] = f"{ENMAP_SCENE}-{tile.stem.removeprefix('enmap_potsdam_')}"
        item["assets"]["image"]["href"] = f"{base_url}/{tile.name}"
        item["assets"]["image"]["roles"] = ["data", "reflectance"]
        item["properties"].update(
            {
                "platform": "enmap",
                "processing:level": "L2A",
                "enmap:nodata": -32768,
                "eo:cloud_cover": 0,
                "updated": "2023-01-01T00:00:00Z",
            }
        )
        items.append(item)
    return items


@pytest.fixture(scope="module")
def enmap_api(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, AuthServer, Path]]:
    """The EnMAP items on rustac serve and the tiles on an HTTP server that wants a DLR login."""
    folder = tmp_path_factory.mktemp("enmap-api")
    tiles = sorted((shared_data / "enmap-potsdam").glob("*.tif"))
    accepted = [basic_authorization(DLR_USER, DLR_PASSWORD)]
    with serve_with_auth(shared_data / "enmap-potsdam", accepted) as files:
        with serve_items(enmap_items(tiles, files.url), folder / "api") as url:
            yield url, files, folder


def enmap_workdir(root: Path, url: str) -> Path:
    workdir = working_folder(root, "enmap-dlr", url, ["127.0.0.1"])
    write_region(
        workdir,
        "potsdam-dlr",
        aoi=ENMAP_AOI,
        time={"start": "2022-07-01", "end": "2022-07-31"},
        grid={"chip_size": 96, "resolution": 10, "coverage": "intersects"},
        modalities={"hsi": {"catalog": "enmap-dlr", "resolution": 30}},
    )
    return workdir


@pytest.mark.shared_data
def test_enmap_dlr_run_with_login(
    enmap_api: tuple[str, AuthServer, Path], shared_data: Path, tmp_path: Path
) -> None:
    url, files, _ = enmap_api
    workdir = enmap_workdir(tmp_path / "work", url)
    env = {**base_env(tmp_path), "DLR_USERNAME": DLR_USER, "DLR_PASSWORD": DLR_PASSWORD}

    result = run_cli(workdir, env, "run", "potsdam-dlr", "--workers", "1")

    assert result.returncode == EXIT_OK, result.stderr
    table = open_chip_table(workdir / "cubes/potsdam-dlr.zarr")
    assert len(table) == 2
    assert set(table["status"]) == {"ok"}
    assert table["items.hsi"].map(len).min() >= 1
    assert files.served > 0
    dataset = xr.open_zarr(workdir / "cubes/potsdam-dlr.zarr")
    # The same pixels as a read of the chip's tiles from local files onto its 30 m grid.
    folder = shared_data / "enmap-potsdam"
    bands = read_scene_bands(sorted(str(path) for path in folder.glob("*.tif")))
    for position, chip_id in enumerate(dataset["chip"].values):
        tiles = [
            str(folder / f"enmap_potsdam_{item['id'].removeprefix(ENMAP_SCENE + '-')}.tif")
            for item in table.loc[chip_id, "items.hsi"]
        ]
        base = dataset["chip_transform"].values[position]
        local = read_hsi_chip(
            tiles,
            crs=str(dataset["chip_crs"].values[position]),
            transform=(30.0, 0.0, float(base[2]), 0.0, -30.0, float(base[5])),
            shape=(32, 32),
            bands=bands,
        )
        np.testing.assert_array_equal(dataset["hsi"].values[position], local)
    assert_no_secret(workdir, result)


@pytest.mark.shared_data
def test_enmap_dlr_wrong_login_fails_chips_masked(
    enmap_api: tuple[str, AuthServer, Path], tmp_path: Path
) -> None:
    url, files, api_folder = enmap_api
    workdir = enmap_workdir(tmp_path / "work", url)
    env = {**base_env(tmp_path), "DLR_USERNAME": DLR_USER, "DLR_PASSWORD": WRONG_PASSWORD}
    rejected_before = files.rejected

    result = run_cli(workdir, env, "run", "potsdam-dlr", "--workers", "1")

    assert result.returncode == EXIT_FAILURE
    assert files.rejected > rejected_before
    table = open_chip_table(workdir / "cubes/potsdam-dlr.zarr")
    assert set(table["status"]) == {"failed"}
    for reason in table["reason"]:
        assert "HTTP response code: 401" in reason
        assert "the read sent the dlr-eoc login from DLR_USERNAME and DLR_PASSWORD" in reason
    assert "HTTP response code: 401" in result.stderr
    assert_no_secret(workdir, result)
    assert files_containing(api_folder, SECRETS) == []


@pytest.mark.shared_data
def test_enmap_dlr_missing_login_exits_2(
    enmap_api: tuple[str, AuthServer, Path], tmp_path: Path
) -> None:
    url, _, _ = enmap_api
    workdir = enmap_workdir(tmp_path / "work", url)
    env = base_env(tmp_path)

    for command in ("plan", "run"):
        result = run_cli(workdir, env, command, "potsdam-dlr")

        assert result.returncode == EXIT_USAGE, result.stderr
        assert (
            "catalog 'enmap-dlr' needs a login (source.credentials 'dlr-eoc') to read its assets, "
            "and none is configured: set DLR_USERNAME and DLR_PASSWORD or add 'machine "
            "download.geoservice.dlr.de login USER password PASSWORD'" in result.stderr
        )
        assert str(tmp_path / "no-netrc") in result.stderr
    assert sorted(path.name for path in workdir.iterdir()) == ["catalogs", "splits"]
    assert sorted(path.name for path in (workdir / "splits/potsdam-dlr").iterdir()) == [
        "region.yaml"
    ]


# ----------------------------------------------------------------------------------------------
# EMIT L2A from NASA's CMR-STAC

EMIT_ID = "EMIT_L2A_RFL_001_20230801T100000_2321307_004"
EMIT_TIME = dt.datetime(2023, 8, 1, 10, 0, tzinfo=dt.UTC)
# GLT map grid: EPSG:4326, 80 x 80 cells of 0.0005 degrees from lon 13.0, lat 52.44.
GLT_ORIGIN = (13.0, 52.44)
GLT_STEP = 0.0005
GLT_SHAPE = (80, 80)
SWATH_SHAPE = (100, 90)  # downtrack, crosstrack
WAVELENGTHS = np.linspace(400.0, 2450.0, 12).astype(np.float32)
GOOD = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=np.uint8)
FILLED_SWATH_PIXEL = (50, 45)  # one-based row and column holding the fill value
WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
    'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0],'
    'UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]'
)
_NETCDF_DIMENSION = "This is a netCDF dimension but not a netCDF variable."


def glt_tables() -> tuple[np.ndarray, np.ndarray]:
    """One-based swath (column, row) per GLT cell: a sheared, folded swath with gaps.

    Cells of the first two rows and columns are 0 (no data), and every 11th diagonal is
    negative, as EMIT marks pixels filled from a neighbour.
    """
    rows, cols = np.mgrid[0 : GLT_SHAPE[0], 0 : GLT_SHAPE[1]]
    glt_y = (rows * 7 + cols * 3) % SWATH_SHAPE[0] + 1
    glt_x = (rows * 2 + cols * 5) % SWATH_SHAPE[1] + 1
    filled = (rows + cols) % 11 == 0
    glt_x = np.where(filled, -glt_x, glt_x)
    glt_y = np.where(filled, -glt_y, glt_y)
    empty = (rows < 2) | (cols < 2)
    glt_x[empty] = 0
    glt_y[empty] = 0
    return glt_x.astype(np.int32), glt_y.astype(np.int32)


def swath_reflectance() -> np.ndarray:
    """Reflectance (downtrack, crosstrack, bands) with a distinct spectrum per swath pixel."""
    rows, cols, bands = np.mgrid[0 : SWATH_SHAPE[0], 0 : SWATH_SHAPE[1], 0 : len(WAVELENGTHS)]
    values = 0.02 + 0.9 * ((rows * SWATH_SHAPE[1] + cols) % 997) / 997.0 + 0.0001 * bands
    values = values.astype(np.float32)
    values[FILLED_SWATH_PIXEL[0] - 1, FILLED_SWATH_PIXEL[1] - 1, :] = -9999.0
    return values


def _dimension(group: h5py.Group, name: str, size: int) -> h5py.Dataset:
    """Create a netCDF-4 dimension without a coordinate variable, as netCDF-C writes one."""
    scale = group.create_dataset(name, (size,), dtype="f4")
    scale.make_scale(f"{_NETCDF_DIMENSION}{size:10d}")
    return scale


def _variable(
    group: h5py.Group, name: str, data: np.ndarray, dims: list[h5py.Dataset], **attrs: Any
) -> None:
    variable = group.create_dataset(
        name, data=data, **({"fillvalue": attrs.pop("fill")} if "fill" in attrs else {})
    )
    for axis, dimension in enumerate(dims):
        variable.dims[axis].attach_scale(dimension)
    for key, value in attrs.items():
        variable.attrs[key] = value


def write_emit_granule(path: Path) -> None:
    """Write a small granule in the layout of EMIT L2A RFL v001 NetCDF-4 files.

    Reproduced are the root variable ``reflectance`` (downtrack, crosstrack, bands) with
    ``_FillValue`` -9999 and the group ``sensor_band_parameters`` (``wavelengths``, ``fwhm``,
    ``good_wavelengths`` over bands). The group ``location`` has ``glt_x`` and ``glt_y`` over
    ortho_y and ortho_x (int32, one-based, 0 for no data). Dimensions have no coordinate
    variables, and the global attributes ``geotransform`` (GDAL order) and ``spatial_ref``
    (WKT) place the GLT grid. Left out are ``location/lat``, ``lon`` and ``elev``, the
    uncertainty and mask files, and the other global attributes, which sensorcube does not read.
    """
    glt_x, glt_y = glt_tables()
    with h5py.File(path, "w", track_order=True) as granule:
        granule.attrs["geotransform"] = np.array(
            [GLT_ORIGIN[0], GLT_STEP, 0.0, GLT_ORIGIN[1], 0.0, -GLT_STEP]
        )
        granule.attrs["spatial_ref"] = WGS84_WKT
        granule.attrs["time_coverage_start"] = EMIT_TIME.strftime("%Y-%m-%dT%H:%M:%S+0000")
        downtrack = _dimension(granule, "downtrack", SWATH_SHAPE[0])
        crosstrack = _dimension(granule, "crosstrack", SWATH_SHAPE[1])
        bands = _dimension(granule, "bands", len(WAVELENGTHS))
        _variable(
            granule,
            "reflectance",
            swath_reflectance(),
            [downtrack, crosstrack, bands],
            fill=np.float32(-9999.0),
            units="unitless",
        )
        parameters = granule.create_group("sensor_band_parameters")
        _variable(parameters, "wavelengths", WAVELENGTHS, [bands], units="nm")
        _variable(
            parameters, "fwhm", np.full(len(WAVELENGTHS), 8.5, np.float32), [bands], units="nm"
        )
        _variable(parameters, "good_wavelengths", GOOD, [bands])
        location = granule.create_group("location")
        ortho_y = _dimension(location, "ortho_y", GLT_SHAPE[0])
        ortho_x = _dimension(location, "ortho_x", GLT_SHAPE[1])
        _variable(location, "glt_x", glt_x, [ortho_y, ortho_x])
        _variable(location, "glt_y", glt_y, [ortho_y, ortho_x])


def emit_item(base_url: str) -> dict[str, Any]:
    """The granule's item as CMR-STAC lists it: assets keyed by file name, no bands."""
    west, north = GLT_ORIGIN
    east = west + GLT_STEP * GLT_SHAPE[1]
    south = north - GLT_STEP * GLT_SHAPE[0]
    start = EMIT_TIME.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    end = (EMIT_TIME + dt.timedelta(seconds=8)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": EMIT_ID,
        "collection": "EMITL2ARFL_001",
        "geometry": box(west, south, east, north),
        "bbox": [west, south, east, north],
        "properties": {"datetime": start, "start_datetime": start, "end_datetime": end},
        "assets": {
            EMIT_ID: {"href": f"{base_url}/{EMIT_ID}.nc", "title": "Download " + EMIT_ID + ".nc"},
            EMIT_ID.replace("_RFL_", "_MASK_"): {
                "href": f"{base_url}/{EMIT_ID.replace('_RFL_', '_MASK_')}.nc"
            },
            "browse": {"href": f"{base_url}/{EMIT_ID}.png", "type": "image/png"},
        },
        "links": [],
    }


@pytest.fixture(scope="module")
def emit_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AuthServer]]:
    folder = tmp_path_factory.mktemp("emit-api")
    (folder / "files").mkdir()
    write_emit_granule(folder / "files" / f"{EMIT_ID}.nc")
    with serve_with_auth(folder / "files", [f"Bearer {EARTHDATA_TOKEN}"]) as files:
        with serve_items([emit_item(files.url)], folder / "api") as url:
            yield url, files


def emit_workdir(root: Path, url: str) -> Path:
    workdir = working_folder(root, "emit-cmr", url, ["127.0.0.1"])
    write_region(
        workdir,
        "emit-test",
        aoi=box(13.006, 52.405, 13.036, 52.432),
        time={"start": "2023-08-01", "end": "2023-08-31"},
        grid={"chip_size": 96, "resolution": 10, "coverage": "within"},
        modalities={"hsi": {"catalog": "emit-cmr", "resolution": 30}},
    )
    return workdir


def expected_chip(crs: str, origin: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The GLT's spectrum at each 30 m pixel centre of a chip, and where the check is exact.

    Pixels whose centre lies within 0.15 GLT cells of a cell border are left out, because
    GDAL's approximate transformer may put them on either side.
    """
    rows, cols = np.mgrid[0:32, 0:32]
    xs = origin[0] + (cols + 0.5) * 30.0
    ys = origin[1] - (rows + 0.5) * 30.0
    lons, lats = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    glt_col = (lons - GLT_ORIGIN[0]) / GLT_STEP
    glt_row = (GLT_ORIGIN[1] - lats) / GLT_STEP
    fraction = np.minimum(
        np.minimum(glt_col % 1, 1 - glt_col % 1), np.minimum(glt_row % 1, 1 - glt_row % 1)
    )
    exact = fraction > 0.15
    glt_x, glt_y = glt_tables()
    cell_rows, cell_cols = np.floor(glt_row).astype(int), np.floor(glt_col).astype(int)
    swath_col = np.abs(glt_x[cell_rows, cell_cols])
    swath_row = np.abs(glt_y[cell_rows, cell_cols])
    swath = swath_reflectance()[:, :, GOOD == 1]
    expected = swath[np.maximum(swath_row - 1, 0), np.maximum(swath_col - 1, 0)]
    expected = np.moveaxis(expected, -1, 0).astype(np.float32)
    expected[:, (swath_col == 0) | (swath_row == 0)] = np.nan
    expected[expected == -9999.0] = np.nan
    return expected, exact


@pytest.fixture(scope="module")
def emit_run(
    emit_api: tuple[str, AuthServer], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    url, _ = emit_api
    root = tmp_path_factory.mktemp("emit-run")
    workdir = emit_workdir(root / "work", url)
    env = {**base_env(root), "EARTHDATA_TOKEN": EARTHDATA_TOKEN}
    return workdir, run_cli(workdir, env, "run", "emit-test", "--workers", "1")


def test_emit_cmr_run_places_pixels_by_glt(
    emit_run: tuple[Path, subprocess.CompletedProcess[str]], emit_api: tuple[str, AuthServer]
) -> None:
    workdir, result = emit_run

    assert result.returncode == EXIT_OK, result.stderr
    assert emit_api[1].served > 0
    dataset = xr.open_zarr(workdir / "cubes/emit-test.zarr")
    np.testing.assert_allclose(dataset["wavelength"].values, WAVELENGTHS[GOOD == 1], atol=1e-4)
    table = open_chip_table(workdir / "cubes/emit-test.zarr")
    assert len(table) == 3
    assert set(table["status"]) == {"ok"}
    assert table["processing.hsi.orthorectification"].str.contains("lookup table").all()
    checked = 0
    for position in range(dataset.sizes["chip"]):
        base = dataset["chip_transform"].values[position]
        crs = str(dataset["chip_crs"].values[position])
        expected, exact = expected_chip(crs, (float(base[2]), float(base[5])))
        stored = dataset["hsi"].values[position]
        np.testing.assert_array_equal(stored[:, exact], expected[:, exact])
        checked += int(exact.sum())
    # About half of the pixels lie clear of GLT cell borders (cells of about 34 x 56 m).
    assert checked > 0.3 * dataset.sizes["chip"] * 32 * 32
    assert_no_secret(workdir, result)


def test_emit_glt_pixel_lands_at_its_map_position(
    emit_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """One GLT cell's swath pixel appears at the chip pixel over that cell's centre."""
    workdir, result = emit_run
    assert result.returncode == EXIT_OK, result.stderr
    dataset = xr.open_zarr(workdir / "cubes/emit-test.zarr")
    base = dataset["chip_transform"].values[0]
    crs = str(dataset["chip_crs"].values[0])
    # The GLT cell under the centre of the chip's 30 m pixel (row 16, column 16).
    centre = (float(base[2]) + 16.5 * 30.0, float(base[5]) - 16.5 * 30.0)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(*centre)
    cell = (int((GLT_ORIGIN[1] - lat) // GLT_STEP), int((lon - GLT_ORIGIN[0]) // GLT_STEP))
    glt_x, glt_y = glt_tables()
    swath_row, swath_col = abs(int(glt_y[cell])), abs(int(glt_x[cell]))
    assert swath_row > 0
    spectrum = swath_reflectance()[swath_row - 1, swath_col - 1, GOOD == 1]

    np.testing.assert_array_equal(dataset["hsi"].values[0][:, 16, 16], spectrum)


def test_emit_wrong_token_fails_plan_masked(
    emit_api: tuple[str, AuthServer], tmp_path: Path
) -> None:
    url, files = emit_api
    workdir = emit_workdir(tmp_path / "work", url)
    env = {**base_env(tmp_path), "EARTHDATA_TOKEN": WRONG_TOKEN}
    rejected_before = files.rejected

    result = run_cli(workdir, env, "plan", "emit-test")

    assert result.returncode == EXIT_FAILURE
    assert files.rejected > rejected_before
    assert "the read sent the earthdata login from EARTHDATA_TOKEN" in result.stderr
    assert_no_secret(workdir, result)


def test_emit_missing_login_names_variable_and_netrc(
    emit_api: tuple[str, AuthServer], tmp_path: Path
) -> None:
    url, _ = emit_api
    workdir = emit_workdir(tmp_path / "work", url)

    result = run_cli(workdir, base_env(tmp_path), "run", "emit-test")

    assert result.returncode == EXIT_USAGE
    assert "set EARTHDATA_TOKEN or add 'machine urs.earthdata.nasa.gov" in result.stderr
    assert not (workdir / "cubes").exists()


def test_emit_item_gets_asset_and_bands_from_granule(
    emit_api: tuple[str, AuthServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.emit import prepare_items

    _, files = emit_api
    monkeypatch.setenv("EARTHDATA_TOKEN", EARTHDATA_TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    shipped = load_catalog(REPO_ROOT / "catalogs/emit-cmr.yaml").source("hsi")
    source = replace(shipped, credentials=CredentialsSpec("earthdata", ("127.0.0.1",)))
    item = emit_item(files.url)

    prepared = prepare_items([item], source)

    asset = prepared[0]["assets"]["reflectance"]
    assert asset["href"] == f"{files.url}/{EMIT_ID}.nc"
    assert [band["center_wavelength"] for band in asset["eo:bands"]] == pytest.approx(
        (WAVELENGTHS / 1000.0).tolist()
    )
    assert [band["sensorcube:bad"] for band in asset["eo:bands"]] == (GOOD == 0).tolist()
    assert "reflectance" not in item["assets"]
    assert json.dumps(prepared).count(EARTHDATA_TOKEN) == 0


@pytest.fixture(autouse=True)
def _no_login_in_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep a developer's own logins and netrc out of these tests."""
    for name in ("DLR_USERNAME", "DLR_PASSWORD", "EARTHDATA_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
