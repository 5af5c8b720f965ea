"""Static STAC catalogs (source kind stac-static): walked from a catalog.json on disk or over HTTP.

The catalog written here has the shape of the Maxar Open Data catalog: a root catalog, one
collection per event, collections per acquisition below it, and items whose ``collection``
field names the acquisition. A second event lies elsewhere, and its item file is deleted, so a
search over the first event succeeds only if the walk never opens branches outside the AOI.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pystac
import pytest
import shapely.geometry
import yaml

from pipeline.cli import main
from pipeline.config import load_catalog
from pipeline.errors import CatalogError
from pipeline.search import fetch_by_ids, search
from tests.http_server import serve_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENT = "flood-event-23"
AOI = shapely.geometry.box(13.00, 52.40, 13.02, 52.42)


def _item(item_id: str, bbox: list[float], when: dt.datetime, collection: str) -> pystac.Item:
    item = pystac.Item(
        id=item_id,
        geometry=shapely.geometry.mapping(shapely.geometry.box(*bbox)),
        bbox=bbox,
        datetime=when,
        properties={},
        collection=collection,
    )
    item.add_asset(
        "visual", pystac.Asset(href=f"./{item_id}-visual.tif", media_type=pystac.MediaType.COG)
    )
    return item


def _collection(collection_id: str, bbox: list[float]) -> pystac.Collection:
    extent = pystac.Extent(
        pystac.SpatialExtent([bbox]),
        pystac.TemporalExtent([[dt.datetime(2023, 1, 1, tzinfo=dt.UTC), None]]),
    )
    return pystac.Collection(collection_id, f"collection {collection_id}", extent)


def write_static_catalog(root: Path) -> Path:
    """Write the catalog under ``root`` and return the path of its catalog.json."""
    catalog = pystac.Catalog("open-data", "events")
    event = _collection(EVENT, [12.9, 52.3, 13.1, 52.5])
    acquisition = _collection("10300100E1234500", [12.9, 52.3, 13.1, 52.5])
    july = dt.datetime(2023, 7, 10, 10, 30, tzinfo=dt.UTC)
    acquisition.add_item(_item("tile-in", [13.00, 52.40, 13.01, 52.41], july, acquisition.id))
    acquisition.add_item(
        _item("tile-outside-aoi", [13.05, 52.45, 13.06, 52.46], july, acquisition.id)
    )
    late = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    acquisition.add_item(_item("tile-later", [13.00, 52.40, 13.01, 52.41], late, acquisition.id))
    event.add_child(acquisition)
    elsewhere = _collection("quake-event-7", [36.0, 37.0, 37.0, 38.0])
    elsewhere.add_item(_item("tile-elsewhere", [36.1, 37.1, 36.2, 37.2], july, "quake-event-7"))
    catalog.add_children([event, elsewhere])
    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    # Opening this branch would fail the search.
    next(root.glob("quake-event-7/tile-elsewhere/*.json")).unlink()
    return root / "catalog.json"


def catalog_file(path: Path, href: str) -> Path:
    data = yaml.safe_load((REPO_ROOT / "catalogs/maxar-open-data.yaml").read_text("utf-8"))
    data["source"]["href"] = href
    data["modalities"]["vhr"]["collection"] = EVENT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def search_ids(catalog_path: Path) -> tuple[list[str], dict[str, Any]]:
    catalog = load_catalog(catalog_path)
    item_set = search(
        catalog,
        catalog.source("vhr"),
        aoi=AOI,
        start=dt.datetime(2023, 7, 1),
        end=dt.datetime(2023, 7, 31),
    )
    return sorted(item_set.items), dict(item_set.items)


def test_static_catalog_from_disk(tmp_path: Path) -> None:
    root = write_static_catalog(tmp_path / "static")
    catalog_path = catalog_file(tmp_path / "catalogs/maxar.yaml", "../static/catalog.json")

    ids, items = search_ids(catalog_path)

    assert ids == ["tile-in"]
    href = items["tile-in"]["assets"]["visual"]["href"]
    assert Path(href).is_absolute()
    assert Path(href).is_relative_to(root.parent)
    assert href.endswith("/tile-in/tile-in-visual.tif")
    assert items["tile-in"]["collection"] == "10300100E1234500"


def test_static_catalog_over_http(tmp_path: Path) -> None:
    write_static_catalog(tmp_path / "static")
    with serve_folder(tmp_path / "static") as server:
        catalog_path = catalog_file(tmp_path / "catalogs/maxar.yaml", f"{server.url}/catalog.json")
        ids, items = search_ids(catalog_path)
        requests = server.stats.requests

    assert ids == ["tile-in"]
    href = items["tile-in"]["assets"]["visual"]["href"]
    assert href.startswith(f"{server.url}/")
    assert href.endswith("/tile-in/tile-in-visual.tif")
    assert requests > 0


def test_static_catalog_fetch_by_ids(tmp_path: Path) -> None:
    write_static_catalog(tmp_path / "static")
    catalog = load_catalog(catalog_file(tmp_path / "catalogs/maxar.yaml", "../static/catalog.json"))
    source = catalog.source("vhr")

    # Without an AOI the walk opens every branch, so the deleted item file fails the fetch.
    with pytest.raises(CatalogError, match=r"reading static catalog .*catalog\.json.* failed"):
        fetch_by_ids(catalog, source, ["tile-in"])


def test_static_catalog_plan_from_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_static_catalog(tmp_path / "static")
    with serve_folder(tmp_path / "static") as server:
        catalog_file(tmp_path / "catalogs/maxar-open-data.yaml", f"{server.url}/catalog.json")
        region = {
            "name": "flood",
            "aoi": shapely.geometry.mapping(AOI),
            "time": {"start": "2023-07-01", "end": "2023-07-31"},
            "grid": {"chip_size": 32, "resolution": 10},
            "modalities": {
                "vhr": {"catalog": "maxar-open-data", "bands": ["red", "green", "blue"]}
            },
        }
        (tmp_path / "splits/flood").mkdir(parents=True)
        (tmp_path / "splits/flood/region.yaml").write_text(json.dumps(region), encoding="utf-8")
        monkeypatch.chdir(tmp_path)
        capsys.readouterr()

        code = main(["plan", "flood"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    # The search widens the time range by max_time_gap_days (10 years by default for vhr).
    assert summary["vhr_items"] == 2
    assert summary["chips"] > 0


def test_static_catalog_missing_file_is_reported(tmp_path: Path) -> None:
    catalog_path = catalog_file(tmp_path / "catalogs/maxar.yaml", "../nowhere/catalog.json")

    with pytest.raises(CatalogError, match=r"reading static catalog '.*nowhere/catalog\.json'"):
        search_ids(catalog_path)


def test_maxar_catalog_names_static_root() -> None:
    catalog = load_catalog(REPO_ROOT / "catalogs/maxar-open-data.yaml")

    assert catalog.kind == "stac-static"
    assert catalog.href == "https://maxar-opendata.s3.amazonaws.com/events/catalog.json"
    assert "CC BY-NC 4.0" in catalog.licence
    assert [band.index for band in catalog.source("vhr").bands] == [1, 2, 3]
