"""Rebuilds from a frozen manifest and repairs, on the real sample through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rustac

from pipeline.errors import FeedError
from pipeline.feed import ChipPairs
from pipeline.sample import ITEMS_GEOJSON, ITEMS_PARQUET, sample_catalog_dir
from pipeline.store import chunk_path, open_chip_table
from tests.test_end_to_end import SENSORCUBE, make_workdir, run_cli

MANIFEST = "splits/sample/manifest.json"
CHANGED_S1 = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
CHANGED_S2 = "S2A_MSIL2A_20171221T112501_56_35"


def run_with_cache(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SENSORCUBE_CACHE": str(cache)}
    return subprocess.run(
        [SENSORCUBE, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = make_workdir(tmp_path_factory.mktemp("frozen"))
    result = run_cli(workdir, "run", "sample", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


def chunk_bytes(store: Path) -> dict[tuple[str, str], bytes]:
    """Chunk file bytes by (chip id, variable), independent of the chip's index in the store."""
    table = open_chip_table(store)
    found = {}
    for index, chip_id in enumerate(table.index):
        for variable, ndim in (("s2", 4), ("s1", 4), ("ndvi", 3)):
            path = chunk_path(store, variable, index, ndim)
            if path.is_file():
                found[(chip_id, variable)] = path.read_bytes()
    return found


def test_rebuild_from_manifest_is_identical(frozen: Path, tmp_path: Path) -> None:
    rebuilt = tmp_path / "rebuilt.zarr"
    result = run_cli(frozen, "extract", "--from-manifest", MANIFEST, "--out", str(rebuilt))
    assert result.returncode == 0, result.stderr
    assert "verify ok" in result.stderr
    original = chunk_bytes(frozen / "cubes/sample.zarr")
    manifest = json.loads((frozen / MANIFEST).read_text())
    frozen_ids = {entry["id"] for entry in manifest["chips"]}
    assert chunk_bytes(rebuilt) == {k: v for k, v in original.items() if k[0] in frozen_ids}
    splits = open_chip_table(rebuilt)["split"].to_dict()
    assert splits == {entry["id"]: entry["split"] for entry in manifest["chips"]}


def modified_cache(tmp_path: Path, change: Any) -> Path:
    """A copy of the sample catalog cache whose items pass through ``change``."""
    cache = tmp_path / "cache"
    target = cache / sample_catalog_dir().name
    target.mkdir(parents=True)
    features = json.loads((sample_catalog_dir() / ITEMS_GEOJSON).read_text())["features"]
    for feature in features:
        change(feature, tmp_path)
    rustac.write_sync(str(target / ITEMS_PARQUET), features)
    return cache


def test_item_updated_upstream_is_reported(frozen: Path, tmp_path: Path) -> None:
    def touch_s1(feature: dict[str, Any], _: Path) -> None:
        if feature["id"] == CHANGED_S1:
            feature["properties"]["updated"] = "2030-01-01T00:00:00Z"

    cache = modified_cache(tmp_path, touch_s1)
    rebuilt = tmp_path / "rebuilt.zarr"
    result = run_with_cache(
        frozen, cache, "extract", "--from-manifest", MANIFEST, "--out", str(rebuilt)
    )
    assert result.returncode == 1
    assert f"source item {CHANGED_S1} changed upstream" in result.stderr
    table = open_chip_table(rebuilt)
    refused = table[table["status"] == "failed"]
    assert len(refused) > 0
    assert refused.index.str.startswith("32633").all()
    assert (table.loc[~table.index.str.startswith("32633"), "status"] == "ok").all()
    for chip_id in refused.index:
        index = list(table.index).index(chip_id)
        assert not chunk_path(rebuilt, "s1", index, 4).exists()

    split = str(refused["split"].iloc[0])
    with pytest.raises(FeedError, match=rf"has no pixels for \d+ chips of split '{split}'"):
        ChipPairs(rebuilt, frozen / MANIFEST, split=split, direction="s1->s2")


