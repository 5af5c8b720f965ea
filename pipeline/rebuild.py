"""Rebuilds and repairs from a frozen manifest: the frozen items, no new search.

A manifest names, per chip, the items it was built from and the checksum of each variable. A
rebuild fetches exactly those items by id, refuses chips whose items changed upstream (their
``updated`` stamp differs) and writes a chip only if its new pixels hash as the manifest records.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import pandas as pd

from pipeline.config import CatalogSpec, RegionSpec
from pipeline.errors import UsageError
from pipeline.extract import FrozenTargets
from pipeline.grid import chip_from_id
from pipeline.plan import ChipTask, Plan
from pipeline.search import ItemSet, fetch_by_ids

log = logging.getLogger(__name__)


def check_config(
    manifest: Mapping[str, Any], region: RegionSpec, catalogs: Mapping[str, CatalogSpec]
) -> None:
    """Reject a region or catalog file that changed since the manifest was frozen."""
    current = region.config_hash(catalogs)
    if manifest["config_hash"] != current:
        raise UsageError(
            f"region file {region.path} or its catalog files changed since the manifest was "
            f"frozen (config hash {manifest['config_hash'][:12]}... in the manifest, "
            f"{current[:12]}... now); check out the files the release was frozen with"
        )


def _changed_items(frozen: Mapping[str, Any], fetched: ItemSet) -> dict[str, str]:
    """Reasons by item id for items whose ``updated`` stamp differs from the frozen one."""
    reasons: dict[str, str] = {}
    for row in fetched.table.itertuples():
        before = frozen[str(row.id)].get("updated")
        before_stamp = pd.Timestamp(before) if before else pd.NaT
        if pd.isna(before_stamp) and pd.isna(row.updated):
            continue
        if pd.isna(before_stamp) or pd.isna(row.updated) or before_stamp != row.updated:
            reasons[str(row.id)] = (
                f"source item {row.id} changed upstream: updated {before} when frozen, "
                f"{row.updated} now; the chip was not replaced"
            )
    return reasons


def _ids(value: str | list[str]) -> tuple[str, ...]:
    """Item ids of one modality of a manifest chip entry: one id, or several tiles."""
    return tuple(value) if isinstance(value, list) else (value,)


def plan_from_manifest(
    manifest: Mapping[str, Any],
    region: RegionSpec,
    catalogs: Mapping[str, CatalogSpec],
    *,
    only: Collection[str] | None = None,
) -> tuple[Plan, FrozenTargets]:
    """Plan the manifest's chips (or the ``only`` subset) with their frozen items."""
    check_config(manifest, region, catalogs)
    entries = [e for e in manifest["chips"] if only is None or e["id"] in only]
    frozen_items = {item["id"]: item for item in manifest["items"]}

    fetched: dict[str, ItemSet] = {}
    changed: dict[str, str] = {}
    for modality, selection in region.selections().items():
        catalog = catalogs[selection.catalog]
        ids = [item_id for entry in entries for item_id in _ids(entry["items"][modality])]
        fetched[modality] = fetch_by_ids(catalog, catalog.source(modality), ids)
        changed.update(_changed_items(frozen_items, fetched[modality]))

    tasks = []
    refused: dict[str, str] = {}
    for entry in entries:
        candidates = {modality: _ids(value) for modality, value in entry["items"].items()}
        tasks.append(ChipTask(chip=chip_from_id(entry["id"], region.grid), candidates=candidates))
        reasons = [
            changed[item_id] for ids in candidates.values() for item_id in ids if item_id in changed
        ]
        if reasons:
            refused[entry["id"]] = "; ".join(reasons)
    plan = Plan(
        region=region,
        catalogs=catalogs,
        tasks=tuple(sorted(tasks, key=lambda task: task.chip)),
        item_sets=fetched,
    )
    targets = FrozenTargets(
        checksums={entry["id"]: entry["checksums"] for entry in entries},
        refused=refused,
        redo=frozenset(only or ()),
        splits={entry["id"]: entry["split"] for entry in entries},
        # A manifest without a codec was frozen from a zstd store.
        codec=manifest.get("chunk_codec", "zstd"),
    )
    return plan, targets
