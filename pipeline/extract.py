"""Extraction: one Dask task per chip, submitted in bounded waves, under the store's lock.

The worker side of a chip lives in :mod:`pipeline.chip_task`. This module creates or resumes the
store, sends the item dicts once, keeps a bounded number of chip tasks in flight and
summarises the outcome against the failure policy.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, KilledWorker, as_completed
from tqdm import tqdm

import pipeline
from pipeline.chip_task import ChipJob, process_chips, record_failure
from pipeline.errors import CatalogError, ConfigError, RunFailedError, StoreError
from pipeline.hyperspectral import SpectralBands, require_same_bands
from pipeline.lock import store_lock
from pipeline.plan import Plan
from pipeline.store import (
    DEFAULT_CHUNK_CODEC,
    OutputAction,
    VariableSpec,
    check_existing_store,
    chip_ids,
    create_store,
    iter_finished,
    read_records,
    remove_partial_files,
    variable_specs,
)

log = logging.getLogger(__name__)

# Futures kept in flight per worker thread, so a region of many chips never puts every task on
# the scheduler at once.
TASKS_IN_FLIGHT_PER_THREAD = 4
# Chips of one task, adjacent in plan order. Scheduling a task costs the client and scheduler
# several milliseconds, and the chips of one task reuse the source tiles they share from the
# worker's GDAL block cache. Tasks get fewer chips as the region's last chips are submitted.
MAX_CHIPS_PER_TASK = 4


@dataclass(frozen=True)
class FrozenTargets:
    """Expectations of a frozen manifest for each chip, used by rebuilds and repairs.

    ``checksums`` maps chip id to the value checksum of each variable. ``refused`` maps chip id
    to the reason it must not be rebuilt. ``redo`` lists finished chips to write again.
    """

    checksums: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    redo: frozenset[str] = frozenset()
    splits: Mapping[str, str] = field(default_factory=dict)
    codec: str = DEFAULT_CHUNK_CODEC  # chunk codec of the frozen store, so bytes match again


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
            f"(no acceptable item), {self.failed} failed ({self.resumed} already finished before "
            "this run)"
        ]
        text.extend(f"  failed {chip_id}: {reason}" for chip_id, reason in self.failures[:20])
        if len(self.failures) > 20:
            text.append(f"  ... and {len(self.failures) - 20} more failed chips in the chip table")
        return text


def store_attributes(plan: Plan, *, codec: str = DEFAULT_CHUNK_CODEC) -> dict[str, Any]:
    region = plan.region
    specs = plan_variables(plan)
    return {
        "sensorcube_store_format": 1,
        "software_version": pipeline.__version__,
        "region": region.name,
        "config_hash": region.config_hash(plan.catalogs),
        "chip_size": region.grid.chip_size,
        "resolution_m": region.grid.resolution_m,
        "data_variables": [spec.name for spec in specs],
        "chunk_codec": codec,
        "Conventions": "CF-1.10",
        "title": f"sensorcube region {region.name}",
    }


def prepare_store(
    plan: Plan, store: Path, *, overwrite: bool, codec: str = DEFAULT_CHUNK_CODEC
) -> bool:
    """Create the store or accept it for resuming; return True when resuming."""
    attrs = store_attributes(plan, codec=codec)
    action = check_existing_store(store, config_hash=attrs["config_hash"], overwrite=overwrite)
    if action is OutputAction.RESUME:
        removed = remove_partial_files(store)
        if removed:
            log.info(
                "store %s: removed %d partial chunk files of an interrupted run", store, removed
            )
        return True
    create_store(
        store,
        chips=[task.chip for task in plan.tasks],
        variables=plan_variables(plan),
        attrs=attrs,
        replace=action is OutputAction.REPLACE,
        codec=codec,
    )
    return False


def plan_variables(plan: Plan) -> list[VariableSpec]:
    """List the store variables of a plan, with the wavelengths and units its items declare."""
    _check_hsi_coregistration_band(plan)
    vhr_units = "1"
    if plan.region.vhr is not None:
        source = plan.catalogs[plan.region.vhr.catalog].source("vhr")
        vhr_units = "DN" if source.vhr is not None and source.vhr.units == "dn" else "1"
    return variable_specs(plan.region, hsi_bands=hsi_bands(plan), vhr_units=vhr_units)


def _check_hsi_coregistration_band(plan: Plan) -> None:
    """Reject a co-registration wavelength that no kept hyperspectral band covers."""
    rule = plan.region.hsi
    if rule is None or rule.coregistration is None:
        return
    kept = [(wavelength, width) for wavelength, width in hsi_bands(plan)]
    requested = float(rule.coregistration.band)
    nearest, width = min(kept, key=lambda band: abs(band[0] - requested))
    if abs(nearest - requested) > width:
        raise ConfigError(
            f"{plan.region.path}: modalities.hsi.coregistration.band {requested:g} nm is not "
            f"within the FWHM of any kept hyperspectral band (nearest {nearest:g} nm, FWHM "
            f"{width:g} nm; kept bands span {kept[0][0]:g} to {kept[-1][0]:g} nm); choose a "
            "wavelength inside that range, for example 842 for the band nearest Sentinel-2 B08"
        )


def hsi_bands(plan: Plan) -> list[tuple[float, float]]:
    """(wavelength, FWHM) in nm of the hyperspectral bands kept, from the plan's first item."""
    spectral = hsi_spectral_bands(plan)
    if spectral is None:
        return []
    return [
        (spectral.wavelength_nm[index - 1], spectral.fwhm_nm[index - 1])
        for index in spectral.kept_indexes()
    ]