def test_changed_pixels_are_not_written(frozen: Path, tmp_path: Path) -> None:
    def brighten_b04(feature: dict[str, Any], directory: Path) -> None:
        if feature["id"] != CHANGED_S2:
            return
        source = Path(feature["assets"]["B04"]["href"])
        copy = directory / "B04.tif"
        shutil.copy(source, copy)
        with rasterio.open(copy, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dataset:
            values = dataset.read(1)
            dataset.write(np.where(values > 0, values + 1, 0).astype(values.dtype), 1)
        feature["assets"]["B04"]["href"] = str(copy)

    cache = modified_cache(tmp_path, brighten_b04)
    rebuilt = tmp_path / "rebuilt.zarr"
    result = run_with_cache(
        frozen, cache, "extract", "--from-manifest", MANIFEST, "--out", str(rebuilt)
    )
    assert result.returncode == 1
    assert "no longer hash as the manifest records" in result.stderr
    table = open_chip_table(rebuilt)
    failed = table[table["status"] == "failed"]
    assert set(failed["selection.s2.candidates"].map(lambda c: c[0]["id"])) == {CHANGED_S2}
    assert (table.loc[table["status"] != "failed", "status"] == "ok").all()


def test_repair_fixes_flipped_chunks(frozen: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "damaged"
    shutil.copytree(frozen, workdir)
    store = workdir / "cubes/sample.zarr"
    ids = list(open_chip_table(store).index)
    damaged = {("s2", 4): 1, ("s1", 4): 2, ("ndvi", 3): 3}
    for (variable, ndim), index in damaged.items():
        path = chunk_path(store, variable, index, ndim)
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x10
        path.write_bytes(bytes(data))

    before = run_cli(workdir, "verify", "cubes/sample.zarr", "--manifest", MANIFEST)
    assert before.returncode == 1
    for (variable, _), index in damaged.items():
        assert f"MISMATCH chip {ids[index]} variable {variable}" in before.stderr

    splits_before = open_chip_table(store)["split"].to_dict()
    repaired = run_cli(
        workdir, "repair", "cubes/sample.zarr", "--manifest", MANIFEST, "--workers", "1"
    )
    assert repaired.returncode == 0, repaired.stderr
    assert "repairing 3 chips" in repaired.stderr
    after = run_cli(workdir, "verify", "cubes/sample.zarr", "--manifest", MANIFEST)
    assert after.returncode == 0, after.stderr
    assert chunk_bytes(store) == chunk_bytes(frozen / "cubes/sample.zarr")
    assert open_chip_table(store)["split"].to_dict() == splits_before


def test_repair_of_intact_store_does_nothing(frozen: Path) -> None:
    result = run_cli(frozen, "repair", "cubes/sample.zarr", "--manifest", MANIFEST)
    assert result.returncode == 0, result.stderr
    assert "nothing to repair" in result.stderr


def edited_manifest(frozen: Path, tmp_path: Path, edit: Any) -> Path:
    data = json.loads((frozen / MANIFEST).read_text())
    edit(data)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def test_edited_checksum_list_rejected(frozen: Path, tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["chips"][0]["checksums"]["s2"] = "0" * 64

    path = edited_manifest(frozen, tmp_path, edit)
    result = run_cli(frozen, "verify", "cubes/sample.zarr", "--manifest", str(path))
    assert result.returncode == 2
    assert "was edited: its chip list no longer matches its chips_sha256" in result.stderr


def test_newer_manifest_format_rejected(frozen: Path, tmp_path: Path) -> None:
    path = edited_manifest(frozen, tmp_path, lambda data: data.update(sensorcube_manifest=99))
    result = run_cli(frozen, "verify", "cubes/sample.zarr", "--manifest", str(path))
    assert result.returncode == 2
    assert "has format 99, newer than the format 1" in result.stderr
    assert "upgrade sensorcube" in result.stderr


def test_store_of_other_region_rejected(frozen: Path, tmp_path: Path) -> None:
    path = edited_manifest(frozen, tmp_path, lambda data: data.update(region="elsewhere"))
    result = run_cli(frozen, "verify", "cubes/sample.zarr", "--manifest", str(path))
    assert result.returncode == 2
    assert "contains region 'sample' but the manifest is of region 'elsewhere'" in result.stderr


def test_rebuild_with_changed_region_rejected(frozen: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "changed"
    shutil.copytree(frozen, workdir, ignore=shutil.ignore_patterns("cubes"))
    region = workdir / "splits/sample/region.yaml"
    region.write_text(region.read_text().replace("seed: 0", "seed: 1"))
    result = run_cli(workdir, "extract", "--from-manifest", MANIFEST)
    assert result.returncode == 2
    assert "changed since the manifest was frozen" in result.stderr
    assert not (workdir / "cubes").exists()


def test_manifest_records_the_chunk_codec(frozen: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild writes chunks with the frozen store's codec, so their bytes can match again."""
    from pipeline.config import load_catalogs, load_region
    from pipeline.rebuild import plan_from_manifest

    manifest = json.loads((frozen / MANIFEST).read_text())
    assert manifest["chunk_codec"] == "crc32c"
    monkeypatch.chdir(frozen)
    region = load_region(Path("splits/sample/region.yaml"))
    catalogs = load_catalogs(region, Path("catalogs"))
    _, targets = plan_from_manifest(manifest, region, catalogs)
    assert targets.codec == "crc32c"
    # Manifests frozen before the codec was recorded come from zstd stores.
    del manifest["chunk_codec"]
    _, targets = plan_from_manifest(manifest, region, catalogs)
    assert targets.codec == "zstd"
