"""Lattice QA: chip origins exactly on the lattice, and chunked loads equal to unchunked ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import odc.stac
import pystac
import pytest
import shapely.geometry
import zarr

from pipeline.config import load_catalog, load_region
from pipeline.grid import chips_for_aoi
from pipeline.manifest import check_lattice, load_manifest, verify
from pipeline.sample import sample_catalog_dir
from pipeline.search import _read_geoparquet
from pipeline.store import open_root
from tests.conftest import REPO_ROOT
from tests.test_end_to_end import run_cli


@pytest.fixture(scope="module")
def sample_store(sample_run: Path) -> Path:
    return sample_run


def test_sample_store_is_on_the_lattice(sample_store: Path) -> None:
    assert check_lattice(open_root(sample_store / "cubes/sample.zarr")) == []


def test_verify_names_a_chip_moved_off_the_lattice(sample_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "moved.zarr"
    shutil.copytree(sample_store / "cubes/sample.zarr", store)
    transforms = zarr.open_array(str(store / "chip_transform"), mode="r+")
    moved = np.asarray(transforms[...])
    moved[3, 2] += 5.0  # half a pixel east
    transforms[...] = moved
    chip_id = str(np.asarray(zarr.open_array(str(store / "chip"), mode="r")[3]))
    manifest = load_manifest(sample_store / "splits/sample/manifest.json")
    mismatches = verify(store, manifest)
    assert [(m.chip_id, m.variable) for m in mismatches] == [(chip_id, "chip_transform")]
    assert "off the lattice" in mismatches[0].reason
    result = run_cli(
        sample_store, "verify", str(store), "--manifest", "splits/sample/manifest.json"
    )
    assert result.returncode == 1
    assert f"MISMATCH chip {chip_id} variable chip_transform: chip is off the lattice" in (
        result.stdout + result.stderr
    )


def test_chunked_dask_load_equals_unchunked_load() -> None:
    """odc-stac reads a chip the same whether the load is one block or many Dask chunks."""
    catalog = load_catalog(REPO_ROOT / "catalogs/sample.yaml")
    source = catalog.source("s2")
    features = [
        f
        for f in _read_geoparquet(str(sample_catalog_dir() / "items.parquet"))
        if f["collection"] == source.collection
    ]
    item = pystac.Item.from_dict(features[0])
    grid = load_region(REPO_ROOT / "splits/sample/region.yaml").grid
    chip = chips_for_aoi(shapely.geometry.shape(features[0]["geometry"]), grid)[0]
    geobox = chip.geobox()
    bands = ["B02", "B05", "B8A"]
    resampling = {"B02": "bilinear", "B05": "bilinear", "B8A": "average"}
    whole = odc.stac.load([item], bands=bands, geobox=geobox, resampling=resampling, chunks=None)
    chunked = odc.stac.load(
        [item], bands=bands, geobox=geobox, resampling=resampling, chunks={"x": 7, "y": 9}
    ).compute(scheduler="synchronous")
    for band in bands:
        assert (whole[band].values > 0).any()
        np.testing.assert_array_equal(whole[band].values, chunked[band].values)
