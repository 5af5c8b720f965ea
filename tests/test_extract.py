"""Selection outcomes, failure policy and Dask schedulers, on the real sample through real workers."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rustac
import yaml
from distributed import Client, LocalCluster

from pipeline.cluster import CLUSTER_SETTINGS, cluster_settings, local_cluster
from pipeline.config import load_catalogs, load_region
from pipeline.errors import RunFailedError
from pipeline.extract import MAX_CHIPS_PER_TASK, _chips_per_task, extract
from pipeline.manifest import freeze
from pipeline.plan import make_plan
from pipeline.sample import ITEMS_GEOJSON, sample_catalog_dir
from pipeline.store import chunk_path, open_chip_table
from tests.conftest import REPO_ROOT
from tests.test_end_to_end import make_workdir, run_cli
from tests.test_worker_failure import running_cluster

BROKEN_ITEM = "S2A_MSIL2A_20171221T112501_56_35"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


def write_region(directory: Path, **changes: Any) -> Path:
    """Copy the sample region into ``directory``, applying ``section.key=value`` changes."""
    data = yaml.safe_load((REPO_ROOT / "splits/sample/region.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        target[key] = value
    path = directory / "region.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def plan_for(region_path: Path, catalogs_dir: Path = REPO_ROOT / "catalogs") -> Any:
    region = load_region(region_path)
    return make_plan(region, load_catalogs(region, catalogs_dir))


def test_time_gap_rule_skips_with_reason(tmp_path: Path, client: Client) -> None:
    plan = plan_for(write_region(tmp_path, modalities__s1__max_time_gap_days=0.5))
    summary = extract(plan, tmp_path / "gap.zarr", client)
    table = open_chip_table(tmp_path / "gap.zarr")
    skipped = table[table["status"] == "skipped"]
    # The Finnish September pair is 0.79 days apart; every other pair is under 0.5 days.
    assert summary.skipped == len(skipped) > 0
    assert (
        skipped["selection.s2.candidates"]
        .map(lambda c: c[0]["id"])
        .eq("S2B_MSIL2A_20170924T93020_69_24")
        .all()
    )
    assert (
        skipped["reason"]
        .str.contains(
            r"nearest Sentinel-1 item is 0\.79 days from the Sentinel-2 date, beyond "
            r"max_time_gap_days 0\.5"
        )
        .all()
    )
    assert summary.ok == (table["status"] == "ok").sum() > 0


def test_orbit_rule_keeps_only_ascending(tmp_path: Path, client: Client) -> None:
    plan = plan_for(write_region(tmp_path, modalities__s1__orbit_state="ascending"))
    extract(plan, tmp_path / "orbit.zarr", client)
    table = open_chip_table(tmp_path / "orbit.zarr")
    ok = table[table["status"] == "ok"]
    assert set(ok["orbit_state"]) == {"ascending"}
    assert set(ok.index.str.slice(0, 5)) == {"32633"}
    skipped = table[table["status"] == "skipped"]
    assert (
        skipped["reason"].str.contains("no Sentinel-1 item with sat:orbit_state 'ascending'").all()
    )
    assert len(ok) + len(skipped) == len(table)


def broken_catalog(directory: Path) -> Path:
    """A stac-geoparquet catalog of the sample where one item's B04 asset is missing."""
    features = json.loads((sample_catalog_dir() / ITEMS_GEOJSON).read_text())["features"]
    for feature in features:
        if feature["id"] == BROKEN_ITEM:
            feature["assets"]["B04"]["href"] = str(directory / "missing" / "B04.tif")
    rustac.write_sync(str(directory / "items.parquet"), features)
    catalog = yaml.safe_load((REPO_ROOT / "catalogs/sample.yaml").read_text())
    catalog["name"] = "broken"
    catalog["source"] = {"kind": "stac-geoparquet", "href": "items.parquet"}
    (directory / "broken.yaml").write_text(yaml.safe_dump(catalog))
    return directory


