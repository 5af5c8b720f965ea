"""The work of one chip on a Dask worker: select items, read, derive, check and write.

Task inputs are small: the chip, the ids of its candidate items and the rules. The item dicts
themselves reach every worker once per run, as the results of two tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac

import pipeline
from pipeline.chip_modalities import ChipState, coregister_chip, item_summary, read_modality
from pipeline.config import ModalitySource, S1Selection, S2Selection, Selection
from pipeline.errors import SensorcubeError
from pipeline.gdal_io import capture_gdal_options
from pipeline.grid import Chip
from pipeline.hyperspectral import SpectralBands
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

    ``candidates`` lists per modality the ids of the items the chip may read, in rank order.
    ``expected`` contains the value checksums a frozen manifest records for this chip, and the
    chip is written only if its new pixels hash the same. ``refuse_reason`` marks a chip that
    must not be rebuilt, for example because a source item changed upstream.
    """

    index: int
    chip: Chip
    store: str
    sources: Mapping[str, ModalitySource]
    rules: Mapping[str, Selection]
    candidates: Mapping[str, tuple[str, ...]]
    derived: tuple[str, ...]
    variables: tuple[str, ...]
    reference_time: str
    hsi_bands: SpectralBands | None = None  # every band of the scene, bad ones flagged
    expected: Mapping[str, str] | None = None
    refuse_reason: str | None = None
    split: str | None = None
    # Captured where the job is made (the client), with environment variables as overrides.
    gdal_options: Mapping[str, str | int | bool] = field(default_factory=capture_gdal_options)

    @property
    def s2_rule(self) -> S2Selection:
        rule = self.rules["s2"]
        assert isinstance(rule, S2Selection)
        return rule

    @property
    def s1_rule(self) -> S1Selection:
        rule = self.rules["s1"]
        assert isinstance(rule, S1Selection)
        return rule


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
    for item_id in job.candidates["s2"]:
        item = items[item_id]
        missing = _missing_assets(item, job.sources["s2"], job.s2_rule.bands)
        if missing:
            candidates.append({"id": item_id, "missing_assets": missing})
            continue
        chip_read = read_s2(
            _parsed(items, item_id), job.sources["s2"], job.s2_rule.bands, geobox, job.gdal_options
        )
        if chip_read.quarantine:
            # Metadata that contradicts the pixels: the item is left out with the reason.
            candidates.append({"id": item_id, "quarantined": chip_read.quarantine})
            log.warning(
                "chip %s: Sentinel-2 item %s quarantined: %s",
                job.chip.id,
                item_id,
                chip_read.quarantine,
            )
            continue
        candidates.append({"id": item_id, "clear_fraction": round(chip_read.usable_fraction, 6)})
        read_ids.append(item_id)
        fractions.append(chip_read.usable_fraction)
        reads.append(chip_read)
        if chip_read.usable_fraction >= 1.0:
            break

    choice = choose_s2(read_ids, fractions, job.s2_rule)
    reason = choice.reason
    if not job.candidates["s2"]:
        reason = "no Sentinel-2 item covers the chip"
    elif not read_ids:
        reason = (
            "every Sentinel-2 candidate lacks requested band assets or is quarantined: "
            f"{candidates}"
        )
    selection = {"rule": describe_s2_rule(job.s2_rule), "candidates": candidates, "reason": reason}

    if choice.item_id is None:
        return None, None, selection
    position = read_ids.index(choice.item_id)
    return items[choice.item_id], reads[position], selection


