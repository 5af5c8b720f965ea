"""Scores of a predicted chip against the truth, kept as sums so that chips pool into a split.

A pixel counts when it is finite in both the truth and the prediction, after conversion to the
unit it is scored in (dB for SAR). Every score is a sum over counted pixels with its weight, so
adding the scores of two chips pools their pixels. A split's RMSE is therefore the root of the
mean squared error over all counted pixels of its chips, and each chip weighs by its counted
pixels. SSIM, spectral angle and NDVI pool the same way. The ENL ratio pools by window.

This module is pure NumPy, SciPy and scikit-image. :mod:`pipeline.evaluate` reads the stores.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.metrics import structural_similarity

from pipeline.terrain import slope_aspect

FloatArray = npt.NDArray[np.float64]
MaskArray = npt.NDArray[np.bool_]

SSIM_WINDOW_PX = 7  # scikit-image's default window for structural_similarity
ENL_WINDOW_PX = 8  # side of the square, non-overlapping windows of the ENL estimate
ENL_WINDOW_FRACTION = 0.25  # share of a chip's windows, lowest truth CV first, that ENL uses


class Kind(enum.Enum):
    """Scoring scheme of a target variable."""

    OPTICAL = "optical"  # reflectance: per-band errors, PSNR, SSIM, spectral angle, NDVI
    SAR = "sar"  # linear power, scored in dB: errors, SSIM, ENL ratio
    ELEVATION = "elevation"  # metres: errors and the slope error
    COHERENCE = "coherence"
    AZIMUTH = "azimuth"  # degrees clockwise from north: errors wrap at 360
    OTHER = "other"  # errors only


VARIABLE_KINDS = {
    "s2": Kind.OPTICAL,
    "hsi": Kind.OPTICAL,
    "s1": Kind.SAR,
    "dem": Kind.ELEVATION,
    "coherence": Kind.COHERENCE,
    "aspect": Kind.AZIMUTH,
}


def kind_of(variable: str) -> Kind:
    return VARIABLE_KINDS.get(variable, Kind.OTHER)


@dataclass(frozen=True)
class WeightedMean:
    """A sum and its weight (a pixel or window count); the mean is NaN without weight."""

    total: float = 0.0
    weight: float = 0.0

    def __add__(self, other: WeightedMean) -> WeightedMean:
        return WeightedMean(self.total + other.total, self.weight + other.weight)

    @property
    def value(self) -> float:
        return self.total / self.weight if self.weight > 0 else math.nan


@dataclass(frozen=True)
class ErrorSums:
    """Sums of the error (prediction minus truth), its absolute value and its square.

    ``count`` is the number of counted pixels and ``truth_count`` the number of pixels with a
    valid truth, so ``coverage`` is the share of valid truth pixels that the prediction covers.
    """

    count: int = 0
    truth_count: int = 0
    error: float = 0.0
    absolute: float = 0.0
    squared: float = 0.0

    @classmethod
    def of(cls, errors: FloatArray, truth_count: int) -> ErrorSums:
        """Sum the errors of the counted pixels, a 1-D array without NaN."""
        return cls(
            count=int(errors.size),
            truth_count=int(truth_count),
            error=float(np.sum(errors)),
            absolute=float(np.sum(np.abs(errors))),
            squared=float(np.sum(np.square(errors))),
        )

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(
            self.count + other.count,
            self.truth_count + other.truth_count,
            self.error + other.error,
            self.absolute + other.absolute,
            self.squared + other.squared,
        )

    @property
    def mse(self) -> float:
        return self.squared / self.count if self.count else math.nan

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse) if self.count else math.nan

    @property
    def mae(self) -> float:
        return self.absolute / self.count if self.count else math.nan

    @property
    def bias(self) -> float:
        return self.error / self.count if self.count else math.nan

    @property
    def coverage(self) -> float:
        return self.count / self.truth_count if self.truth_count else math.nan


@dataclass(frozen=True)
class CorrelationSums:
    """Count, means, centred sums of squares and co-moment of paired values, with their ranges.

    Two sets merge with the pairwise update of Chan, Golub and LeVeque (1979), as
    :class:`pipeline.stats.RunningMoments` does. The ranges tell a constant set apart exactly,
    where rounding would leave a tiny non-zero variance.
    """

    count: int = 0
    mean_x: float = 0.0
    mean_y: float = 0.0
    m2_x: float = 0.0
    m2_y: float = 0.0
    co_moment: float = 0.0
    range_x: tuple[float, float] = (math.inf, -math.inf)
    range_y: tuple[float, float] = (math.inf, -math.inf)

    @classmethod
    def of(cls, x: FloatArray, y: FloatArray) -> CorrelationSums:
        """Summarise paired 1-D arrays without NaN."""
        if x.size == 0:
            return cls()
        mean_x, mean_y = float(np.mean(x)), float(np.mean(y))
        return cls(
            count=int(x.size),
            mean_x=mean_x,
            mean_y=mean_y,
            m2_x=float(np.sum(np.square(x - mean_x))),
            m2_y=float(np.sum(np.square(y - mean_y))),
            co_moment=float(np.sum((x - mean_x) * (y - mean_y))),
            range_x=(float(np.min(x)), float(np.max(x))),
            range_y=(float(np.min(y)), float(np.max(y))),
        )

    def __add__(self, other: CorrelationSums) -> CorrelationSums:
        if not other.count:
            return self
        if not self.count:
            return other
        count = self.count + other.count
        share = other.count / count
        delta_x = other.mean_x - self.mean_x
        delta_y = other.mean_y - self.mean_y
        cross = self.count * share
        return CorrelationSums(
            count=count,
            mean_x=self.mean_x + delta_x * share,
            mean_y=self.mean_y + delta_y * share,
            m2_x=self.m2_x + other.m2_x + delta_x**2 * cross,
            m2_y=self.m2_y + other.m2_y + delta_y**2 * cross,
            co_moment=self.co_moment + other.co_moment + delta_x * delta_y * cross,
            range_x=(
                min(self.range_x[0], other.range_x[0]),
                max(self.range_x[1], other.range_x[1]),
            ),
            range_y=(
                min(self.range_y[0], other.range_y[0]),
                max(self.range_y[1], other.range_y[1]),
            ),
        )

    @property
    def correlation(self) -> float:
        """Pearson correlation, NaN with fewer than two pairs or when either side is constant."""
        if (
            self.count < 2
            or self.range_x[0] == self.range_x[1]
            or self.range_y[0] == self.range_y[1]
        ):
            return math.nan
        return self.co_moment / math.sqrt(self.m2_x * self.m2_y)


@dataclass(frozen=True)
class EnlSums:
    """Sums of the squared coefficient of variation (CV^2 = variance / mean^2) over ENL windows.

    The ENL of a window is mean^2 / variance = 1 / CV^2. The ENL of a set of windows is
    ``windows / sum(CV^2)``, the harmonic mean of the window ENLs, so one window without
    variance does not make it infinite. The ratio is ENL(prediction) / ENL(truth) over the same
    windows: near 1 when the prediction keeps the speckle statistics, above 1 when it smooths
    them away, and infinite for a prediction without variance in any window.
    """

    windows: int = 0
    truth_cv2: float = 0.0
    prediction_cv2: float = 0.0

    def __add__(self, other: EnlSums) -> EnlSums:
        return EnlSums(
            self.windows + other.windows,
            self.truth_cv2 + other.truth_cv2,
            self.prediction_cv2 + other.prediction_cv2,
        )

    @property
    def truth_enl(self) -> float:
        return _ratio(self.windows, self.truth_cv2)

    @property
    def prediction_enl(self) -> float:
        return _ratio(self.windows, self.prediction_cv2)

    @property
    def ratio(self) -> float:
        return _ratio(self.truth_cv2, self.prediction_cv2) if self.windows else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return numerator / denominator


_Sums = TypeVar("_Sums", WeightedMean, ErrorSums, CorrelationSums, EnlSums)


@dataclass(frozen=True)
class BandScore:
    """Sums of one band; ``ssim`` and ``enl`` are None for kinds that do not score them."""

    errors: ErrorSums = ErrorSums()
    ssim: WeightedMean | None = None
    enl: EnlSums | None = None

    def __add__(self, other: BandScore) -> BandScore:
        return BandScore(
            self.errors + other.errors,
            _add_optional(self.ssim, other.ssim),
            _add_optional(self.enl, other.enl),
        )


@dataclass(frozen=True)
class Score:
    """Sums of one chip, or of several chips added together, by band and for the chip as a whole.

    ``spectral_angle`` is in degrees (optical). ``ndvi_errors`` and ``ndvi_correlation`` compare
    the NDVI of prediction and truth (optical, when red and NIR bands exist). ``slope_errors`` are
    in degrees (elevation).
    """

    bands: Mapping[str, BandScore] = field(default_factory=dict)
    spectral_angle: WeightedMean | None = None
    ndvi_errors: ErrorSums | None = None
    ndvi_correlation: CorrelationSums | None = None
    slope_errors: ErrorSums | None = None

    def __add__(self, other: Score) -> Score:
        if not self.bands:
            return other
        if not other.bands:
            return self
        if list(self.bands) != list(other.bands):
            raise ValueError(
                f"cannot add scores of bands {list(self.bands)} and {list(other.bands)}"
            )
        return Score(
            {band: self.bands[band] + other.bands[band] for band in self.bands},
            _add_optional(self.spectral_angle, other.spectral_angle),
            _add_optional(self.ndvi_errors, other.ndvi_errors),
            _add_optional(self.ndvi_correlation, other.ndvi_correlation),
            _add_optional(self.slope_errors, other.slope_errors),
        )


def _add_optional(first: _Sums | None, second: _Sums | None) -> _Sums | None:
    if first is None:
        return second
    if second is None:
        return first
    return first + second


def to_db(power: npt.ArrayLike) -> FloatArray:
    """Convert linear power to dB. Values at or below 0, which have no logarithm, become NaN."""
    values = np.asarray(power, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, 10.0 * np.log10(values), np.nan)


def azimuth_difference(prediction: FloatArray, truth: FloatArray) -> FloatArray:
    """Signed difference of two azimuths in degrees, wrapped into [-180, 180)."""
    return np.asarray(np.mod(prediction - truth + 180.0, 360.0) - 180.0, dtype=np.float64)


def psnr_db(mse: float, data_range: float) -> float:
    """PSNR in dB from a mean squared error: ``10 log10(data_range^2 / mse)``.

    This is the formula of ``skimage.metrics.peak_signal_noise_ratio``, which takes two images
    and so cannot score an MSE pooled over chips. It is infinite for an MSE of 0 and NaN without
    pixels.
    """
    if math.isnan(mse) or not data_range > 0:
        return math.nan
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def masked_ssim(
    truth: FloatArray, prediction: FloatArray, valid: MaskArray, *, data_range: float
) -> WeightedMean:
    """Sum scikit-image's SSIM map over the pixels whose whole window is valid.

    Invalid pixels are set to 0 in both images before the call, and any pixel whose 7 x 7
    window reaches one of them, or the chip edge, is left out. On a chip without invalid pixels
    the mean is exactly what ``structural_similarity`` returns, because it leaves out the same
    edge pixels. A chip smaller than 7 px uses the largest odd window that fits, down to 3 px.
    """
    window = min(SSIM_WINDOW_PX, _largest_odd(min(truth.shape)))
    if window < 3 or not data_range > 0:
        return WeightedMean()
    counted = ndimage.binary_erosion(
        valid, structure=np.ones((window, window), dtype=bool), border_value=0
    )
    if not counted.any():
        return WeightedMean()
    _, ssim_map = structural_similarity(  # type: ignore[no-untyped-call]
        np.where(valid, truth, 0.0),
        np.where(valid, prediction, 0.0),
        win_size=window,
        data_range=data_range,
        full=True,
    )
    return WeightedMean(float(np.sum(ssim_map[counted])), float(np.count_nonzero(counted)))


def _largest_odd(size: int) -> int:
    return size if size % 2 else size - 1


def spectral_angle_deg(truth: FloatArray, prediction: FloatArray) -> FloatArray:
    """Return the spectral angle in degrees per pixel of two (band, y, x) arrays.

    A pixel is NaN when any band is NaN or either spectrum is all zero. The angle between unit
    vectors u and v is computed as 2 atan2(|u - v|, |u + v|), which stays accurate near 0 and
    180 degrees, where arccos of the dot product loses precision.
    """
    valid = np.isfinite(truth).all(axis=0) & np.isfinite(prediction).all(axis=0)
    truth, prediction = np.where(valid, truth, 0.0), np.where(valid, prediction, 0.0)
    truth_norm = np.linalg.norm(truth, axis=0)
    prediction_norm = np.linalg.norm(prediction, axis=0)
    valid &= (truth_norm > 0) & (prediction_norm > 0)
    # Spectra left out get a norm of 1 here, so the divisions below stay finite.
    truth_unit = truth / np.where(valid, truth_norm, 1.0)
    prediction_unit = prediction / np.where(valid, prediction_norm, 1.0)
    angle = 2.0 * np.arctan2(
        np.linalg.norm(truth_unit - prediction_unit, axis=0),
        np.linalg.norm(truth_unit + prediction_unit, axis=0),
    )
    return np.where(valid, np.degrees(angle), np.nan)


def enl_sums(
    truth_power: FloatArray,
    prediction_power: FloatArray,
    *,
    window: int = ENL_WINDOW_PX,
    fraction: float = ENL_WINDOW_FRACTION,
) -> EnlSums:
    """Sum the CV^2 of truth and prediction over the most homogeneous windows of one band.

    Both inputs are (y, x) linear intensity. The band is cut into non-overlapping ``window``
    squares, and a square counts when all its pixels are finite in both and both means are
    positive. Of those, the ``fraction`` with the lowest truth CV (at least one) are used.
    Rows and columns beyond the last whole window are ignored.
    """
    rows, cols = truth_power.shape[0] // window, truth_power.shape[1] // window
    if rows == 0 or cols == 0:
        return EnlSums()
    truth_windows = _windows(truth_power, rows, cols, window)
    prediction_windows = _windows(prediction_power, rows, cols, window)
    usable = np.isfinite(truth_windows).all(axis=-1) & np.isfinite(prediction_windows).all(axis=-1)
    truth_windows, prediction_windows = truth_windows[usable], prediction_windows[usable]
    truth_mean, prediction_mean = truth_windows.mean(axis=-1), prediction_windows.mean(axis=-1)
    positive = (truth_mean > 0) & (prediction_mean > 0)
    if not positive.any():
        return EnlSums()
    truth_cv2 = _cv2(truth_windows[positive], truth_mean[positive])
    prediction_cv2 = _cv2(prediction_windows[positive], prediction_mean[positive])
    chosen = np.argsort(truth_cv2, kind="stable")[: max(1, math.ceil(truth_cv2.size * fraction))]
    return EnlSums(
        int(chosen.size), float(np.sum(truth_cv2[chosen])), float(np.sum(prediction_cv2[chosen]))
    )


def _cv2(windows: FloatArray, means: FloatArray) -> FloatArray:
    """Return variance / mean^2 per window, exactly 0 for a constant window.

    Rounding in the mean leaves a constant window a variance near 1e-35 instead of 0, which
    would turn an infinite ENL into a huge finite one.
    """
    constant = np.ptp(windows, axis=-1) == 0
    return np.where(constant, 0.0, windows.var(axis=-1) / means**2)


def _windows(values: FloatArray, rows: int, cols: int, window: int) -> FloatArray:
    """Return the (rows, cols, window * window) pixels of the non-overlapping windows."""
    cropped = values[: rows * window, : cols * window].reshape(rows, window, cols, window)
    return cropped.transpose(0, 2, 1, 3).reshape(rows, cols, window * window)


def ndvi(red: FloatArray, nir: FloatArray) -> FloatArray:
    """Return (NIR - red) / (NIR + red), NaN where the sum is 0 or an input is NaN."""
    total = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total != 0, (nir - red) / total, np.nan)


def error_sums(
    truth: FloatArray, prediction: FloatArray, *, wrap_degrees: bool = False
) -> ErrorSums:
    """Sum the errors over pixels finite in both; ``wrap_degrees`` wraps azimuth differences."""
    valid = np.isfinite(truth) & np.isfinite(prediction)
    if wrap_degrees:
        errors = azimuth_difference(prediction[valid], truth[valid])
    else:
        errors = prediction[valid] - truth[valid]
    return ErrorSums.of(errors, int(np.count_nonzero(np.isfinite(truth))))


@dataclass(frozen=True)
class ChipContext:
    """Inputs of :func:`score_chip` besides the pixels.

    ``ssim_data_range`` has one value per band, in the unit the band is scored in (optical and
    SAR). ``ndvi_bands`` contains the red and NIR band positions (optical, when both exist).
    ``spacing_m`` is the (dy, dx) pixel spacing in metres (elevation).
    """

    kind: Kind
    bands: Sequence[str]
    ssim_data_range: Sequence[float] = ()
    ndvi_bands: tuple[int, int] | None = None
    spacing_m: tuple[float, float] | None = None


def score_chip(truth: FloatArray, prediction: FloatArray, context: ChipContext) -> Score:
    """Score one chip. Both arrays are (band, y, x) in the store's unit, NaN where invalid."""
    kind = context.kind
    truth_scored = to_db(truth) if kind is Kind.SAR else truth
    prediction_scored = to_db(prediction) if kind is Kind.SAR else prediction
    bands = {
        band: _score_band(truth, prediction, truth_scored, prediction_scored, position, context)
        for position, band in enumerate(context.bands)
    }
    score = Score(bands)
    if kind is Kind.OPTICAL:
        score = _add_optical_scores(score, truth, prediction, context.ndvi_bands)
    if kind is Kind.ELEVATION and context.spacing_m is not None:
        score = _add_slope_errors(score, truth[0], prediction[0], context.spacing_m)
    return score