def test_read_failures_recorded_and_policy_enforced(tmp_path: Path, client: Client) -> None:
    catalogs = broken_catalog(tmp_path)
    region_path = write_region(
        tmp_path, modalities__s2__catalog="broken", modalities__s1__catalog="broken"
    )
    plan = plan_for(region_path, catalogs)
    store = tmp_path / "broken.zarr"

    with pytest.raises(RunFailedError, match=r"failed, above --max-failed-fraction 0") as raised:
        extract(plan, store, client)
    assert f"ReadError: reading item '{BROKEN_ITEM}'" in str(raised.value)

    table = open_chip_table(store)
    failed = table[table["status"] == "failed"]
    assert len(failed) > 0
    assert failed["reason"].str.contains(BROKEN_ITEM).all()

    # The same store resumes: failed chips are retried (and fail again), the rest are kept.
    summary = extract(plan, store, client, max_failed_fraction=0.5)
    assert summary.failed == len(failed)
    assert summary.resumed == len(table) - len(failed)

    region = load_region(region_path)
    manifest = freeze(store, region, load_catalogs(region, catalogs), tmp_path / "manifest.json")
    assert manifest["chips_failed"] == sorted(failed.index)
    assert not set(failed.index) & {entry["id"] for entry in manifest["chips"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def running_scheduler(tmp_path: Path) -> Iterator[str]:
    """A `dask scheduler` and one `dask worker` process on 127.0.0.1."""
    with running_cluster(tmp_path, 1) as cluster:
        yield cluster.address


def test_run_on_running_scheduler(tmp_path: Path, running_scheduler: str) -> None:
    workdir = make_workdir(tmp_path / "remote")
    result = run_cli(workdir, "run", "sample", "--scheduler", running_scheduler)
    assert result.returncode == 0, result.stderr
    assert "47 chips, 47 ok" in result.stderr
    verify = run_cli(
        workdir, "verify", "cubes/sample.zarr", "--manifest", "splits/sample/manifest.json"
    )
    assert verify.returncode == 0, verify.stderr


def test_scheduler_not_running(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "nothing")
    address = f"tcp://127.0.0.1:{free_port()}"
    result = run_cli(workdir, "run", "sample", "--scheduler", address, "--connect-timeout", "1")
    assert result.returncode == 1
    assert f"cannot connect to Dask scheduler '{address}'" in result.stderr
    assert "check that it runs and the address" in result.stderr
    assert not (workdir / "cubes").exists()
    assert not (workdir / "splits/sample/manifest.json").exists()


def test_scheduler_without_workers(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "idle")
    with running_cluster(tmp_path, 0) as cluster:
        result = run_cli(
            workdir, "run", "sample", "--scheduler", cluster.address, "--connect-timeout", "2"
        )
    assert result.returncode == 1
    assert f"Dask scheduler '{cluster.address}' has no workers after 2 s" in result.stderr
    assert f"start some with `dask worker {cluster.address}`" in result.stderr
    assert not (workdir / "cubes").exists()
    assert not (workdir / "splits/sample/manifest.json").exists()


def test_overwrite_replaces_store_of_other_configuration(tmp_path: Path, client: Client) -> None:
    workdir = make_workdir(tmp_path / "replace")
    store = workdir / "cubes/sample.zarr"
    plan = plan_for(write_region(tmp_path, derived=[]))
    extract(plan, store, client)
    assert (
        "ndvi" not in json.loads((store / "zarr.json").read_text())["attributes"]["data_variables"]
    )

    refused = run_cli(workdir, "extract", "sample")
    assert refused.returncode == 2
    assert "was built from another configuration" in refused.stderr
    assert "pass --overwrite to replace it" in refused.stderr

    replaced = run_cli(workdir, "extract", "sample", "--overwrite", "--workers", "1")
    assert replaced.returncode == 0, replaced.stderr
    assert "ndvi" in json.loads((store / "zarr.json").read_text())["attributes"]["data_variables"]
    assert not [p for p in store.parent.iterdir() if p.name.startswith(".")]
    shutil.rmtree(store)


NODATA_ITEM = "S2A_MSIL2A_20171221T112501_56_35"
NO_VH_ITEM = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"


def degraded_catalog(directory: Path) -> Path:
    """A copy of the sample whose Portuguese S2 item is all nodata and whose Austrian S1 item
    has no VH asset."""
    features = json.loads((sample_catalog_dir() / ITEMS_GEOJSON).read_text())["features"]
    for feature in features:
        if feature["id"] == NODATA_ITEM:
            for key, asset in feature["assets"].items():
                source = Path(asset["href"])
                empty = directory / f"empty-{key}.tif"
                with rasterio.open(source) as src:
                    profile = {**src.profile, "driver": "GTiff"}
                    with rasterio.open(empty, "w", **profile) as dst:
                        dst.write(np.zeros((1, src.height, src.width), dtype=src.dtypes[0]))
                asset["href"] = str(empty)
        if feature["id"] == NO_VH_ITEM:
            del feature["assets"]["VH"]
    rustac.write_sync(str(directory / "items.parquet"), features)
    catalog = yaml.safe_load((REPO_ROOT / "catalogs/sample.yaml").read_text())
    catalog["name"] = "degraded"
    catalog["source"] = {"kind": "stac-geoparquet", "href": "items.parquet"}
    (directory / "degraded.yaml").write_text(yaml.safe_dump(catalog))
    return directory


def test_nodata_and_missing_polarization_skipped(tmp_path: Path, client: Client) -> None:
    catalogs = degraded_catalog(tmp_path)
    region_path = write_region(
        tmp_path, modalities__s2__catalog="degraded", modalities__s1__catalog="degraded"
    )
    store = tmp_path / "degraded.zarr"
    summary = extract(plan_for(region_path, catalogs), store, client)
    table = open_chip_table(store)
    assert summary.failed == 0

    portugal = table[table["selection.s2.candidates"].map(lambda c: c[0]["id"]) == NODATA_ITEM]
    assert len(portugal) > 0
    assert (portugal["status"] == "skipped").all()
    assert (
        portugal["reason"]
        .str.contains(
            r"no Sentinel-2 item reaches min_clear_fraction 0\.9: best of 1 candidates is 0\.000"
        )
        .all()
    )

    austria = table[table.index.str.startswith("32633")]
    assert (austria["status"] == "skipped").all()
    assert (
        austria["reason"]
        .str.contains(
            rf"no Sentinel-1 candidate has the requested polarizations .*'id': '{NO_VH_ITEM}', "
            r"'missing_assets': \['VH'\]"
        )
        .all()
    )
    for index, chip_id in enumerate(table.index):
        if table.loc[chip_id, "status"] == "skipped":
            assert not chunk_path(store, "s2", index, 4).exists()


def task_sizes(chips: int, threads: int) -> list[int]:
    sizes = []
    while chips:
        sizes.append(_chips_per_task(chips, threads))
        chips -= sizes[-1]
    return sizes


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("chips", [1, 5, 17, 64, 257])
def test_task_sizes_balance_the_workers(chips: int, threads: int) -> None:
    sizes = task_sizes(chips, threads)
    assert sum(sizes) == chips
    assert max(sizes) <= MAX_CHIPS_PER_TASK
    assert sizes == sorted(sizes, reverse=True)
    # Few one-chip tasks: each task costs the scheduler and the client a few milliseconds.
    assert sizes.count(1) < 4 * threads
    # Workers take tasks in submission order. With chips of equal cost, the last worker to
    # finish ends within one chip of an even split.
    finish = [0] * threads
    for size in sizes:
        finish[finish.index(min(finish))] += size
    assert max(finish) <= -(-chips // threads) + 1


def worker_callback_ms(settings: dict[str, Any] | None) -> tuple[dict[str, float], float]:
    """Return the callback periods of a 1-worker local cluster's worker and its scheduler tick, in ms."""
    with local_cluster(1, settings=settings) as cluster, Client(cluster) as dask_client:
        callbacks = dask_client.run(
            lambda dask_worker: {
                name: callback.callback_time
                for name, callback in dask_worker.periodic_callbacks.items()
            },
            nanny=False,
        )
        scheduler_tick_ms = dask_client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.periodic_callbacks["tick"].callback_time
        )
    [worker] = callbacks.values()
    return worker, scheduler_tick_ms


def test_local_cluster_quiets_dask_background_work() -> None:
    worker, scheduler_tick_ms = worker_callback_ms(None)
    assert "profile" not in worker
    assert worker["tick"] == 200
    assert scheduler_tick_ms == 200


def test_local_cluster_without_settings_keeps_defaults() -> None:
    worker, scheduler_tick_ms = worker_callback_ms({})
    assert "profile" in worker
    assert worker["tick"] == 20
    assert scheduler_tick_ms == 20


def test_user_dask_configuration_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cluster_settings() == CLUSTER_SETTINGS
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "True")
    monkeypatch.setenv("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", "20ms")
    assert cluster_settings() == {}