def hsi_spectral_bands(plan: Plan) -> SpectralBands | None:
    """Return the spectral bands of the plan's hyperspectral items, which must all be equal."""
    if "hsi" not in plan.item_sets:
        return None
    source = plan.catalogs[plan.region.selections()["hsi"].catalog].source("hsi")
    asset = source.bands[0].asset
    spectral: SpectralBands | None = None
    for item_id, item in sorted(plan.item_sets["hsi"].items.items()):
        declared = item["assets"][asset].get("eo:bands") or item["assets"][asset].get("bands")
        if not declared:
            raise CatalogError(
                f"hyperspectral item {item_id!r} asset {asset!r} lists no eo:bands with "
                "wavelengths; the store needs each band's wavelength"
            )
        bands = SpectralBands.from_stac_bands(declared)
        if spectral is None:
            spectral = bands
        else:
            require_same_bands(spectral, bands, what=f"item {item_id!r}")
    return spectral


def make_jobs(
    plan: Plan, store: Path, indices: Mapping[str, int], targets: FrozenTargets
) -> Iterator[ChipJob]:
    """Yield one job per plan task, addressed by the chip's index in the store."""
    region = plan.region
    rules = region.selections()
    sources = {
        modality: plan.catalogs[rule.catalog].source(modality) for modality, rule in rules.items()
    }
    spectral = hsi_spectral_bands(plan)
    variables = tuple(spec.name for spec in plan_variables(plan))
    for task in plan.tasks:
        chip_id = task.chip.id
        yield ChipJob(
            index=indices[chip_id],
            chip=task.chip,
            # Workers may run in another working folder, so they get an absolute path.
            store=str(store.resolve()),
            sources=sources,
            rules=rules,
            candidates=task.candidates,
            derived=region.derived,
            variables=variables,
            reference_time=region.reference_time.isoformat(),
            hsi_bands=spectral,
            expected=targets.checksums.get(chip_id),
            refuse_reason=targets.refused.get(chip_id),
            split=targets.splits.get(chip_id),
        )


def _threads(client: Client) -> int:
    info = client.scheduler_info()
    return max(
        1, sum(int(worker.get("nthreads", 1)) for worker in info.get("workers", {}).values())
    )


def _store_indices(store: Path, plan: Plan) -> dict[str, int]:
    indices = {chip_id: index for index, chip_id in enumerate(chip_ids(store))}
    missing = [task.chip.id for task in plan.tasks if task.chip.id not in indices]
    if missing:
        raise StoreError(
            f"store {str(store)!r} has no chips {missing[:5]} (and {max(0, len(missing) - 5)} "
            "more) of this plan; it was created for other chips, so write to a new --out"
        )
    return indices