def _score_band(
    truth: FloatArray,
    prediction: FloatArray,
    truth_scored: FloatArray,
    prediction_scored: FloatArray,
    position: int,
    context: ChipContext,
) -> BandScore:
    band_truth, band_prediction = truth_scored[position], prediction_scored[position]
    errors = error_sums(band_truth, band_prediction, wrap_degrees=context.kind is Kind.AZIMUTH)
    ssim = None
    if context.kind in (Kind.OPTICAL, Kind.SAR):
        valid = np.isfinite(band_truth) & np.isfinite(band_prediction)
        data_range = context.ssim_data_range[position]
        ssim = masked_ssim(band_truth, band_prediction, valid, data_range=data_range)
    enl = enl_sums(truth[position], prediction[position]) if context.kind is Kind.SAR else None
    return BandScore(errors, ssim, enl)


def _add_optical_scores(
    score: Score, truth: FloatArray, prediction: FloatArray, ndvi_bands: tuple[int, int] | None
) -> Score:
    angles = spectral_angle_deg(truth, prediction)
    counted = angles[np.isfinite(angles)]
    spectral_angle = WeightedMean(float(np.sum(counted)), float(counted.size))
    if ndvi_bands is None:
        return Score(score.bands, spectral_angle)
    red, nir = ndvi_bands
    truth_ndvi = ndvi(truth[red], truth[nir])
    prediction_ndvi = ndvi(prediction[red], prediction[nir])
    valid = np.isfinite(truth_ndvi) & np.isfinite(prediction_ndvi)
    return Score(
        score.bands,
        spectral_angle,
        error_sums(truth_ndvi, prediction_ndvi),
        CorrelationSums.of(truth_ndvi[valid], prediction_ndvi[valid]),
    )


