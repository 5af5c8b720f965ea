"""Elevation, coherence and hyperspectral reads of one chip, and co-registration against S2.

These run inside a chip task after the Sentinel-2 and Sentinel-1 reads (``chip_task.py``). Each
records what it chose and applied in the chip record, and sets a skip reason when the chip has
no acceptable item of a requested modality.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pystac
import shapely
import shapely.geometry

from pipeline.coherence import CoherencePair, choose_pair, expected_estimate_at_zero
from pipeline.config import (
    CoherenceSelection,
    CoregistrationSpec,
    HsiSelection,
    ModalitySource,
    VhrSelection,
)
from pipeline.coregister import (
    CoregPolicy,
    decide,
    measure_offset,
    shift_image,
)
from pipeline.credentials import credentials_env
from pipeline.emit import read_chip as read_emit_chip
from pipeline.errors import CoregistrationError, ReadError
from pipeline.gdal_io import warp_to_grid
from pipeline.hyperspectral import mosaic_first_valid, read_hsi_chip
from pipeline.read import read_plane, read_slc_coherence
from pipeline.search import sign_item
from pipeline.terrain import slope_aspect

if TYPE_CHECKING:
    from pipeline.chip_task import ChipJob

log = logging.getLogger(__name__)

ItemsById = Mapping[str, Mapping[str, Any]]
DEM_MARGIN_PX = 1
# Neighbouring DEM tiles may share a pixel row along their seam. More shared area than this
# fraction of the chip means two versions of the same heights.
DEM_OVERLAP_FRACTION = 0.05


@dataclass
class ChipState:
    """Arrays, item summaries and records that the reads of one chip produced so far."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    items: dict[str, Any] = field(default_factory=dict)
    processing: dict[str, Any] = field(default_factory=dict)
    time_gap_days: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    skip_reason: str = ""


def item_summary(item: Mapping[str, Any]) -> dict[str, Any]:
    properties = item["properties"]
    summary = {
        "id": item["id"],
        "collection": item.get("collection"),
        "datetime": properties.get("datetime"),
        "updated": properties.get("updated"),
    }
    if properties.get("start_datetime"):
        summary["start_datetime"] = properties["start_datetime"]
        summary["end_datetime"] = properties.get("end_datetime")
    return summary


def _stamp(value: object) -> pd.Timestamp:
    stamp = pd.Timestamp(str(value))
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def read_modality(
    job: ChipJob,
    modality: str,
    items: ItemsById,
    reference: pd.Timestamp,
    state: ChipState,
) -> None:
    """Read one of ``dem``, ``coherence``, ``hsi`` or ``vhr`` into ``state``."""
    readers = {
        "dem": _read_dem,
        "coherence": _read_coherence,
        "hsi": _read_hsi,
        "vhr": _read_vhr,
    }
    readers[modality](job, items, reference, state)


# ----------------------------------------------------------------------------------------------
# Elevation


def _read_dem(job: ChipJob, items: ItemsById, reference: pd.Timestamp, state: ChipState) -> None:
    del reference  # a DEM is static
    candidates = job.candidates["dem"]
    state.selection["dem"] = {
        "rule": "static: the tiles covering the chip, mosaicked; tiles must not overlap",
        "candidates": list(candidates),
    }
    if not candidates:
        state.skip_reason = "no DEM item covers the chip"
        return
    _check_dem_overlap(job, items, candidates)

    source = job.sources["dem"]
    assert source.dem is not None
    # A margin of one pixel lets slope and aspect at the chip edge see their neighbours.
    padded = job.chip.geobox().pad(DEM_MARGIN_PX)
    heights = np.full((padded.shape.y, padded.shape.x), np.nan, dtype=np.float32)
    for item_id in candidates:
        tile = read_plane(items[item_id], source, padded, job.gdal_options)
        heights = np.where(np.isnan(heights), tile, heights)

    inner = heights[DEM_MARGIN_PX:-DEM_MARGIN_PX, DEM_MARGIN_PX:-DEM_MARGIN_PX]
    if not np.isfinite(inner).any():
        state.skip_reason = f"DEM items {list(candidates)} have no data over the chip"
        return

    state.arrays["dem"] = inner
    summaries = [item_summary(items[item_id]) for item_id in candidates]
    state.items["dem"] = summaries[0] if len(summaries) == 1 else summaries
    state.processing["dem"] = {
        "units": source.dem.units,
        "vertical_datum": source.dem.vertical_datum,
        "resampling": source.bands[0].resampling,
        "margin_px": DEM_MARGIN_PX,
    }

    if {"slope", "aspect"} & set(job.derived):
        spacing = job.chip.resolution_m
        slope, aspect = slope_aspect(heights, spacing_m=(spacing, spacing), margin=DEM_MARGIN_PX)
        state.arrays["slope"], state.arrays["aspect"] = slope, aspect
        state.processing["terrain"] = (
            f"Horn 3x3 on the chip grid, {spacing:g} m spacing, degrees; aspect is the downslope "
            "azimuth clockwise from north, NaN where flat"
        )


