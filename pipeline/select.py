"""Selection rules: which items are read for each chip. Pure functions on item tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from pipeline.config import S1Selection, S2Selection

SECONDS_PER_DAY = 86400.0


def rank_s2_candidates(table: pd.DataFrame, rule: S2Selection) -> tuple[str, ...]:
    """Order Sentinel-2 candidates: lowest scene cloud cover first (unknown last), then time, id.

    Scenes above ``max_cloud_cover`` are dropped; at most ``max_candidates`` are kept.
    """
    if table.empty:
        return ()
    cloud = table["cloud_cover"]
    eligible = table[cloud.isna() | (cloud <= rule.max_cloud_cover)]
    ordered = eligible.assign(_unknown=eligible["cloud_cover"].isna()).sort_values(
        ["_unknown", "cloud_cover", "datetime", "id"], na_position="last", kind="mergesort"
    )
    return tuple(ordered["id"].head(rule.max_candidates))


@dataclass(frozen=True)
class S2Choice:
    """The Sentinel-2 item chosen for a chip, or why none was."""

    item_id: str | None
    clear_fraction: float
    reason: str


def choose_s2(
    candidates: Sequence[str], clear_fractions: Sequence[float], rule: S2Selection
) -> S2Choice:
    """Pick the candidate with the highest clear fraction at or above the minimum.

    Ties go to the earlier candidate in ranking order.
    """
    best_index = -1
    for index, fraction in enumerate(clear_fractions):
        if fraction >= rule.min_clear_fraction and (
            best_index < 0 or fraction > clear_fractions[best_index]
        ):
            best_index = index
    if best_index < 0:
        best = max(clear_fractions, default=0.0)
        return S2Choice(
            None,
            best,
            f"no Sentinel-2 item reaches min_clear_fraction {rule.min_clear_fraction:g}: "
            f"best of {len(candidates)} candidates is {best:.3f}",
        )
    return S2Choice(candidates[best_index], clear_fractions[best_index], "")


@dataclass(frozen=True)
class S1Candidate:
    """A Sentinel-1 item and its signed time gap to the chosen Sentinel-2 item."""

    item_id: str
    gap_days: float


def rank_s1_candidates(
    table: pd.DataFrame, s2_datetime: pd.Timestamp, rule: S1Selection
) -> tuple[list[S1Candidate], str]:
    """Order Sentinel-1 items by absolute time gap to the Sentinel-2 date, then by id.

    Returns the candidates within ``max_time_gap_days`` that pass the orbit rule, and a reason
    text for the case where none is left.
    """
    if table.empty:
        return [], "no Sentinel-1 item covers the chip in the search window"
    rows = table
    if rule.orbit_state != "any":
        rows = rows[rows["orbit_state"] == rule.orbit_state]
        if rows.empty:
            return (
                [],
                f"no Sentinel-1 item with sat:orbit_state {rule.orbit_state!r} covers the chip",
            )
    gaps = (rows["datetime"] - s2_datetime).dt.total_seconds() / SECONDS_PER_DAY
    ordered = rows.assign(_gap=gaps, _abs=gaps.abs()).sort_values(["_abs", "id"], kind="mergesort")
    within = ordered[ordered["_abs"] <= rule.max_time_gap_days]
    if within.empty:
        nearest = float(ordered["_abs"].iloc[0])
        return [], (
            f"nearest Sentinel-1 item is {nearest:.2f} days from the Sentinel-2 date, beyond "
            f"max_time_gap_days {rule.max_time_gap_days:g}"
        )
    candidates = [
        S1Candidate(str(item_id), float(gap))
        for item_id, gap in zip(within["id"], within["_gap"], strict=True)
    ][: rule.max_candidates]
    return candidates, ""


def describe_s1_rule(rule: S1Selection) -> str:
    """Describe the Sentinel-1 pairing rule and its parameters in one line, recorded per chip."""
    return (
        f"nearest in time to the Sentinel-2 item, |gap| <= {rule.max_time_gap_days:g} days, "
        f"orbit_state {rule.orbit_state}, min_valid_fraction {rule.min_valid_fraction:g}"
    )


def describe_s2_rule(rule: S2Selection) -> str:
    """Describe the Sentinel-2 rule and its parameters in one line, recorded per chip."""
    cloud = (
        ""
        if math.isclose(rule.max_cloud_cover, 100.0)
        else f", scene cloud <= {rule.max_cloud_cover:g}%"
    )
    return (
        f"highest chip clear fraction >= {rule.min_clear_fraction:g} among "
        f"{rule.max_candidates} candidates ranked by scene cloud cover{cloud}"
    )
