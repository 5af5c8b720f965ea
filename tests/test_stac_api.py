"""Planning and search against a real STAC API: ``rustac serve`` of the sample items on 127.0.0.1.

The server loads the sample catalog's ``items.json`` into its in-memory backend. The
stac-geoparquet file is not served, because rustac serves .parquet files through DuckDB, which
tries to download an extension from the internet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import pipeline.search
from pipeline.config import CatalogSpec, RegionSpec, load_catalog, load_catalogs, load_region
from pipeline.errors import CatalogError, NoItemsError
from pipeline.plan import Plan, make_plan
from pipeline.sample import ITEMS_GEOJSON, S1_COLLECTION, S2_COLLECTION, sample_catalog_dir
from pipeline.search import search
from tests.stac_fixtures import serve_items_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CATALOG = REPO_ROOT / "catalogs" / "sample.yaml"
SAMPLE_REGION = REPO_ROOT / "splits" / "sample" / "region.yaml"
SAMPLE_CHIPS = 47
SAMPLE_ITEMS_PER_MODALITY = 6
API_LOGGER = "pystac_client.stac_api_io"


@pytest.fixture(scope="module")
def stac_api_url(sample_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``rustac serve`` on the sample items, yield its URL and stop it after the module."""
    items = sample_catalog_dir() / ITEMS_GEOJSON
    with serve_items_file(items, tmp_path_factory.mktemp("rustac")) as url:
        yield url


def _api_catalog_yaml(directory: Path, url: str, **s2_changes: Any) -> Path:
    """Write the sample catalog YAML with a stac-api source and ``s2_changes`` in ``modalities.s2``."""
    data = yaml.safe_load(SAMPLE_CATALOG.read_text(encoding="utf-8"))
    data["name"] = "sample-api"
    data["source"] = {"kind": "stac-api", "url": url}
    data["modalities"]["s2"].update(s2_changes)
    path = directory / "sample-api.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _api_region_yaml(directory: Path, catalog_path: Path) -> Path:
    """Write the sample region YAML with both modalities reading ``catalog_path``."""
    data = yaml.safe_load(SAMPLE_REGION.read_text(encoding="utf-8"))
    # A reference ending in .yaml is resolved relative to the region file.
    reference = catalog_path.relative_to(directory).as_posix()
    data["modalities"]["s2"]["catalog"] = reference
    data["modalities"]["s1"]["catalog"] = reference
    path = directory / "region.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _load_api_plan_inputs(
    directory: Path, url: str, **s2_changes: Any
) -> tuple[RegionSpec, dict[str, CatalogSpec]]:
    catalog_path = _api_catalog_yaml(directory, url, **s2_changes)
    region = load_region(_api_region_yaml(directory, catalog_path))
    return region, load_catalogs(region, REPO_ROOT / "catalogs")


@pytest.fixture(scope="module")
def local_inputs() -> tuple[RegionSpec, dict[str, CatalogSpec]]:
    region = load_region(SAMPLE_REGION)
    return region, load_catalogs(region, REPO_ROOT / "catalogs")


@pytest.fixture(scope="module")
def local_plan(local_inputs: tuple[RegionSpec, dict[str, CatalogSpec]]) -> Plan:
    return make_plan(*local_inputs)


