"""Releases: a STAC Collection with one Item per region store, a datasheet, train statistics
and quicklooks, written to a new folder.

Layout of a release folder::

    collection.json             STAC Collection: links to the Items, datasheet and stats assets
    datasheet.md                split counts, time ranges, train statistics, licences, quicklooks
    stats.json                  train statistics {variable: {band: {mean, std, count}}}
    <region>/<region>.json      STAC Item with the datacube extension; assets store and manifest
    <region>/manifest.json      byte copy of <splits-dir>/<region>/manifest.json
    <region>/quicklooks/*.png   Sentinel-2 true colour, Sentinel-1 VV in dB and NDVI of a few chips

The store is not copied. The Item's ``store`` asset is the store path relative to the Item, so
the release keeps working when it is moved together with the stores. The PNGs are drawn by
:mod:`pipeline.quicklook`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
import shapely
import shapely.geometry
import zarr
from pystac.extensions.datacube import DatacubeExtension, Dimension, Variable
from pystac.extensions.file import FileExtension

import pipeline
from pipeline import quicklook
from pipeline.config import SPLIT_NAMES, CatalogSpec, RegionSpec, S1Selection, S2Selection
from pipeline.errors import ReleaseExistsError, StoreError, StoreNotFoundError, UsageError
from pipeline.manifest import load_manifest, verify
from pipeline.select import describe_s1_rule, describe_s2_rule
from pipeline.split import BUFFER_LABEL
from pipeline.stats import BandMoments, RunningMoments
from pipeline.store import (
    band_labels,
    chip_ids,
    data_variables,
    dimension_names,
    get_array,
    is_sensorcube_store,
    open_chip_table,
    open_root,
)

log = logging.getLogger(__name__)

RELEASE_FORMAT = 1
RELEASE_MARKER = "sensorcube:release"
COLLECTION_FILE = "collection.json"
DATASHEET_FILE = "datasheet.md"
STATS_FILE = "stats.json"
MANIFEST_FILE = "manifest.json"
QUICKLOOK_FOLDER = "quicklooks"
SPLIT_LABELS = (*SPLIT_NAMES, BUFFER_LABEL)

QUICKLOOK_CHIPS = 4

# Chip pixels as a local engineering CRS: metres east and south of the chip's upper-left corner.
CHIP_GRID_WKT = (
    'ENGCRS["sensorcube chip grid",'
    'EDATUM["upper-left corner of each chip; its projected CRS and affine transform are the '
    'chip_crs and chip_transform variables"],'
    "CS[Cartesian,2],"
    'AXIS["easting (x)",east,ORDER[1],LENGTHUNIT["metre",1]],'
    'AXIS["southing (y)",south,ORDER[2],LENGTHUNIT["metre",1]]]'
)
# Multihash prefix of a SHA-256 digest (function code 0x12, length 0x20), as file:checksum uses.
SHA256_MULTIHASH_PREFIX = "1220"


# ----------------------------------------------------------------------------------------------
# Inputs and checks


@dataclass(frozen=True)
class RegionInput:
    """One region of a release: its spec, its catalogs, its store and its frozen manifest."""

    region: RegionSpec
    catalogs: Mapping[str, CatalogSpec]
    store: Path
    manifest_path: Path


@dataclass(frozen=True)
class CheckedRegion:
    """A region whose store matched its manifest, with the manifest and the chip table."""

    source: RegionInput
    manifest: dict[str, Any]
    manifest_bytes: bytes
    chips: pd.DataFrame  # chip-table rows of the manifest's chips; ``split`` from the manifest

    @property
    def name(self) -> str:
        return self.source.region.name

    def split_chips(self, split: str) -> list[str]:
        return [entry["id"] for entry in self.manifest["chips"] if entry["split"] == split]


def check_output(out: Path, *, overwrite: bool) -> None:
    """Reject an output path that is a file, or a non-empty folder without ``overwrite``.

    With ``overwrite`` only an earlier release is replaced. Any other non-empty folder is kept.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise ReleaseExistsError(
            f"output path {str(out)!r} exists and is not a folder; choose another --out"
        )
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise ReleaseExistsError(
            f"output folder {str(out)!r} exists and is not empty; pass --overwrite to replace "
            "the release in it, or choose another --out"
        )
    if not is_release(out):
        raise ReleaseExistsError(
            f"output folder {str(out)!r} is not empty and is not a sensorcube release (no "
            f"{COLLECTION_FILE} with {RELEASE_MARKER!r}); sensorcube never deletes it, even "
            "with --overwrite; choose another --out or empty it"
        )


