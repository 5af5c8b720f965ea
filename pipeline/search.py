"""Item search: pystac-client for STAC APIs, the same query over local stac-geoparquet files.

Both paths return an :class:`ItemSet`: a GeoDataFrame with one row per item (id, collection,
datetime, updated, cloud cover, orbit state, footprint) plus the item dicts by id, so later
stages work on tables rather than thousands of pystac objects.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import pandas as pd
import pystac_client
import pystac_client.exceptions
import rustac
import shapely
import shapely.geometry
from pandas._libs.tslibs.nattype import NaTType

from pipeline.config import CatalogSpec, ModalitySource
from pipeline.errors import CatalogError, NoItemsError

log = logging.getLogger(__name__)

PAGE_SIZE = 100
TABLE_COLUMNS = ["id", "collection", "datetime", "updated", "cloud_cover", "orbit_state"]


@dataclass(frozen=True)
class ItemSet:
    """Items of one modality: a table for planning and the item dicts for reading."""

    table: gpd.GeoDataFrame
    items: Mapping[str, Mapping[str, Any]]


def _timestamp(value: object) -> pd.Timestamp | NaTType:
    if value is None:
        return pd.NaT
    stamp = pd.Timestamp(str(value))
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def to_item_set(features: Iterable[Mapping[str, Any]]) -> ItemSet:
    """Build an :class:`ItemSet`, keeping the first copy of an id seen twice."""
    items: dict[str, Mapping[str, Any]] = {}
    for feature in features:
        items.setdefault(str(feature["id"]), feature)
    rows = []
    for item_id in sorted(items):
        feature = items[item_id]
        properties = feature.get("properties", {})
        rows.append(
            {
                "id": item_id,
                "collection": feature.get("collection"),
                "datetime": _timestamp(
                    properties.get("datetime") or properties.get("start_datetime")
                ),
                "updated": _timestamp(properties.get("updated")),
                "cloud_cover": float(properties.get("eo:cloud_cover", float("nan"))),
                "orbit_state": properties.get("sat:orbit_state"),
                "geometry": shapely.geometry.shape(feature["geometry"]),
            }
        )
    table = gpd.GeoDataFrame(
        rows, columns=[*TABLE_COLUMNS, "geometry"], geometry="geometry", crs="EPSG:4326"
    )
    return ItemSet(table=table, items=items)


def _datetime_range(start: dt.datetime, end: dt.datetime) -> str:
    return f"{start.strftime('%Y-%m-%dT%H:%M:%SZ')}/{end.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def search(
    catalog: CatalogSpec,
    source: ModalitySource,
    *,
    aoi: shapely.Geometry,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> ItemSet:
    """Search one modality of a catalog; raise :class:`NoItemsError` when nothing matches.

    ``start`` and ``end`` of None search all times (a DEM is static).
    """
    if catalog.kind == "stac-api":
        assert catalog.url is not None
        features = _search_api(catalog.url, source.collection, aoi, start, end)
    else:
        features = _filter_features(
            _local_features(catalog, source), source.collection, aoi, start, end
        )
    item_set = to_item_set(features)
    window = (
        "at any time"
        if start is None or end is None
        else f"between {start.isoformat()} and {end.isoformat()}"
    )
    log.info(
        "catalog %s collection %s: %d items %s",
        catalog.name,
        source.collection,
        len(item_set.table),
        window,
    )
    if item_set.table.empty:
        raise NoItemsError(
            f"catalog {catalog.name!r} returned no items in collection {source.collection!r} "
            f"for the AOI {window}; widen the time range, check the AOI and the collection "
            f"name in {catalog.path}, or choose another catalog in the region file"
        )
    return item_set


def _local_features(catalog: CatalogSpec, source: ModalitySource) -> list[dict[str, Any]]:
    if catalog.kind == "raster-files":
        from pipeline.local_catalog import scan_items

        return scan_items(catalog, source)
    return _read_geoparquet(_geoparquet_href(catalog))


def fetch_by_ids(catalog: CatalogSpec, source: ModalitySource, ids: Sequence[str]) -> ItemSet:
    """Fetch items by id, without a spatial or temporal search; raise if any id is missing."""
    requested = sorted(set(ids))
    if catalog.kind == "stac-api":
        assert catalog.url is not None
        features = _fetch_api(catalog.url, source.collection, requested)
    else:
        features = [
            feature
            for feature in _local_features(catalog, source)
            if feature.get("collection") == source.collection and feature["id"] in set(requested)
        ]
    item_set = to_item_set(features)
    missing = sorted(set(requested) - set(item_set.items))
    if missing:
        raise CatalogError(
            f"catalog {catalog.name!r} no longer has items {missing[:10]} of collection "
            f"{source.collection!r} ({len(missing)} missing); the frozen release cannot be "
            "rebuilt from this catalog"
        )
    return item_set


def _fetch_api(url: str, collection: str, ids: list[str]) -> list[dict[str, Any]]:
    try:
        client = pystac_client.Client.open(url)
        item_search = client.search(collections=[collection], ids=ids, limit=PAGE_SIZE)
        features: list[dict[str, Any]] = []
        for page in item_search.pages_as_dicts():
            features.extend(page.get("features", []))
    except pystac_client.exceptions.APIError as error:
        raise CatalogError(
            f"fetching {len(ids)} items of {collection!r} from STAC API {url} failed: {error}"
        ) from error
    return features


def _read_geoparquet(href: str) -> list[dict[str, Any]]:
    try:
        collection_dict = rustac.read_sync(href)
    except (rustac.RustacError, OSError) as error:
        raise CatalogError(f"cannot read stac-geoparquet file {href!r}: {error}") from error
    features: list[dict[str, Any]] = collection_dict["features"]
    return features


def _geoparquet_href(catalog: CatalogSpec) -> str:
    if catalog.kind == "bigearthnet-sample":
        from pipeline.sample import ITEMS_PARQUET, sample_catalog_dir

        return str(sample_catalog_dir() / ITEMS_PARQUET)
    assert catalog.href is not None
    return catalog.href


def _search_api(
    url: str,
    collection: str,
    aoi: shapely.Geometry,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> list[dict[str, Any]]:
    window = None if start is None or end is None else _datetime_range(start, end)
    try:
        client = pystac_client.Client.open(url)
        _check_collection(client, url, collection)
        item_search = client.search(
            collections=[collection],
            intersects=shapely.geometry.mapping(aoi),
            datetime=window,
            limit=PAGE_SIZE,
        )
        features: list[dict[str, Any]] = []
        for page in item_search.pages_as_dicts():
            features.extend(page.get("features", []))
    except pystac_client.exceptions.APIError as error:
        # pystac-client also reports connection failures as APIError.
        raise CatalogError(
            f"search of collection {collection!r} on STAC API {url} failed: {error}; check "
            "that the API is reachable and the collection exists"
        ) from error
    except OSError as error:
        raise CatalogError(f"STAC API {url} could not be reached: {error}") from error
    return features


def _check_collection(client: pystac_client.Client, url: str, collection: str) -> None:
    """Raise :class:`CatalogError` naming the available collections when one is missing.

    Some APIs return an empty page for a search over an unknown collection, which would
    otherwise look like a time range without data.
    """
    available = sorted(str(c.id) for c in client.get_collections())
    if collection not in available:
        raise CatalogError(
            f"STAC API {url} has no collection {collection!r}; it offers {available[:50]}; "
            "fix the collection name in the catalog YAML"
        )


def _filter_features(
    features: list[dict[str, Any]],
    collection: str,
    aoi: shapely.Geometry,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> list[dict[str, Any]]:
    """The features of a collection meeting the AOI, and overlapping the time range if given."""
    shapely.prepare(aoi)
    matches = []
    for feature in features:
        if feature.get("collection") != collection:
            continue
        if start is not None and end is not None and not _overlaps(feature, start, end):
            continue
        if shapely.intersects(aoi, shapely.geometry.shape(feature["geometry"])):
            matches.append(feature)
    return matches


def _overlaps(feature: Mapping[str, Any], start: dt.datetime, end: dt.datetime) -> bool:
    properties = feature["properties"]
    first = _timestamp(properties.get("datetime") or properties.get("start_datetime"))
    last = _timestamp(properties.get("datetime") or properties.get("end_datetime"))
    return bool(first <= pd.Timestamp(end) and pd.Timestamp(start) <= last)
