"""Interferometric coherence: the boxcar estimator, its bias and the choice of a coherence pair.

Pure computation, no I/O. The sample coherence over a window of L pixels is

    |sum(r * conj(s))| / sqrt(sum(|r| ** 2) * sum(|s| ** 2))

and it is biased upwards, most at low coherence. Take circular complex Gaussian speckle with L
independent looks. At true coherence 0 the expected estimate is
Gamma(L) * Gamma(3/2) / Gamma(L + 1/2), which is 1.0 for 1 look (every 1-look estimate is 1),
0.2995 for 9 looks (3x3) and 0.1269 for 49 looks (7x7). At true coherence 0.5 the expected
estimate is 0.5385 for 9 looks and 0.5059 for 49 looks. At 0.8 it is 0.8055 and 0.8009. So a
3x3 mean estimate near 0.3 is what fully decorrelated surfaces give. Neighbouring pixels of an
oversampled SLC are correlated, so a window has fewer independent looks than pixels and the bias
of real data is larger than these numbers. In the UAVSAR SLC of the tests a 5x5 window has about
18 equivalent looks.

The density of the estimate and the 3F2 form of its mean are those of Touzi, Lopes, Bruniquel
and Vachon (IEEE TGRS, 1999), as restated by Nadarajah, "On the distribution of the estimated
coherence", IEEE Geoscience and Remote Sensing Letters 4(3), 2007.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import partial

import dask.array as da
import numpy as np
from scipy import integrate, special

logger = logging.getLogger(__name__)

# Beyond about 514 looks the polynomial 2F1(1 - L, 1 - L; 1; z) in the density overflows
# float64 near z = 1. At 500 looks the bias at true coherence 0 is 0.040.
MAX_EXPECTATION_LOOKS = 500


def estimate_coherence(
    reference: np.ndarray, secondary: np.ndarray, *, looks: tuple[int, int]
) -> np.ndarray:
    """Estimate the coherence magnitude over a centred boxcar window of ``looks`` (rows, cols).

    Returns float32 values in [0, 1] with the shape of the inputs. A pixel is NaN when its window
    contains a NaN, reaches past the array edge, or has zero power in either image. Each output
    depends only on the values inside its window, summed in a fixed order, so any cut of the
    arrays into overlapping blocks gives bit-identical results.

    Raises:
        ValueError: the inputs are not two 2-D arrays of the same shape, or a window size is
            not a positive odd integer.
    """
    rows, cols = _validate_looks(looks)
    _validate_shapes(np.shape(reference), np.shape(secondary))
    reference_re, reference_im = _real_parts(reference)
    secondary_re, secondary_im = _real_parts(secondary)

    # The complex products are written out as float64 real operations, each rounded on its own,
    # so a value does not depend on the size or memory layout of the array it sits in.
    cross_re = reference_re * secondary_re + reference_im * secondary_im
    cross_im = reference_im * secondary_re - reference_re * secondary_im
    power_reference = reference_re * reference_re + reference_im * reference_im
    power_secondary = secondary_re * secondary_re + secondary_im * secondary_im

    sum_re = _window_sums(cross_re, rows, cols)
    sum_im = _window_sums(cross_im, rows, cols)
    sum_reference = _window_sums(power_reference, rows, cols)
    sum_secondary = _window_sums(power_secondary, rows, cols)
    # 0 / 0 for a window without power gives NaN on purpose.
    with np.errstate(divide="ignore", invalid="ignore"):
        squared = (sum_re * sum_re + sum_im * sum_im) / (sum_reference * sum_secondary)
    # Rounding can push a fully coherent window just above 1.
    valid = np.minimum(np.sqrt(squared), 1.0).astype(np.float32)

    coherence = np.full(np.shape(reference), np.nan, dtype=np.float32)
    top, left = rows // 2, cols // 2
    coherence[top : top + valid.shape[0], left : left + valid.shape[1]] = valid
    return coherence


def estimate_coherence_dask(
    reference: da.Array, secondary: da.Array, *, looks: tuple[int, int]
) -> da.Array:
    """Estimate coherence block by block on two dask arrays, as :func:`estimate_coherence` does.

    The blocks overlap by half a window and the array edges get no padding, so the result equals
    the NumPy function on the whole arrays bit for bit, whatever the chunking. The secondary is
    aligned to the reference's chunks. Returns a lazy float32 dask array.
    """
    rows, cols = _validate_looks(looks)
    _validate_shapes(reference.shape, secondary.shape)
    aligned = secondary.rechunk(reference.chunks)  # type: ignore[no-untyped-call]
    coherence: da.Array = da.map_overlap(  # type: ignore[no-untyped-call]
        partial(estimate_coherence, looks=(rows, cols)),
        reference,
        aligned,
        depth={0: rows // 2, 1: cols // 2},
        boundary="none",
        dtype=np.float32,
        meta=np.empty((0, 0), dtype=np.float32),
    )
    return coherence


def _validate_looks(looks: tuple[int, int]) -> tuple[int, int]:
    sizes = tuple(looks) if isinstance(looks, (tuple, list)) else ()
    if len(sizes) != 2 or not all(_is_positive_odd(size) for size in sizes):
        raise ValueError(
            f"invalid looks {looks!r}: pass the boxcar window as (rows, cols) of positive odd "
            "sizes so that it is centred on the pixel, for example (3, 3) for 9 looks"
        )
    return int(sizes[0]), int(sizes[1])


def _is_positive_odd(size: object) -> bool:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        return False
    return bool(size > 0 and size % 2 == 1)


def _validate_shapes(reference_shape: tuple[int, ...], secondary_shape: tuple[int, ...]) -> None:
    if len(reference_shape) != 2 or tuple(reference_shape) != tuple(secondary_shape):
        raise ValueError(
            f"reference shape {tuple(reference_shape)} and secondary shape "
            f"{tuple(secondary_shape)} do not match as two 2-D arrays: pass co-registered "
            "single-band images of the same shape"
        )


def _real_parts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(values)
    return array.real.astype(np.float64), array.imag.astype(np.float64)


def _window_sums(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Sum every complete rows x cols window, adding shifted copies in a fixed order.

    The output has shape (height - rows + 1, width - cols + 1), empty when the window does not
    fit. Running sums (uniform filters, cumulative sums) are avoided because their rounding
    depends on where the array starts.
    """
    height, width = values.shape
    out_height, out_width = max(height - rows + 1, 0), max(width - cols + 1, 0)
    column_sums = values[:, 0:out_width].copy()
    for offset in range(1, cols):
        column_sums += values[:, offset : offset + out_width]
    window_sums = column_sums[0:out_height].copy()
    for offset in range(1, rows):
        window_sums += column_sums[offset : offset + out_height]
    return window_sums


