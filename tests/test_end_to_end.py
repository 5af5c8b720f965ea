"""End to end on the real BigEarthNet sample: `sensorcube run sample` in a real process.

Each run starts a real Dask LocalCluster with worker processes, reads real COGs through GDAL and
writes a real Zarr store, so these tests take about ten seconds per run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr

from pipeline.sample import sample_catalog_dir
from pipeline.store import chunk_path, open_chip_table
from tests.conftest import REPO_ROOT

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


def make_workdir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO_ROOT / "catalogs", root / "catalogs")
    (root / "splits" / "sample").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "splits" / "sample" / "region.yaml", root / "splits" / "sample")
    return root


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = make_workdir(tmp_path_factory.mktemp("run-a"))
    result = run_cli(workdir, "run", "sample", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


def test_run_writes_store_and_manifest(first_run: Path) -> None:
    manifest = json.loads((first_run / "splits/sample/manifest.json").read_text())
    counts = manifest["split_counts"]
    assert counts["train"] + counts["val"] + counts["test"] >= 30
    assert counts["train"] > 0
    assert counts["val"] > 0
    assert counts["test"] > 0
    assert manifest["grid"]["crs"] == ["EPSG:32629", "EPSG:32633", "EPSG:32636"]
    assert {item["id"] for item in manifest["items"]} >= {"S2A_MSIL2A_20170613T101031_87_48"}
    assert all(item["updated"] for item in manifest["items"])


def test_store_layout_one_chunk_per_chip(first_run: Path) -> None:
    store = first_run / "cubes/sample.zarr"
    dataset = xr.open_zarr(store)
    assert dataset["s2"].dims == ("chip", "band", "y", "x")
    assert dataset["s1"].dims == ("chip", "polarization", "y", "x")
    assert dataset["ndvi"].dims == ("chip", "y", "x")
    assert dataset["s2"].encoding["chunks"] == (1, 12, 32, 32)
    assert dataset["s1"].encoding["chunks"] == (1, 2, 32, 32)
    assert dataset["ndvi"].encoding["chunks"] == (1, 32, 32)
    assert list(dataset["polarization"].values) == ["VV", "VH"]
    assert dataset["s2"].attrs["units"] == "1"
    assert "chip_transform" in dataset.coords
    assert dataset["s2"].dtype == np.float32


def test_chip_table_records_provenance(first_run: Path) -> None:
    table = open_chip_table(first_run / "cubes/sample.zarr")
    assert len(table) == 47
    assert set(table["status"]) == {"ok"}
    assert table["time_gap_days.s1"].abs().max() <= 3
    assert table["split"].isin(["train", "val", "test", "buffer"]).all()
    assert table["selection.s1.rule"].str.contains("max_time_gap_days|<= 3 days").all()
    assert table["processing.s1.conversion"].str.contains("before resampling").all()
    assert table["items.s2.updated"].notna().all()


def test_chip_table_records_s1_offsets(first_run: Path) -> None:
    """The sample region records the offset of VV against B08 per chip, with a confidence."""
    table = open_chip_table(first_run / "cubes/sample.zarr")
    assert set(table["offsets.s1.action"]) == {"recorded"}
    assert set(table["offsets.s1.method"]) == {"edge-cross-correlation"}
    assert table["offsets.s1.confidence"].between(0, 1).all()
    assert table["offsets.s1.dy_px"].abs().max() <= 16  # at most half the 32 px chip
    assert table["offsets.s1.reason"].str.contains("recorded only").all()


def _patch_dn(patch: str, band: str) -> tuple[np.ndarray, Any]:
    with rasterio.open(sample_catalog_dir() / "cog" / patch / f"{band}.tif") as dataset:
        return dataset.read(1), dataset.transform


def _aligned_chip(dataset: xr.Dataset, patch_prefix: str) -> tuple[int, str]:
    table = open_chip_table(dataset.encoding["source"])
    for index, chip_id in enumerate(dataset["chip"].values):
        if table.loc[chip_id, "items.s2.id"].startswith(patch_prefix) and chip_id.startswith(
            "32633"
        ):
            return index, str(chip_id)
    raise AssertionError("no chip of the Austrian patch in EPSG:32633")


def _window(dataset: xr.Dataset, index: int, transform: Any) -> tuple[slice, slice]:
    _a, _, c, _, _e, f = dataset["chip_transform"].values[index]
    col = round((c - transform.c) / transform.a)
    row = round((f - transform.f) / transform.e)
    return slice(row, row + 32), slice(col, col + 32)


def test_values_match_source_files(first_run: Path) -> None:
    store = first_run / "cubes/sample.zarr"
    dataset = xr.open_zarr(store)
    dataset.encoding["source"] = str(store)
    index, chip_id = _aligned_chip(dataset, "S2A_MSIL2A_20170613T101031_87_48")
    bands = list(dataset["band"].values)
    for band in ("B02", "B03", "B04", "B08"):
        dn, transform = _patch_dn("S2A_MSIL2A_20170613T101031_87_48", band)
        rows, cols = _window(dataset, index, transform)
        expected = (dn[rows, cols].astype(np.float64) / 10000).astype(np.float32)
        actual = dataset["s2"].values[index, bands.index(band)]
        np.testing.assert_allclose(actual, expected, rtol=1e-6, err_msg=f"{chip_id} {band}")

    red = _patch_dn("S2A_MSIL2A_20170613T101031_87_48", "B04")[0][rows, cols].astype(np.float64)
    nir = _patch_dn("S2A_MSIL2A_20170613T101031_87_48", "B08")[0][rows, cols].astype(np.float64)
    np.testing.assert_allclose(dataset["ndvi"].values[index], (nir - red) / (nir + red), rtol=1e-6)

    polarizations = list(dataset["polarization"].values)
    for polarization in ("VV", "VH"):
        db, transform = _patch_dn("S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48", polarization)
        rows, cols = _window(dataset, index, transform)
        expected = np.power(10.0, db[rows, cols].astype(np.float64) / 10)
        actual = dataset["s1"].values[index, polarizations.index(polarization)]
        np.testing.assert_allclose(actual, expected, rtol=1e-6, err_msg=f"{chip_id} {polarization}")


def test_ndvi_negative_where_red_exceeds_nir(first_run: Path) -> None:
    dataset = xr.open_zarr(first_run / "cubes/sample.zarr")
    bands = list(dataset["band"].values)
    red = dataset["s2"].sel(band="B04").values
    nir = dataset["s2"].sel(band="B08").values
    where = red > nir
    assert where.any(), "the sample has water pixels where red reflectance exceeds NIR"
    assert (dataset["ndvi"].values[where] < 0).all()
    assert bands.index("B04") < bands.index("B08")


def test_reprojected_chips_are_linear_power(first_run: Path) -> None:
    dataset = xr.open_zarr(first_run / "cubes/sample.zarr")
    zone36 = [i for i, chip in enumerate(dataset["chip"].values) if chip.startswith("32636")]
    assert zone36, "the Finnish patches lie in zone 36 by chip centre"
    s1 = dataset["s1"].values[zone36]
    assert np.isfinite(s1).mean() > 0.9
    assert np.nanmin(s1) > 0
    # Bilinear resampling is a convex combination, so values stay within the source range.
    b04 = dataset["s2"].sel(band="B04").values[zone36]
    sources = ["S2B_MSIL2A_20170924T93020_69_24", "S2B_MSIL2A_20180204T94161_57_38"]
    dn = np.concatenate([_patch_dn(patch, "B04")[0].ravel() for patch in sources])
    assert np.nanmin(b04) >= dn[dn > 0].min() / 10000 - 1e-6
    assert np.nanmax(b04) <= dn.max() / 10000 + 1e-6


def test_verify_passes_then_names_each_flipped_chunk(first_run: Path, tmp_path: Path) -> None:
    result = run_cli(
        first_run, "verify", "cubes/sample.zarr", "--manifest", "splits/sample/manifest.json"
    )
    assert result.returncode == 0, result.stderr
    assert "verify ok" in result.stderr

    copy = tmp_path / "copy.zarr"
    shutil.copytree(first_run / "cubes/sample.zarr", copy)
    manifest = first_run / "splits/sample/manifest.json"
    chip_id = json.loads(manifest.read_text())["chips"][3]["id"]
    index = [str(c) for c in xr.open_zarr(copy)["chip"].values].index(chip_id)
    for variable, ndim in (("s2", 4), ("s1", 4), ("ndvi", 3)):
        path = chunk_path(copy, variable, index, ndim)
        original = path.read_bytes()
        for offset in (0, len(original) // 2, len(original) - 1):
            damaged = bytearray(original)
            damaged[offset] ^= 0x01
            path.write_bytes(bytes(damaged))
            result = run_cli(first_run, "verify", str(copy), "--manifest", str(manifest))
            assert result.returncode == 1, (variable, offset)
            assert f"MISMATCH chip {chip_id} variable {variable}" in result.stderr
        path.write_bytes(original)
    result = run_cli(first_run, "verify", str(copy), "--manifest", str(manifest))
    assert result.returncode == 0, result.stderr


def test_rerun_skips_finished_chips_and_keeps_bytes(first_run: Path) -> None:
    store = first_run / "cubes/sample.zarr"
    before = tree_digest(store)
    manifest_before = (first_run / "splits/sample/manifest.json").read_bytes()
    result = run_cli(first_run, "run", "sample", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "47 already finished" in result.stderr
    assert tree_digest(store) == before
    assert (first_run / "splits/sample/manifest.json").read_bytes() == manifest_before


def test_rerun_redoes_an_unfinished_chip(first_run: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "resume"
    shutil.copytree(first_run, workdir)
    store = workdir / "cubes/sample.zarr"
    before = tree_digest(store)
    # A chip whose record is missing is unfinished: remove one record and one data chunk.
    (store / "chip_record" / "c" / "5").unlink()
    chunk_path(store, "s2", 5, 4).unlink()
    result = run_cli(workdir, "run", "sample", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "46 already finished" in result.stderr
    assert tree_digest(store) == before


def test_two_runs_give_identical_manifests(first_run: Path, tmp_path: Path) -> None:
    second = make_workdir(tmp_path / "run-b")
    result = run_cli(second, "run", "sample", "--workers", "1")
    assert result.returncode == 0, result.stderr
    first_manifest = (first_run / "splits/sample/manifest.json").read_bytes()
    assert (second / "splits/sample/manifest.json").read_bytes() == first_manifest
    assert tree_digest(second / "cubes/sample.zarr") == tree_digest(first_run / "cubes/sample.zarr")