def _check_dem_overlap(job: ChipJob, items: ItemsById, candidates: tuple[str, ...]) -> None:
    """Raise when two DEM items cover the same ground of the chip.

    Tiles of one DEM meet edge to edge. Two items over the same ground are two versions of the
    heights (for example above the geoid and above the ellipsoid), and picking one by name would
    store the wrong datum without notice.
    """
    chip = job.chip.footprint_lonlat()
    parts = [
        (item_id, shapely.intersection(shapely.geometry.shape(items[item_id]["geometry"]), chip))
        for item_id in candidates
    ]
    for index, (first_id, first) in enumerate(parts):
        for second_id, second in parts[index + 1 :]:
            shared = shapely.intersection(first, second).area
            if shared > DEM_OVERLAP_FRACTION * chip.area:
                raise ReadError(
                    f"DEM items {first_id!r} and {second_id!r} both cover chip {job.chip.id}; "
                    "a DEM catalog must be one set of tiles that do not overlap, so narrow "
                    "modalities.dem.files (or the collection) to one version of the heights"
                )


# ----------------------------------------------------------------------------------------------
# Coherence


def _coherence_pairs(job: ChipJob, items: ItemsById) -> list[CoherencePair]:
    """Pairs of the chip's candidates: each product, or consecutive complex acquisitions."""
    source = job.sources["coherence"]
    assert source.coherence is not None
    if source.coherence.kind == "slc":
        return _consecutive_pairs(job.candidates["coherence"], items)
    pairs = []
    for item_id in job.candidates["coherence"]:
        properties = items[item_id]["properties"]
        first, second = properties.get("start_datetime"), properties.get("end_datetime")
        if not first or not second:
            raise ReadError(
                f"coherence item {item_id!r} has no start_datetime and end_datetime; a "
                "coherence product must name the two acquisition times of its pair"
            )
        pairs.append(
            CoherencePair(
                item_id=item_id,
                first=_stamp(first).to_pydatetime(),
                second=_stamp(second).to_pydatetime(),
            )
        )
    return pairs


PAIR_SEPARATOR = "|"


def _consecutive_pairs(item_ids: tuple[str, ...], items: ItemsById) -> list[CoherencePair]:
    """Pair each complex acquisition with the next one in time (the shortest baselines)."""
    dated = sorted(
        (_stamp(items[item_id]["properties"]["datetime"]), item_id) for item_id in item_ids
    )
    return [
        CoherencePair(
            item_id=f"{first_id}{PAIR_SEPARATOR}{second_id}",
            first=first.to_pydatetime(),
            second=second.to_pydatetime(),
        )
        for (first, first_id), (second, second_id) in itertools.pairwise(dated)
        if second > first
    ]


def _gap_days(pair: CoherencePair, reference: pd.Timestamp) -> float:
    """Days from the reference to the pair: 0 when the pair brackets it."""
    when: dt.datetime = reference.to_pydatetime()
    if pair.first <= when <= pair.second:
        return 0.0
    nearest = min(abs(pair.first - when), abs(pair.second - when))
    return nearest.total_seconds() / 86400.0