def expected_estimate_at_zero(looks: int) -> float:
    """Return the expected coherence estimate for true coherence 0 and ``looks`` independent looks.

    The closed form is Gamma(L) * Gamma(3/2) / Gamma(L + 1/2), evaluated with log-gamma so that
    any number of looks works.

    Raises:
        ValueError: ``looks`` is not a positive integer.
    """
    _validate_look_count(looks, maximum=None)
    log_value = special.gammaln(looks) + special.gammaln(1.5) - special.gammaln(looks + 0.5)
    return float(math.exp(log_value))


def expected_estimate(true_coherence: float, looks: int) -> float:
    """Return the expected coherence estimate for a true coherence and ``looks`` independent looks.

    The estimate D has the density

        p(D) = 2 (L - 1) (1 - g^2)^L D (1 - D^2)^(L - 2) 2F1(L, L; 1; g^2 D^2)

    on [0, 1], where g is the true coherence. Its mean is a 3F2 series, which SciPy lacks, so this
    integrates D p(D) numerically with scipy.special.hyp2f1. The integral agrees with the 3F2
    series to about 1e-9 for 2 to 512 looks and g up to 0.999.

    Raises:
        ValueError: ``true_coherence`` is outside [0, 1], or ``looks`` is not an integer
            from 1 to ``MAX_EXPECTATION_LOOKS``.
    """
    _validate_look_count(looks, maximum=MAX_EXPECTATION_LOOKS)
    is_number = isinstance(true_coherence, (int, float, np.floating)) and not isinstance(
        true_coherence, bool
    )
    if not (is_number and 0.0 <= true_coherence <= 1.0):
        raise ValueError(
            f"invalid true_coherence {true_coherence!r}: pass a coherence magnitude in [0, 1]"
        )
    if looks == 1 or true_coherence == 1.0:
        return 1.0
    if true_coherence == 0.0:
        return expected_estimate_at_zero(looks)
    return _integrate_mean(float(true_coherence), looks)