def _s1_table(job: ChipJob, items: ItemsById) -> pd.DataFrame:
    rows = [items[item_id] for item_id in job.candidates["s1"]]
    return pd.DataFrame(
        {
            "id": list(job.candidates["s1"]),
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
        missing = _missing_assets(item, job.sources["s1"], job.s1_rule.bands)
        if missing:
            selection["candidates"].append({"id": candidate.item_id, "missing_assets": missing})
            continue
        chip_read = read_s1(
            _parsed(items, candidate.item_id),
            job.sources["s1"],
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


def process_chips(jobs: Sequence[ChipJob], items: Mapping[str, ItemsById]) -> list[dict[str, Any]]:
    """Process chips one after another, as one Dask task; return their chip-table rows in order."""
    return [process_chip(job, items) for job in jobs]


def process_chip(job: ChipJob, items: Mapping[str, ItemsById]) -> dict[str, Any]:
    """Select, read, derive and write one chip, and return its chip-table row.

    ``items`` maps each modality to the item dicts of the run by id. A chip without an
    acceptable item of a requested modality is recorded with status ``skipped``. Read
    failures, pixels that differ from a manifest, and refused chips are recorded with status
    ``failed``. Neither leaves data chunks behind.
    """
    record = _base_record(job)
    if job.refuse_reason is not None:
        return _finish_without_data(job, record, "failed", job.refuse_reason)
    try:
        return _process(job, record, items)
    except (SensorcubeError, OSError) as error:
        return _finish_without_data(job, record, "failed", f"{type(error).__name__}: {error}")


def _process(
    job: ChipJob, record: dict[str, Any], items: Mapping[str, ItemsById]
) -> dict[str, Any]:
    state = ChipState()
    record["selection"] = state.selection
    reference = pd.Timestamp(job.reference_time).tz_convert("UTC")
    if "s2" in job.rules:
        reference = _read_optical_radar(job, record, items, state)
        if state.skip_reason:
            return _finish_without_data(job, record, "skipped", state.skip_reason)

    for modality in ("dem", "coherence", "hsi", "vhr"):
        if modality in job.rules:
            read_modality(job, modality, items[modality], reference, state)
            if state.skip_reason:
                return _finish_without_data(job, record, "skipped", state.skip_reason)

    coregister_chip(job, state)
    if state.skip_reason:
        return _finish_without_data(job, record, "skipped", state.skip_reason)

    arrays = _derive(job, state)
    mismatch = _check_expected(job, arrays)
    if mismatch:
        return _finish_without_data(job, record, "failed", mismatch)

    record.update(
        status="ok",
        reason="",
        items=state.items,
        time_gap_days=state.time_gap_days,
        offsets=state.offsets or None,
        processing=state.processing,
    )
    result = write_chip(Path(job.store), job.index, arrays, record)
    log.debug("chip %s written: items %s", job.chip.id, sorted(state.items))
    return result


def _read_optical_radar(
    job: ChipJob, record: dict[str, Any], items: Mapping[str, ItemsById], state: ChipState
) -> pd.Timestamp:
    """Choose and read Sentinel-2, then its Sentinel-1 pair; return the Sentinel-2 datetime."""
    s2_item, s2_read, s2_selection = _choose_s2_read(job, items["s2"])
    state.selection["s2"] = s2_selection
    if s2_item is None or s2_read is None:
        state.skip_reason = s2_selection["reason"]
        return pd.Timestamp(job.reference_time)
    s2_datetime = pd.Timestamp(s2_item["properties"]["datetime"]).tz_convert("UTC")
    state.arrays["s2"] = s2_read.values
    state.items["s2"] = item_summary(s2_item)
    state.processing["s2"] = dict(s2_read.processing)
    record["clear_fraction"] = round(s2_read.usable_fraction, 6)
    if "s1" not in job.rules:
        return s2_datetime

    s1_item, s1_read, s1_selection = _choose_s1_read(job, items["s1"], s2_datetime)
    state.selection["s1"] = s1_selection
    if s1_item is None or s1_read is None:
        state.skip_reason = s1_selection["reason"]
        return s2_datetime
    state.arrays["s1"] = s1_read.values
    state.items["s1"] = item_summary(s1_item)
    state.processing["s1"] = dict(s1_read.processing)
    state.time_gap_days["s1"] = s1_selection["time_gap_days"]
    record["s1_valid_fraction"] = round(s1_read.usable_fraction, 6)
    record["orbit_state"] = s1_item["properties"].get("sat:orbit_state")
    return s2_datetime


def _derive(job: ChipJob, state: ChipState) -> dict[str, np.ndarray]:
    arrays = dict(state.arrays)
    if "ndvi" in job.derived:
        bands = list(job.s2_rule.bands)
        s2 = arrays["s2"]
        arrays["ndvi"] = ndvi(s2[bands.index("B04")], s2[bands.index("B08")])
        state.processing["ndvi"] = (
            "(B08 - B04) / (B08 + B04) on float reflectance; NaN where invalid"
        )
    # write_chip and value_checksum make NaN payloads canonical themselves.
    return {
        name: arrays[name].astype(np.float32, copy=False)
        for name in job.variables
        if name in arrays
    }


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
