"""Training feed: the chips of one split as (source, target) pairs for a translation direction.

A direction names two data variables of the store, such as ``"s1->s2"`` (SAR to optical) or
its inverse ``"s2->s1"``. Chip ids and split membership come from the frozen manifest, never
from the store's chip table. Each item reads one Zarr chunk file per variable, straight from
the store (:mod:`pipeline.feed_chunks`). The readers are set up lazily and once per process, so
a :class:`ChipPairs` can be handed to DataLoader worker processes, whether they are forked or
spawned.

This module never imports torch. The PyTorch wrappers are in :mod:`pipeline.feed_torch`.
"""

from __future__ import annotations

import json
import logging
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from pipeline.config import SPLIT_NAMES
from pipeline.errors import FeedError
from pipeline.feed_chunks import ChipReader
from pipeline.manifest import MANIFEST_FORMAT, chips_digest, load_manifest
from pipeline.stats import RunningMoments
from pipeline.store import (
    band_labels,
    chip_ids,
    data_variables,
    get_array,
    open_root,
    read_records,
)

log = logging.getLogger(__name__)

DIRECTION_SEPARATOR = "->"

FloatArray = npt.NDArray[np.float32]
MaskArray = npt.NDArray[np.bool_]
# {variable: {band: {"mean": float, "std": float, ...}}}. Other keys of a band are ignored.
BandStats = Mapping[str, Mapping[str, Mapping[str, float]]]


@dataclass(frozen=True)
class Direction:
    """A translation direction: the source variable is the model input, the target its output."""

    source: str
    target: str

    def inverse(self) -> Direction:
        return Direction(self.target, self.source)

    def __str__(self) -> str:
        return f"{self.source}{DIRECTION_SEPARATOR}{self.target}"


def parse_direction(text: str, variables: Sequence[str]) -> Direction:
    """Parse ``"<source>-><target>"`` and check both names against the store's variables."""
    valid = ", ".join(repr(name) for name in variables)
    example = f"{variables[1]}->{variables[0]}" if len(variables) > 1 else "s1->s2"
    parts = [part.strip() for part in text.split(DIRECTION_SEPARATOR)]
    if len(parts) != 2 or not all(parts):
        raise FeedError(
            f"invalid direction {text!r}: write it as '<source>-><target>' with two store "
            f"variables, e.g. {example!r}; valid variables: {valid}"
        )
    unknown = [part for part in parts if part not in variables]
    if unknown:
        raise FeedError(
            f"invalid direction {text!r}: {unknown[0]!r} is not a variable of the store; "
            f"valid variables: {valid}"
        )
    if parts[0] == parts[1]:
        raise FeedError(
            f"invalid direction {text!r}: source and target are the same variable; name two "
            f"different variables, e.g. {example!r}"
        )
    return Direction(parts[0], parts[1])


@dataclass(frozen=True)
class ChipPair:
    """One chip's source and target arrays, with NaN replaced and validity masks.

    Arrays have the stored shape of their variable without the chip axis, e.g. (band, y, x)
    for ``s2`` and (y, x) for ``ndvi``. A mask is True where the stored value was finite.
    """

    chip_id: str
    source: FloatArray
    target: FloatArray
    source_valid: MaskArray
    target_valid: MaskArray


@dataclass(frozen=True)
class _Scale:
    """Per-band mean and standard deviation, shaped to broadcast over one chip's array."""

    mean: FloatArray
    std: FloatArray


