"""Coherence estimation, its expected bias and the choice of a coherence pair, from pipeline.coherence."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage, special

from pipeline.coherence import (
    MAX_EXPECTATION_LOOKS,
    CoherencePair,
    choose_pair,
    estimate_coherence,
    estimate_coherence_dask,
    expected_estimate,
    expected_estimate_at_zero,
    pair_dates_from_tags,
)

SLC_DATASET = "science/LSAR/SLC/swaths/frequencyA/HH"


def circular_gaussian(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Circular complex Gaussian samples with unit mean power."""
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / math.sqrt(2.0)


def simulated_pair(
    rng: np.random.Generator, true_coherence: float, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Two jointly Gaussian images whose complex correlation is ``true_coherence``."""
    reference = circular_gaussian(rng, shape)
    noise = circular_gaussian(rng, shape)
    secondary = true_coherence * reference + math.sqrt(1.0 - true_coherence**2) * noise
    return reference, secondary


def standard_error(coherence: np.ndarray, looks: tuple[int, int]) -> float:
    """Standard error of the mean estimate, from non-overlapping windows only.

    Overlapping windows share pixels, so this count of independent windows gives an upper bound.
    """
    rows, cols = looks
    independent = coherence[rows // 2 :: rows, cols // 2 :: cols]
    independent = independent[np.isfinite(independent)]
    return float(independent.std() / math.sqrt(independent.size))


def series_mean(true_coherence: float, looks: int) -> float:
    """Mean estimate from its 3F2 series (Touzi et al. 1999), summed in logs with enough terms.

    E = Gamma(L) Gamma(3/2) / Gamma(L + 1/2) * (1 - g^2)^L * 3F2(3/2, L, L; L + 1/2, 1; g^2).
    """
    squared = true_coherence**2
    terms = int(20 * (looks + 10) / (1.0 - squared)) + 1000
    k = np.arange(terms, dtype=np.float64)
    log_terms = (
        special.gammaln(1.5 + k)
        - special.gammaln(1.5)
        + 2.0 * (special.gammaln(looks + k) - special.gammaln(looks))
        - (special.gammaln(looks + 0.5 + k) - special.gammaln(looks + 0.5))
        - 2.0 * special.gammaln(k + 1.0)
        + k * math.log(squared)
    )
    log_prefactor = (
        special.gammaln(looks)
        + special.gammaln(1.5)
        - special.gammaln(looks + 0.5)
        + looks * math.log1p(-squared)
    )
    return float(np.exp(log_terms + log_prefactor).sum())


# Estimator on simulated Gaussian speckle.


@pytest.mark.parametrize(("looks", "expected"), [((1, 1), 1.0), ((3, 3), 0.2995), ((7, 7), 0.1269)])
def test_zero_coherence_bias(looks: tuple[int, int], expected: float) -> None:
    rng = np.random.default_rng(20180106)
    reference, secondary = simulated_pair(rng, 0.0, (1024, 1024))

    coherence = estimate_coherence(reference, secondary, looks=looks)
    mean = float(np.nanmean(coherence))

    assert expected_estimate_at_zero(looks[0] * looks[1]) == pytest.approx(expected, abs=5e-5)
    # 1% is at least 2.8 standard errors (0.35% for 7x7 on 1024 x 1024 pixels).
    assert mean == pytest.approx(expected, rel=0.01)
    assert mean == pytest.approx(expected_estimate_at_zero(looks[0] * looks[1]), rel=0.01)


@pytest.mark.parametrize("true_coherence", [0.5, 0.8])
@pytest.mark.parametrize("looks", [(3, 3), (7, 7)])
def test_mean_matches_expected_estimate(true_coherence: float, looks: tuple[int, int]) -> None:
    rng = np.random.default_rng(20180130)
    reference, secondary = simulated_pair(rng, true_coherence, (1024, 1024))

    coherence = estimate_coherence(reference, secondary, looks=looks)
    mean = float(np.nanmean(coherence))
    expected = expected_estimate(true_coherence, looks[0] * looks[1])

    # Four standard errors: about 0.002 at 0.5 and 0.001 at 0.8, well below the 3x3 bias.
    assert mean == pytest.approx(expected, abs=4.0 * standard_error(coherence, looks))
    assert expected > true_coherence


def test_values_within_unit_interval() -> None:
    rng = np.random.default_rng(5)
    reference, secondary = simulated_pair(rng, 0.9, (64, 64))
    rotated = reference * np.exp(1j * 0.7) * 3.0

    for other in (secondary, rotated, reference):
        coherence = estimate_coherence(reference, other, looks=(3, 5))
        finite = coherence[np.isfinite(coherence)]
        assert coherence.dtype == np.float32
        assert finite.size == 62 * 60
        assert finite.min() >= 0.0
        assert finite.max() <= 1.0

    fully_coherent = estimate_coherence(reference, rotated, looks=(3, 5))
    np.testing.assert_allclose(fully_coherent[1:-1, 2:-2], 1.0, rtol=1e-6)


def test_edges_and_nan_windows_are_nan() -> None:
    rng = np.random.default_rng(6)
    reference, secondary = simulated_pair(rng, 0.6, (20, 30))
    reference[10, 12] = complex(np.nan, 0.0)
    secondary[3, 25] = complex(0.0, np.nan)

    coherence = estimate_coherence(reference, secondary, looks=(3, 5))

    expected_nan = np.ones((20, 30), dtype=bool)
    expected_nan[1:-1, 2:-2] = False
    expected_nan[9:12, 10:15] = True
    expected_nan[2:5, 23:28] = True
    np.testing.assert_array_equal(np.isnan(coherence), expected_nan)


def test_zero_power_window_is_nan() -> None:
    reference = np.zeros((9, 9), dtype=np.complex64)
    secondary = np.ones((9, 9), dtype=np.complex64)

    coherence = estimate_coherence(reference, secondary, looks=(3, 3))

    assert np.all(np.isnan(coherence))


def test_window_larger_than_array_is_nan() -> None:
    reference = np.ones((4, 9), dtype=np.complex64)

    coherence = estimate_coherence(reference, reference, looks=(5, 3))

    assert coherence.shape == (4, 9)
    assert np.all(np.isnan(coherence))


@pytest.mark.parametrize("looks", [(2, 3), (3, 4), (0, 1), (-3, 3), (3,), (3, 3, 3), (3.0, 3), 9])
def test_even_or_invalid_looks_raise(looks: object) -> None:
    data = np.ones((8, 8), dtype=np.complex64)

    with pytest.raises(ValueError, match=r"invalid looks .*odd.*\(3, 3\) for 9 looks"):
        estimate_coherence(data, data, looks=looks)  # type: ignore[arg-type]


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"reference shape \(8, 8\) and secondary shape \(8, 9\)"):
        estimate_coherence(np.ones((8, 8)), np.ones((8, 9)), looks=(3, 3))
    with pytest.raises(ValueError, match=r"reference shape \(2, 8, 8\)"):
        estimate_coherence(np.ones((2, 8, 8)), np.ones((2, 8, 8)), looks=(3, 3))


# Dask blocks against the whole array.


def dask_matches_numpy(
    shape: tuple[int, int],
    chunks: tuple[int, int] | tuple[tuple[int, ...], tuple[int, ...]],
    looks: tuple[int, int],
) -> None:
    rng = np.random.default_rng(7)
    reference, secondary = simulated_pair(rng, 0.7, shape)
    reference = reference.astype(np.complex64)
    secondary = secondary.astype(np.complex64)
    reference[shape[0] // 3, shape[1] // 2] = complex(np.nan, np.nan)

    expected = estimate_coherence(reference, secondary, looks=looks)
    lazy = estimate_coherence_dask(
        da.from_array(reference, chunks=chunks),
        da.from_array(secondary, chunks=(16, 16)),
        looks=looks,
    )
    result = lazy.compute()

    assert lazy.dtype == np.float32
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize(
    "chunks",
    [(40, 50), (9, 11), ((50, 3, 44), (1, 40, 42)), (97, 83)],
)
@pytest.mark.parametrize("looks", [(3, 3), (5, 7), (1, 5)])
def test_dask_equals_numpy_bit_for_bit(
    chunks: tuple[int, int] | tuple[tuple[int, ...], tuple[int, ...]], looks: tuple[int, int]
) -> None:
    dask_matches_numpy((97, 83), chunks, looks)


@pytest.mark.parametrize("looks", [(3, 3), (5, 7)])
def test_dask_chunks_smaller_than_window(looks: tuple[int, int]) -> None:
    dask_matches_numpy((23, 19), (2, 3), looks)


def test_dask_rejects_even_looks() -> None:
    data = da.ones((8, 8), dtype=np.complex64, chunks=4)

    with pytest.raises(ValueError, match=r"invalid looks \(4, 3\)"):
        estimate_coherence_dask(data, data, looks=(4, 3))


# Expected value of the estimate.


def test_expected_estimate_at_zero_values() -> None:
    assert expected_estimate_at_zero(1) == 1.0
    assert expected_estimate_at_zero(9) == pytest.approx(0.29954, abs=1e-5)
    assert expected_estimate_at_zero(49) == pytest.approx(0.12693, abs=1e-5)
    # Large looks: the bias falls as sqrt(pi / (4 L)).
    assert expected_estimate_at_zero(10_000) == pytest.approx(math.sqrt(math.pi / 40_000), rel=1e-3)


@pytest.mark.parametrize("looks", [2, 9, 49, 225, MAX_EXPECTATION_LOOKS])
@pytest.mark.parametrize("true_coherence", [0.01, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_expected_estimate_matches_series(true_coherence: float, looks: int) -> None:
    assert expected_estimate(true_coherence, looks) == pytest.approx(
        series_mean(true_coherence, looks), abs=1e-8
    )


def test_expected_estimate_limits() -> None:
    assert expected_estimate(0.0, 9) == expected_estimate_at_zero(9)
    assert expected_estimate(1e-6, 9) == pytest.approx(expected_estimate_at_zero(9), abs=1e-9)
    assert expected_estimate(1.0, 9) == 1.0
    assert expected_estimate(0.5, 1) == 1.0
    assert expected_estimate(0.999999, 49) == pytest.approx(0.999999, abs=1e-8)


def test_expected_estimate_falls_with_looks() -> None:
    values = [expected_estimate(0.5, looks) for looks in (2, 9, 25, 49, 121, 441)]

    assert values == sorted(values, reverse=True)
    assert values[-1] > 0.5


@pytest.mark.parametrize(
    ("true_coherence", "looks", "match"),
    [
        (-0.1, 9, r"invalid true_coherence -0\.1"),
        (1.5, 9, r"invalid true_coherence 1\.5"),
        (math.nan, 9, r"invalid true_coherence nan"),
        (0.5, 0, r"invalid looks 0.*from 1 to 500"),
        (0.5, MAX_EXPECTATION_LOOKS + 1, r"invalid looks 501"),
        (0.5, 2.5, r"invalid looks 2\.5"),
    ],
)
def test_expected_estimate_rejects_invalid(true_coherence: float, looks: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        expected_estimate(true_coherence, looks)


def test_expected_estimate_at_zero_rejects_zero_looks() -> None:
    with pytest.raises(ValueError, match=r"invalid looks 0.*positive integer"):
        expected_estimate_at_zero(0)


# Real SLC with a controlled decorrelation.


def load_slc(shared_data: Path) -> np.ndarray:
    import h5py

    with h5py.File(shared_data / "uavsar-slc" / "winnipeg.h5", "r") as slc_file:
        slc = slc_file[SLC_DATASET][()]
    assert slc.dtype == np.complex64
    assert slc.shape == (250, 250)
    return np.asarray(slc)


def lag_correlation(image: np.ndarray, row_lag: int, col_lag: int) -> float:
    """Magnitude of the normalised complex correlation between the image and its shifted copy."""
    height, width = image.shape
    first = image[
        max(0, -row_lag) : height - max(0, row_lag), max(0, -col_lag) : width - max(0, col_lag)
    ]
    second = image[
        max(0, row_lag) : height - max(0, -row_lag), max(0, col_lag) : width - max(0, -col_lag)
    ]
    cross = abs(np.vdot(first, second))
    return float(cross / math.sqrt(np.vdot(first, first).real * np.vdot(second, second).real))


def equivalent_looks(image: np.ndarray, looks: tuple[int, int]) -> float:
    """Equivalent number of looks of a boxcar window over correlated speckle.

    ENL = N^2 / sum over all pixel pairs of the window of |rho(lag)|^2, where N is the number
    of pixels and rho the complex autocorrelation of the image at the pair's lag.
    """
    rows, cols = looks
    total = 0.0
    for row_lag in range(-(rows - 1), rows):
        for col_lag in range(-(cols - 1), cols):
            pairs = (rows - abs(row_lag)) * (cols - abs(col_lag))
            total += pairs * lag_correlation(image, row_lag, col_lag) ** 2
    return (rows * cols) ** 2 / total


@pytest.mark.shared_data
@pytest.mark.parametrize("true_coherence", [0.3, 0.5, 0.8])
def test_real_slc_controlled_coherence(shared_data: Path, true_coherence: float) -> None:
    slc = load_slc(shared_data)
    looks = (5, 5)
    rng = np.random.default_rng(20120717)

    # The noise power of each pixel is the SLC's mean power over the estimator's window. So every
    # window keeps about the same signal-to-noise ratio and its true coherence is true_coherence,
    # while the speckle and texture of the scene stay in both images.
    local_power = ndimage.uniform_filter(
        np.abs(slc.astype(np.complex128)) ** 2, looks, mode="nearest"
    )
    noise = circular_gaussian(rng, slc.shape) * np.sqrt(local_power)
    secondary = (true_coherence * slc + math.sqrt(1.0 - true_coherence**2) * noise).astype(
        np.complex64
    )

    coherence = estimate_coherence(slc, secondary, looks=looks)
    mean = float(np.nanmean(coherence))
    margin = 3.0 * standard_error(coherence, looks)

    # Neighbouring SLC pixels are correlated (lag-1 correlation about 0.3), so a 5x5 window has
    # about 18 equivalent looks, not 25. The mean then lies between the expected estimates for
    # 25 and for 18 independent looks, widened by the sampling margin.
    enl = equivalent_looks(slc.astype(np.complex128), looks)
    assert 10.0 < enl < 25.0
    lower = expected_estimate(true_coherence, looks[0] * looks[1])
    upper = expected_estimate(true_coherence, math.floor(enl))
    assert lower - margin <= mean <= upper + margin
    finite = coherence[np.isfinite(coherence)]
    assert finite.size == 246 * 246
    assert 0.0 <= finite.min()
    assert finite.max() <= 1.0


# Pair dates and the choice of a pair.


@pytest.mark.shared_data
def test_real_tags_parse(shared_data: Path) -> None:
    import rasterio

    path = shared_data / "pyrate-cropA" / "cropA_20180106-20180319_VV_8rlks_flat_eqa_cc.tif"
    with rasterio.open(path) as dataset:
        first, second = pair_dates_from_tags(dataset.tags())

    assert first == datetime(2018, 1, 6, 0, 40, 21, tzinfo=UTC)
    assert second == datetime(2018, 3, 19, 0, 40, 20, tzinfo=UTC)


def load_real_pairs(shared_data: Path) -> list[CoherencePair]:
    import rasterio

    pairs = []
    for path in sorted((shared_data / "pyrate-cropA").glob("cropA_*_cc.tif")):
        with rasterio.open(path) as dataset:
            first, second = pair_dates_from_tags(dataset.tags())
        pairs.append(CoherencePair(path.stem, first, second))
    return pairs


@pytest.mark.shared_data
def test_real_pair_dates_match_names(shared_data: Path) -> None:
    pairs = load_real_pairs(shared_data)

    assert len(pairs) == 30
    for pair in pairs:
        first_name, second_name = pair.item_id.split("_")[1].split("-")
        assert pair.first.strftime("%Y%m%d") == first_name
        assert pair.second.strftime("%Y%m%d") == second_name
        assert pair.first.hour == 0
        assert pair.first.minute == 40


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("reference", "expected_dates", "rule_text"),
    [
        (datetime(2018, 3, 25, tzinfo=UTC), "20180319-20180331", "shortest of 12 bracketing"),
        (datetime(2018, 5, 10, 12, tzinfo=UTC), "20180506-20180518", "bracketing pair"),
        # Both pairs that end on 2018-07-17 are 14.97 days away, and the shorter span wins.
        (datetime(2018, 8, 1, tzinfo=UTC), "20180506-20180717", "14.97 days from reference"),
        # All four pairs that start on 2018-01-06 are equally near, and the shortest wins.
        (datetime(2017, 12, 20, tzinfo=UTC), "20180106-20180130", "no pair of 30 brackets it"),
    ],
)
def test_real_pairs_choice(
    shared_data: Path, reference: datetime, expected_dates: str, rule_text: str
) -> None:
    chosen, rule = choose_pair(load_real_pairs(shared_data), reference)

    assert chosen is not None
    assert chosen.item_id == f"cropA_{expected_dates}_VV_8rlks_flat_eqa_cc"
    assert rule_text in rule


def utc(day: int, hour: int = 0) -> datetime:
    return datetime(2018, 1, day, hour, tzinfo=UTC)


def test_choose_pair_shortest_bracketing() -> None:
    pairs = [
        CoherencePair("long", utc(1), utc(25)),
        CoherencePair("short", utc(8), utc(14)),
        CoherencePair("outside", utc(15), utc(16)),
    ]

    chosen, rule = choose_pair(pairs, utc(10))

    assert chosen is pairs[1]
    assert rule == "bracketing pair 2018-01-08/2018-01-14, shortest of 2 bracketing"


def test_choose_pair_bracketing_includes_dates() -> None:
    pairs = [CoherencePair("a", utc(8), utc(14)), CoherencePair("b", utc(14), utc(30))]

    assert choose_pair(pairs, utc(14))[0] is pairs[0]
    assert choose_pair(pairs, utc(8))[0] is pairs[0]


def test_choose_pair_bracketing_ties() -> None:
    pairs = [
        CoherencePair("z-later", utc(9), utc(15)),
        CoherencePair("z-earlier", utc(8), utc(14)),
        CoherencePair("a-earlier", utc(8), utc(14)),
    ]

    chosen, _ = choose_pair(pairs, utc(10))

    assert chosen is pairs[2]


def test_choose_pair_nearest_when_none_brackets() -> None:
    pairs = [
        CoherencePair("far", utc(1), utc(3)),
        CoherencePair("near-long", utc(12), utc(30)),
        CoherencePair("near-short", utc(12), utc(18)),
    ]

    chosen, rule = choose_pair(pairs, utc(10))

    assert chosen is pairs[2]
    assert rule == (
        "nearest pair 2018-01-12/2018-01-18: 2 days from reference 2018-01-10, "
        "no pair of 3 brackets it"
    )


def test_choose_pair_nearest_ties() -> None:
    pairs = [
        CoherencePair("after", utc(12), utc(18)),
        CoherencePair("before", utc(4), utc(8)),
        CoherencePair("before-b", utc(2), utc(8)),
        CoherencePair("before-a", utc(2), utc(8)),
    ]

    # "after" and "before" are both 2 days away, and "before" has the shorter span.
    assert choose_pair(pairs, utc(10))[0] is pairs[1]
    # Without "before", the equal spans of the "before-*" pairs leave the item id.
    assert choose_pair(pairs[2:], utc(10))[0] is pairs[3]


def test_choose_pair_nearest_fractional_days() -> None:
    pairs = [CoherencePair("a", utc(12, 12), utc(20))]

    _, rule = choose_pair(pairs, utc(10))

    assert "2.5 days from reference" in rule


def test_choose_pair_empty() -> None:
    chosen, rule = choose_pair([], utc(10))

    assert chosen is None
    assert rule == "no coherence pair to choose from"


def test_choose_pair_rejects_naive_reference() -> None:
    with pytest.raises(ValueError, match=r"invalid reference time.*not a UTC datetime"):
        choose_pair([CoherencePair("a", utc(1), utc(2))], datetime(2018, 1, 1))


def test_pair_rejects_non_utc_dates() -> None:
    with pytest.raises(ValueError, match=r"invalid first date of pair 'a'"):
        CoherencePair("a", datetime(2018, 1, 1), utc(2))
    plus_two = timezone(timedelta(hours=2))
    with pytest.raises(ValueError, match=r"invalid second date of pair 'a'"):
        CoherencePair("a", utc(1), datetime(2018, 1, 2, tzinfo=plus_two))


def test_pair_rejects_reversed_dates() -> None:
    with pytest.raises(ValueError, match=r"second date 2018-01-01T00:00:00\+00:00 before first"):
        CoherencePair("a", utc(2), utc(1))


def test_pair_is_frozen() -> None:
    pair = CoherencePair("a", utc(1), utc(2))

    with pytest.raises(AttributeError):
        pair.item_id = "b"  # type: ignore[misc]
    assert pair.span == timedelta(days=1)


def test_tags_without_times_are_midnight() -> None:
    first, second = pair_dates_from_tags({"FIRST_DATE": "2018-01-06", "SECOND_DATE": "2018-01-30"})

    assert first == datetime(2018, 1, 6, tzinfo=UTC)
    assert second == datetime(2018, 1, 30, tzinfo=UTC)


def test_tags_with_offset_convert_to_utc() -> None:
    tags = {
        "FIRST_DATE": "2018-01-06",
        "FIRST_TIME": "02:40:21+02:00",
        "SECOND_DATE": "2018-01-30",
        "SECOND_TIME": "",
    }

    first, second = pair_dates_from_tags(tags)

    assert first == datetime(2018, 1, 6, 0, 40, 21, tzinfo=UTC)
    assert first.tzinfo is UTC
    assert second == datetime(2018, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tags", "match"),
    [
        ({"SECOND_DATE": "2018-01-30"}, r"missing tag FIRST_DATE"),
        ({"FIRST_DATE": "2018-01-06"}, r"missing tag SECOND_DATE"),
        (
            {"FIRST_DATE": "06/01/2018", "SECOND_DATE": "2018-01-30"},
            r"invalid tag FIRST_DATE='06/01/2018'",
        ),
        (
            {"FIRST_DATE": "2018-01-06", "SECOND_DATE": "2018-01-30", "SECOND_TIME": "25:00"},
            r"invalid tag SECOND_TIME='25:00'",
        ),
    ],
)
def test_tags_invalid_raise(tags: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pair_dates_from_tags(tags)
