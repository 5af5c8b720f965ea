"""Item search: pystac-client for STAC APIs, the same query over local stac-geoparquet files.

A static catalog (``stac-static``: a catalog.json and its children, on disk or over http) is
walked with pystac. Every path returns an :class:`ItemSet`: a GeoDataFrame with one row per
item (id, collection, datetime, updated, cloud cover, orbit state, footprint) plus the item
dicts by id, so later stages work on tables rather than thousands of pystac objects.

Searches follow every page, keep one copy of an item that two pages both return, and read
naive datetimes as UTC. An AOI wider than 180 degrees of longitude (one that crosses the
antimeridian) is searched as its eastern and its western parts. This module also signs asset
hrefs for catalogs that require it (:func:`sign_item`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import antimeridian
import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd
import pystac
import pystac_client
import pystac_client.exceptions
import rustac
import shapely
import shapely.geometry
from pandas._libs.tslibs.nattype import NaTType

from pipeline.config import CatalogSpec, ModalitySource
from pipeline.credentials import require_credentials
from pipeline.errors import CatalogError, NoItemsError, ReadError

log = logging.getLogger(__name__)

PAGE_SIZE = 100
# A query geometry wider than this would be read by many APIs as spanning the globe.
MAX_QUERY_LON_SPAN_DEG = 180.0
TABLE_COLUMNS = ["id", "collection", "datetime", "updated", "cloud_cover", "orbit_state"]


@dataclass(frozen=True)
class ItemSet:
    """Items of one modality: a table for planning and the item dicts for reading."""

    table: gpd.GeoDataFrame
    items: Mapping[str, Mapping[str, Any]]


def _timestamps(values: Sequence[object]) -> pd.DatetimeIndex:
    """Parse datetimes as UTC: naive values are taken as UTC, None becomes NaT."""
    texts = pd.Series([None if value is None else str(value) for value in values], dtype=object)
    try:
        return pd.DatetimeIndex(pd.to_datetime(texts, utc=True, format="ISO8601"))
    except ValueError:
        # Some values are not RFC 3339, so each is parsed with pandas' general parser.
        return pd.DatetimeIndex([_timestamp(text) for text in texts])


def _timestamp(value: str | None) -> pd.Timestamp | NaTType:
    if value is None:
        return pd.NaT
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def to_item_set(features: Iterable[Mapping[str, Any]]) -> ItemSet:
    """Build an :class:`ItemSet`, keeping the first copy of an id seen twice."""
    items: dict[str, Mapping[str, Any]] = {}
    for feature in features:
        items.setdefault(str(feature["id"]), feature)
    ids = sorted(items)
    if not ids:
        empty = gpd.GeoDataFrame(
            [], columns=[*TABLE_COLUMNS, "geometry"], geometry="geometry", crs="EPSG:4326"
        )
        return ItemSet(table=empty, items=items)
    ordered = [items[item_id] for item_id in ids]
    properties = [feature.get("properties", {}) for feature in ordered]
    columns = {
        "id": ids,
        "collection": [feature.get("collection") for feature in ordered],
        "datetime": _timestamps(
            [props.get("datetime") or props.get("start_datetime") for props in properties]
        ),
        "updated": _timestamps([props.get("updated") for props in properties]),
        "cloud_cover": [float(props.get("eo:cloud_cover", float("nan"))) for props in properties],
        "orbit_state": [props.get("sat:orbit_state") for props in properties],
    }
    geometry = footprints([feature["geometry"] for feature in ordered])
    table = gpd.GeoDataFrame(columns, geometry=geometry, crs="EPSG:4326")
    return ItemSet(table=table, items=items)


def footprints(geometries: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.object_]:
    """Return items' GeoJSON geometries as shapely, each split at the antimeridian if it crosses it.

    GEOS parses all of them at once. Only a geometry whose bounds leave -180..180 or span more
    than 180 degrees of longitude is checked part by part (see :func:`footprint`).
    """
    if not geometries:
        return np.array([], dtype=object)
    shapes: npt.NDArray[np.object_] = shapely.from_geojson(
        [json.dumps(geometry) for geometry in geometries]
    )
    min_lon, _, max_lon, _ = shapely.bounds(shapes).T
    plain = (min_lon >= -180.0) & (max_lon <= 180.0) & (max_lon - min_lon <= MAX_QUERY_LON_SPAN_DEG)
    for index in np.flatnonzero(~plain).tolist():
        shapes[index] = footprint(geometries[index])
    return shapes


def footprint(geometry: Mapping[str, Any]) -> shapely.Geometry:
    """Return an item's GeoJSON geometry as shapely, split at the antimeridian if it crosses it.

    Some catalogs write a crossing footprint as one polygon whose longitudes jump from about
    +179 to -179, or run past 180. Read as planar lon/lat, such a polygon covers the rest of the
    globe instead of the scene, so it becomes a MultiPolygon with one part on each side.
    """
    shape = shapely.geometry.shape(geometry)
    if all(_within_lon_range(part) for part in shapely.get_parts(shape)):
        return shape
    fixed = antimeridian.fix_shape(dict(geometry), fix_winding=True)
    return shapely.geometry.shape(fixed)


def _within_lon_range(part: shapely.Geometry) -> bool:
    min_lon, _, max_lon, _ = (float(value) for value in part.bounds)
    return -180.0 <= min_lon and max_lon <= 180.0 and max_lon - min_lon <= MAX_QUERY_LON_SPAN_DEG


def query_geometries(aoi: shapely.Geometry) -> list[shapely.Geometry]:
    """Split an AOI wider than 180 degrees of longitude into its eastern and western parts.

    A region crossing the antimeridian is a MultiPolygon with one part on each side (the
    region loader requires that). Sent whole, its bounding box spans the globe, so each side
    is searched on its own. Narrower AOIs are returned unchanged, as the only element.
    """
    min_lon, _, max_lon, _ = aoi.bounds
    if max_lon - min_lon <= MAX_QUERY_LON_SPAN_DEG:
        return [aoi]
    parts = list(shapely.get_parts(aoi))
    east = [part for part in parts if part.centroid.x >= 0]
    west = [part for part in parts if part.centroid.x < 0]
    return [shapely.union_all(side) for side in (east, west) if side]


def to_utc(value: dt.datetime) -> dt.datetime:
    """Return ``value`` in UTC; a naive datetime is read as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _datetime_range(start: dt.datetime, end: dt.datetime) -> str:
    """Format a closed STAC datetime interval in UTC, to the microsecond at both ends."""
    pattern = "%Y-%m-%dT%H:%M:%S.%fZ"
    return f"{to_utc(start).strftime(pattern)}/{to_utc(end).strftime(pattern)}"


