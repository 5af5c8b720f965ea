"""The work of one chip on a Dask worker: select items, read, derive, check and write.

Task inputs are small: the chip, the ids of its candidate items and the rules. The item dicts
themselves reach every worker once per run, as the results of two tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac

import pipeline
from pipeline.config import ModalitySource, S1Selection, S2Selection
from pipeline.errors import SensorcubeError
from pipeline.gdal_io import DEFAULT_GDAL_OPTIONS
from pipeline.grid import Chip
from pipeline.radiometry import ndvi
from pipeline.read import ChipRead, read_s1, read_s2
from pipeline.select import choose_s2, describe_s1_rule, describe_s2_rule, rank_s1_candidates
from pipeline.store import (
    delete_chip_chunks,
    open_root,
    value_checksum,
    write_chip,
    write_record,
)

log = logging.getLogger(__name__)

ItemsById = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class ChipJob:
    """Inputs of one chip task, picklable and small.

    ``expected`` contains the value checksums a frozen manifest records for this chip, and the
    chip is written only if its new pixels hash the same. ``refuse_reason`` marks a chip that
    must not be rebuilt, for example because a source item changed upstream.
    """

    index: int
    chip: Chip
    store: str
    s2_source: ModalitySource
    s1_source: ModalitySource
    s2_rule: S2Selection
    s1_rule: S1Selection
    s2_candidates: tuple[str, ...]
    s1_items: tuple[str, ...]
    derived: tuple[str, ...]
    variables: tuple[str, ...]
    expected: Mapping[str, str] | None = None
    refuse_reason: str | None = None
    split: str | None = None
    gdal_options: Mapping[str, str | int | bool] = field(
        default_factory=lambda: dict(DEFAULT_GDAL_OPTIONS)
    )


# Parsed items per worker process. A run passes every task the same item mappings, and parsing
# deep-copies the dict, so each item is parsed once per mapping. The cache keeps each mapping
# alive, so its id() is not reused while cached.
_PARSED: dict[tuple[int, str], tuple[ItemsById, pystac.Item]] = {}
MAX_PARSED_ITEMS = 1024


def _parsed(items: ItemsById, item_id: str) -> pystac.Item:
    key = (id(items), item_id)
    cached = _PARSED.get(key)
    if cached is not None and cached[0] is items:
        return cached[1]
    if len(_PARSED) >= MAX_PARSED_ITEMS:
        _PARSED.clear()
    item = pystac.Item.from_dict(dict(items[item_id]))
    _PARSED[key] = (items, item)
    return item


def _item_summary(item: Mapping[str, Any]) -> dict[str, Any]:
    properties = item["properties"]
    return {
        "id": item["id"],
        "collection": item.get("collection"),
        "datetime": properties.get("datetime"),
        "updated": properties.get("updated"),
    }


def _base_record(job: ChipJob) -> dict[str, Any]:
    chip = job.chip
    return {
        "chip_id": chip.id,
        "epsg": chip.epsg,
        "col": chip.col,
        "row": chip.row,
        "bounds": list(chip.bounds),
        "lonlat_bounds": [round(v, 7) for v in chip.footprint_lonlat().bounds],
        "split": job.split,
        "software_version": pipeline.__version__,
    }


def _missing_assets(
    item: Mapping[str, Any], source: ModalitySource, bands: tuple[str, ...]
) -> list[str]:
    assets = item.get("assets", {})
    return [source.band(band).asset for band in bands if source.band(band).asset not in assets]


def _choose_s2_read(
    job: ChipJob, items: ItemsById
) -> tuple[Mapping[str, Any] | None, ChipRead | None, dict[str, Any]]:
    """Read the ranked candidates until one is fully clear; return the chosen item and read."""
    geobox = job.chip.geobox()
    candidates: list[dict[str, Any]] = []
    read_ids: list[str] = []
    fractions: list[float] = []
    reads: list[ChipRead] = []
    for item_id in job.s2_candidates:
        item = items[item_id]
        missing = _missing_assets(item, job.s2_source, job.s2_rule.bands)
        if missing:
            candidates.append({"id": item_id, "missing_assets": missing})
            continue
        chip_read = read_s2(
            _parsed(items, item_id), job.s2_source, job.s2_rule.bands, geobox, job.gdal_options
        )
        candidates.append({"id": item_id, "clear_fraction": round(chip_read.usable_fraction, 6)})
        read_ids.append(item_id)
        fractions.append(chip_read.usable_fraction)
        reads.append(chip_read)
        if chip_read.usable_fraction >= 1.0:
            break

    choice = choose_s2(read_ids, fractions, job.s2_rule)
    reason = choice.reason
    if not job.s2_candidates:
        reason = "no Sentinel-2 item covers the chip"
    elif not read_ids:
        reason = f"every Sentinel-2 candidate lacks requested band assets: {candidates}"
    selection = {"rule": describe_s2_rule(job.s2_rule), "candidates": candidates, "reason": reason}

    if choice.item_id is None:
        return None, None, selection
    position = read_ids.index(choice.item_id)
    return items[choice.item_id], reads[position], selection


def _s1_table(job: ChipJob, items: ItemsById) -> pd.DataFrame:
    rows = [items[item_id] for item_id in job.s1_items]
    return pd.DataFrame(
        {
            "id": list(job.s1_items),
            "datetime": [
                pd.Timestamp(item["properties"]["datetime"]).tz_convert("UTC") for item in rows
            ],
            "orbit_state": [item["properties"].get("sat:orbit_state") for item in rows],
        }
    )


def _choose_s1_read(
    job: ChipJob, items: ItemsById, s2_datetime: pd.Timestamp
) -> tuple[Mapping[str, Any] | None, ChipRead | None, dict[str, Any]]:
    candidates, reason = rank_s1_candidates(_s1_table(job, items), s2_datetime, job.s1_rule)
    selection: dict[str, Any] = {
        "rule": describe_s1_rule(job.s1_rule),
        "reason": reason,
        "candidates": [],
    }
    geobox = job.chip.geobox()
    for candidate in candidates:
        item = items[candidate.item_id]
        missing = _missing_assets(item, job.s1_source, job.s1_rule.bands)
        if missing:
            selection["candidates"].append({"id": candidate.item_id, "missing_assets": missing})
            continue
        chip_read = read_s1(
            _parsed(items, candidate.item_id),
            job.s1_source,
            job.s1_rule.bands,
            geobox,
            job.gdal_options,
        )
        selection["candidates"].append(
            {"id": candidate.item_id, "valid_fraction": round(chip_read.usable_fraction, 6)}
        )
        if chip_read.usable_fraction >= job.s1_rule.min_valid_fraction:
            selection["time_gap_days"] = round(candidate.gap_days, 6)
            selection["reason"] = ""
            return item, chip_read, selection
    if candidates:
        selection["reason"] = (
            "no Sentinel-1 candidate has the requested polarizations and reaches "
            f"min_valid_fraction {job.s1_rule.min_valid_fraction:g}: {selection['candidates']}"
        )
    return None, None, selection


def process_chip(job: ChipJob, s2_items: ItemsById, s1_items: ItemsById) -> dict[str, Any]:
    """Select, read, derive and write one chip, and return its chip-table row.

    A chip without an acceptable Sentinel-2 item or Sentinel-1 pair is recorded with status
    ``skipped``. Read failures, pixels that differ from a manifest, and refused chips are
    recorded with status ``failed``. Neither leaves data chunks behind.
    """
    record = _base_record(job)
    if job.refuse_reason is not None:
        return _finish_without_data(job, record, "failed", job.refuse_reason)
    try:
        return _process(job, record, s2_items, s1_items)
    except (SensorcubeError, OSError) as error:
        return _finish_without_data(job, record, "failed", f"{type(error).__name__}: {error}")


def _process(
    job: ChipJob, record: dict[str, Any], s2_items: ItemsById, s1_items: ItemsById
) -> dict[str, Any]:
    s2_item, s2_read, s2_selection = _choose_s2_read(job, s2_items)
    record["selection"] = {"s2": s2_selection}
    if s2_item is None or s2_read is None:
        return _finish_without_data(job, record, "skipped", s2_selection["reason"])

    s2_datetime = pd.Timestamp(s2_item["properties"]["datetime"]).tz_convert("UTC")
    s1_item, s1_read, s1_selection = _choose_s1_read(job, s1_items, s2_datetime)
    record["selection"]["s1"] = s1_selection
    if s1_item is None or s1_read is None:
        return _finish_without_data(job, record, "skipped", s1_selection["reason"])

    arrays = _derive(job, s2_read, s1_read)
    mismatch = _check_expected(job, arrays)
    if mismatch:
        return _finish_without_data(job, record, "failed", mismatch)

    record.update(
        status="ok",
        reason="",
        items={"s2": _item_summary(s2_item), "s1": _item_summary(s1_item)},
        time_gap_days={"s1": s1_selection["time_gap_days"]},
        clear_fraction=round(s2_read.usable_fraction, 6),
        s1_valid_fraction=round(s1_read.usable_fraction, 6),
        orbit_state=s1_item["properties"].get("sat:orbit_state"),
        offsets=None,
        processing=_processing(job, s2_read, s1_read),
    )
    result = write_chip(Path(job.store), job.index, arrays, record)
    log.debug(
        "chip %s written: s2 %s, s1 %s, gap %.2f days",
        job.chip.id,
        s2_item["id"],
        s1_item["id"],
        s1_selection["time_gap_days"],
    )
    return result


def _derive(job: ChipJob, s2_read: ChipRead, s1_read: ChipRead) -> dict[str, np.ndarray]:
    arrays = {"s2": s2_read.values, "s1": s1_read.values}
    if "ndvi" in job.derived:
        bands = list(job.s2_rule.bands)
        red = s2_read.values[bands.index("B04")]
        nir = s2_read.values[bands.index("B08")]
        arrays["ndvi"] = ndvi(red, nir)
    # write_chip and value_checksum make NaN payloads canonical themselves.
    return {name: values.astype(np.float32, copy=False) for name, values in arrays.items()}


def _processing(job: ChipJob, s2_read: ChipRead, s1_read: ChipRead) -> dict[str, Any]:
    processing: dict[str, Any] = {"s2": dict(s2_read.processing), "s1": dict(s1_read.processing)}
    if "ndvi" in job.derived:
        processing["ndvi"] = "(B08 - B04) / (B08 + B04) on float reflectance; NaN where invalid"
    return processing


def _check_expected(job: ChipJob, arrays: Mapping[str, np.ndarray]) -> str:
    """Compare new pixels with the manifest's checksums; return a reason when they differ."""
    if job.expected is None:
        return ""
    differ = [
        name
        for name, checksum in sorted(job.expected.items())
        if name not in arrays or value_checksum(arrays[name]) != checksum
    ]
    if not differ:
        return ""
    return (
        f"pixels of {differ} no longer hash as the manifest records; a source item changed "
        "upstream or the software differs, so the chip was not replaced"
    )


def record_failure(job: ChipJob, reason: str) -> dict[str, Any]:
    """Record a chip as failed, without data, from outside its task (for example the client)."""
    return _finish_without_data(job, _base_record(job), "failed", reason)


def _finish_without_data(
    job: ChipJob, record: dict[str, Any], status: str, reason: str
) -> dict[str, Any]:
    store = Path(job.store)
    delete_chip_chunks(store, job.index, job.variables)
    record.update(status=status, reason=reason)
    write_record(open_root(store, mode="r+"), job.index, record)
    if status == "failed":
        log.error("chip %s failed: %s", job.chip.id, reason)
    else:
        log.info("chip %s skipped: %s", job.chip.id, reason)
    return record