def _add_slope_errors(
    score: Score, truth_m: FloatArray, prediction_m: FloatArray, spacing_m: tuple[float, float]
) -> Score:
    """Add the error of the slope that Horn's method gives on both grids, 1 px edge excluded."""
    if min(truth_m.shape) < 3:
        return score
    truth_slope, _ = slope_aspect(truth_m, spacing_m=spacing_m, margin=1)
    prediction_slope, _ = slope_aspect(prediction_m, spacing_m=spacing_m, margin=1)
    slope_errors = error_sums(truth_slope.astype(np.float64), prediction_slope.astype(np.float64))
    return Score(
        score.bands,
        score.spectral_angle,
        score.ndvi_errors,
        score.ndvi_correlation,
        slope_errors,
    )


def summarize(score: Score, *, psnr_data_range: float | None = None) -> dict[str, Any]:
    """Turn the sums of a chip or a split into metric values, by band and over all bands.

    ``psnr_data_range`` enables PSNR (optical). Values are floats and may be NaN or infinite.
    """
    bands = {band: _band_summary(sums, psnr_data_range) for band, sums in score.bands.items()}
    total = BandScore()
    for band_score in score.bands.values():
        total = total + band_score
    summary: dict[str, Any] = {"bands": bands, "all_bands": _band_summary(total, psnr_data_range)}
    if score.spectral_angle is not None:
        summary["sam_deg"] = score.spectral_angle.value
        summary["sam_pixels"] = int(score.spectral_angle.weight)
    if score.ndvi_errors is not None and score.ndvi_correlation is not None:
        summary["ndvi"] = {
            "rmse": score.ndvi_errors.rmse,
            "bias": score.ndvi_errors.bias,
            "correlation": score.ndvi_correlation.correlation,
            "valid_pixels": score.ndvi_errors.count,
        }
    if score.slope_errors is not None:
        summary["slope"] = {
            "rmse_deg": score.slope_errors.rmse,
            "bias_deg": score.slope_errors.bias,
            "valid_pixels": score.slope_errors.count,
        }
    return summary


def _band_summary(score: BandScore, psnr_data_range: float | None) -> dict[str, float | int]:
    errors = score.errors
    summary: dict[str, float | int] = {
        "rmse": errors.rmse,
        "mae": errors.mae,
        "bias": errors.bias,
        "valid_pixels": errors.count,
        "coverage": errors.coverage,
    }
    if psnr_data_range is not None:
        summary["psnr_db"] = psnr_db(errors.mse, psnr_data_range)
    if score.ssim is not None:
        summary["ssim"] = score.ssim.value
    if score.enl is not None:
        summary["enl_ratio"] = score.enl.ratio
        summary["enl_truth"] = score.enl.truth_enl
        summary["enl_prediction"] = score.enl.prediction_enl
        summary["enl_windows"] = score.enl.windows
    return summary