def _validate_look_count(looks: int, *, maximum: int | None) -> None:
    is_integer = isinstance(looks, (int, np.integer)) and not isinstance(looks, bool)
    if not is_integer or looks < 1 or (maximum is not None and looks > maximum):
        limit = "a positive integer" if maximum is None else f"an integer from 1 to {maximum}"
        raise ValueError(
            f"invalid looks {looks!r}: pass the number of independent looks as {limit}, "
            "for example 9 for a 3x3 window"
        )


def _integrate_mean(coherence: float, looks: int) -> float:
    """Integrate D p(D) over t = log(1 - D^2), where the peak has a width of about 1/sqrt(L).

    The substitution keeps 1 - g^2 D^2 = (1 - g^2) + g^2 u exact near D = 1, and the Euler
    transform 2F1(L, L; 1; z) = (1 - z)^(1 - 2L) 2F1(1 - L, 1 - L; 1; z) turns the
    hypergeometric factor into a polynomial so that the large powers can be combined in logs.
    """
    squared = coherence * coherence
    one_minus_squared = (1.0 - coherence) * (1.0 + coherence)
    log_prefactor = math.log(looks - 1) + looks * math.log(one_minus_squared)

    def integrand(t: float) -> float:
        u = math.exp(t)
        log_weight = (
            log_prefactor
            + (looks - 1) * t
            + (1 - 2 * looks) * math.log(one_minus_squared + squared * u)
        )
        polynomial = float(special.hyp2f1(1 - looks, 1 - looks, 1, squared * (1.0 - u)))
        return math.sqrt(-math.expm1(t)) * math.exp(log_weight) * polynomial

    peak = math.log(one_minus_squared)
    width = 1.0 / math.sqrt(looks)
    # The density falls at least as fast as exp(t - peak) below the peak.
    lower = peak - 60.0
    breaks = sorted({min(peak + step * width, -1e-9) for step in (-10, -5, -2, 0, 2, 5, 10)})
    value, _ = integrate.quad(
        integrand,
        lower,
        0.0,
        points=[point for point in breaks if point > lower],
        limit=500,
        epsabs=1e-12,
        epsrel=1e-11,
    )
    return float(value)


@dataclass(frozen=True)
class CoherencePair:
    """One coherence raster: its item id and the UTC acquisition times of its two images."""

    item_id: str
    first: datetime
    second: datetime

    def __post_init__(self) -> None:
        for name in ("first", "second"):
            _require_utc(getattr(self, name), f"{name} date of pair {self.item_id!r}")
        if self.second < self.first:
            raise ValueError(
                f"pair {self.item_id!r} has second date {self.second.isoformat()} before first "
                f"date {self.first.isoformat()}: pass the earlier acquisition as first"
            )

    @property
    def span(self) -> timedelta:
        """Time between the two acquisitions."""
        return self.second - self.first

    def label(self) -> str:
        """Return the pair's dates as ``YYYY-MM-DD/YYYY-MM-DD``."""
        return f"{self.first.date().isoformat()}/{self.second.date().isoformat()}"