def is_release(path: Path) -> bool:
    """Return True when ``path`` contains a collection.json written by :func:`build_release`."""
    try:
        collection = json.loads((path / COLLECTION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(collection, dict) and RELEASE_MARKER in collection


def check_region(source: RegionInput) -> CheckedRegion:
    """Load a region's manifest and verify its store against it, before anything is written."""
    _require_store(source)
    manifest = load_manifest(source.manifest_path)
    manifest_bytes = source.manifest_path.read_bytes()
    _check_manifest_matches_region(source, manifest)

    log.info(
        "release: verifying store %s against %s (%d chips)",
        source.store,
        source.manifest_path,
        len(manifest["chips"]),
    )
    mismatches = verify(source.store, manifest)
    if mismatches:
        chips = sorted({mismatch.chip_id for mismatch in mismatches})
        listed = ", ".join(chips[:10]) + (f" and {len(chips) - 10} more" if len(chips) > 10 else "")
        raise StoreError(
            f"store {str(source.store)!r} does not match manifest {str(source.manifest_path)!r}: "
            f"{len(mismatches)} chip variables differ in {len(chips)} chips ({listed}); run "
            f"'sensorcube verify {source.store} --manifest {source.manifest_path}' for the "
            f"reasons, and 'sensorcube repair {source.store} --manifest "
            f"{source.manifest_path}' to rebuild those chips"
        )
    return CheckedRegion(source, manifest, manifest_bytes, _release_chip_table(source, manifest))


def _require_store(source: RegionInput) -> None:
    store = source.store
    if not store.exists():
        raise StoreNotFoundError(
            f"store {str(store)!r} of region {source.region.name!r} not found; run "
            f"'sensorcube run {source.region.name}' to build it, or pass --cubes-dir or --store "
            "to point at it"
        )
    if not is_sensorcube_store(store):
        raise StoreNotFoundError(
            f"{str(store)!r} is not a sensorcube store; pass --cubes-dir or --store to point at "
            f"the store of region {source.region.name!r}"
        )


def _check_manifest_matches_region(source: RegionInput, manifest: Mapping[str, Any]) -> None:
    region = source.region
    if manifest.get("region") != region.name:
        raise UsageError(
            f"manifest {str(source.manifest_path)!r} belongs to region "
            f"{manifest.get('region')!r}, not {region.name!r}; pass the manifest of "
            f"{region.name!r}"
        )
    config_hash = region.config_hash(source.catalogs)
    if manifest.get("config_hash") != config_hash:
        raise StoreError(
            f"manifest {str(source.manifest_path)!r} was frozen from another configuration "
            f"(config hash {str(manifest.get('config_hash'))[:12]}..., region and catalog "
            f"files now {config_hash[:12]}...), so the release would describe other rules; "
            f"restore the files or rebuild with 'sensorcube run {region.name} --overwrite'"
        )


def _release_chip_table(source: RegionInput, manifest: Mapping[str, Any]) -> pd.DataFrame:
    table = open_chip_table(source.store)
    ids = [entry["id"] for entry in manifest["chips"]]
    chips = table.loc[ids].copy()
    chips["split"] = [entry["split"] for entry in manifest["chips"]]
    return chips


# ----------------------------------------------------------------------------------------------
# Train statistics


TrainStatistics = dict[str, dict[str, BandMoments]]


def train_statistics(regions: Sequence[CheckedRegion]) -> TrainStatistics:
    """Compute per-band statistics over the train chips of all regions, NaN ignored."""
    moments: dict[str, tuple[tuple[str, ...], RunningMoments]] = {}
    for checked in regions:
        root = open_root(checked.source.store)
        index = {
            chip_id: position for position, chip_id in enumerate(chip_ids(checked.source.store))
        }
        for variable in data_variables(root):
            array = get_array(root, variable)
            labels = band_labels(root, variable)
            _, accumulator = moments.setdefault(variable, (labels, RunningMoments(len(labels))))
            for chip_id in checked.split_chips("train"):
                accumulator.update(array[index[chip_id]])
    return {
        variable: accumulator.bands(labels) for variable, (labels, accumulator) in moments.items()
    }


def statistics_to_json(statistics: TrainStatistics) -> dict[str, dict[str, Any]]:
    return {
        variable: {band: stats.to_json() for band, stats in bands.items()}
        for variable, bands in statistics.items()
    }


# ----------------------------------------------------------------------------------------------
# Quicklooks


@dataclass(frozen=True)
class Quicklook:
    """A quicklook PNG of one chip, with its path relative to the release folder."""

    region: str
    chip_id: str
    split: str
    path: str
    panels: tuple[str, ...]


def choose_quicklook_chips(
    splits: Mapping[str, Sequence[str]], count: int = QUICKLOOK_CHIPS
) -> list[tuple[str, str]]:
    """Pick ``count`` (split, chip id) pairs: the first chip of each split in turn, by chip id."""
    queues = [(split, sorted(splits.get(split, ()))) for split in SPLIT_NAMES]
    chosen: list[tuple[str, str]] = []
    depth = 0
    while len(chosen) < count and any(depth < len(ids) for _, ids in queues):
        for split, ids in queues:
            if depth < len(ids) and len(chosen) < count:
                chosen.append((split, ids[depth]))
        depth += 1
    return chosen


def read_chip(root: zarr.Group, index: int) -> dict[str, np.ndarray]:
    """Read the arrays of one chip, by data variable."""
    return {name: np.asarray(get_array(root, name)[index]) for name in data_variables(root)}


def write_quicklooks(checked: CheckedRegion, staging: Path) -> list[Quicklook]:
    """Write the quicklook PNGs of a region under ``staging``; return them in order."""
    root = open_root(checked.source.store)
    index = {chip_id: position for position, chip_id in enumerate(chip_ids(checked.source.store))}
    labels = {name: band_labels(root, name) for name in data_variables(root)}
    splits = {split: checked.split_chips(split) for split in SPLIT_NAMES}
    quicklooks: list[Quicklook] = []
    for split, chip_id in choose_quicklook_chips(splits):
        panels = quicklook.chip_panels(read_chip(root, index[chip_id]), labels)
        if not panels:
            continue
        relative = f"{checked.name}/{QUICKLOOK_FOLDER}/{chip_id}.png"
        quicklook.write_png(panels, staging / relative)
        captions = tuple(caption for caption, _ in panels)
        quicklooks.append(Quicklook(checked.name, chip_id, split, relative, captions))
    return quicklooks


# ----------------------------------------------------------------------------------------------
# STAC


def _iso(value: pd.Timestamp) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def chip_datetimes(chips: pd.DataFrame, modality: str) -> pd.Series:
    """Parse the datetimes (UTC) of the items chosen for ``modality`` (``s2`` or ``s1``)."""
    return pd.to_datetime(chips[f"items.{modality}.datetime"], utc=True)


def time_range(chips: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Return the first and last datetime of the items chosen for the chips."""
    suffixes = (".datetime", ".start_datetime", ".end_datetime")
    columns = [c for c in chips.columns if c.startswith("items.") and c.endswith(suffixes)]
    values = pd.concat([pd.to_datetime(chips[column], utc=True) for column in columns])
    return values.min(), values.max()


def chips_footprint(chips: pd.DataFrame) -> Any:
    """Merge the chips' lon/lat bounding boxes into one shapely geometry."""
    return shapely.union_all([shapely.box(*bounds) for bounds in chips["lonlat_bounds"]])


def _label_dimension(name: str, kind: str, labels: Sequence[str]) -> Dimension:
    return Dimension.from_dict({"type": kind, "values": list(labels), "description": name})


def datacube_dimensions(store: Path, chip_size: int, resolution_m: float) -> dict[str, Dimension]:
    """Describe the dimensions chip, band, polarization, y, x and affine of a store."""
    root = open_root(store)
    half = resolution_m / 2
    spatial_extent = [half, chip_size * resolution_m - half]
    dimensions: dict[str, Dimension] = {
        "chip": Dimension.from_dict(
            {
                "type": "chip",
                "values": chip_ids(store),
                "description": "chip id <epsg>_<col>_<row>, in store order",
            }
        ),
        "y": _spatial_dimension("y", spatial_extent, resolution_m),
        "x": _spatial_dimension("x", spatial_extent, resolution_m),
        "affine": _label_dimension(
            "GDAL-order affine coefficients of chip_transform", "affine", list("abcdef")
        ),
    }
    if "s2" in data_variables(root):
        dimensions["band"] = _label_dimension(
            "Sentinel-2 band name", "bands", band_labels(root, "s2")
        )
    if "s1" in data_variables(root):
        dimensions["polarization"] = _label_dimension(
            "Sentinel-1 polarization", "polarization", band_labels(root, "s1")
        )
    return dimensions


def _spatial_dimension(axis: str, extent: list[float], step: float) -> Dimension:
    direction = "east of the west" if axis == "x" else "south of the north"
    return Dimension.from_dict(
        {
            "type": "spatial",
            "axis": axis,
            "extent": extent,
            "step": step,
            "reference_system": CHIP_GRID_WKT,
            "description": f"pixel centres in metres {direction} edge of each chip; each chip "
            "has its own projected CRS (chip_crs) and affine transform (chip_transform)",
        }
    )


def datacube_variables(root: zarr.Group) -> dict[str, Variable]:
    """Describe the data variables, chip_crs and chip_transform of a store."""
    variables: dict[str, Variable] = {}
    for name in data_variables(root):
        array = get_array(root, name)
        variables[name] = Variable(
            {
                "dimensions": list(dimension_names(array)),
                "type": "data",
                "description": str(array.attrs.get("long_name", name)),
                "unit": str(array.attrs.get("units", "")),
                "data_type": str(array.dtype),
                "nodata": "nan",
            }
        )
    variables["chip_crs"] = Variable(
        {"dimensions": ["chip"], "type": "auxiliary", "description": "CRS of the chip"}
    )
    variables["chip_transform"] = Variable(
        {
            "dimensions": ["chip", "affine"],
            "type": "auxiliary",
            "description": "GDAL-order affine transform of the chip in its CRS: a, b, d, e in "
            "metres per pixel, c and f in metres",
            "data_type": str(get_array(root, "chip_transform").dtype),
        }
    )
    return variables


RULE_TEXTS = {
    "dem": "static: the first DEM item covering the chip",
    "coherence": "the pair whose dates bracket the reference time (the chosen Sentinel-2 "
    "datetime, else the middle of the time range), else the nearest pair",
    "hsi": "the scene nearest in time to the reference time, its tiles mosaicked",
}


def pairing_rules(region: RegionSpec) -> dict[str, Any]:
    """Collect the selection and pairing rule of each modality of the region spec."""
    rules: dict[str, Any] = {}
    for modality, selection in region.selections().items():
        if isinstance(selection, S2Selection):
            text = describe_s2_rule(selection)
        elif isinstance(selection, S1Selection):
            text = describe_s1_rule(selection)
        else:
            text = RULE_TEXTS[modality]
        rules[modality] = {"rule": text, **dataclasses.asdict(selection)}
    return rules


def split_summary(checked: CheckedRegion) -> dict[str, dict[str, Any]]:
    """Count and list the chips of each split, from the manifest."""
    summary: dict[str, dict[str, Any]] = {}
    for split in SPLIT_LABELS:
        ids = checked.split_chips(split)
        summary[split] = {"count": len(ids), "chips": ids}
    return summary


def build_item(
    checked: CheckedRegion, item_dir: Path, quicklooks: Sequence[Quicklook]
) -> pystac.Item:
    """Describe a region store as a STAC Item; ``item_dir`` is the Item's final folder."""
    region = checked.source.region
    footprint = chips_footprint(checked.chips)
    start, end = time_range(checked.chips)
    item = pystac.Item(
        id=region.name,
        geometry=shapely.geometry.mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=None,
        start_datetime=start.to_pydatetime(),
        end_datetime=end.to_pydatetime(),
        properties={
            "title": f"sensorcube region {region.name}",
            "description": region.description or f"sensorcube region {region.name}",
            "sensorcube:config_hash": checked.manifest["config_hash"],
            "sensorcube:software_version": checked.manifest["software"]["version"],
            "sensorcube:grid": checked.manifest["grid"],
            "sensorcube:pairing": pairing_rules(region),
            "sensorcube:splits": split_summary(checked),
        },
    )
    store = checked.source.store
    DatacubeExtension.ext(item, add_if_missing=True).apply(
        dimensions=datacube_dimensions(store, region.grid.chip_size, region.grid.resolution_m),
        variables=datacube_variables(open_root(store)),
    )
    _add_item_assets(item, checked, item_dir, quicklooks)
    return item


def _add_item_assets(
    item: pystac.Item, checked: CheckedRegion, item_dir: Path, quicklooks: Sequence[Quicklook]
) -> None:
    store_href = os.path.relpath(checked.source.store.resolve(), item_dir.resolve())
    item.add_asset(
        "store",
        pystac.Asset(
            href=store_href,
            media_type=pystac.MediaType.VND_ZARR,
            roles=["data"],
            title=f"Zarr v3 store of region {checked.name}",
        ),
    )
    manifest = pystac.Asset(
        href=f"./{MANIFEST_FILE}",
        media_type=pystac.MediaType.JSON,
        roles=["metadata"],
        title="frozen split manifest",
        description="splits, item ids with their updated stamps, the config hash, and the "
        "SHA-256 of the decoded values and of the stored chunk of every chip and variable",
    )
    item.add_asset("manifest", manifest)
    # The file extension needs the asset's owner, so it is added after add_asset.
    file_info = FileExtension.ext(manifest, add_if_missing=True)
    file_info.checksum = (
        SHA256_MULTIHASH_PREFIX + hashlib.sha256(checked.manifest_bytes).hexdigest()
    )
    file_info.size = len(checked.manifest_bytes)
    for entry in quicklooks:
        item.add_asset(
            f"quicklook-{entry.chip_id}",
            pystac.Asset(
                href=f"./{QUICKLOOK_FOLDER}/{entry.chip_id}.png",
                media_type=pystac.MediaType.PNG,
                roles=["overview"],
                title=f"{entry.split} chip {entry.chip_id}: {', '.join(entry.panels)}",
            ),
        )


def collection_extent(
    regions: Sequence[CheckedRegion], items: Sequence[pystac.Item]
) -> pystac.Extent:
    """Compute the overall bbox (then one per Item when there are several) and time range."""
    footprints = [shapely.geometry.shape(item.geometry) for item in items]
    bboxes = [list(shapely.union_all(footprints).bounds)]
    if len(items) > 1:
        bboxes.extend(list(item.bbox or []) for item in items)

    ranges = [time_range(checked.chips) for checked in regions]
    start = min(first for first, _ in ranges).to_pydatetime()
    end = max(last for _, last in ranges).to_pydatetime()
    return pystac.Extent(pystac.SpatialExtent(bboxes), pystac.TemporalExtent([[start, end]]))


def build_collection(
    regions: Sequence[CheckedRegion], items: Sequence[pystac.Item]
) -> pystac.Collection:
    """Build the release's STAC Collection, with the datasheet and statistics as assets."""
    names = ", ".join(checked.name for checked in regions)
    collection = pystac.Collection(
        id="sensorcube-" + "-".join(checked.name for checked in regions),
        title=f"sensorcube release: {names}",
        description="Co-located Sentinel-2 L2A surface reflectance, Sentinel-1 backscatter and "
        f"NDVI chips with frozen splits, regions {names}. See {DATASHEET_FILE}.",
        extent=collection_extent(regions, items),
        license="other",
        extra_fields={RELEASE_MARKER: RELEASE_FORMAT},
    )
    # STAC 1.1 common metadata: with license "other" a license link SHOULD point to the terms,
    # and without one the data counts as private.
    collection.add_link(
        pystac.Link(
            rel="license",
            target=f"./{DATASHEET_FILE}#licences-and-citations",
            media_type="text/markdown",
            title="licences and citations of the sources",
        )
    )

    datasheet = pystac.Asset(
        f"./{DATASHEET_FILE}", title="datasheet", media_type="text/markdown", roles=["metadata"]
    )
    stats = pystac.Asset(
        f"./{STATS_FILE}",
        title="per-band mean, standard deviation and pixel count over the train chips",
        media_type=pystac.MediaType.JSON,
        roles=["metadata"],
    )
    collection.add_asset("datasheet", datasheet)
    collection.add_asset("stats", stats)
    for item in items:
        collection.add_item(item)
    return collection


# ----------------------------------------------------------------------------------------------
# Datasheet


def _format_number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.6g}"


def _split_rows(checked: CheckedRegion) -> list[str]:
    rows = [
        "| split | chips | first S2 | last S2 | first S1 | last S1 |",
        "|---|---:|---|---|---|---|",
    ]
    for split in SPLIT_LABELS:
        chips = checked.chips[checked.chips["split"] == split]
        times = ["-"] * 4
        for position, modality in enumerate(("s2", "s1")):
            if len(chips) and f"items.{modality}.datetime" in chips.columns:
                when = chip_datetimes(chips, modality)
                times[2 * position : 2 * position + 2] = [_iso(when.min()), _iso(when.max())]
        rows.append(f"| {split} | {len(chips)} | " + " | ".join(times) + " |")
    return rows


def _region_section(checked: CheckedRegion, out: Path) -> list[str]:
    region = checked.source.region
    rules = pairing_rules(region)
    manifest_sha = hashlib.sha256(checked.manifest_bytes).hexdigest()
    store = os.path.relpath(checked.source.store.resolve(), out.resolve())
    return [
        f"### {region.name}",
        "",
        region.description or "(no description in the region file)",
        "",
        f"- Item: [{region.name}/{region.name}.json]({region.name}/{region.name}.json)",
        f"- Store: `{store}`, relative to this folder (not copied into the release)",
        f"- Manifest: [{region.name}/{MANIFEST_FILE}]({region.name}/{MANIFEST_FILE}), "
        f"SHA-256 `{manifest_sha}`",
        f"- Config hash: `{checked.manifest['config_hash']}`",
        *[f"- {modality} selection: {rule['rule']}" for modality, rule in rules.items()],
        f"- Chips skipped (no acceptable item): {checked.manifest['chips_skipped']}; "
        f"failed: {len(checked.manifest['chips_failed'])}",
        "",
        "Datetimes (UTC) of the Sentinel-2 and Sentinel-1 items chosen for the chips of each "
        "split. Buffer chips are in the store but in no split.",
        "",
        *_split_rows(checked),
        "",
    ]


def _statistics_section(statistics: TrainStatistics, train_chips: int) -> list[str]:
    lines = [
        "## Train statistics",
        "",
        f"Over the {train_chips} train chips of all regions, NaN ignored; the standard deviation "
        f"is the population one (ddof 0). The same numbers are in [{STATS_FILE}]({STATS_FILE}). "
        "Units: s2 surface reflectance (1), s1 linear backscatter power (not dB), ndvi (1).",
        "",
        "| variable | band | mean | std | pixels |",
        "|---|---|---:|---:|---:|",
    ]
    for variable, bands in statistics.items():
        for band, stats in bands.items():
            lines.append(
                f"| {variable} | {band} | {_format_number(stats.mean)} | "
                f"{_format_number(stats.std)} | {stats.count} |"
            )
    return [*lines, ""]


def _licence_section(regions: Sequence[CheckedRegion]) -> list[str]:
    lines = [
        "## Licences and citations",
        "",
        "Each source's terms, from the `licence` field of its catalog file. Users of this "
        "release must follow all of them.",
        "",
    ]
    catalogs: dict[str, CatalogSpec] = {}
    for checked in regions:
        for spec in checked.source.catalogs.values():
            catalogs.setdefault(spec.path, spec)
    for path, spec in sorted(catalogs.items()):
        lines.extend([f"### Catalog `{spec.name}` (`{path}`)", "", spec.licence, ""])
    return lines


def _quicklook_section(quicklooks: Sequence[Quicklook]) -> list[str]:
    low, high = quicklook.S2_REFLECTANCE_STRETCH
    db_low, db_high = quicklook.S1_DB_STRETCH
    lines = [
        "## Quicklooks",
        "",
        f"Panels: Sentinel-2 true colour (B04, B03, B02, reflectance {low:g} to {high:g}), "
        f"Sentinel-1 VV in dB ({db_low:g} to {db_high:g} dB, converted for display only) and "
        "NDVI from -1 (brown) through 0 (white) to 1 (teal). Black is no data.",
        "",
    ]
    for entry in quicklooks:
        title = f"{entry.region}: {entry.split} chip {entry.chip_id}"
        lines.extend([title, "", f"![{title}]({entry.path})", ""])
    return lines


def render_datasheet(
    regions: Sequence[CheckedRegion],
    statistics: TrainStatistics,
    quicklooks: Sequence[Quicklook],
    out: Path,
) -> str:
    """Write the datasheet of the release at ``out`` as Markdown."""
    names = ", ".join(checked.name for checked in regions)
    train_chips = sum(len(checked.split_chips("train")) for checked in regions)
    lines = [
        f"# sensorcube release: {names}",
        "",
        f"Built by sensorcube {pipeline.__version__} from frozen manifests. The STAC Collection "
        f"is [{COLLECTION_FILE}]({COLLECTION_FILE}); each region has one Item. Check a store "
        "against its copied manifest with `sensorcube verify STORE --manifest "
        f"<region>/{MANIFEST_FILE}`.",
        "",
        "## Regions",
        "",
    ]
    for checked in regions:
        lines.extend(_region_section(checked, out))
    lines.extend(_statistics_section(statistics, train_chips))
    lines.extend(_quicklook_section(quicklooks))
    lines.extend(_licence_section(regions))
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------
# Orchestration


@dataclass(frozen=True)
class ReleaseSummary:
    """Folder, regions and counts of a written release."""

    path: Path
    regions: tuple[str, ...]
    split_counts: Mapping[str, int]
    quicklooks: int


def write_release_files(regions: Sequence[CheckedRegion], staging: Path, out: Path) -> int:
    """Write every file of the release into ``staging``; return the number of quicklooks."""
    quicklooks: list[Quicklook] = []
    items: list[pystac.Item] = []
    for checked in regions:
        (staging / checked.name).mkdir(parents=True)
        (staging / checked.name / MANIFEST_FILE).write_bytes(checked.manifest_bytes)
        region_quicklooks = write_quicklooks(checked, staging)
        quicklooks.extend(region_quicklooks)
        items.append(build_item(checked, out / checked.name, region_quicklooks))

    statistics = train_statistics(regions)
    stats_text = json.dumps(statistics_to_json(statistics), indent=1, sort_keys=True) + "\n"
    (staging / STATS_FILE).write_text(stats_text, encoding="utf-8")
    datasheet = render_datasheet(regions, statistics, quicklooks, out)
    (staging / DATASHEET_FILE).write_text(datasheet, encoding="utf-8")

    collection = build_collection(regions, items)
    collection.normalize_hrefs(str(staging))
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return len(quicklooks)


def _swap_into_place(staging: Path, out: Path, trash: Path, *, overwrite: bool) -> None:
    """Rename ``staging`` to ``out``, moving an earlier release at ``out`` to ``trash``.

    Any other folder at ``out`` must still be empty. ``rmdir`` fails on a folder that gained
    files during the build, so such files are never deleted.
    """
    if out.exists():
        try:
            if overwrite and is_release(out):
                out.rename(trash)
            else:
                out.rmdir()
        except OSError as error:
            raise ReleaseExistsError(
                f"output folder {str(out)!r} changed while the release was built ({error}); "
                "nothing was written, so run the command again"
            ) from error
    staging.rename(out)


def build_release(sources: Sequence[RegionInput], out: Path, *, overwrite: bool) -> ReleaseSummary:
    """Check every region, then write the release to ``out`` atomically.

    The release is built in a temporary folder beside ``out`` and renamed into place, so a
    failure leaves neither a partial release nor a temporary folder. With ``overwrite`` an
    earlier release at ``out`` is swapped out only once the new one is complete.
    """
    names = [source.region.name for source in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"region {duplicates[0]!r} is given twice; name each region once")
    check_output(out, overwrite=overwrite)
    regions = [check_region(source) for source in sources]

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        staging = Path(tmp) / out.name
        staging.mkdir()
        quicklooks = write_release_files(regions, staging, out)
        _swap_into_place(staging, out, Path(tmp) / "replaced", overwrite=overwrite)

    counts = {split: sum(len(c.split_chips(split)) for c in regions) for split in SPLIT_LABELS}
    log.info("release %s: regions %s, chips per split %s", out, ", ".join(names), counts)
    return ReleaseSummary(out, tuple(names), counts, quicklooks)
