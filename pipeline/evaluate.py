"""Evaluate translation predictions against a store: scores, baselines, report and figures.

:func:`evaluate` checks every prediction store against the frozen manifest and the truth store
before it scores anything. It then scores each chip of one split with :mod:`pipeline.metrics`,
beside baselines (trivial predictors) scored the same way. :func:`write_evaluation` writes
``scores.json``, ``report.md`` and PNG figures into one folder.

A prediction store is a Zarr v3 group laid out like the truth store. Its array is named after
the target variable and has the truth's dimension names, chip shape, band order and ``units``
attribute. Its coordinate array ``chip`` lists the chip ids, exactly those of the split, in any
order. A variable with bands also needs the coordinate array of its band dimension (``band``,
``polarization`` or ``wavelength``). NaN marks a pixel without a prediction.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

import pipeline
from pipeline import quicklook
from pipeline.errors import EvaluationError
from pipeline.feed import ChipPairs, Direction, compute_band_stats
from pipeline.manifest import load_manifest
from pipeline.metrics import (
    ChipContext,
    Kind,
    Score,
    azimuth_difference,
    kind_of,
    score_chip,
    summarize,
    to_db,
)
from pipeline.sample import S2_BANDS
from pipeline.store import band_labels, chip_ids, dimension_names, get_array, open_root

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

EVALUATION_FORMAT = 1
EVALUATION_MARKER = "sensorcube_evaluation"
SCORES_FILE = "scores.json"
REPORT_FILE = "report.md"
FIGURES_FOLDER = "figures"

TRAIN_MEAN = "train-mean"
IDENTITY = "identity"
BASELINES = (TRAIN_MEAN, IDENTITY)
MODEL = "model"

# Reflectance has the fixed scale 0 to 1, so PSNR of optical bands uses a data range of 1 and is
# a fixed function of the RMSE that compares across splits and regions. SSIM sets its
# stabilising constants from the data range instead, and with a range much wider than the
# truth's texture a constant prediction scores near 1. SSIM therefore uses the truth's range
# (max - min) of each band over the split, for optical and SAR (dB) bands alike.
REFLECTANCE_DATA_RANGE = 1.0
# Sentinel-2 B04 and B08 centres. A hyperspectral band within the tolerance replaces each.
RED_NM = S2_BANDS["B04"][1] * 1000.0
NIR_NM = S2_BANDS["B08"][1] * 1000.0
HSI_NDVI_TOLERANCE_NM = 20.0

# Variables that measure the same quantity. Identity is a baseline only within one group.
QUANTITIES = {
    "s2": "surface reflectance",
    "hsi": "surface reflectance",
    "s1": "backscatter as linear power",
    "dem": "surface height",
    "slope": "terrain slope",
    "aspect": "terrain aspect",
    "coherence": "interferometric coherence",
    "ndvi": "NDVI",
}
ERROR_UNITS = {
    "s2": "reflectance",
    "hsi": "reflectance",
    "s1": "dB",
    "dem": "m",
    "slope": "degree",
    "aspect": "degree",
    "coherence": "1",
    "ndvi": "1",
}

FIGURE_CHIPS = 3  # the first chips of the split (by id) get truth, prediction and error maps
SCATTER_BINS = 64
SCATTER_MAX_BANDS = 12  # bands shown in the truth-against-prediction figure, evenly spaced
DISPLAY_PERCENTILES = (1.0, 99.0)
ERROR_LIMIT_FRACTION = 0.25  # error maps span +- this share of the band's display range
HSI_DISPLAY_NM = 650.0


@dataclass(frozen=True)
class EvaluationRequest:
    """Predictions of ``direction`` to score on ``split``, with optional inverse and cycle.

    ``inverse_predictions`` predict the inverse direction (target to source).
    ``cycle_predictions`` hold the inverse model applied to the forward predictions, so they
    predict the source variable and are scored against the source truth.
    """

    store: Path
    manifest: Path
    direction: str
    predictions: Path
    split: str = "test"
    inverse_predictions: Path | None = None
    cycle_predictions: Path | None = None
    baselines: tuple[str, ...] = (TRAIN_MEAN,)


@dataclass(frozen=True)
class VariableInfo:
    """A data variable of the truth store as the evaluation needs it."""

    name: str
    dims: tuple[str, ...]
    labels: tuple[str, ...]  # band labels, or (name,) for a variable without a band axis
    chip_shape: tuple[int, ...]  # stored shape of scored chip
    units: str
    long_name: str
    pixel_factor: int

    @property
    def has_bands(self) -> bool:
        return len(self.dims) == 4

    @property
    def kind(self) -> Kind:
        return kind_of(self.name)

    @property
    def error_units(self) -> str:
        return ERROR_UNITS.get(self.name, self.units)


def read_variable_info(root: zarr.Group, name: str) -> VariableInfo:
    array = get_array(root, name)
    attrs = dict(array.attrs)
    return VariableInfo(
        name=name,
        dims=dimension_names(array),
        labels=band_labels(root, name),
        chip_shape=tuple(int(size) for size in array.shape[1:]),
        units=str(attrs.get("units", "")),
        long_name=str(attrs.get("long_name", name)),
        pixel_factor=int(str(attrs.get("pixel_factor", 1))),
    )


@dataclass(frozen=True)
class PredictionStore:
    """A checked prediction store: its array and the position of every chip id in it."""

    path: Path
    array: zarr.Array[Any]
    positions: Mapping[str, int]
    has_bands: bool

    def read(self, chip_id: str) -> FloatArray:
        """Read one chip as float64 (band, y, x)."""
        values = np.asarray(self.array[self.positions[chip_id]], dtype=np.float64)
        return values if self.has_bands else values[np.newaxis]


def open_prediction_store(
    path: Path, truth: VariableInfo, split_chips: Sequence[str], *, split: str, option: str
) -> PredictionStore:
    """Check a prediction store against the truth variable and the split's chips.

    Raises :class:`EvaluationError` naming every difference: missing or extra chips, band
    labels or their order, dimension names, chip shape, units attribute and data type.
    """
    if not path.exists():
        raise EvaluationError(f"{option} {str(path)!r} not found; check the path")
    if not (path / "zarr.json").is_file():
        raise EvaluationError(
            f"{option} {str(path)!r} is not a Zarr v3 store (no zarr.json); write the "
            f"predicted {truth.name!r} as a Zarr v3 group laid out like the truth store"
        )
    root = zarr.open_group(str(path), mode="r")
    array = root.get(truth.name)
    if not isinstance(array, zarr.Array):
        found = sorted(name for name, _ in root.arrays())
        raise EvaluationError(
            f"{option} store {str(path)!r} has no array {truth.name!r}, the target it must "
            f"predict; arrays found: {found}"
        )
    problems, positions = _chip_problems(root, array, split_chips, split)
    problems += _layout_problems(root, array, truth)
    if problems:
        raise EvaluationError(
            f"{option} store {str(path)!r} does not match {truth.name!r} of the truth store for "
            f"split {split!r}: " + "; ".join(problems)
        )
    return PredictionStore(path, array, positions, truth.has_bands)


def _chip_problems(
    root: zarr.Group, array: zarr.Array[Any], split_chips: Sequence[str], split: str
) -> tuple[list[str], dict[str, int]]:
    coordinate = root.get("chip")
    if not isinstance(coordinate, zarr.Array) or coordinate.ndim != 1:
        return ["it has no 1-D 'chip' coordinate array of chip ids"], {}
    ids = [str(value) for value in np.asarray(coordinate[...]).tolist()]
    problems = []
    if len(ids) != array.shape[0]:
        problems.append(
            f"its 'chip' coordinate lists {len(ids)} ids but the array has {array.shape[0]} chips"
        )
    duplicates = sorted(chip_id for chip_id, count in Counter(ids).items() if count > 1)
    if duplicates:
        problems.append(f"chip {duplicates[0]!r} appears more than once")
    present, expected = set(ids), set(split_chips)
    missing = [chip_id for chip_id in split_chips if chip_id not in present]
    if missing:
        problems.append(
            f"{len(missing)} chips of split {split!r} are missing (first: {missing[0]!r}); "
            "write a prediction for every chip of the split"
        )
    extra = sorted(present - expected)
    if extra:
        problems.append(
            f"{len(extra)} chips are not in split {split!r} of the manifest (first: "
            f"{extra[0]!r}); write only the split's chips"
        )
    return problems, {chip_id: index for index, chip_id in enumerate(ids)}


def _layout_problems(root: zarr.Group, array: zarr.Array[Any], truth: VariableInfo) -> list[str]:
    problems = []
    dims = dimension_names(array)
    if dims != truth.dims:
        problems.append(f"dimension names {list(dims)} differ from the truth's {list(truth.dims)}")
    elif truth.has_bands:
        problems.extend(_label_problems(root, truth))
    shape = tuple(int(size) for size in array.shape[1:])
    if shape != truth.chip_shape:
        problems.append(f"wrong shape: a chip is {shape} where the truth's is {truth.chip_shape}")
    units = dict(array.attrs).get("units")
    if units is None:
        problems.append(
            f"no units attribute; set it to {truth.units!r} ({truth.long_name}) as in the truth"
        )
    elif str(units) != truth.units:
        problems.append(
            f"wrong units attribute {units!r}: the truth has {truth.units!r} ({truth.long_name})"
        )
    if array.dtype.kind not in "fiu":
        problems.append(f"data type {array.dtype} is not numeric; write float32")
    return problems


def _label_problems(root: zarr.Group, truth: VariableInfo) -> list[str]:
    dimension = truth.dims[1]
    coordinate = root.get(dimension)
    if not isinstance(coordinate, zarr.Array) or coordinate.ndim != 1:
        return [f"it has no 1-D {dimension!r} coordinate array with the {dimension} labels"]
    labels = [_label_text(value) for value in np.asarray(coordinate[...]).tolist()]
    if labels == list(truth.labels):
        return []
    if sorted(labels) == sorted(truth.labels):
        return [
            f"wrong {dimension} order {labels}: the truth's order is {list(truth.labels)}; "
            f"write the {dimension}s in the truth's order"
        ]
    problems = []
    missing = [label for label in truth.labels if label not in labels]
    if missing:
        problems.append(f"{dimension}s missing: {missing}")
    unknown = [label for label in labels if label not in truth.labels]
    if unknown:
        problems.append(f"{dimension}s not in the truth: {unknown}")
    if not problems:
        problems.append(f"{dimension} labels {labels} repeat labels of the truth's {truth.labels}")
    return problems


def _label_text(value: object) -> str:
    """Return a band label as the truth store's labels read: numbers (wavelengths) as ``%g``."""
    try:
        return f"{float(str(value)):g}"
    except ValueError:
        return str(value)