class ChipPairs:
    """The chips of one split of a store as (source, target) pairs, in NumPy.

    ``pairs[i]`` is the i-th chip of the split in manifest order (sorted by chip id).
    ``iter_epoch(epoch)`` yields the split in the order ``epoch_order(epoch)``, a permutation
    drawn from ``seed`` and ``epoch`` when ``shuffle`` is true. ``normalize`` maps variables to
    per-band statistics and applies ``(x - mean) / std`` to every direction variable it names;
    a variable it does not name is returned as stored. NaN (any non-finite value) is replaced by
    ``nan_fill`` after normalisation, so with statistics a fill of 0.0 is the band mean.
    """

    def __init__(
        self,
        store: str | Path,
        manifest: str | Path | Mapping[str, Any],
        *,
        split: str,
        direction: str,
        seed: int = 0,
        shuffle: bool = True,
        normalize: BandStats | None = None,
        nan_fill: float = 0.0,
    ) -> None:
        self._store = Path(store)
        self._manifest = _as_manifest(manifest)
        root = open_root(self._store)
        self._variables = tuple(data_variables(root))
        self.direction = parse_direction(direction, self._variables)
        self.split = _check_split(split)
        self.seed = _check_seed(seed)
        self.shuffle = shuffle
        self.nan_fill = float(nan_fill)
        self._normalize = normalize
        self.chip_ids, self._indices = _select_split(self._store, root, self._manifest, split)
        self._labels = {name: band_labels(root, name) for name in self._variables}
        self._scales = _scales(normalize, self._labels, self.direction)
        self._reader = ChipReader(self._store, (self.direction.source, self.direction.target))

    @property
    def source_bands(self) -> tuple[str, ...]:
        """Band names of the source variable (the variable's name when it has no band axis)."""
        return self._labels[self.direction.source]

    @property
    def target_bands(self) -> tuple[str, ...]:
        """Band names of the target variable (the variable's name when it has no band axis)."""
        return self._labels[self.direction.target]

    def inverse(self) -> ChipPairs:
        """Return the same split with source and target swapped, with every other option kept."""
        return ChipPairs(
            self._store,
            self._manifest,
            split=self.split,
            direction=str(self.direction.inverse()),
            seed=self.seed,
            shuffle=self.shuffle,
            normalize=self._normalize,
            nan_fill=self.nan_fill,
        )

    def __len__(self) -> int:
        return len(self.chip_ids)

    def __getitem__(self, index: int) -> ChipPair:
        position = operator.index(index)
        if not -len(self) <= position < len(self):
            raise IndexError(f"chip index {position} out of range for {len(self)} chips")
        store_index = self._indices[position]
        source, source_valid = self._prepare(self.direction.source, store_index)
        target, target_valid = self._prepare(self.direction.target, store_index)
        return ChipPair(self.chip_ids[position], source, target, source_valid, target_valid)

    def __iter__(self) -> Iterator[ChipPair]:
        """Yield the pairs in manifest order; use :meth:`iter_epoch` for a shuffled epoch."""
        for position in range(len(self)):
            yield self[position]

    def epoch_order(self, epoch: int) -> npt.NDArray[np.int64]:
        """Return the item order of an epoch: the same for the same seed and epoch."""
        number = operator.index(epoch)
        if number < 0:
            raise FeedError(f"invalid epoch {number}: epochs count from 0")
        if not self.shuffle:
            return np.arange(len(self), dtype=np.int64)
        generator = np.random.default_rng([self.seed, number])
        return generator.permutation(len(self)).astype(np.int64)

    def iter_epoch(self, epoch: int) -> Iterator[ChipPair]:
        """Yield every pair of the split once, in the order of :meth:`epoch_order`."""
        for position in self.epoch_order(epoch).tolist():
            yield self[position]

    def _prepare(self, variable: str, store_index: int) -> tuple[FloatArray, MaskArray]:
        values, valid = self._reader.read(variable, store_index)
        if not values.flags.writeable:
            values = values.copy()
        # In place: no other object refers to the arrays the reader returns, and float32
        # arithmetic in place gives the same values as (values - mean) / std.
        scale = self._scales.get(variable)
        if scale is not None:
            values -= scale.mean
            values /= scale.std
        if not valid.all():
            fill = self.nan_fill
            np.nan_to_num(values, copy=False, nan=fill, posinf=fill, neginf=fill)
        return values, valid


