"""Search against STAC APIs on 127.0.0.1, with the real recorded items of public catalogs.

Pinned field bugs: a page boundary that repeats an item, a naive search end, and footprints
that cross the antimeridian. ``rustac serve`` serves copies of the real items of
``stac-items``. Where a case needs other datetimes, ids or geometries, the test copies a real
item and edits exactly those fields, as its comments name. A repeated item needs an API that
pages inconsistently, which rustac does not, so those tests use a small paging server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely
import shapely.geometry
import yaml

import pipeline.search
from pipeline.config import CatalogSpec, load_catalog, load_catalogs, load_region
from pipeline.errors import CatalogError
from pipeline.grid import chips_for_aoi, zone_epsg
from pipeline.plan import make_plan
from pipeline.search import query_geometries, search
from tests.stac_fixtures import read_items, serve_items, serve_pages, with_changes

pytestmark = pytest.mark.shared_data

REPO_ROOT = Path(__file__).resolve().parents[1]
PC_S2_FILE = "planetary-computer-sentinel-2-l2a.json"
PC_S1_FILE = "planetary-computer-sentinel-1-rtc.json"
ANTIMERIDIAN_FILE = "stactools-sentinel-2-l2a-baseline-05.09.json"
COLLECTION = "sentinel-2-l2a"
# Inside the footprints of PC tiles 46XER and 47XML (Severnaya Zemlya, 2024-04-19).
ARCTIC_AOI = shapely.box(95.8, 81.2, 96.2, 81.3)
# The pinned antimeridian case: its chips are in UTM zone 60S, the scene's tile is in zone 1S.
ANTIMERIDIAN_AOI = shapely.box(179.1, -17.7, 179.95, -17.0)
API_LOGGER = "pystac_client.stac_api_io"


def _pc_catalog(url: str) -> CatalogSpec:
    """The Planetary Computer catalog of the repository, pointed at a local API."""
    catalog = load_catalog(REPO_ROOT / "catalogs" / "planetary-computer.yaml")
    return dataclasses.replace(catalog, url=url)


def _search_ids(catalog: CatalogSpec, aoi: shapely.Geometry, **window: Any) -> list[str]:
    item_set = search(catalog, catalog.source("s2"), aoi=aoi, **window)
    return list(item_set.table["id"])


# ----------------------------------------------------------------------------------------------
# Paging


@pytest.fixture(scope="module")
def recorded_pc_api(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve the 4 real Sentinel-2 and 4 real Sentinel-1 RTC items of Planetary Computer."""
    items = read_items(shared_data, PC_S2_FILE) + read_items(shared_data, PC_S1_FILE)
    with serve_items(items, tmp_path_factory.mktemp("pc-api")) as url:
        yield url


@pytest.mark.parametrize(("modality", "file_name"), [("s2", PC_S2_FILE), ("s1", PC_S1_FILE)])
def test_pages_followed_to_the_end(
    shared_data: Path,
    recorded_pc_api: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    modality: str,
    file_name: str,
) -> None:
    recorded = read_items(shared_data, file_name)
    aoi = shapely.union_all([shapely.geometry.shape(item["geometry"]) for item in recorded])
    catalog = _pc_catalog(recorded_pc_api)
    monkeypatch.setattr(pipeline.search, "PAGE_SIZE", 1)

    with caplog.at_level(logging.DEBUG, logger=API_LOGGER):
        item_set = search(catalog, catalog.source(modality), aoi=aoi, start=None, end=None)
    searches = [record for record in caplog.records if record.getMessage().startswith("POST ")]

    assert sorted(item_set.table["id"]) == sorted(item["id"] for item in recorded)
    assert len(searches) >= len(recorded)
    assert set(item_set.table["collection"]) == {catalog.source(modality).collection}