def extract(
    plan: Plan,
    store: Path,
    client: Client,
    *,
    overwrite: bool = False,
    max_failed_fraction: float = 0.0,
    targets: FrozenTargets | None = None,
) -> ExtractSummary:
    """Write every unfinished chip of the plan into the store, one Dask task per chip."""
    targets = targets or FrozenTargets()
    with store_lock(store):
        resume = prepare_store(plan, store, overwrite=overwrite, codec=targets.codec)
        indices = _store_indices(store, plan)
        records = read_records(store) if resume else [None] * len(indices)
        finished_indices = set(iter_finished(records))
        planned = {task.chip.id for task in plan.tasks}
        finished = {
            chip_id
            for chip_id, index in indices.items()
            if index in finished_indices and chip_id in planned and chip_id not in targets.redo
        }
        log.info(
            "store %s: %d chips to write, %d already finished",
            store,
            len(planned) - len(finished),
            len(finished),
        )
        pending = plan.with_tasks(
            tuple(task for task in plan.tasks if task.chip.id not in finished)
        )
        results: dict[str, dict[str, Any] | None] = {
            chip_id: records[indices[chip_id]] for chip_id in finished
        }
        results.update(_run_jobs(client, pending, make_jobs(pending, store, indices, targets)))
        # A worker killed while writing a chunk leaves zarr's temporary file behind, even though
        # the scheduler reruns its chip on another worker.
        removed = remove_partial_files(store)
        if removed:
            log.info("store %s: removed %d partial chunk files of killed workers", store, removed)
        return _summarise(store, results, len(finished), max_failed_fraction)


def _run_jobs(client: Client, plan: Plan, jobs: Iterator[ChipJob]) -> dict[str, dict[str, Any]]:
    """Run chip jobs with at most a few in flight per worker thread; return records by chip id."""
    # Every task reads item dicts from one copy per worker instead of carrying them. The copies
    # are task results, not scattered data: the scheduler recomputes a result lost with its
    # worker, but scattered data lost with the last worker holding it cancels every chip task.
    items: dict[str, Future[Any]] = {
        modality: client.submit(dict, dict(item_set.items), pure=False)
        for modality, item_set in plan.item_sets.items()
    }
    threads = _threads(client)
    limit = TASKS_IN_FLIGHT_PER_THREAD * threads
    unsubmitted = len(plan.tasks)
    progress = tqdm(
        total=len(plan.tasks), unit="chip", disable=not sys.stderr.isatty(), file=sys.stderr
    )
    results: dict[str, dict[str, Any]] = {}
    jobs_by_key: dict[str, list[ChipJob]] = {}
    in_flight = as_completed()

    def submit(count: int) -> None:
        nonlocal unsubmitted
        for _ in range(count):
            batch = _take(jobs, _chips_per_task(unsubmitted, threads))
            if not batch:
                return
            unsubmitted -= len(batch)
            future = client.submit(process_chips, batch, items, pure=False)
            jobs_by_key[str(future.key)] = batch
            in_flight.add(future)

    submit(limit)
    for future in in_flight:
        batch = jobs_by_key.pop(str(future.key))
        try:
            records = future.result()
        except KilledWorker as error:
            # The task lost its worker too often, for example by running out of memory. Its
            # chips are recorded as failed, so the failure policy decides the exit code.
            records = [record_failure(job, f"KilledWorker: {error}") for job in batch]
        for record in records:
            results[record["chip_id"]] = record
        progress.update(len(records))
        submit(1)
    progress.close()
    return results


def _chips_per_task(unsubmitted: int, threads: int) -> int:
    """Return how many chips the next task gets: up to MAX_CHIPS_PER_TASK, fewer near the end.

    Workers take queued tasks in submission order, so while one thread runs a task of n chips
    the others run the chips submitted after it. A task gets at most half of the chips left
    per thread, so the chips after it keep the other threads busy until it ends. The last tasks
    have one chip each, and the workers finish within about one chip of each other.
    """
    share = unsubmitted // (2 * threads)
    return max(1, min(MAX_CHIPS_PER_TASK, share))


def _take(jobs: Iterator[ChipJob], count: int) -> list[ChipJob]:
    return list(itertools.islice(jobs, count))


def _summarise(
    store: Path,
    results: Mapping[str, dict[str, Any] | None],
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
        first_chip, first_reason = summary.failures[0]
        raise RunFailedError(
            f"{summary.failed} of {summary.total} chips failed, above --max-failed-fraction "
            f"{max_failed_fraction:g} (first: {first_chip}: {first_reason}); the chip table "
            "records each reason. A rerun retries failed chips and keeps finished ones"
        )
    return summary