def _read_coherence(
    job: ChipJob, items: ItemsById, reference: pd.Timestamp, state: ChipState
) -> None:
    rule = job.rules["coherence"]
    assert isinstance(rule, CoherenceSelection)
    max_gap = rule.max_time_gap_days
    pair, text = choose_pair(_coherence_pairs(job, items), reference.to_pydatetime())
    state.selection["coherence"] = {"rule": text, "reference": reference.isoformat()}
    if pair is None:
        state.skip_reason = f"no coherence pair covers the chip: {text}"
        return

    gap = _gap_days(pair, reference)
    if gap > max_gap:
        state.skip_reason = (
            f"nearest coherence pair {pair.item_id} is {gap:.1f} days from the reference "
            f"{reference.isoformat()}, above max_time_gap_days {max_gap:g}"
        )
        return

    source = job.sources["coherence"]
    assert source.coherence is not None
    processing: dict[str, Any] = {
        "source": "coherence product",
        "first_datetime": pair.first.isoformat(),
        "second_datetime": pair.second.isoformat(),
        "resampling": source.bands[0].resampling,
    }
    if source.coherence.kind == "slc":
        first_id, second_id = pair.item_id.split(PAIR_SEPARATOR)
        values = read_slc_coherence(
            (items[first_id], items[second_id]),
            source,
            job.chip.geobox(),
            looks=rule.looks,
            gdal_options=job.gdal_options,
        )
        state.items["coherence"] = [item_summary(items[first_id]), item_summary(items[second_id])]
        processing["source"] = (
            "estimated from two co-registered complex rasters on their own grid, then resampled"
        )
        processing["looks"] = list(rule.looks)
        processing["expected_estimate_at_zero"] = round(
            expected_estimate_at_zero(rule.looks[0] * rule.looks[1]), 4
        )
    else:
        values = read_plane(items[pair.item_id], source, job.chip.geobox(), job.gdal_options)
        state.items["coherence"] = item_summary(items[pair.item_id])

    state.arrays["coherence"] = np.clip(values, 0.0, 1.0)
    state.time_gap_days["coherence"] = round(gap, 6)
    state.processing["coherence"] = processing


# ----------------------------------------------------------------------------------------------
# Hyperspectral


def _nearest_scene(
    job: ChipJob, items: ItemsById, reference: pd.Timestamp, rule: HsiSelection
) -> tuple[list[str], float, str]:
    """Tiles of the scene nearest in time; the gap in days; a rule text."""
    scenes: dict[pd.Timestamp, list[str]] = {}
    for item_id in job.candidates["hsi"]:
        when = _stamp(items[item_id]["properties"]["datetime"])
        scenes.setdefault(when, []).append(item_id)
    text = (
        f"scene nearest in time to {reference.isoformat()}, within {rule.max_time_gap_days:g} days"
    )
    if not scenes:
        return [], float("inf"), text
    when = min(scenes, key=lambda stamp: (abs(stamp - reference), stamp))
    return sorted(scenes[when]), abs(when - reference).total_seconds() / 86400.0, text


def _read_hsi(job: ChipJob, items: ItemsById, reference: pd.Timestamp, state: ChipState) -> None:
    rule = job.rules["hsi"]
    assert isinstance(rule, HsiSelection)
    tiles, gap, text = _nearest_scene(job, items, reference, rule)
    state.selection["hsi"] = {"rule": text, "tiles": tiles}
    if not tiles or gap > rule.max_time_gap_days:
        state.skip_reason = (
            f"no hyperspectral scene within {rule.max_time_gap_days:g} days of "
            f"{reference.isoformat()} covers the chip"
        )
        return

    source = job.sources["hsi"]
    assert source.hsi is not None and job.hsi_bands is not None
    hrefs = [asset_href(items[tile], source, source.bands[0].asset) for tile in tiles]
    # The catalog's login, if any, is read here on the worker and given to GDAL for these reads.
    with credentials_env(source.credentials, hrefs):
        values = _read_hsi_values(job, hrefs, rule)

    valid = float(np.isfinite(values).any(axis=0).mean())
    state.selection["hsi"]["valid_fraction"] = round(valid, 6)
    if valid < rule.min_valid_fraction:
        state.skip_reason = (
            f"hyperspectral scene covers {valid:.1%} of the chip, below min_valid_fraction "
            f"{rule.min_valid_fraction:g}"
        )
        return

    state.arrays["hsi"] = values
    state.items["hsi"] = [item_summary(items[tile]) for tile in tiles]
    state.time_gap_days["hsi"] = round(gap, 6)
    state.processing["hsi"] = {
        "units": "reflectance (1)",
        "scale": source.hsi.scale,
        "resolution_m": rule.resolution_m,
        "resampling": source.bands[0].resampling,
        "bands_kept": len(job.hsi_bands.kept_indexes()),
        "mosaic": f"{len(tiles)} tiles of one scene warped together",
    }
    if source.format == "emit-netcdf":
        state.processing["hsi"]["mosaic"] = f"{len(tiles)} granules, first valid pixel kept"
        state.processing["hsi"]["orthorectification"] = (
            "EMIT geometry lookup table (nearest swath pixel) on its own map grid, then warped "
            f"onto the chip with {source.bands[0].resampling} resampling"
        )