def check_baselines(baselines: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        valid = ", ".join(repr(name) for name in BASELINES)
        raise EvaluationError(f"unknown baseline {unknown[0]!r}; valid baselines: {valid}")
    return tuple(dict.fromkeys(baselines))


def check_identity(direction: Direction, source: VariableInfo, target: VariableInfo) -> None:
    """Raise :class:`EvaluationError` unless the source can stand in for the target.

    Identity scores the source truth as the prediction. It applies when both variables measure
    the same quantity in the same units, which among sensorcube's variables holds only for
    ``s2`` and ``hsi`` (surface reflectance). Bands are then matched by centre wavelength and
    pixels by block means or repetition, see :func:`identity_prediction`.
    """
    source_quantity, target_quantity = QUANTITIES.get(source.name), QUANTITIES.get(target.name)
    rule = (
        "Identity scores the source as the prediction, so it applies only between variables of "
        "the same quantity and units, such as s2 and hsi (surface reflectance); use --baseline "
        "train-mean for this direction"
    )
    if source_quantity is None or source_quantity != target_quantity:
        raise EvaluationError(
            f"--baseline identity does not apply to {direction}: the source {source.name!r} is "
            f"{source_quantity or source.long_name} and the target {target.name!r} is "
            f"{target_quantity or target.long_name}. {rule}"
        )
    if source.units != target.units:
        raise EvaluationError(
            f"--baseline identity does not apply to {direction}: the source {source.name!r} has "
            f"units {source.units!r} and the target {target.name!r} has {target.units!r}. {rule}"
        )
    if source.labels != target.labels:
        band_wavelengths_nm(source)
        band_wavelengths_nm(target)
    _check_identity_grid(source, target)


def band_wavelengths_nm(info: VariableInfo) -> FloatArray:
    """Return the centre wavelength in nm of every band: Sentinel-2 names or numbers in nm."""
    wavelengths = []
    for label in info.labels:
        if label in S2_BANDS:
            wavelengths.append(S2_BANDS[label][1] * 1000.0)
            continue
        try:
            wavelengths.append(float(label))
        except ValueError:
            raise EvaluationError(
                f"--baseline identity needs the centre wavelength of band {label!r} of "
                f"{info.name!r}; only Sentinel-2 band names and wavelengths in nm are known"
            ) from None
    return np.array(wavelengths, dtype=np.float64)


def _check_identity_grid(source: VariableInfo, target: VariableInfo) -> None:
    """Raise unless one grid nests in the other and the chips cover the same ground."""
    factors = sorted((source.pixel_factor, target.pixel_factor))
    spatial = [size * source.pixel_factor / target.pixel_factor for size in source.chip_shape[-2:]]
    if factors[1] % factors[0] or spatial != [float(size) for size in target.chip_shape[-2:]]:
        raise EvaluationError(
            f"--baseline identity cannot map {source.name!r} chips of {source.chip_shape[-2:]} "
            f"pixels ({source.pixel_factor} base pixels per pixel) onto {target.name!r} chips of "
            f"{target.chip_shape[-2:]} pixels ({target.pixel_factor} base pixels per pixel)"
        )


def identity_prediction(
    source_values: FloatArray, source: VariableInfo, target: VariableInfo
) -> FloatArray:
    """Return the source truth of a chip on the target's bands and pixel grid.

    Each target band is linearly interpolated in wavelength between the two source bands whose
    centres bracket it, and takes the nearest end band outside the source's range. A coarser
    target grid gets the mean of each block of source pixels (NaN when any pixel is NaN), and a
    finer one repeats each source pixel.
    """
    values = source_values
    if source.labels != target.labels:
        values = interpolate_bands(values, band_wavelengths_nm(source), band_wavelengths_nm(target))
    if target.pixel_factor > source.pixel_factor:
        step = target.pixel_factor // source.pixel_factor
        bands, rows, cols = values.shape
        values = values.reshape(bands, rows // step, step, cols // step, step).mean(axis=(2, 4))
    elif target.pixel_factor < source.pixel_factor:
        step = source.pixel_factor // target.pixel_factor
        values = values.repeat(step, axis=1).repeat(step, axis=2)
    return values


def interpolate_bands(
    values: FloatArray, source_nm: FloatArray, target_nm: FloatArray
) -> FloatArray:
    """Interpolate (band, y, x) values linearly in wavelength onto the bands ``target_nm``."""
    order = np.argsort(source_nm, kind="stable")
    ordered = values[order]
    positions = np.interp(target_nm, source_nm[order], np.arange(order.size, dtype=np.float64))
    lower = np.floor(positions).astype(np.int64)
    upper = np.minimum(lower + 1, order.size - 1)
    weight = (positions - lower)[:, np.newaxis, np.newaxis]
    blended = ordered[lower] * (1.0 - weight) + ordered[upper] * weight
    # A target band exactly on a source centre takes that band, even when its neighbour is NaN.
    return np.where(weight == 0.0, ordered[lower], blended)


def train_mean_prediction(
    store: Path, manifest: Mapping[str, Any], target: VariableInfo
) -> FloatArray:
    """Return the constant (band, y, x) prediction: each band's mean over the train split.

    NOTE: for ``aspect`` this is the arithmetic mean of azimuths, not a circular mean.
    """
    stats = compute_band_stats(store, manifest, split="train", variables=[target.name])
    means = np.array([stats[target.name][band]["mean"] for band in target.labels])
    shape = (len(target.labels), *target.chip_shape[-2:])
    return np.broadcast_to(means[:, np.newaxis, np.newaxis], shape).astype(np.float64)


Predict = Callable[[str, Mapping[str, FloatArray]], FloatArray]


@dataclass(frozen=True)
class Series:
    """One scored series: the target of a direction, predicted by a model or a baseline.

    ``label`` is the direction as text, or ``source->target->source`` for the cycle. ``predict``
    returns a chip's prediction from its id and the truth arrays by variable name.
    """

    label: str
    role: str  # "forward", "inverse" or "cycle"
    predictor: str  # "model" or a baseline name
    target: VariableInfo
    predict: Predict = field(compare=False, repr=False)
    path: Path | None = None

    @property
    def title(self) -> str:
        return f"{self.label} {self.predictor}"

    @property
    def file_stem(self) -> str:
        return self.label.replace("->", "_to_")


@dataclass(frozen=True)
class BandRange:
    """Truth values of one band over the split, in the unit it is scored in."""

    low: float  # minimum
    high: float  # maximum
    display_low: float  # lowest 1st percentile of a chip
    display_high: float  # highest 99th percentile of a chip

    @property
    def usable(self) -> bool:
        return math.isfinite(self.display_low) and self.display_high > self.display_low


@dataclass
class Evaluation:
    """The result of :func:`evaluate`: the scores document, the report and the figure panels."""

    scores: dict[str, Any]
    report: str
    summary_table: str
    figures: dict[str, list[quicklook.Panel]]


@dataclass(frozen=True)
class _Setup:
    """Checked inputs of an evaluation."""

    request: EvaluationRequest
    manifest: Mapping[str, Any]
    pairs: ChipPairs
    direction: Direction
    source: VariableInfo
    target: VariableInfo
    baselines: tuple[str, ...]
    stores: Mapping[str, PredictionStore]  # by role


def evaluate(request: EvaluationRequest) -> Evaluation:
    """Check all inputs, then score every series on the split and build report and figures."""
    setup = _check_inputs(request)

    series = _plan_series(setup)
    chip_list = list(setup.pairs.chip_ids)
    log.info(
        "scoring %d series on %d chips of split %r: %s",
        len(series),
        len(chip_list),
        request.split,
        ", ".join(scored.title for scored in series),
    )
    ranges = truth_ranges(setup.pairs, _scored_variables(series))

    scorer = _Scorer(setup, series, ranges)
    for position in range(len(chip_list)):
        scorer.score(position)
    scorer.add_scatter_figures()

    scores = _scores_document(setup, series, scorer, ranges)
    summary_table = render_summary_table(series, scores)
    report = render_report(setup, series, scores, summary_table, sorted(scorer.figures))
    return Evaluation(scores, report, summary_table, scorer.figures)


def _check_inputs(request: EvaluationRequest) -> _Setup:
    manifest = load_manifest(request.manifest)
    pairs = ChipPairs(
        request.store, manifest, split=request.split, direction=request.direction, shuffle=False
    )
    if not len(pairs):
        raise EvaluationError(
            f"split {request.split!r} of region {manifest['region']!r} has no chips; choose a "
            "split with chips"
        )
    root = open_root(request.store)
    source = read_variable_info(root, pairs.direction.source)
    target = read_variable_info(root, pairs.direction.target)
    baselines = check_baselines(request.baselines)
    if IDENTITY in baselines:
        check_identity(pairs.direction, source, target)
    stores = _open_prediction_stores(request, pairs, source, target)
    return _Setup(request, manifest, pairs, pairs.direction, source, target, baselines, stores)


def _open_prediction_stores(
    request: EvaluationRequest, pairs: ChipPairs, source: VariableInfo, target: VariableInfo
) -> dict[str, PredictionStore]:
    chips = list(pairs.chip_ids)
    options = {
        "forward": ("--predictions", request.predictions, target),
        "inverse": ("--inverse-predictions", request.inverse_predictions, source),
        "cycle": ("--cycle-predictions", request.cycle_predictions, source),
    }
    return {
        role: open_prediction_store(path, truth, chips, split=request.split, option=option)
        for role, (option, path, truth) in options.items()
        if path is not None
    }


def _plan_series(setup: _Setup) -> list[Series]:
    """List the series to score: each model, then the baselines of each direction scored."""
    forward, inverse = setup.direction, setup.direction.inverse()
    series = [_model_series("forward", str(forward), setup.target, setup.stores["forward"])]
    series += _baseline_series(setup, "forward", forward, setup.source, setup.target)
    if "inverse" in setup.stores:
        series.append(_model_series("inverse", str(inverse), setup.source, setup.stores["inverse"]))
    if "inverse" in setup.stores or "cycle" in setup.stores:
        series += _baseline_series(setup, "inverse", inverse, setup.target, setup.source)
    if "cycle" in setup.stores:
        label = f"{forward}->{setup.source.name}"
        series.append(_model_series("cycle", label, setup.source, setup.stores["cycle"]))
    return series


def _model_series(role: str, label: str, target: VariableInfo, store: PredictionStore) -> Series:
    return Series(label, role, MODEL, target, lambda chip_id, _: store.read(chip_id), store.path)


def _baseline_series(
    setup: _Setup, role: str, direction: Direction, source: VariableInfo, target: VariableInfo
) -> list[Series]:
    series = []
    for baseline in setup.baselines:
        if baseline == TRAIN_MEAN:
            constant = train_mean_prediction(setup.request.store, setup.manifest, target)
            predict: Predict = _constant(constant)
        else:
            predict = _identity(source, target)
        series.append(Series(str(direction), role, baseline, target, predict))
    return series


def _constant(values: FloatArray) -> Predict:
    return lambda _chip_id, _truths: values


def _identity(source: VariableInfo, target: VariableInfo) -> Predict:
    return lambda _chip_id, truths: identity_prediction(truths[source.name], source, target)


def _scored_variables(series: Sequence[Series]) -> list[VariableInfo]:
    return list({scored.target.name: scored.target for scored in series}.values())


def read_truths(pairs: ChipPairs, position: int) -> dict[str, FloatArray]:
    """Read the source and target truth of a chip as float64 (band, y, x), NaN where invalid."""
    pair = pairs[position]
    truths = {}
    for name, values, valid in (
        (pairs.direction.source, pair.source, pair.source_valid),
        (pairs.direction.target, pair.target, pair.target_valid),
    ):
        array = np.where(valid, values.astype(np.float64), np.nan)
        truths[name] = array if array.ndim == 3 else array[np.newaxis]
    return truths


def scored_values(values: FloatArray, kind: Kind) -> FloatArray:
    """Convert store values to the unit they are scored in: dB for SAR, unchanged otherwise."""
    return to_db(values) if kind is Kind.SAR else values


def truth_ranges(pairs: ChipPairs, variables: Sequence[VariableInfo]) -> dict[str, list[BandRange]]:
    """Find each band's truth range over the split, in the unit it is scored in."""
    # Columns: minimum, maximum, lowest 1st percentile and highest 99th percentile of a chip.
    bounds = {info.name: np.full((len(info.labels), 4), np.nan) for info in variables}
    for position in range(len(pairs)):
        truths = read_truths(pairs, position)
        for info in variables:
            values = scored_values(truths[info.name], info.kind)
            for band, row in enumerate(bounds[info.name]):
                finite = values[band][np.isfinite(values[band])]
                if not finite.size:
                    continue
                display_low, display_high = np.percentile(finite, DISPLAY_PERCENTILES)
                row[[0, 2]] = np.fmin(row[[0, 2]], [finite.min(), display_low])
                row[[1, 3]] = np.fmax(row[[1, 3]], [finite.max(), display_high])
    return {
        name: [BandRange(*(float(value) for value in row)) for row in rows]
        for name, rows in bounds.items()
    }


class _Scorer:
    """Scores chips one at a time and keeps the sums and the figure panels."""

    def __init__(
        self, setup: _Setup, series: Sequence[Series], ranges: Mapping[str, list[BandRange]]
    ) -> None:
        self.setup = setup
        self.series = list(series)
        self.ranges = ranges
        self.contexts = {scored.target.name: _context(scored.target, ranges) for scored in series}
        self.chip_scores: list[dict[str, Score]] = [{} for _ in series]
        self.totals = [Score() for _ in series]
        self.histograms: dict[int, FloatArray] = {}
        self.figures: dict[str, list[quicklook.Panel]] = {}
        positions = {chip_id: index for index, chip_id in enumerate(chip_ids(setup.request.store))}
        transforms = np.asarray(get_array(open_root(setup.request.store), "chip_transform")[...])
        self.transforms = {
            chip_id: transforms[positions[chip_id]] for chip_id in setup.pairs.chip_ids
        }

    def score(self, position: int) -> None:
        chip_id = self.setup.pairs.chip_ids[position]
        truths = read_truths(self.setup.pairs, position)
        for index, scored in enumerate(self.series):
            truth = truths[scored.target.name]
            prediction = np.asarray(scored.predict(chip_id, truths), dtype=np.float64)
            context = self._chip_context(scored.target, chip_id)
            score = score_chip(truth, prediction, context)
            self.chip_scores[index][chip_id] = score
            self.totals[index] = self.totals[index] + score
            if scored.predictor != MODEL:
                continue
            _warn_if_uncovered(scored, chip_id, score)
            self._add_to_scatter(index, scored, truth, prediction)
            if position < FIGURE_CHIPS:
                self.figures[f"{scored.file_stem}_{chip_id}.png"] = chip_figure(
                    scored.target, truth, prediction, self.ranges[scored.target.name]
                )

    def _chip_context(self, target: VariableInfo, chip_id: str) -> ChipContext:
        context = self.contexts[target.name]
        if target.kind is not Kind.ELEVATION:
            return context
        transform = self.transforms[chip_id]
        spacing = (abs(float(transform[4])), abs(float(transform[0])))
        factor = target.pixel_factor
        return replace(context, spacing_m=(spacing[0] * factor, spacing[1] * factor))

    def _add_to_scatter(
        self, index: int, scored: Series, truth: FloatArray, prediction: FloatArray
    ) -> None:
        ranges = self.ranges[scored.target.name]
        truth_scored = scored_values(truth, scored.target.kind)
        prediction_scored = scored_values(prediction, scored.target.kind)
        counts = self.histograms.setdefault(
            index, np.zeros((len(ranges), SCATTER_BINS, SCATTER_BINS))
        )
        for band, band_range in enumerate(ranges):
            if band_range.usable:
                counts[band] += scatter_counts(
                    truth_scored[band], prediction_scored[band], band_range
                )

    def add_scatter_figures(self) -> None:
        for index, counts in self.histograms.items():
            scored = self.series[index]
            panels = scatter_panels(scored.target, counts, self.ranges[scored.target.name])
            if panels:
                self.figures[f"{scored.file_stem}_scatter.png"] = panels


def _warn_if_uncovered(scored: Series, chip_id: str, score: Score) -> None:
    """Log a chip whose prediction is NaN wherever its truth is valid, so it scores nothing."""
    counted = sum(band.errors.count for band in score.bands.values())
    valid_truth = sum(band.errors.truth_count for band in score.bands.values())
    if valid_truth and not counted:
        log.warning(
            "%s: chip %s has no finite prediction where the truth is valid (%d pixels); it "
            "adds nothing to the split's scores",
            scored.title,
            chip_id,
            valid_truth,
        )


def _context(target: VariableInfo, ranges: Mapping[str, list[BandRange]]) -> ChipContext:
    kind = target.kind
    data_range: list[float] = []
    if kind in (Kind.OPTICAL, Kind.SAR):
        data_range = [band_range.high - band_range.low for band_range in ranges[target.name]]
    ndvi_bands = _ndvi_bands(target) if kind is Kind.OPTICAL else None
    return ChipContext(kind, target.labels, data_range, ndvi_bands)


def _ndvi_bands(target: VariableInfo) -> tuple[int, int] | None:
    """Return the positions of the red and NIR bands: B04 and B08, or the nearest wavelengths."""
    if "B04" in target.labels and "B08" in target.labels:
        return target.labels.index("B04"), target.labels.index("B08")
    try:
        wavelengths = band_wavelengths_nm(target)
    except EvaluationError:
        return None
    red, nir = (int(np.argmin(np.abs(wavelengths - centre))) for centre in (RED_NM, NIR_NM))
    close = abs(wavelengths[red] - RED_NM) <= HSI_NDVI_TOLERANCE_NM
    if close and abs(wavelengths[nir] - NIR_NM) <= HSI_NDVI_TOLERANCE_NM:
        return red, nir
    return None


def scatter_counts(truth: FloatArray, prediction: FloatArray, band_range: BandRange) -> FloatArray:
    """Count pixels in a truth (x) by prediction (y) grid over the band's display range.

    Values outside the range fall into the edge bins, so outliers stay visible.
    """
    valid = np.isfinite(truth) & np.isfinite(prediction)
    low, high = band_range.display_low, band_range.display_high
    counts, _, _ = np.histogram2d(
        np.clip(truth[valid], low, high),
        np.clip(prediction[valid], low, high),
        bins=SCATTER_BINS,
        range=[[low, high], [low, high]],
    )
    return counts


def scatter_panels(
    target: VariableInfo, counts: FloatArray, ranges: Sequence[BandRange]
) -> list[quicklook.Panel]:
    bands = np.unique(np.linspace(0, len(target.labels) - 1, SCATTER_MAX_BANDS).round().astype(int))
    panels = []
    for band in bands.tolist():
        band_range = ranges[band]
        if not band_range.usable or not counts[band].any():
            continue
        # Rows of the image run from high to low prediction, columns from low to high truth.
        image = counts[band].T[::-1]
        low, high = band_range.display_low, band_range.display_high
        caption = f"{target.labels[band]} {low:.3g} to {high:.3g}"
        panels.append((caption, quicklook.density_colours(image)))
    return panels


def chip_figure(
    target: VariableInfo, truth: FloatArray, prediction: FloatArray, ranges: Sequence[BandRange]
) -> list[quicklook.Panel]:
    """Render truth, prediction and error of one chip's display band, after true colour if any."""
    panels: list[quicklook.Panel] = []
    colour = _true_colour(target)
    if colour is not None:
        truth_rgb, prediction_rgb = colour(truth), colour(prediction)
        if truth_rgb is not None and prediction_rgb is not None:
            panels += [("truth RGB", truth_rgb), ("prediction RGB", prediction_rgb)]
    band = _display_band(target)
    band_range = ranges[band]
    if not band_range.usable:
        return panels
    truth_band = scored_values(truth, target.kind)[band]
    prediction_band = scored_values(prediction, target.kind)[band]
    if target.kind is Kind.AZIMUTH:
        error = azimuth_difference(prediction_band, truth_band)
    else:
        error = prediction_band - truth_band
    low, high = band_range.display_low, band_range.display_high
    limit = ERROR_LIMIT_FRACTION * (high - low)
    label = target.labels[band]
    panels += [
        (f"truth {label}", quicklook.grey(truth_band, low, high)),
        (f"prediction {label}", quicklook.grey(prediction_band, low, high)),
        (f"error +-{limit:.3g} {target.error_units}", quicklook.error_colours(error, limit)),
    ]
    return panels


def _true_colour(
    target: VariableInfo,
) -> Callable[[FloatArray], npt.NDArray[np.uint8] | None] | None:
    if target.name == "s2":
        return lambda values: quicklook.s2_true_colour(values, target.labels)
    if target.name == "hsi":
        return lambda values: quicklook.hsi_true_colour(values, target.labels)
    return None


def _display_band(target: VariableInfo) -> int:
    for label in ("B04", "VV"):
        if label in target.labels:
            return target.labels.index(label)
    if target.name == "hsi":
        wavelengths = band_wavelengths_nm(target)
        return int(np.argmin(np.abs(wavelengths - HSI_DISPLAY_NM)))
    return 0


def _scores_document(
    setup: _Setup,
    series: Sequence[Series],
    scorer: _Scorer,
    ranges: Mapping[str, list[BandRange]],
) -> dict[str, Any]:
    request = setup.request
    labels = {info.name: info.labels for info in _scored_variables(series)}
    return {
        EVALUATION_MARKER: EVALUATION_FORMAT,
        "software": {"name": "sensorcube", "version": pipeline.__version__},
        "region": setup.manifest["region"],
        "config_hash": setup.manifest["config_hash"],
        "store": str(request.store),
        "manifest": str(request.manifest),
        "split": request.split,
        "direction": str(setup.direction),
        "baselines": list(setup.baselines),
        "chips": list(setup.pairs.chip_ids),
        "truth_range": {
            name: {
                label: {"min": band_range.low, "max": band_range.high}
                for label, band_range in zip(labels[name], band_ranges, strict=True)
            }
            for name, band_ranges in ranges.items()
        },
        "results": [_result_entry(scored, scorer, index) for index, scored in enumerate(series)],
    }


def _result_entry(scored: Series, scorer: _Scorer, index: int) -> dict[str, Any]:
    """Describe one series with its split scores and its scores per chip."""
    psnr_range = REFLECTANCE_DATA_RANGE if scored.target.kind is Kind.OPTICAL else None
    ssim_range = scorer.contexts[scored.target.name].ssim_data_range
    return {
        "label": scored.label,
        "role": scored.role,
        "predictor": scored.predictor,
        "predictions": str(scored.path) if scored.path is not None else None,
        "target": scored.target.name,
        "kind": scored.target.kind.value,
        "error_units": scored.target.error_units,
        "psnr_data_range": psnr_range,
        "ssim_data_range": dict(zip(scored.target.labels, ssim_range, strict=True))
        if ssim_range
        else None,
        "split": summarize(scorer.totals[index], psnr_data_range=psnr_range),
        "chips": {
            chip_id: summarize(score, psnr_data_range=psnr_range)
            for chip_id, score in scorer.chip_scores[index].items()
        },
    }


# Rows of the summary table: a title and the path of the value in a split summary.
SUMMARY_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("RMSE", ("all_bands", "rmse")),
    ("MAE", ("all_bands", "mae")),
    ("bias", ("all_bands", "bias")),
    ("PSNR (dB)", ("all_bands", "psnr_db")),
    ("SSIM", ("all_bands", "ssim")),
    ("SAM (degrees)", ("sam_deg",)),
    ("NDVI RMSE", ("ndvi", "rmse")),
    ("NDVI correlation", ("ndvi", "correlation")),
    ("ENL ratio (prediction / truth)", ("all_bands", "enl_ratio")),
    ("slope RMSE (degrees)", ("slope", "rmse_deg")),
    ("valid pixels", ("all_bands", "valid_pixels")),
    ("coverage", ("all_bands", "coverage")),
)
BAND_COLUMNS = (
    ("RMSE", "rmse"),
    ("MAE", "mae"),
    ("bias", "bias"),
    ("PSNR (dB)", "psnr_db"),
    ("SSIM", "ssim"),
    ("ENL ratio", "enl_ratio"),
)


def _lookup(summary: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = summary
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def format_value(value: Any) -> str:
    """Format a score for the report: 4 significant digits, inf, or n/a when undefined."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_summary_table(series: Sequence[Series], scores: Mapping[str, Any]) -> str:
    """Render one table: a row per metric, a column per direction and predictor."""
    results = scores["results"]
    header = ["metric", *(scored.title for scored in series)]
    rows = [["error unit", *(result["error_units"] for result in results)]]
    for title, path in SUMMARY_ROWS:
        values = [_lookup(result["split"], path) for result in results]
        if any(value is not None for value in values):
            rows.append([title, *(format_value(value) for value in values)])
    return "\n".join(_table(header, rows))


def render_report(
    setup: _Setup,
    series: Sequence[Series],
    scores: Mapping[str, Any],
    summary_table: str,
    figure_files: Sequence[str],
) -> str:
    """Render report.md: the summary table, per-band and per-chip tables, and the figures."""
    request = setup.request
    lines = [
        f"# Evaluation of {setup.direction} on split {request.split} of region {scores['region']}",
        "",
        f"Truth store `{request.store}`, manifest `{request.manifest}`, "
        f"{len(scores['chips'])} chips.",
        "Scores pool the valid pixels of all chips, so each chip weighs by its valid pixels.",
        "Errors are prediction minus truth, in the error unit of each column.",
        "",
        "## Summary",
        "",
        summary_table,
        "",
    ]
    for label in dict.fromkeys(scored.label for scored in series):
        pairs = zip(series, scores["results"], strict=True)
        members = [(scored, result) for scored, result in pairs if scored.label == label]
        lines += _band_section(label, members)
        lines += _chip_section(label, members, scores["chips"])
    lines += _figure_section(figure_files)
    return "\n".join(lines) + "\n"


def _band_section(label: str, members: Sequence[tuple[Series, Mapping[str, Any]]]) -> list[str]:
    predictors = " / ".join(scored.predictor for scored, _ in members)
    first = members[0][1]["split"]["bands"]
    columns = [(title, key) for title, key in BAND_COLUMNS if key in next(iter(first.values()), {})]
    rows = []
    for band in first:
        cells = [
            " / ".join(
                format_value(result["split"]["bands"][band].get(key)) for _, result in members
            )
            for _, key in columns
        ]
        rows.append([band, *cells])
    return [
        f"## {label}: {members[0][0].target.name} per band",
        "",
        f"Each cell: {predictors}.",
        "",
        *_table(["band", *(title for title, _ in columns)], rows),
        "",
    ]


def _chip_section(
    label: str, members: Sequence[tuple[Series, Mapping[str, Any]]], chips: Sequence[str]
) -> list[str]:
    predictors = " / ".join(scored.predictor for scored, _ in members)
    sample = members[0][1]["split"]
    columns: list[tuple[str, tuple[str, ...]]] = [("RMSE", ("all_bands", "rmse"))]
    if "ssim" in sample["all_bands"]:
        columns.append(("SSIM", ("all_bands", "ssim")))
    if "sam_deg" in sample:
        columns.append(("SAM (degrees)", ("sam_deg",)))
    rows = []
    for chip_id in chips:
        valid = _lookup(members[0][1]["chips"][chip_id], ("all_bands", "valid_pixels"))
        cells = [
            " / ".join(
                format_value(_lookup(result["chips"][chip_id], path)) for _, result in members
            )
            for _, path in columns
        ]
        rows.append([chip_id, format_value(valid), *cells])
    return [
        f"## {label}: per chip",
        "",
        f"Each cell: {predictors}.",
        "",
        *_table(["chip", "valid pixels", *(title for title, _ in columns)], rows),
        "",
    ]


def _figure_section(figure_files: Sequence[str]) -> list[str]:
    if not figure_files:
        return []
    lines = [
        "## Figures",
        "",
        "`*_scatter.png`: pixel counts of truth (across) against prediction (up) per band over "
        "the split, darker for more pixels, with the 1:1 line in red.",
        "`*_<chip>.png`: truth, prediction and error (prediction minus truth, blue below and red "
        "above 0) of one chip.",
        "",
    ]
    lines += [f"![{name}]({FIGURES_FOLDER}/{name})" for name in figure_files]
    return [*lines, ""]


def to_json_value(value: Any) -> Any:
    """Replace NaN and infinite floats by None, so the document is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(item) for item in value]
    return value


def check_output(out: Path, *, overwrite: bool) -> None:
    """Reject an output path that is a file, or a non-empty folder without ``overwrite``.

    With ``overwrite`` only an earlier evaluation is replaced. Any other non-empty folder is kept.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise EvaluationError(
            f"output path {str(out)!r} exists and is not a folder; choose another --out"
        )
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise EvaluationError(
            f"output folder {str(out)!r} exists and is not empty; pass --overwrite to replace "
            "the evaluation in it, or choose another --out"
        )
    if not is_evaluation(out):
        raise EvaluationError(
            f"output folder {str(out)!r} is not empty and is not a sensorcube evaluation (no "
            f"{SCORES_FILE} with {EVALUATION_MARKER!r}); sensorcube never deletes it, even with "
            "--overwrite; choose another --out or empty it"
        )


def is_evaluation(path: Path) -> bool:
    try:
        scores = json.loads((path / SCORES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(scores, dict) and EVALUATION_MARKER in scores


def write_evaluation(evaluation: Evaluation, out: Path, *, overwrite: bool) -> None:
    """Write scores.json, report.md and figures/ into ``out``, atomically.

    The files are written into a temporary folder beside ``out`` that is then renamed into
    place. With ``overwrite`` an earlier evaluation at ``out`` is swapped out only at the end.
    """
    check_output(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        staging = Path(tmp) / out.name
        staging.mkdir()
        document = to_json_value(evaluation.scores)
        text = json.dumps(document, indent=1, allow_nan=False) + "\n"
        (staging / SCORES_FILE).write_text(text, encoding="utf-8")
        (staging / REPORT_FILE).write_text(evaluation.report, encoding="utf-8")
        for name, panels in evaluation.figures.items():
            quicklook.write_png(panels, staging / FIGURES_FOLDER / name)
        if out.exists():
            # Any other folder at ``out`` was empty when checked. rmdir fails if it gained files
            # since, so such files are never deleted.
            try:
                if overwrite and is_evaluation(out):
                    out.rename(Path(tmp) / "replaced")
                else:
                    out.rmdir()
            except OSError as error:
                raise EvaluationError(
                    f"output folder {str(out)!r} changed while the evaluation was written "
                    f"({error}); nothing was written, so run the command again"
                ) from error
        staging.rename(out)
    log.info("evaluation written to %s: %d figures", out, len(evaluation.figures))
