"""`sensorcube run` on the sample read over HTTP from a server on 127.0.0.1 that injects faults.

The sample COGs are served by :mod:`tests.http_server`, and a stac-geoparquet catalog points at
them with http hrefs, so every pixel comes through GDAL's /vsicurl/ as in production. Each href
carries a made-up SAS token, which must never reach a log line or the chip table. A run where
10 % of requests fail (503, stalled past GDAL_HTTP_TIMEOUT, or cut short) must write the same
checksums as a run without faults. A run where one asset always fails records the chips that
read it as failed, finishes the others and exits 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import rustac
import yaml

from pipeline.sample import ITEMS_GEOJSON, sample_catalog_dir
from pipeline.store import open_chip_table
from tests.http_server import FAULT_KINDS, FaultPlan, FaultServer, serve_folder
from tests.test_end_to_end import SENSORCUBE, tree_digest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_REGION = REPO_ROOT / "splits" / "sample" / "region.yaml"
SAMPLE_CATALOG = REPO_ROOT / "catalogs" / "sample.yaml"
SAMPLE_CHIPS = 47
# A made-up Azure SAS token: the server ignores it, and no output may contain it.
SECRET = "NOT-A-REAL-SIGNATURE"
SAS_QUERY = f"?sv=2024-05-04&se=2030-01-01T00%3A00%3A00Z&sp=r&sig={SECRET}%3D"
# Low GDAL limits keep stalled requests short: GDAL tries each request twice, one second each.
# The server keeps a stalled response open for up to STALL_S, until the client gives up. GDAL_HTTP_MAX_RETRY=1 lets some faults
# through GDAL's own retries, so sensorcube's retries run too.
FAULT_ENV = {
    "GDAL_HTTP_TIMEOUT": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "1",
    "GDAL_HTTP_MAX_RETRY": "1",
    "GDAL_HTTP_RETRY_DELAY": "0.05",
    # curl honours proxy variables, so requests to the test server must bypass any proxy.
    "NO_PROXY": "127.0.0.1",
    "no_proxy": "127.0.0.1",
}
STALL_S = 5.0
FAULT_RATE = 0.1
FAULT_SEED = 20240504
# The asset that always fails in the failure test, and the item it belongs to.
FAILING_ITEM = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
FAILING_ASSET = f"cog/{FAILING_ITEM}/VV.tif"


@dataclass(frozen=True)
class HttpSample:
    """The fault server, and region YAMLs whose catalog reads the sample from it."""

    server: FaultServer
    region: Path
    two_patch_region: Path


@dataclass(frozen=True)
class RunResult:
    """One `sensorcube run`: its folder, exit code and stderr."""

    workdir: Path
    returncode: int
    stderr: str

    @property
    def manifest(self) -> dict[str, Any]:
        path = self.workdir / "splits" / "sample" / "manifest.json"
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    @property
    def store(self) -> Path:
        return self.workdir / "cubes" / "sample.zarr"


def _http_items(base_url: str) -> list[dict[str, Any]]:
    """The sample items with every asset href moved from the cache folder to the server."""
    catalog_dir = sample_catalog_dir()
    collection = json.loads((catalog_dir / ITEMS_GEOJSON).read_text(encoding="utf-8"))
    items: list[dict[str, Any]] = collection["features"]
    for item in items:
        for asset in item["assets"].values():
            relative = Path(asset["href"]).relative_to(catalog_dir).as_posix()
            asset["href"] = f"{base_url}/{relative}{SAS_QUERY}"
    return items


def _write_catalog(directory: Path, base_url: str) -> None:
    """Write items.parquet and a stac-geoparquet catalog YAML on it, sample-http.yaml."""
    rustac.write_sync(str(directory / "items.parquet"), _http_items(base_url))
    catalog = yaml.safe_load(SAMPLE_CATALOG.read_text(encoding="utf-8"))
    catalog["name"] = "sample-http"
    catalog["source"] = {"kind": "stac-geoparquet", "href": "items.parquet"}
    text = yaml.safe_dump(catalog, sort_keys=False)
    (directory / "sample-http.yaml").write_text(text, encoding="utf-8")


def _write_region(directory: Path, name: str, *, patches: slice = slice(None)) -> Path:
    """Write the sample region on sample-http.yaml, with only ``patches`` of its AOI polygons."""
    region = yaml.safe_load(SAMPLE_REGION.read_text(encoding="utf-8"))
    region["aoi"]["coordinates"] = region["aoi"]["coordinates"][patches]
    region["modalities"]["s2"]["catalog"] = "sample-http.yaml"
    region["modalities"]["s1"]["catalog"] = "sample-http.yaml"
    path = directory / name
    path.write_text(yaml.safe_dump(region, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def http_sample(
    sample_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpSample]:
    with serve_folder(sample_catalog_dir()) as server:
        directory = tmp_path_factory.mktemp("http-catalog")
        _write_catalog(directory, server.url)
        # The AOI's first polygon is the Austrian patch of FAILING_ITEM, the second an Irish one.
        two_patches = _write_region(directory, "region-two-patches.yaml", patches=slice(0, 2))
        yield HttpSample(
            server=server,
            region=_write_region(directory, "region.yaml"),
            two_patch_region=two_patches,
        )


def run_over_http(
    sample: HttpSample, workdir: Path, plan: FaultPlan, *, region: Path | None = None
) -> RunResult:
    """Run `sensorcube run` in ``workdir`` on an HTTP region while the server follows ``plan``."""
    workdir.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "catalogs", workdir / "catalogs")
    sample.server.reset(plan)
    region_path = sample.region if region is None else region
    result = subprocess.run(
        [SENSORCUBE, "run", str(region_path), "--workers", "2"],
        cwd=workdir,
        env={**os.environ, **FAULT_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return RunResult(workdir=workdir, returncode=result.returncode, stderr=result.stderr)


@pytest.fixture(scope="module")
def clean_run(http_sample: HttpSample, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    run = run_over_http(http_sample, tmp_path_factory.mktemp("clean") / "work", FaultPlan())
    assert run.returncode == 0, run.stderr
    assert http_sample.server.stats.faults == {}
    return run


def _checksums(manifest: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {chip["id"]: (chip["checksums"], chip["chunk_checksums"]) for chip in manifest["chips"]}


def test_clean_http_run_writes_every_chip(clean_run: RunResult) -> None:
    table = open_chip_table(clean_run.store)

    assert len(table) == SAMPLE_CHIPS
    assert set(table["status"]) == {"ok"}
    assert "retrying in" not in clean_run.stderr


def test_faulty_run_matches_clean_run(
    http_sample: HttpSample, clean_run: RunResult, tmp_path: Path
) -> None:
    plan = FaultPlan(rate=FAULT_RATE, seed=FAULT_SEED, stall_s=STALL_S)
    run = run_over_http(http_sample, tmp_path / "faulty", plan)
    stats = http_sample.server.stats

    assert run.returncode == 0, run.stderr
    for kind in FAULT_KINDS:
        assert stats.faults[kind] > 0, f"no {kind} fault was injected in {stats.requests} requests"
    assert "retrying in" in run.stderr
    # GDAL_HTTP_TIMEOUT of FAULT_ENV reached the workers: GDAL gave up on every stalled
    # response after 1 s, long before the server would have closed it.
    assert stats.stalls_ended_by_server == 0
    assert _checksums(run.manifest) == _checksums(clean_run.manifest)
    assert run.manifest == clean_run.manifest
    assert tree_digest(run.store) == tree_digest(clean_run.store)
    assert SECRET not in run.stderr


def _chips_reading(table: pd.DataFrame, item_id: str) -> set[str]:
    """Chips whose Sentinel-1 selection read ``item_id`` in a run without faults."""
    return {
        str(chip_id)
        for chip_id, candidates in table["selection.s1.candidates"].items()
        if any(candidate["id"] == item_id for candidate in candidates)
    }


def test_always_failing_asset_fails_its_chips(
    http_sample: HttpSample, clean_run: RunResult, tmp_path: Path
) -> None:
    # Two patches of the sample keep this run short. Their chips are chips of the clean run.
    plan = FaultPlan(failing_paths=(FAILING_ASSET,), failing_kind="503")
    run = run_over_http(
        http_sample, tmp_path / "failing", plan, region=http_sample.two_patch_region
    )
    table = open_chip_table(run.store)
    failed = table[table["status"] == "failed"]
    expected = _chips_reading(open_chip_table(clean_run.store), FAILING_ITEM)

    assert run.returncode == 1, run.stderr
    assert expected, f"no chip of the clean run read {FAILING_ITEM}"
    assert set(failed.index) == expected
    assert len(table) > len(expected)
    assert set(table.drop(index=failed.index)["status"]) == {"ok"}
    for chip_id, reason in failed["reason"].items():
        assert f"{FAILING_ASSET}?***" in reason, chip_id
        assert "HTTP response code: 503" in reason, chip_id
        assert "failed after 4 attempts" in reason, chip_id
        assert f"failed {chip_id}: ReadError" in run.stderr
    assert f"{len(expected)} of {len(table)} chips failed" in run.stderr
    assert SECRET not in run.stderr
    assert not table["reason"].fillna("").str.contains(SECRET).any()