def asset_href(item: Mapping[str, Any], source: ModalitySource, asset: str) -> str:
    """Return an asset's href, signed just before the read when the catalog signs hrefs."""
    if source.signing is None:
        return str(item["assets"][asset]["href"])
    signed = sign_item(pystac.Item.from_dict(dict(item)), source)
    return str(signed.assets[asset].href)


def _read_hsi_values(job: ChipJob, hrefs: list[str], rule: HsiSelection) -> np.ndarray:
    """Read the scene's tiles (GeoTIFF) or granules (EMIT NetCDF) onto the chip's grid."""
    source = job.sources["hsi"]
    assert source.hsi is not None and job.hsi_bands is not None
    geobox = job.chip.geobox(rule.resolution_m)
    grid: dict[str, Any] = {
        "crs": str(geobox.crs),
        "transform": tuple(geobox.affine)[:6],
        "shape": (geobox.shape.y, geobox.shape.x),
        "bands": job.hsi_bands,
        "resampling": source.bands[0].resampling,
        "scale": source.hsi.scale,
        "gdal_options": job.gdal_options,
    }
    if source.format == "emit-netcdf":
        return mosaic_first_valid([read_emit_chip(href, **grid) for href in hrefs])
    nodata = -32768.0 if source.nodata is None else source.nodata
    return read_hsi_chip(hrefs, nodata=nodata, **grid)


# ----------------------------------------------------------------------------------------------
# Very-high-resolution images


def _vhr_geobox_args(job: ChipJob, rule: VhrSelection) -> dict[str, Any]:
    geobox = job.chip.geobox(rule.resolution_m)
    return {
        "crs": str(geobox.crs),
        "transform": tuple(geobox.affine)[:6],
        "shape": (geobox.shape.y, geobox.shape.x),
    }


def _read_vhr_item(job: ChipJob, item: Mapping[str, Any], rule: VhrSelection) -> np.ndarray:
    """Warp the requested bands of one item onto the chip's fine grid, asset by asset."""
    source = job.sources["vhr"]
    assert source.vhr is not None
    layers = []
    for name in rule.bands:
        band = source.band(name)
        href = asset_href(item, source, band.asset)
        with credentials_env(source.credentials, [href]):
            layer = warp_to_grid(
                href,
                resampling=band.resampling,
                indexes=[band.index],
                src_nodata=source.nodata,
                gdal_options=job.gdal_options,
                **_vhr_geobox_args(job, rule),
            )
        layers.append(layer[0])
    return np.stack(layers) * np.float32(source.vhr.scale)


def _read_vhr(job: ChipJob, items: ItemsById, reference: pd.Timestamp, state: ChipState) -> None:
    rule = job.rules["vhr"]
    assert isinstance(rule, VhrSelection)
    ranked = sorted(
        (abs(_stamp(items[i]["properties"]["datetime"]) - reference), i)
        for i in job.candidates["vhr"]
    )
    candidates: list[dict[str, Any]] = []
    state.selection["vhr"] = {
        "rule": f"image nearest in time to {reference.isoformat()}, within "
        f"{rule.max_time_gap_days:g} days, valid fraction at least {rule.min_valid_fraction:g}",
        "candidates": candidates,
    }
    for gap, item_id in ranked:
        gap_days = gap.total_seconds() / 86400.0
        if gap_days > rule.max_time_gap_days:
            break
        values = _read_vhr_item(job, items[item_id], rule)
        valid = float(np.isfinite(values).all(axis=0).mean())
        candidates.append({"id": item_id, "gap_days": round(gap_days, 6), "valid": valid})
        if valid >= rule.min_valid_fraction:
            _keep_vhr(job, items[item_id], values, gap_days, rule, state)
            return
    state.skip_reason = (
        f"no very-high-resolution image within {rule.max_time_gap_days:g} days of "
        f"{reference.isoformat()} covers {rule.min_valid_fraction:.0%} of the chip: {candidates}"
    )