def test_repeated_item_planned_once(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Real PC items on three pages. The second page starts with the last item of the first,
    # as an API paging by offset does when its order shifts between requests. The repeated
    # item (tile 47XML) covers the AOI.
    repeated, second, third, fourth = read_items(shared_data, PC_S2_FILE)
    pages = [[second, repeated], [repeated, third], [fourth]]
    with serve_pages(COLLECTION, pages, number_matched=4) as server:
        region, catalogs = _arctic_region(tmp_path, server.url)
        with caplog.at_level(logging.WARNING, logger="pipeline.search"):
            plan = make_plan(region, catalogs)
    ids = list(plan.s2.table["id"])
    candidates = [item for task in plan.tasks for item in task.s2_candidates]

    assert len(server.search_bodies) == 3
    assert len(ids) == 4
    assert sorted(ids) == sorted(item["id"] for item in (repeated, second, third, fourth))
    assert plan.tasks
    assert all(len(task.s2_candidates) == len(set(task.s2_candidates)) for task in plan.tasks)
    assert candidates.count(repeated["id"]) == len(plan.tasks)
    assert "1 features repeated an item of an earlier page" in caplog.text


def test_lost_item_across_pages_raises(shared_data: Path) -> None:
    # The API reports 4 matches, but its pages hold 3 distinct items: one was skipped.
    first, second, third, _ = read_items(shared_data, PC_S2_FILE)
    pages = [[first, second], [second, third]]
    with serve_pages(COLLECTION, pages, number_matched=4) as server:
        catalog = _pc_catalog(server.url)
        with pytest.raises(
            CatalogError,
            match=r"the API reports 4 matching items, but its 2 pages returned 3 distinct "
            r"items, so paging lost items; run the command again",
        ):
            _search_ids(catalog, ARCTIC_AOI, start=None, end=None)


def test_count_matches_number_matched(shared_data: Path) -> None:
    items = read_items(shared_data, PC_S2_FILE)
    pages = [items[:3], items[3:]]
    with serve_pages(COLLECTION, pages, number_matched=len(items)) as server:
        ids = _search_ids(_pc_catalog(server.url), ARCTIC_AOI, start=None, end=None)

    assert len(ids) == len(items)
    assert sorted(ids) == sorted(item["id"] for item in items)


# ----------------------------------------------------------------------------------------------
# Datetimes


# Copies of a real PC item whose ids and datetimes are edited around the search end 00:12:00.
DATETIMES = {
    "t-0011-59": "2023-01-11T00:11:59Z",
    "t-0012-00": "2023-01-11T00:12:00Z",
    "t-0012-00.5": "2023-01-11T00:12:00.500000Z",
    "t-0012-01": "2023-01-11T00:12:01Z",
    "t-0013-00": "2023-01-11T00:13:00Z",
    "t-0211-00-local": "2023-01-11T02:11:00+02:00",
}
UP_TO_0012 = ["t-0011-59", "t-0012-00", "t-0211-00-local"]


@pytest.fixture(scope="module")
def timed_api(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    template = read_items(shared_data, PC_S2_FILE)[0]
    items = [
        with_changes(template, id=item_id, properties={"datetime": stamp})
        for item_id, stamp in DATETIMES.items()
    ]
    with serve_items(items, tmp_path_factory.mktemp("timed-api")) as url:
        yield url


@pytest.mark.parametrize(
    "end",
    [
        dt.datetime(2023, 1, 11, 0, 12),
        dt.datetime(2023, 1, 11, 0, 12, tzinfo=dt.UTC),
        dt.datetime(2023, 1, 11, 2, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    ],
    ids=["naive", "utc", "plus-2h"],
)
def test_search_end_is_exact_utc(timed_api: str, end: dt.datetime) -> None:
    start = dt.datetime(2023, 1, 11)

    ids = _search_ids(_pc_catalog(timed_api), ARCTIC_AOI, start=start, end=end)

    assert ids == sorted(UP_TO_0012)


def test_region_end_without_zone_is_utc(timed_api: str, tmp_path: Path) -> None:
    region, catalogs = _arctic_region(
        tmp_path, timed_api, time={"start": "2023-01-11", "end": "2023-01-11T00:12:00"}
    )

    plan = make_plan(region, catalogs)

    assert region.end == dt.datetime(2023, 1, 11, 0, 12, tzinfo=dt.UTC)
    assert sorted(plan.s2.table["id"]) == sorted(UP_TO_0012)
    assert (plan.s2.table["datetime"] <= region.end).all()


def test_local_filter_reads_naive_end_as_utc(shared_data: Path) -> None:
    template = read_items(shared_data, PC_S2_FILE)[0]
    features = [
        with_changes(template, id=item_id, properties={"datetime": stamp})
        for item_id, stamp in DATETIMES.items()
    ]

    kept = pipeline.search._filter_features(
        features,
        COLLECTION,
        ARCTIC_AOI,
        pipeline.search.to_utc(dt.datetime(2023, 1, 11)),
        pipeline.search.to_utc(dt.datetime(2023, 1, 11, 0, 12)),
    )

    assert sorted(feature["id"] for feature in kept) == sorted(UP_TO_0012)


# ----------------------------------------------------------------------------------------------
# Antimeridian


def _crossing_items(shared_data: Path) -> list[dict[str, Any]]:
    """The real T01KAB scene and copies of it written the ways catalogs write a crossing.

    The real item's footprint is a MultiPolygon split at 180. The copies change only the id and
    the geometry: one polygon whose longitudes jump from +179.26 to -179.73, and one whose
    longitudes run on to 180.28. A fourth copy moved to 0-1E is outside the AOI.
    """
    (real,) = read_items(shared_data, ANTIMERIDIAN_FILE)
    real = with_changes(real, collection=COLLECTION)
    west, east = real["geometry"]["coordinates"]
    west_ring = [point for point in west[0] if point[0] != 180.0]
    east_ring = [point for point in east[0] if point[0] != -180.0]
    jumping = [*west_ring, *east_ring, west_ring[0]]
    beyond = [*west_ring, *[[lon + 360.0, lat] for lon, lat in east_ring], west_ring[0]]
    far = [[lon - 179.0 if lon > 0 else lon + 181.0, lat] for lon, lat in jumping]
    return [
        real,
        with_changes(real, id="crossing-jump", geometry=_polygon(jumping)),
        with_changes(real, id="crossing-beyond-180", geometry=_polygon(beyond)),
        with_changes(real, id="far-from-aoi", geometry=_polygon(far)),
    ]


def _polygon(ring: list[list[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [ring]}


@pytest.fixture(scope="module")
def crossing_api(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_items(_crossing_items(shared_data), tmp_path_factory.mktemp("crossing")) as url:
        yield url


def _es_catalog(url: str) -> CatalogSpec:
    catalog = load_catalog(REPO_ROOT / "catalogs" / "earth-search.yaml")
    return dataclasses.replace(catalog, url=url)


CROSSING_IDS = ["S2A_T01KAB_20230821T221944_L2A", "crossing-beyond-180", "crossing-jump"]


def test_crossing_footprints_all_found(crossing_api: str) -> None:
    item_set = search(
        _es_catalog(crossing_api),
        _es_catalog(crossing_api).source("s2"),
        aoi=ANTIMERIDIAN_AOI,
        start=None,
        end=None,
    )
    table = item_set.table.set_index("id")

    assert sorted(table.index) == CROSSING_IDS
    for item_id in CROSSING_IDS:
        geometry = table.loc[item_id, "geometry"]
        assert geometry.geom_type == "MultiPolygon", item_id
        assert geometry.bounds[0] == -180.0, item_id
        assert geometry.bounds[2] == 180.0, item_id
        assert geometry.area < 2.0, item_id


def test_crossing_plan_lists_items_per_chip(
    shared_data: Path, crossing_api: str, tmp_path: Path
) -> None:
    # 264 px at 30 m (7.9 km) keeps the chip count near 100 over this large AOI.
    region, catalogs = _region(
        tmp_path,
        _es_catalog_yaml(tmp_path, crossing_api),
        aoi=shapely.geometry.mapping(ANTIMERIDIAN_AOI),
        time={"start": "2023-08-21", "end": "2023-08-22"},
        resolution_m=30.0,
    )
    (real,) = read_items(shared_data, ANTIMERIDIAN_FILE)
    real_footprint = shapely.geometry.shape(real["geometry"])

    plan = make_plan(region, catalogs)
    inside = [t for t in plan.tasks if t.chip.footprint_lonlat().within(real_footprint)]
    outside = [t for t in plan.tasks if not t.chip.footprint_lonlat().intersects(real_footprint)]

    assert {task.chip.epsg for task in plan.tasks} == {32760}
    assert inside
    assert outside
    for task in inside:
        assert sorted(task.s2_candidates) == CROSSING_IDS, task.chip.id
    for task in outside:
        assert task.s2_candidates == (), task.chip.id


def test_aoi_across_180_searched_per_side(
    crossing_api: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    aoi = shapely.MultiPolygon(
        [shapely.box(179.8, -17.1, 180.0, -17.0), shapely.box(-180.0, -17.1, -179.9, -17.0)]
    )
    region, catalogs = _region(
        tmp_path,
        _es_catalog_yaml(tmp_path, crossing_api),
        aoi=shapely.geometry.mapping(aoi),
        time={"start": "2023-08-21", "end": "2023-08-22"},
    )

    with caplog.at_level(logging.DEBUG, logger=API_LOGGER):
        plan = make_plan(region, catalogs)
    bodies = [
        json.loads(record.getMessage().split(" Payload: ", 1)[1].split(" Timeout: ")[0])
        for record in caplog.records
        if record.getMessage().startswith("POST ") and " Payload: " in record.getMessage()
    ]
    spans = [_lon_span(body["intersects"]) for body in bodies]
    by_zone = {epsg: [t for t in plan.tasks if t.chip.epsg == epsg] for epsg in (32760, 32701)}

    assert len(bodies) == 2
    assert max(spans) < 1.0
    # The API compares footprints in planar lon/lat, so of the copies it finds the one running
    # past 180 but not the one jumping to -179.73, whose planar polygon ends at 179.26.
    assert sorted(plan.s2.table["id"]) == [CROSSING_IDS[0], "crossing-beyond-180"]
    assert [t.chip for t in plan.tasks] == chips_for_aoi(region.aoi, region.grid)
    for epsg, tasks in by_zone.items():
        assert tasks, epsg
        for task in tasks:
            lon, lat = task.chip.centre_lonlat()
            assert zone_epsg(lon, lat) == epsg, task.chip.id
            assert "S2A_T01KAB_20230821T221944_L2A" in task.s2_candidates, task.chip.id


def _lon_span(geometry: dict[str, Any]) -> float:
    min_lon, _, max_lon, _ = shapely.geometry.shape(geometry).bounds
    return float(max_lon - min_lon)


def test_query_geometries_split_only_wide_aois() -> None:
    narrow = shapely.MultiPolygon([shapely.box(10, 0, 11, 1), shapely.box(40, 0, 41, 1)])
    across = shapely.MultiPolygon(
        [shapely.box(179.5, -1, 180, 1), shapely.box(-180, -1, -179.5, 1)]
    )

    east, west = query_geometries(across)

    assert query_geometries(narrow) == [narrow]
    assert query_geometries(ANTIMERIDIAN_AOI) == [ANTIMERIDIAN_AOI]
    assert east.bounds == (179.5, -1.0, 180.0, 1.0)
    assert west.bounds == (-180.0, -1.0, -179.5, 1.0)


# ----------------------------------------------------------------------------------------------
# Region and catalog files pointing at a local API


def _pc_catalog_yaml(directory: Path, url: str) -> Path:
    data = yaml.safe_load((REPO_ROOT / "catalogs/planetary-computer.yaml").read_text())
    data["source"]["url"] = url
    path = directory / "planetary-computer-local.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _es_catalog_yaml(directory: Path, url: str) -> Path:
    data = yaml.safe_load((REPO_ROOT / "catalogs/earth-search.yaml").read_text())
    data["source"]["url"] = url
    path = directory / "earth-search-local.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _region(
    directory: Path,
    catalog_path: Path,
    *,
    aoi: dict[str, Any],
    time: dict[str, str],
    resolution_m: float = 10.0,
) -> tuple[Any, dict[str, CatalogSpec]]:
    region_data = {
        "name": "search-test",
        "aoi": aoi,
        "time": time,
        "grid": {"chip_size": 264, "resolution": resolution_m},
        "modalities": {"s2": {"catalog": catalog_path.name, "bands": ["B04", "B08"]}},
    }
    path = directory / "region.yaml"
    path.write_text(yaml.safe_dump(region_data, sort_keys=False), encoding="utf-8")
    region = load_region(path)
    return region, load_catalogs(region, REPO_ROOT / "catalogs")


def _arctic_region(
    directory: Path, url: str, *, time: dict[str, str] | None = None
) -> tuple[Any, dict[str, CatalogSpec]]:
    return _region(
        directory,
        _pc_catalog_yaml(directory, url),
        aoi=shapely.geometry.mapping(ARCTIC_AOI),
        time=time or {"start": "2024-04-19", "end": "2024-04-19"},
    )
