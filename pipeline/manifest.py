"""Freeze and verify: the split manifest of a region and the re-hash of a store against it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import pipeline
from pipeline.config import SPLIT_NAMES, CatalogSpec, RegionSpec
from pipeline.errors import StoreError, UsageError
from pipeline.grid import chip_from_id
from pipeline.lock import store_lock
from pipeline.split import BUFFER_LABEL, assign_splits
from pipeline.store import (
    chip_ids,
    chunk_checksum,
    data_variables,
    get_array,
    open_root,
    read_records,
    value_checksum,
    write_record,
)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


def _catalog_entry(catalog: CatalogSpec, modality: str) -> dict[str, Any]:
    source = catalog.source(modality)
    entry: dict[str, Any] = {
        "catalog": catalog.name,
        "kind": catalog.kind,
        "collection": source.collection,
    }
    if catalog.url:
        entry["url"] = catalog.url
    return entry


def build_manifest(
    store: Path, region: RegionSpec, catalogs: Mapping[str, CatalogSpec]
) -> dict[str, Any]:
    """Assign splits to the finished chips of a store and describe the release."""
    root = open_root(store)
    attrs = dict(root.attrs)
    config_hash = region.config_hash(catalogs)
    if attrs.get("config_hash") != config_hash:
        raise StoreError(
            f"store {str(store)!r} was built from another configuration (config hash "
            f"{str(attrs.get('config_hash'))[:12]}..., region file now {config_hash[:12]}...); "
            "rerun extract with --overwrite before freezing"
        )
    records = read_records(store)
    ids = chip_ids(store)
    pending = [chip_id for chip_id, record in zip(ids, records, strict=True) if record is None]
    if pending:
        raise StoreError(
            f"store {str(store)!r} has {len(pending)} unfinished chips (first: "
            f"{pending[0]!r}); rerun extract to finish them before freezing"
        )
    failed = [record["chip_id"] for record in records if record and record["status"] == "failed"]
    if failed:
        log.warning(
            "freezing without %d failed chips (first: %s); their reasons are in the chip table",
            len(failed),
            failed[0],
        )
    ok = [record for record in records if record is not None and record["status"] == "ok"]
    chips = [chip_from_id(record["chip_id"], region.grid) for record in ok]
    labels = assign_splits(chips, region.split, region.name)

    items: dict[str, dict[str, Any]] = {}
    chip_entries = []
    for record in sorted(ok, key=lambda r: r["chip_id"]):
        for summary in record["items"].values():
            for one in summary if isinstance(summary, list) else [summary]:
                items[one["id"]] = one
        chip_entries.append(
            {
                "id": record["chip_id"],
                "split": labels[record["chip_id"]],
                "items": {
                    modality: [one["id"] for one in summary]
                    if isinstance(summary, list)
                    else summary["id"]
                    for modality, summary in sorted(record["items"].items())
                },
                "checksums": record["checksums"],
                "chunk_checksums": record["chunk_checksums"],
            }
        )
    counts = Counter(labels.values())
    return {
        "sensorcube_manifest": MANIFEST_FORMAT,
        "region": region.name,
        "software": {"name": "sensorcube", "version": pipeline.__version__},
        "config_hash": config_hash,
        "grid": {
            "chip_size": region.grid.chip_size,
            "resolution_m": region.grid.resolution_m,
            "coverage": region.grid.coverage,
            "lattice": "chip origin = lattice index * chip_size * resolution_m in the WGS 84 "
            "UTM or UPS zone of the chip centre",
            "crs": sorted({f"EPSG:{chip.epsg}" for chip in chips}),
        },
        "catalogs": {
            modality: _catalog_entry(catalogs[selection.catalog], modality)
            for modality, selection in region.selections().items()
        },
        # Stores written before the codec was recorded used zstd.
        "chunk_codec": attrs.get("chunk_codec", "zstd"),
        "variables": {
            name: get_array(root, name).attrs.get("long_name", "") for name in data_variables(root)
        },
        "split_policy": {
            "fractions": dict(region.split.fractions),
            "block_size": region.split.block_size,
            "buffer_m": region.split.buffer_m,
            "seed": region.split.seed,
        },
        "split_counts": {name: counts.get(name, 0) for name in (*SPLIT_NAMES, BUFFER_LABEL)},
        "chips_skipped": sum(1 for r in records if r is not None and r["status"] == "skipped"),
        "chips_failed": sorted(failed),
        "items": [items[item_id] for item_id in sorted(items)],
        "chips": chip_entries,
        "chips_sha256": chips_digest(chip_entries),
    }


def chips_digest(chips: list[dict[str, Any]]) -> str:
    """SHA-256 of the chip list as canonical JSON, so an edited list is detected on load."""
    text = json.dumps(chips, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(text)
        temporary = Path(handle.name)
    # NamedTemporaryFile creates the file with mode 0600; a manifest is meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod(0o666 & ~umask)
    os.replace(temporary, path)


def freeze(
    store: Path, region: RegionSpec, catalogs: Mapping[str, CatalogSpec], manifest_path: Path
) -> dict[str, Any]:
    """Write the manifest and record each chip's split in the store's chip table."""
    with store_lock(store):
        return _freeze(store, region, catalogs, manifest_path)


def _freeze(
    store: Path, region: RegionSpec, catalogs: Mapping[str, CatalogSpec], manifest_path: Path
) -> dict[str, Any]:
    manifest = build_manifest(store, region, catalogs)
    splits = {entry["id"]: entry["split"] for entry in manifest["chips"]}
    root = open_root(store, mode="r+")
    for index, record in enumerate(read_records(store)):
        if (
            record is not None
            and record["chip_id"] in splits
            and record.get("split") != splits[record["chip_id"]]
        ):
            record["split"] = splits[record["chip_id"]]
            write_record(root, index, record)
    write_json_atomic(manifest_path, manifest)
    log.info("manifest %s: %s", manifest_path, manifest["split_counts"])
    return manifest


def load_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"manifest not found: {str(path)!r}; run 'sensorcube freeze' first or fix the path"
        ) from None
    except json.JSONDecodeError as error:
        raise UsageError(
            f"manifest {str(path)!r} is not valid JSON: {error}; pass the manifest.json "
            "that 'sensorcube freeze' wrote to splits/<region>/"
        ) from error
    version = data.get("sensorcube_manifest") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise UsageError(
            f"{str(path)!r} is not a sensorcube manifest (format {MANIFEST_FORMAT}); pass the "
            "manifest.json that 'sensorcube freeze' wrote to splits/<region>/"
        )
    if version > MANIFEST_FORMAT:
        raise UsageError(
            f"manifest {str(path)!r} has format {version}, newer than the format "
            f"{MANIFEST_FORMAT} this sensorcube {pipeline.__version__} reads; upgrade sensorcube"
        )
    if version < MANIFEST_FORMAT or "chips_sha256" not in data or "chips" not in data:
        raise UsageError(
            f"manifest {str(path)!r} has format {version} without a chip digest; refreeze "
            "the store with 'sensorcube freeze' to write a current manifest"
        )
    if chips_digest(data["chips"]) != data["chips_sha256"]:
        raise UsageError(
            f"manifest {str(path)!r} was edited: its chip list no longer matches its "
            "chips_sha256; restore the frozen manifest from the release or version control"
        )
    manifest: dict[str, Any] = data
    return manifest


@dataclass(frozen=True)
class Mismatch:
    """One chip variable whose stored content differs from the manifest."""

    chip_id: str
    variable: str
    reason: str


def verify(store: Path, manifest: Mapping[str, Any]) -> list[Mismatch]:
    """Re-hash every chip variable listed in the manifest; return the differences."""
    root = open_root(store)
    store_region = dict(root.attrs).get("region")
    if store_region != manifest.get("region"):
        raise UsageError(
            f"store {str(store)!r} contains region {store_region!r} but the manifest is of region "
            f"{manifest.get('region')!r}; pass the manifest of this store"
        )
    ids = {chip_id: index for index, chip_id in enumerate(chip_ids(store))}
    mismatches: list[Mismatch] = check_lattice(root)
    for entry in manifest["chips"]:
        index = ids.get(entry["id"])
        if index is None:
            mismatches.append(Mismatch(entry["id"], "*", "chip missing from the store"))
            continue
        for variable, expected in sorted(entry["checksums"].items()):
            mismatches.extend(_verify_variable(store, root, index, entry, variable, expected))
    return mismatches


def check_lattice(root: zarr.Group) -> list[Mismatch]:
    """Check that every chip's origin and pixel size lie exactly on the region's lattice.

    Chip ``<epsg>_<col>_<row>`` must have the CRS ``EPSG:<epsg>`` and the transform
    ``(r, 0, col * E, 0, -r, (row + 1) * E)`` with ``E = chip_size * r``, compared exactly.
    """
    attrs = dict(root.attrs)
    resolution = float(str(attrs["resolution_m"]))
    extent = int(str(attrs["chip_size"])) * resolution
    ids = np.asarray(get_array(root, "chip")[...]).tolist()
    crs = np.asarray(get_array(root, "chip_crs")[...]).tolist()
    transforms = np.asarray(get_array(root, "chip_transform")[...])
    mismatches = []
    for chip_id, chip_crs, transform in zip(ids, crs, transforms, strict=True):
        epsg, col, row = (int(part) for part in str(chip_id).split("_"))
        expected = (resolution, 0.0, col * extent, 0.0, -resolution, (row + 1) * extent)
        if chip_crs != f"EPSG:{epsg}" or tuple(float(v) for v in transform) != expected:
            mismatches.append(
                Mismatch(
                    str(chip_id),
                    "chip_transform",
                    f"chip is off the lattice: {chip_crs} {tuple(transform)}, expected "
                    f"EPSG:{epsg} {expected}",
                )
            )
    return mismatches


def _verify_variable(
    store: Path,
    root: zarr.Group,
    index: int,
    entry: Mapping[str, Any],
    variable: str,
    expected: str,
) -> list[Mismatch]:
    array = get_array(root, variable)
    stored = chunk_checksum(store, variable, index, array.ndim)
    expected_chunk = entry.get("chunk_checksums", {}).get(variable)
    if stored != expected_chunk:
        reason = "chunk missing" if stored is None else "stored chunk bytes differ"
        try:
            values = np.asarray(array[index])
        except Exception as error:  # any decode failure means the chunk is corrupt
            return [
                Mismatch(
                    entry["id"],
                    variable,
                    f"{reason}; chunk does not decode: {type(error).__name__}: {error}",
                )
            ]
        same_values = value_checksum(values) == expected
        return [
            Mismatch(
                entry["id"],
                variable,
                reason + ("" if not same_values else " (decoded values equal)"),
            )
        ]
    values = np.asarray(array[index])
    if value_checksum(values) != expected:
        return [Mismatch(entry["id"], variable, "decoded values differ")]
    return []