def _keep_vhr(
    job: ChipJob,
    item: Mapping[str, Any],
    values: np.ndarray,
    gap_days: float,
    rule: VhrSelection,
    state: ChipState,
) -> None:
    source = job.sources["vhr"]
    assert source.vhr is not None
    state.arrays["vhr"] = values
    state.items["vhr"] = item_summary(item)
    state.time_gap_days["vhr"] = round(gap_days, 6)
    source_crs = item["properties"].get("proj:code") or item["assets"][
        source.band(rule.bands[0]).asset
    ].get("proj:code")
    state.processing["vhr"] = {
        "units": source.vhr.units,
        "scale": source.vhr.scale,
        "resolution_m": rule.resolution_m,
        "resampling": {name: source.band(name).resampling for name in rule.bands},
        "transformation": f"GDAL warp through PROJ from {source_crs} to {job.chip.crs}",
    }


# ----------------------------------------------------------------------------------------------
# Co-registration


def _block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks, NaN where a block has no valid pixel."""
    rows, cols = values.shape[0] // factor, values.shape[1] // factor
    blocks = values[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
    with np.errstate(invalid="ignore"):
        total = np.nansum(blocks, axis=(1, 3))
        count = np.isfinite(blocks).sum(axis=(1, 3))
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def coregister_chip(job: ChipJob, state: ChipState) -> None:
    """Measure, and by policy apply or drop, the offset of s1 and hsi against Sentinel-2."""
    for modality in ("s1", "hsi"):
        policy = getattr(job.rules.get(modality), "coregistration", None)
        if policy is None or modality not in state.arrays:
            continue
        reference = state.arrays["s2"][list(job.s2_rule.bands).index(policy.reference_band)]
        factor = state.arrays["s2"].shape[-1] // state.arrays[modality].shape[-1]
        if factor > 1:
            reference = _block_mean(reference, factor)
        moving, edges = _measured_band(job, modality, policy, state)
        try:
            offset = measure_offset(reference, moving, edges=edges)
        except CoregistrationError as error:
            # Too few valid pixels or no structure: the chip is kept, the reason recorded.
            state.offsets[modality] = {"action": "not measured", "reason": str(error)}
            continue
        action, reason = decide(
            offset, CoregPolicy(policy.action, policy.max_shift_px, policy.min_confidence)
        )
        state.offsets[modality] = {
            **offset.to_record(),
            "reference_band": policy.reference_band,
            "band": policy.band,
            "band_used": _band_used(job, modality, policy),
            "policy": policy.action,
            "action": action,
            "reason": reason,
        }
        if action == "applied":
            state.arrays[modality] = shift_image(
                state.arrays[modality], dy_px=offset.dy_px, dx_px=offset.dx_px
            )
        elif action == "dropped":
            state.skip_reason = f"co-registration of {modality} against Sentinel-2: {reason}"
            return


def _nearest_kept_band(job: ChipJob, wavelength_nm: float) -> tuple[int, float]:
    """Return the index and wavelength (nm) of the kept hyperspectral band nearest a wavelength."""
    assert job.hsi_bands is not None
    wavelengths = np.asarray(job.hsi_bands.kept().wavelength_nm)
    index = int(np.argmin(np.abs(wavelengths - wavelength_nm)))
    return index, float(wavelengths[index])


def _band_used(job: ChipJob, modality: str, policy: CoregistrationSpec) -> str:
    """Name the band actually measured: the polarization, or the nearest kept wavelength in nm."""
    if modality == "s1" or job.hsi_bands is None:
        return policy.band
    return f"{_nearest_kept_band(job, float(policy.band))[1]:g}"


def _measured_band(
    job: ChipJob, modality: str, policy: CoregistrationSpec, state: ChipState
) -> tuple[np.ndarray, bool]:
    values = state.arrays[modality]
    if modality == "s1":
        index = list(job.s1_rule.bands).index(policy.band)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (10.0 * np.log10(values[index])).astype(np.float32), True
    index, _ = _nearest_kept_band(job, float(policy.band))
    return values[index], False
