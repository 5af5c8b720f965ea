"""Extraction: one Dask task per chip reads, normalises, derives and writes that chip.

Task inputs are small: the chip, its candidate item dicts and the rules. Every task writes its
own chunks, so the graph grows with the chip count only.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from distributed import Client, as_completed
from tqdm import tqdm

import pipeline
from pipeline.config import ModalitySource, S1Selection, S2Selection
from pipeline.errors import RunFailedError, SensorcubeError
from pipeline.gdal_io import DEFAULT_GDAL_OPTIONS
from pipeline.grid import Chip
from pipeline.plan import Plan
from pipeline.radiometry import ndvi
from pipeline.read import ChipRead, read_s1, read_s2
from pipeline.select import (
    choose_s2,
    describe_s1_rule,
    describe_s2_rule,
    rank_s1_candidates,
)
from pipeline.store import (
    OutputAction,
    check_existing_store,
    create_store,
    iter_finished,
    open_root,
    read_records,
    variable_specs,
    write_chip,
    write_record,
)

log = logging.getLogger(__name__)

# Futures kept in flight per worker thread, so a region of many chips never puts every task on
# the scheduler at once.
TASKS_IN_FLIGHT_PER_THREAD = 4


@dataclass(frozen=True)
class ChipJob:
    """Inputs of one chip task, picklable and small."""

    index: int
    chip: Chip
    store: str
    s2_source: ModalitySource
    s1_source: ModalitySource
    s2_rule: S2Selection
    s1_rule: S1Selection
    s2_candidates: tuple[Mapping[str, Any], ...]
    s1_items: tuple[Mapping[str, Any], ...]
    derived: tuple[str, ...]
    gdal_options: Mapping[str, str | int | bool] = field(
        default_factory=lambda: dict(DEFAULT_GDAL_OPTIONS)
    )


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
        "split": None,
        "software_version": pipeline.__version__,
    }


def _choose_s2_read(
    job: ChipJob,
) -> tuple[Mapping[str, Any] | None, ChipRead | None, dict[str, Any]]:
    geobox = job.chip.geobox()
    fractions: list[float] = []
    reads: list[ChipRead] = []
    for item in job.s2_candidates:
        chip_read = read_s2(item, job.s2_source, job.s2_rule.bands, geobox, job.gdal_options)
        fractions.append(chip_read.usable_fraction)
        reads.append(chip_read)
        if chip_read.usable_fraction >= 1.0:
            break
    ids = [str(item["id"]) for item in job.s2_candidates[: len(fractions)]]
    choice = choose_s2(ids, fractions, job.s2_rule)
    selection = {
        "rule": describe_s2_rule(job.s2_rule),
        "candidates": [
            {"id": i, "clear_fraction": round(f, 6)} for i, f in zip(ids, fractions, strict=True)
        ],
        "reason": choice.reason or ("no Sentinel-2 item covers the chip" if not ids else ""),
    }
    if choice.item_id is None:
        return None, None, selection
    position = ids.index(choice.item_id)
    return job.s2_candidates[position], reads[position], selection


def _choose_s1_read(
    job: ChipJob, s2_datetime: pd.Timestamp
) -> tuple[Mapping[str, Any] | None, ChipRead | None, dict[str, Any]]:
    by_id = {str(item["id"]): item for item in job.s1_items}
    table = pd.DataFrame(
        {
            "id": list(by_id),
            "datetime": [
                pd.Timestamp(item["properties"]["datetime"]).tz_convert("UTC")
                for item in by_id.values()
            ],
            "orbit_state": [item["properties"].get("sat:orbit_state") for item in by_id.values()],
        }
    )
    candidates, reason = rank_s1_candidates(table, s2_datetime, job.s1_rule)
    selection: dict[str, Any] = {
        "rule": describe_s1_rule(job.s1_rule),
        "reason": reason,
        "candidates": [],
    }
    geobox = job.chip.geobox()
    for candidate in candidates:
        item = by_id[candidate.item_id]
        chip_read = read_s1(item, job.s1_source, job.s1_rule.bands, geobox, job.gdal_options)
        selection["candidates"].append(
            {"id": candidate.item_id, "valid_fraction": round(chip_read.usable_fraction, 6)}
        )
        if chip_read.usable_fraction >= job.s1_rule.min_valid_fraction:
            selection["time_gap_days"] = round(candidate.gap_days, 6)
            selection["reason"] = ""
            return item, chip_read, selection
    if candidates:
        selection["reason"] = (
            f"no Sentinel-1 candidate reaches min_valid_fraction {job.s1_rule.min_valid_fraction:g}"
        )
    return None, None, selection


def process_chip(job: ChipJob) -> dict[str, Any]:
    """Select, read, derive and write one chip, and return its chip-table row.

    Read failures are recorded in the row with status ``failed``. A chip without an acceptable
    Sentinel-2 item or Sentinel-1 pair is recorded with status ``skipped``.
    """
    record = _base_record(job)
    try:
        return _process(job, record)
    except (SensorcubeError, OSError) as error:
        log.error("chip %s failed: %s", job.chip.id, error)
        record.update(status="failed", reason=f"{type(error).__name__}: {error}")
        write_record(open_root(Path(job.store), mode="r+"), job.index, record)
        return record


def _process(job: ChipJob, record: dict[str, Any]) -> dict[str, Any]:
    s2_item, s2_read, s2_selection = _choose_s2_read(job)
    record["selection"] = {"s2": s2_selection}
    if s2_item is None or s2_read is None:
        return _skip(job, record, s2_selection["reason"])

    s2_datetime = pd.Timestamp(s2_item["properties"]["datetime"]).tz_convert("UTC")
    s1_item, s1_read, s1_selection = _choose_s1_read(job, s2_datetime)
    record["selection"]["s1"] = s1_selection
    if s1_item is None or s1_read is None:
        return _skip(job, record, s1_selection["reason"])

    arrays = {"s2": s2_read.values, "s1": s1_read.values}
    processing: dict[str, Any] = {"s2": dict(s2_read.processing), "s1": dict(s1_read.processing)}
    if "ndvi" in job.derived:
        bands = list(job.s2_rule.bands)
        arrays["ndvi"] = ndvi(
            s2_read.values[bands.index("B04")], s2_read.values[bands.index("B08")]
        )
        processing["ndvi"] = "(B08 - B04) / (B08 + B04) on float reflectance; NaN where invalid"

    record.update(
        status="ok",
        reason="",
        items={"s2": _item_summary(s2_item), "s1": _item_summary(s1_item)},
        time_gap_days={"s1": s1_selection["time_gap_days"]},
        clear_fraction=round(s2_read.usable_fraction, 6),
        s1_valid_fraction=round(s1_read.usable_fraction, 6),
        orbit_state=s1_item["properties"].get("sat:orbit_state"),
        offsets=None,
        processing=processing,
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


def _skip(job: ChipJob, record: dict[str, Any], reason: str) -> dict[str, Any]:
    record.update(status="skipped", reason=reason)
    write_record(open_root(Path(job.store), mode="r+"), job.index, record)
    log.info("chip %s skipped: %s", job.chip.id, reason)
    return record


@dataclass(frozen=True)
class ExtractSummary:
    """Counts of one extraction run."""

    store: Path
    total: int
    ok: int
    skipped: int
    failed: int
    resumed: int
    failures: tuple[tuple[str, str], ...]

    def lines(self) -> list[str]:
        text = [
            f"store {self.store}: {self.total} chips, {self.ok} ok, {self.skipped} skipped "
            f"(no acceptable pair), {self.failed} failed ({self.resumed} already finished before "
            "this run)"
        ]
        text.extend(f"  failed {chip_id}: {reason}" for chip_id, reason in self.failures[:20])
        if len(self.failures) > 20:
            text.append(f"  ... and {len(self.failures) - 20} more failed chips in the chip table")
        return text


def store_attributes(plan: Plan) -> dict[str, Any]:
    region = plan.region
    specs = variable_specs(region.s2.bands, region.s1.bands, region.derived)
    return {
        "sensorcube_store_format": 1,
        "software_version": pipeline.__version__,
        "region": region.name,
        "config_hash": region.config_hash(plan.catalogs),
        "chip_size": region.grid.chip_size,
        "resolution_m": region.grid.resolution_m,
        "data_variables": [spec.name for spec in specs],
        "Conventions": "CF-1.10",
        "title": f"sensorcube region {region.name}",
    }


def prepare_store(plan: Plan, store: Path, *, overwrite: bool) -> bool:
    """Create the store or accept it for resuming; return True when resuming."""
    attrs = store_attributes(plan)
    action = check_existing_store(store, config_hash=attrs["config_hash"], overwrite=overwrite)
    if action is OutputAction.RESUME:
        return True
    region = plan.region
    create_store(
        store,
        chips=[task.chip for task in plan.tasks],
        variables=variable_specs(region.s2.bands, region.s1.bands, region.derived),
        attrs=attrs,
        replace=action is OutputAction.REPLACE,
    )
    return False


def make_jobs(plan: Plan, store: Path, indices: Sequence[int]) -> Iterator[ChipJob]:
    region = plan.region
    s2_source = plan.catalogs[region.s2.catalog].source("s2")
    s1_source = plan.catalogs[region.s1.catalog].source("s1")
    for index in indices:
        task = plan.tasks[index]
        yield ChipJob(
            index=index,
            chip=task.chip,
            # Workers may run in another working folder, so they get an absolute path.
            store=str(store.resolve()),
            s2_source=s2_source,
            s1_source=s1_source,
            s2_rule=region.s2,
            s1_rule=region.s1,
            s2_candidates=tuple(plan.s2.items[i] for i in task.s2_candidates),
            s1_items=tuple(plan.s1.items[i] for i in task.s1_items),
            derived=region.derived,
        )


def _threads(client: Client) -> int:
    info = client.scheduler_info()
    return max(
        1, sum(int(worker.get("nthreads", 1)) for worker in info.get("workers", {}).values())
    )


def extract(
    plan: Plan,
    store: Path,
    client: Client,
    *,
    overwrite: bool = False,
    max_failed_fraction: float = 0.0,
) -> ExtractSummary:
    """Write every unfinished chip of the plan into the store, one Dask task per chip."""
    resume = prepare_store(plan, store, overwrite=overwrite)
    records = read_records(store) if resume else [None] * len(plan.tasks)
    finished = set(iter_finished(records))
    pending = [index for index in range(len(plan.tasks)) if index not in finished]
    log.info("store %s: %d chips to write, %d already finished", store, len(pending), len(finished))

    results = {index: records[index] for index in finished}
    limit = TASKS_IN_FLIGHT_PER_THREAD * _threads(client)
    jobs = make_jobs(plan, store, pending)
    progress = tqdm(
        total=len(pending), unit="chip", disable=not sys.stderr.isatty(), file=sys.stderr
    )
    in_flight = as_completed()
    index_by_id = {task.chip.id: index for index, task in enumerate(plan.tasks)}
    for job in _take(jobs, limit):
        in_flight.add(client.submit(process_chip, job, pure=False))
    for future in in_flight:
        record = future.result()
        results[index_by_id[record["chip_id"]]] = record
        progress.update(1)
        for job in _take(jobs, 1):
            in_flight.add(client.submit(process_chip, job, pure=False))
    progress.close()
    return _summarise(store, results, len(finished), max_failed_fraction)


def _take(jobs: Iterator[ChipJob], count: int) -> list[ChipJob]:
    return list(itertools.islice(jobs, count))


def _summarise(
    store: Path,
    results: Mapping[int, dict[str, Any] | None],
    resumed: int,
    max_failed_fraction: float,
) -> ExtractSummary:
    statuses = [record.get("status") if record else "pending" for record in results.values()]
    failures = tuple(
        sorted(
            (r["chip_id"], r.get("reason", ""))
            for r in results.values()
            if r and r.get("status") == "failed"
        )
    )
    summary = ExtractSummary(
        store=store,
        total=len(statuses),
        ok=statuses.count("ok"),
        skipped=statuses.count("skipped"),
        failed=statuses.count("failed"),
        resumed=resumed,
        failures=failures,
    )
    for line in summary.lines():
        log.info("%s", line)
    if summary.total and summary.failed / summary.total > max_failed_fraction:
        raise RunFailedError(
            "\n".join(summary.lines())
            + f"\n{summary.failed} of {summary.total} chips failed, above --max-failed-fraction "
            f"{max_failed_fraction:g}; see the reasons above, fix them and rerun (finished chips "
            "are kept)"
        )
    return summary