def _require_utc(value: datetime, description: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise ValueError(
            f"invalid {description}: {value!r} is not a UTC datetime. Pass a timezone-aware "
            "value such as datetime(2018, 1, 6, tzinfo=datetime.UTC)"
        )


def choose_pair(
    pairs: Sequence[CoherencePair], reference: datetime
) -> tuple[CoherencePair | None, str]:
    """Choose the coherence pair that best describes the surface at ``reference``.

    Among pairs whose dates bracket the reference (first <= reference <= second), the shortest
    span wins. If no pair brackets it, the pair whose nearer date is closest to the reference
    wins. Ties go to the shorter span, then the earlier first date, then the smaller item id.
    Returns the pair and one line that states the rule applied, or None and the reason when
    ``pairs`` is empty.

    Raises:
        ValueError: ``reference`` is not a UTC datetime.
    """
    _require_utc(reference, "reference time")
    if not pairs:
        return None, "no coherence pair to choose from"

    bracketing = [pair for pair in pairs if pair.first <= reference <= pair.second]
    if bracketing:
        chosen = min(bracketing, key=lambda pair: (pair.span, pair.first, pair.item_id))
        rule = f"bracketing pair {chosen.label()}, shortest of {len(bracketing)} bracketing"
        logger.debug("coherence pair %s for %s: %s", chosen.item_id, reference.isoformat(), rule)
        return chosen, rule

    def distance(pair: CoherencePair) -> timedelta:
        return min(abs(reference - pair.first), abs(reference - pair.second))

    chosen = min(pairs, key=lambda pair: (distance(pair), pair.span, pair.first, pair.item_id))
    days = round(distance(chosen).total_seconds() / 86400.0, 2)
    rule = (
        f"nearest pair {chosen.label()}: {days:g} days from reference "
        f"{reference.date().isoformat()}, no pair of {len(pairs)} brackets it"
    )
    logger.debug("coherence pair %s for %s: %s", chosen.item_id, reference.isoformat(), rule)
    return chosen, rule


def pair_dates_from_tags(tags: Mapping[str, str]) -> tuple[datetime, datetime]:
    """Read the two acquisition times of a coherence raster from GAMMA/PyRate tags.

    FIRST_DATE and SECOND_DATE are ISO dates (``2018-01-06``). FIRST_TIME and SECOND_TIME
    (``00:40:21``) are optional and default to midnight. Times are UTC unless they carry an
    offset, which is then converted to UTC.

    Raises:
        ValueError: a date tag is missing, or a date or time tag cannot be parsed.
    """
    return _tag_datetime(tags, "FIRST"), _tag_datetime(tags, "SECOND")


def _tag_datetime(tags: Mapping[str, str], prefix: str) -> datetime:
    date_tag, time_tag = f"{prefix}_DATE", f"{prefix}_TIME"
    if date_tag not in tags:
        raise ValueError(
            f"missing tag {date_tag}: coherence tags {sorted(tags)} need FIRST_DATE and "
            "SECOND_DATE as YYYY-MM-DD"
        )
    try:
        day = date.fromisoformat(str(tags[date_tag]).strip())
    except ValueError as error:
        raise ValueError(
            f"invalid tag {date_tag}={tags[date_tag]!r}: expected an ISO date YYYY-MM-DD"
        ) from error

    clock = time(0, 0)
    if tags.get(time_tag) not in (None, ""):
        try:
            clock = time.fromisoformat(str(tags[time_tag]).strip())
        except ValueError as error:
            raise ValueError(
                f"invalid tag {time_tag}={tags[time_tag]!r}: expected a time HH:MM:SS"
            ) from error
    moment = datetime.combine(day, clock)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