def search(
    catalog: CatalogSpec,
    source: ModalitySource,
    *,
    aoi: shapely.Geometry,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> ItemSet:
    """Search one modality of a catalog; raise :class:`NoItemsError` when nothing matches.

    ``start`` and ``end`` of None search all times (a DEM is static). Both ends are inclusive,
    and naive datetimes are read as UTC.
    """
    start = None if start is None else to_utc(start)
    end = None if end is None else to_utc(end)
    # A missing login fails the plan before any search or chip, with the variable to set.
    require_credentials(source.credentials, catalog=catalog.name)
    if catalog.kind == "stac-api":
        assert catalog.url is not None
        features = _search_api(catalog.url, source.collection, aoi, start, end)
    elif catalog.kind == "stac-static":
        # The walk has already kept the items of the collection, wherever they sit.
        features = _filter_features(_static_features(catalog, source, aoi), None, aoi, start, end)
    else:
        features = _filter_features(
            _local_features(catalog, source), source.collection, aoi, start, end
        )
    item_set = to_item_set(_prepare_items(features, source))
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


def _prepare_items(features: list[dict[str, Any]], source: ModalitySource) -> list[dict[str, Any]]:
    """Add what the reads need to items that lack it, such as the bands of EMIT granules."""
    if source.modality == "hsi" and source.format == "emit-netcdf":
        from pipeline.emit import prepare_items

        return prepare_items(features, source)
    return features


def fetch_by_ids(catalog: CatalogSpec, source: ModalitySource, ids: Sequence[str]) -> ItemSet:
    """Fetch items by id, without a spatial or temporal search; raise if any id is missing."""
    requested = sorted(set(ids))
    require_credentials(source.credentials, catalog=catalog.name)
    if catalog.kind == "stac-api":
        assert catalog.url is not None
        features = _fetch_api(catalog.url, source.collection, requested)
    elif catalog.kind == "stac-static":
        requested_ids = set(requested)
        features = [
            feature
            for feature in _static_features(catalog, source, None)
            if feature["id"] in requested_ids
        ]
    else:
        features = [
            feature
            for feature in _local_features(catalog, source)
            if feature.get("collection") == source.collection and feature["id"] in set(requested)
        ]
    item_set = to_item_set(_prepare_items(features, source))
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
        features = collect_pages(item_search.pages_as_dicts(), f"fetch of {collection!r}")
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
    features: list[dict[str, Any]] = []
    try:
        client = pystac_client.Client.open(url)
        _check_collection(client, url, collection)
        for geometry in query_geometries(aoi):
            item_search = client.search(
                collections=[collection],
                intersects=shapely.geometry.mapping(geometry),
                datetime=window,
                limit=PAGE_SIZE,
            )
            what = f"search of {collection!r} on STAC API {url} over {_describe_bounds(geometry)}"
            features.extend(collect_pages(item_search.pages_as_dicts(), what))
    except pystac_client.exceptions.APIError as error:
        # pystac-client also reports connection failures as APIError.
        raise CatalogError(
            f"search of collection {collection!r} on STAC API {url} failed: {error}; check "
            "that the API is reachable and the collection exists"
        ) from error
    except OSError as error:
        raise CatalogError(f"STAC API {url} could not be reached: {error}") from error
    return features


def _describe_bounds(geometry: shapely.Geometry) -> str:
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    return f"lon {min_lon:g} to {max_lon:g}, lat {min_lat:g} to {max_lat:g}"


def _number_matched(page: Mapping[str, Any]) -> int | None:
    """Return the match count a search page reports (STAC API 1.0 or the context extension)."""
    matched = page.get("numberMatched")
    if matched is None:
        matched = (page.get("context") or {}).get("matched")
    return matched if isinstance(matched, int) and not isinstance(matched, bool) else None


def collect_pages(pages: Iterator[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """Read every page of a search and return its items, one per id, in first-seen order.

    An item repeated on a later page (an API that pages by offset while its order shifts) is
    kept once. The first page may report a match count. Fewer distinct items than that mean
    paging lost some, so :class:`CatalogError` is raised rather than planning with a partial
    search. More distinct items than reported are logged as a warning.
    """
    features: dict[str, dict[str, Any]] = {}
    matched: int | None = None
    page_count = repeated = 0
    for page in pages:
        if page_count == 0:
            matched = _number_matched(page)
        page_count += 1
        for feature in page.get("features", []):
            item_id = str(feature["id"])
            if item_id in features:
                repeated += 1
            else:
                features[item_id] = feature
    if repeated:
        log.warning(
            "%s: %d features repeated an item of an earlier page; each item is kept once",
            what,
            repeated,
        )
    # NOTE: a count the API only estimates (pgstac may for large results) can trip this check.
    if matched is not None and len(features) < matched:
        raise CatalogError(
            f"{what}: the API reports {matched} matching items, but its {page_count} pages "
            f"returned {len(features)} distinct items, so paging lost items; run the command "
            "again, and if it keeps failing, narrow the time range so fewer pages are needed"
        )
    if matched is not None and len(features) > matched:
        log.warning(
            "%s: %d distinct items, more than the %d the API reports as matched",
            what,
            len(features),
            matched,
        )
    return list(features.values())


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
    collection: str | None,
    aoi: shapely.Geometry,
    start: dt.datetime | None,
    end: dt.datetime | None,
) -> list[dict[str, Any]]:
    """The features meeting the AOI, overlapping the time range if given, and of ``collection``
    unless it is None."""
    shapely.prepare(aoi)
    matches = []
    for feature in features:
        if collection is not None and feature.get("collection") != collection:
            continue
        if start is not None and end is not None and not _overlaps(feature, start, end):
            continue
        if shapely.intersects(aoi, footprint(feature["geometry"])):
            matches.append(feature)
    return matches


def _overlaps(feature: Mapping[str, Any], start: dt.datetime, end: dt.datetime) -> bool:
    properties = feature["properties"]
    first = _timestamp(properties.get("datetime") or properties.get("start_datetime"))
    last = _timestamp(properties.get("datetime") or properties.get("end_datetime"))
    return bool(first <= pd.Timestamp(end) and pd.Timestamp(start) <= last)


# ----------------------------------------------------------------------------------------------
# Static catalogs (source.kind stac-static)


def _static_features(
    catalog: CatalogSpec, source: ModalitySource, aoi: shapely.Geometry | None
) -> list[dict[str, Any]]:
    """Walk a static catalog from ``source.href`` and return the items of the collection.

    An item belongs to the collection when its ``collection`` field names it or when it lies
    below a collection of that id. With ``aoi``, children whose spatial extent misses it are
    not opened, so a search reads only the branches that can match. Asset hrefs are made
    absolute, so workers can read them from anywhere.
    """
    assert catalog.href is not None
    try:
        root = pystac.read_file(catalog.href)
        if not isinstance(root, pystac.Catalog):
            raise CatalogError(
                f"{catalog.path}: source.href {catalog.href!r} is a STAC {type(root).__name__}, "
                "not a catalog or collection; point it at a catalog.json or collection.json"
            )
        features: list[dict[str, Any]] = []
        _walk_static(root, source.collection, aoi, inside=False, features=features)
    except (pystac.STACError, OSError, ValueError) as error:
        raise CatalogError(
            f"reading static catalog {catalog.href!r} of catalog {catalog.name!r} failed: "
            f"{error}; check source.href in {catalog.path} and that every linked file exists"
        ) from error
    log.debug("static catalog %s: %d items of %s", catalog.href, len(features), source.collection)
    return features


def _walk_static(
    node: pystac.Catalog,
    collection: str,
    aoi: shapely.Geometry | None,
    *,
    inside: bool,
    features: list[dict[str, Any]],
) -> None:
    inside = inside or (isinstance(node, pystac.Collection) and node.id == collection)
    for item in node.get_items(recursive=False):
        if inside or item.collection_id == collection:
            item.make_asset_hrefs_absolute()
            features.append(item.to_dict(include_self_link=False, transform_hrefs=False))
    for child in node.get_children():
        if aoi is None or _extent_meets(child, aoi):
            _walk_static(child, collection, aoi, inside=inside, features=features)


def _extent_meets(node: pystac.Catalog, aoi: shapely.Geometry) -> bool:
    """Return whether a child may contain items over ``aoi``: False for a collection elsewhere."""
    if not isinstance(node, pystac.Collection):
        return True
    boxes = node.extent.spatial.bboxes
    if not boxes:
        return True
    bbox = [float(value) for value in boxes[0]]
    # A 3-D bbox is (west, south, bottom, east, north, top).
    west, south, east, north = bbox[:2] + bbox[3:5] if len(bbox) == 6 else bbox[:4]
    if west > east:  # crosses the antimeridian: not pruned
        return True
    return bool(shapely.intersects(aoi, shapely.box(west, south, east, north)))


# ----------------------------------------------------------------------------------------------
# Signing asset hrefs (source.signing: planetary-computer)

# Only hrefs on Azure Blob Storage, where Planetary Computer keeps its assets, are signed, so no
# other host ever receives a token.
SIGNED_HOST_SUFFIX = ".blob.core.windows.net"
# A cached token is replaced once fewer seconds than this remain, a margin meant to exceed the
# longest chip read, so no read starts with a token about to expire.
TOKEN_REFRESH_MARGIN_S = 600.0
TOKEN_TIMEOUT_S = 30.0
TOKEN_ATTEMPTS = 3
TOKEN_RETRY_DELAY_S = 1.0
_RETRY_STATUS = (429, 500, 502, 503, 504)
# Token endpoint URL (one per collection) -> planetary_computer.sas.SASToken, per process.
_tokens: dict[str, Any] = {}
_tokens_lock = threading.Lock()


def sign_item(item: pystac.Item, source: ModalitySource) -> pystac.Item:
    """Return ``item`` with its asset hrefs signed as the catalog's ``source.signing`` requires.

    Without signing, ``item`` itself is returned. Otherwise the result is a signed copy and
    ``item`` keeps its unsigned hrefs, so chip records and manifests made from it never contain
    a token. The token comes from the collection's token endpoint and is cached per collection.
    """
    if source.signing is None:
        return item
    token = collection_token(source.collection)
    signed = item.clone()
    for asset in signed.assets.values():
        parts = urlsplit(asset.href)
        if parts.netloc.endswith(SIGNED_HOST_SUFFIX) and not parts.query:
            asset.href = f"{asset.href}?{token.token}"
    return signed


def collection_token(collection: str) -> Any:
    """Return a SAS token of a Planetary Computer collection, fetching a new one near expiry.

    The endpoint is ``<sas_url>/<collection>``, where ``sas_url`` is the planetary-computer
    package's setting (environment variable ``PC_SDK_SAS_URL``, default the public API) and
    ``PC_SDK_SUBSCRIPTION_KEY`` is sent when set.
    """
    from planetary_computer.settings import Settings

    settings = Settings.get()
    endpoint = f"{str(settings.sas_url).rstrip('/')}/{collection}"
    with _tokens_lock:
        token = _tokens.get(endpoint)
        if token is None or token.ttl() < TOKEN_REFRESH_MARGIN_S:
            token = _fetch_token(endpoint, settings.subscription_key)
            _tokens[endpoint] = token
    return token


def _fetch_token(endpoint: str, subscription_key: str | None) -> Any:
    from planetary_computer.sas import SASToken

    headers = {"Ocp-Apim-Subscription-Key": subscription_key} if subscription_key else {}
    body = _get_with_retries(endpoint, headers)
    try:
        token = SASToken(**json.loads(body))
    except (ValueError, TypeError):
        # The body contains the token, so it is not quoted here.
        raise ReadError(
            f"token endpoint {endpoint} returned a body that is not a SAS token (JSON with "
            "'token' and 'msft:expiry'); check PC_SDK_SAS_URL"
        ) from None
    log.info("SAS token from %s fetched; it expires in %.0f s", endpoint, token.ttl())
    return token


def _get_with_retries(url: str, headers: Mapping[str, str]) -> bytes:
    """GET ``url``, retrying refused connections, timeouts and 429 or 5xx responses."""
    request = urllib.request.Request(url, headers=dict(headers))
    attempt = 1
    while True:
        try:
            with urllib.request.urlopen(request, timeout=TOKEN_TIMEOUT_S) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            error.close()
            last_error: Exception = error
            failure = f"HTTP {error.code} {error.reason}"
            retry = error.code in _RETRY_STATUS
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            last_error = error
            failure = str(getattr(error, "reason", error))
            retry = True
        if not retry or attempt >= TOKEN_ATTEMPTS:
            raise ReadError(
                f"fetching a SAS token from {url} failed: {failure} (attempts made: {attempt}); "
                "check the network, PC_SDK_SAS_URL and PC_SDK_SUBSCRIPTION_KEY"
            ) from last_error
        delay = TOKEN_RETRY_DELAY_S * attempt
        log.warning(
            "fetching a SAS token from %s failed (%s), attempt %d of %d; retrying in %.0f s",
            url,
            failure,
            attempt,
            TOKEN_ATTEMPTS,
            delay,
        )
        time.sleep(delay)
        attempt += 1