@pytest.fixture(scope="module")
def api_plan(stac_api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    directory = tmp_path_factory.mktemp("api-plan")
    return make_plan(*_load_api_plan_inputs(directory, stac_api_url))


def test_api_catalog_yaml_loads_as_stac_api(tmp_path: Path, stac_api_url: str) -> None:
    region, catalogs = _load_api_plan_inputs(tmp_path, stac_api_url)

    assert list(catalogs) == ["sample-api.yaml"]
    catalog = catalogs["sample-api.yaml"]
    assert catalog.kind == "stac-api"
    assert catalog.url == stac_api_url
    assert catalog.modalities == load_catalog(SAMPLE_CATALOG).modalities
    assert region.s2.catalog == "sample-api.yaml"
    assert region.s1.catalog == "sample-api.yaml"


def test_plan_same_through_api_and_local(local_plan: Plan, api_plan: Plan) -> None:
    assert len(local_plan.tasks) == SAMPLE_CHIPS
    assert all(task.s2_candidates for task in local_plan.tasks)
    assert all(task.s1_items for task in local_plan.tasks)
    assert len(local_plan.s2.table) == SAMPLE_ITEMS_PER_MODALITY
    assert len(local_plan.s1.table) == SAMPLE_ITEMS_PER_MODALITY
    assert api_plan.comparable() == local_plan.comparable()


@pytest.mark.parametrize("modality", ["s2", "s1"])
def test_item_table_same_through_api(local_plan: Plan, api_plan: Plan, modality: str) -> None:
    columns = ["id", "collection", "datetime", "updated", "orbit_state"]

    local_table = getattr(local_plan, modality).table[columns].reset_index(drop=True)
    api_table = getattr(api_plan, modality).table[columns].reset_index(drop=True)

    assert local_table["updated"].notna().all()
    pd.testing.assert_frame_equal(api_table, local_table)


@pytest.mark.parametrize("page_size", [1, 2])
@pytest.mark.parametrize("modality", ["s2", "s1"])
def test_api_search_follows_pages(
    stac_api_url: str,
    local_inputs: tuple[RegionSpec, dict[str, CatalogSpec]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    modality: str,
    page_size: int,
) -> None:
    region, catalogs = local_inputs
    local_catalog = catalogs["sample"]
    api_catalog = dataclasses.replace(local_catalog, kind="stac-api", url=stac_api_url)
    source = local_catalog.source(modality)
    window = {"aoi": region.aoi, "start": region.start, "end": region.end}
    local_ids = list(search(local_catalog, source, **window).table["id"])
    monkeypatch.setattr(pipeline.search, "PAGE_SIZE", page_size)

    with caplog.at_level(logging.DEBUG, logger=API_LOGGER):
        api_ids = list(search(api_catalog, source, **window).table["id"])
    search_requests = [
        record for record in caplog.records if record.getMessage().startswith("POST ")
    ]
    # to_item_set drops repeated ids, so count the raw features of every page as well.
    features = pipeline.search._search_api(
        stac_api_url, source.collection, region.aoi, region.start, region.end
    )
    raw_ids = [feature["id"] for feature in features]

    assert len(local_ids) == SAMPLE_ITEMS_PER_MODALITY
    assert api_ids == local_ids
    assert len(search_requests) >= math.ceil(len(local_ids) / page_size)
    assert len(raw_ids) == len(set(raw_ids))
    assert sorted(raw_ids) == local_ids


@pytest.mark.parametrize(("modality", "collection"), [("s2", S2_COLLECTION), ("s1", S1_COLLECTION)])
def test_api_search_outside_time_range_raises(
    stac_api_url: str,
    local_inputs: tuple[RegionSpec, dict[str, CatalogSpec]],
    modality: str,
    collection: str,
) -> None:
    region, catalogs = local_inputs
    api_catalog = dataclasses.replace(catalogs["sample"], kind="stac-api", url=stac_api_url)
    start = dt.datetime(2010, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(2010, 12, 31, tzinfo=dt.UTC)

    with pytest.raises(NoItemsError, match=f"no items in collection '{collection}'"):
        search(api_catalog, api_catalog.source(modality), aoi=region.aoi, start=start, end=end)


def test_api_unknown_collection_names_choices(tmp_path: Path, stac_api_url: str) -> None:
    # rustac serve returns an empty page for a search over an unknown collection, so the
    # collection is checked against the API's list before searching.
    region, catalogs = _load_api_plan_inputs(
        tmp_path, stac_api_url, collection="sentinel-2-l2a-missing"
    )
    with pytest.raises(
        CatalogError,
        match=r"has no collection 'sentinel-2-l2a-missing'; it offers "
        r"\['bigearthnet-s1-grd', 'bigearthnet-s2-l2a'\]; fix the collection name",
    ):
        make_plan(region, catalogs)