def _as_manifest(manifest: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """Load a manifest file, or check a manifest already loaded as load_manifest checks a file."""
    if not isinstance(manifest, Mapping):
        return load_manifest(Path(manifest))
    if manifest.get("sensorcube_manifest") != MANIFEST_FORMAT or "chips" not in manifest:
        raise FeedError(
            f"manifest is not a sensorcube manifest (format {MANIFEST_FORMAT}); pass the "
            "manifest.json that 'sensorcube freeze' wrote to splits/<region>/, or its path"
        )
    if chips_digest(manifest["chips"]) != manifest.get("chips_sha256"):
        raise FeedError(
            "manifest chip list does not match its chips_sha256, so it was edited after "
            "'sensorcube freeze'; pass the frozen manifest"
        )
    return manifest


def _check_split(split: str) -> str:
    if split not in SPLIT_NAMES:
        valid = ", ".join(repr(name) for name in SPLIT_NAMES)
        raise FeedError(f"invalid split {split!r}; valid splits: {valid}")
    return split


def _check_seed(seed: int) -> int:
    """Return ``seed`` as an int. NumPy integers are accepted, bools and negative values are not."""
    try:
        value = operator.index(seed)
    except TypeError:
        value = -1
    if isinstance(seed, bool) or value < 0:
        raise FeedError(f"invalid seed {seed!r}: use an integer of 0 or more")
    return value


def _select_split(
    store: Path, root: zarr.Group, manifest: Mapping[str, Any], split: str
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Check that the manifest belongs to the store, and return the split's chip ids and indices."""
    _check_manifest_matches(store, dict(root.attrs), manifest)
    positions = {chip_id: index for index, chip_id in enumerate(chip_ids(store))}
    listed = [str(entry["id"]) for entry in manifest["chips"]]
    missing = [chip_id for chip_id in listed if chip_id not in positions]
    if missing:
        raise FeedError(
            f"store {str(store)!r} does not contain {len(missing)} of the manifest's chips "
            f"(first: {missing[0]!r}); pass the manifest written for this store"
        )
    ids = sorted(str(entry["id"]) for entry in manifest["chips"] if entry["split"] == split)
    records = read_records(store)
    unwritten = [
        chip_id for chip_id in ids if (records[positions[chip_id]] or {}).get("status") != "ok"
    ]
    if unwritten:
        raise FeedError(
            f"store {str(store)!r} has no pixels for {len(unwritten)} chips of split {split!r} "
            f"(first: {unwritten[0]!r}); run 'sensorcube repair {store} --manifest ...' with "
            "the store's manifest"
        )
    if not ids:
        log.warning("split %r of region %r has no chips", split, manifest["region"])
    return tuple(ids), tuple(positions[chip_id] for chip_id in ids)


def _check_manifest_matches(
    store: Path, attrs: Mapping[str, Any], manifest: Mapping[str, Any]
) -> None:
    store_region = attrs.get("region")
    if manifest.get("region") != store_region:
        raise FeedError(
            f"manifest is for region {manifest.get('region')!r} but store {str(store)!r} was "
            f"built for region {store_region!r}; pass splits/{store_region}/manifest.json"
        )
    if manifest.get("config_hash") != attrs.get("config_hash"):
        raise FeedError(
            f"manifest config hash {str(manifest.get('config_hash'))[:12]}... differs from "
            f"store {str(store)!r} ({str(attrs.get('config_hash'))[:12]}...): the store was "
            "rebuilt after the manifest was frozen; rerun 'sensorcube freeze' or pass the "
            "matching store"
        )


def _scales(
    normalize: BandStats | None, labels: Mapping[str, tuple[str, ...]], direction: Direction
) -> dict[str, _Scale]:
    if normalize is None:
        return {}
    check_band_stats(normalize, labels)
    scales: dict[str, _Scale] = {}
    for variable in (direction.source, direction.target):
        if variable in normalize:
            scales[variable] = _scale_of(normalize[variable], labels[variable], variable)
    return scales


def _scale_of(
    stats: Mapping[str, Mapping[str, float]], bands: tuple[str, ...], variable: str
) -> _Scale:
    mean = np.array([stats[band]["mean"] for band in bands], dtype=np.float32)
    std = np.array([stats[band]["std"] for band in bands], dtype=np.float32)
    if bands == (variable,):  # no band axis
        return _Scale(mean.reshape(()), std.reshape(()))
    return _Scale(mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1))


def check_band_stats(stats: BandStats, labels: Mapping[str, Sequence[str]]) -> None:
    """Raise :class:`FeedError` unless ``stats`` fits the store's variables and bands.

    ``labels`` maps each store variable to its band names. Every variable in ``stats`` must be
    a store variable and list exactly its bands, each with a finite ``mean`` and a finite,
    positive ``std``.
    """
    for variable, bands in stats.items():
        if variable not in labels:
            valid = ", ".join(repr(name) for name in labels)
            raise FeedError(
                f"band statistics name unknown variable {variable!r}; valid variables: {valid}"
            )
        expected = list(labels[variable])
        if sorted(bands) != sorted(expected):
            raise FeedError(
                f"band statistics of {variable!r} list bands {sorted(bands)}, but the store "
                f"has {expected}; compute them for this store with compute_band_stats"
            )
        for band, values in bands.items():
            _check_band_entry(variable, band, values)


def _check_band_entry(variable: str, band: str, values: Mapping[str, float]) -> None:
    try:
        mean = float(values["mean"])
        std = float(values["std"])
    except (KeyError, TypeError, ValueError) as error:
        raise FeedError(
            f"band statistics of {variable!r} band {band!r} need numbers 'mean' and 'std', "
            f"got {dict(values)!r}"
        ) from error
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise FeedError(
            f"band statistics of {variable!r} band {band!r} are invalid (mean {mean}, std "
            f"{std}): mean must be finite and std finite and positive"
        )


def compute_band_stats(
    store: str | Path,
    manifest: str | Path | Mapping[str, Any],
    *,
    split: str = "train",
    variables: Sequence[str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Compute per-band mean, population std and count over the chips of one split.

    Non-finite values are ignored. The result has the form that ``normalize`` takes,
    ``{variable: {band: {"mean", "std", "count"}}}``. ``variables`` defaults to every data
    variable of the store. A band without a finite value in the split raises
    :class:`FeedError`.
    """
    path = Path(store)
    root = open_root(path)
    names = list(variables) if variables is not None else data_variables(root)
    stored = data_variables(root)
    for name in names:
        if name not in stored:
            valid = ", ".join(repr(variable) for variable in stored)
            raise FeedError(f"store has no variable {name!r}; valid variables: {valid}")
    _, indices = _select_split(path, root, _as_manifest(manifest), _check_split(split))
    return {name: _variable_stats(root, name, indices, split) for name in names}


def _variable_stats(
    root: zarr.Group, variable: str, indices: Sequence[int], split: str
) -> dict[str, dict[str, float]]:
    array = get_array(root, variable)
    bands = band_labels(root, variable)
    moments = RunningMoments(len(bands))
    for index in indices:
        moments.update(array[index])
    stats: dict[str, dict[str, float]] = {}
    for band, band_moments in moments.bands(bands).items():
        if band_moments.count == 0:
            raise FeedError(
                f"band {band!r} of {variable!r} has no finite value in split {split!r}; "
                "statistics cannot be computed for it"
            )
        stats[band] = {
            "mean": band_moments.mean,
            "std": band_moments.std,
            "count": band_moments.count,
        }
    return stats


def load_band_stats(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """Read band statistics written as JSON, e.g. a release's ``stats.json``.

    Only the structure is checked here; :class:`ChipPairs` checks the values against the store.
    """
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FeedError(f"band statistics file not found: {str(file)!r}") from None
    except json.JSONDecodeError as error:
        raise FeedError(f"band statistics file {str(file)!r} is not valid JSON: {error}") from None
    if not _is_stats_mapping(data):
        raise FeedError(
            f"band statistics file {str(file)!r} must map variables to bands to "
            "{'mean': ..., 'std': ...}, e.g. {'s1': {'VV': {'mean': 0.1, 'std': 0.2}}}"
        )
    return data  # type: ignore[no-any-return]


def _is_stats_mapping(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    for bands in data.values():
        if not isinstance(bands, dict):
            return False
        if not all(isinstance(values, dict) for values in bands.values()):
            return False
    return True
