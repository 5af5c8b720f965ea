"""Metrics of pipeline.metrics on hand-made arrays, against values worked out by hand.

Where scikit-image or NumPy computes the same quantity (SSIM, PSNR, Pearson correlation), the
test compares with it as well.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.metrics import (
    BandScore,
    ChipContext,
    CorrelationSums,
    EnlSums,
    ErrorSums,
    Kind,
    Score,
    WeightedMean,
    enl_sums,
    error_sums,
    masked_ssim,
    psnr_db,
    score_chip,
    spectral_angle_deg,
    summarize,
    to_db,
)


def textured(seed: int, shape: tuple[int, ...] = (32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.05, 0.4, shape)


def optical_context(bands: int, ndvi_bands: tuple[int, int] | None = None) -> ChipContext:
    labels = [f"B{index}" for index in range(bands)]
    return ChipContext(Kind.OPTICAL, labels, [1.0] * bands, ndvi_bands)


# Spectral angle


def test_spectral_angle_identical_is_zero() -> None:
    spectra = textured(0, (5, 4, 4))
    assert np.all(spectral_angle_deg(spectra, spectra) == 0.0)


def test_spectral_angle_orthogonal_is_ninety() -> None:
    truth = np.zeros((3, 2, 2))
    truth[0] = 0.2
    prediction = np.zeros((3, 2, 2))
    prediction[2] = 0.7
    np.testing.assert_allclose(spectral_angle_deg(truth, prediction), 90.0, atol=1e-12)


def test_spectral_angle_hand_values() -> None:
    # (1, 0) against (1, 1) is 45 degrees; a spectrum against twice itself is 0 degrees.
    truth = np.array([[[1.0, 0.3]], [[0.0, 0.1]]])
    prediction = np.array([[[1.0, 0.6]], [[1.0, 0.2]]])
    angles = spectral_angle_deg(truth, prediction)
    assert angles[0, 0] == pytest.approx(45.0, abs=1e-12)
    assert angles[0, 1] == pytest.approx(0.0, abs=1e-6)


def test_spectral_angle_skips_invalid_spectra() -> None:
    truth = np.ones((2, 1, 3))
    truth[1, 0, 0] = np.nan
    truth[:, 0, 1] = 0.0
    angles = spectral_angle_deg(truth, np.ones((2, 1, 3)))
    assert np.isnan(angles[0, 0])
    assert np.isnan(angles[0, 1])
    assert angles[0, 2] == 0.0


# SSIM, RMSE and PSNR


def test_identical_images_ssim_one_rmse_zero() -> None:
    image = textured(1, (2, 32, 32))
    summary = summarize(score_chip(image, image.copy(), optical_context(2)), psnr_data_range=1.0)
    for band in ("B0", "B1"):
        assert summary["bands"][band]["ssim"] == pytest.approx(1.0, abs=1e-12)
        assert summary["bands"][band]["rmse"] == 0.0
        assert summary["bands"][band]["psnr_db"] == math.inf
    assert summary["sam_deg"] == 0.0


def test_masked_ssim_equals_skimage_without_mask() -> None:
    truth, prediction = textured(2), textured(3)
    valid = np.ones(truth.shape, dtype=bool)
    expected = structural_similarity(truth, prediction, data_range=0.35)
    ssim = masked_ssim(truth, prediction, valid, data_range=0.35)
    assert ssim.value == pytest.approx(expected, abs=1e-12)
    assert ssim.weight == 26 * 26  # 7 x 7 windows leave out 3 px at every edge


def test_masked_ssim_skips_invalid_windows() -> None:
    truth, prediction = textured(4), textured(5)
    valid = np.ones(truth.shape, dtype=bool)
    valid[15, 15] = False
    before = masked_ssim(truth, prediction, valid, data_range=0.35)
    assert before.weight == 26 * 26 - 7 * 7

    # Any value at the invalid pixel gives the same score.
    changed = prediction.copy()
    changed[15, 15] = 1000.0
    truth_changed = truth.copy()
    truth_changed[15, 15] = np.nan
    after = masked_ssim(truth_changed, changed, valid, data_range=0.35)
    assert after == before


def test_psnr_matches_skimage_on_valid_pixels() -> None:
    truth, prediction = textured(6), textured(7)
    truth[:4] = np.nan
    valid = np.isfinite(truth)
    errors = error_sums(truth, prediction)
    expected = peak_signal_noise_ratio(truth[valid], prediction[valid], data_range=1.0)
    assert psnr_db(errors.mse, 1.0) == pytest.approx(expected, rel=1e-12)
    assert psnr_db(0.0, 1.0) == math.inf
    assert math.isnan(psnr_db(math.nan, 1.0))


# SAR in dB


def test_sar_one_db_offset() -> None:
    truth = np.random.default_rng(8).exponential(0.05, (2, 32, 32))
    prediction = truth * 10.0**0.1  # +1 dB
    context = ChipContext(Kind.SAR, ["VV", "VH"], [30.0, 30.0])
    summary = summarize(score_chip(truth, prediction, context))
    for band in ("VV", "VH"):
        assert summary["bands"][band]["bias"] == pytest.approx(1.0, abs=1e-9)
        assert summary["bands"][band]["rmse"] == pytest.approx(1.0, abs=1e-9)
        assert summary["bands"][band]["mae"] == pytest.approx(1.0, abs=1e-9)
    assert summary["all_bands"]["rmse"] == pytest.approx(1.0, abs=1e-9)


def test_to_db_masks_non_positive_power() -> None:
    db = to_db(np.array([100.0, 0.01, 0.0, -1.0, np.nan]))
    np.testing.assert_allclose(db[:2], [20.0, -20.0])
    assert np.isnan(db[2:]).all()


def test_enl_ratio_hand_values() -> None:
    # Four 8 x 8 windows alternating two values a, b: mean (a+b)/2, variance ((a-b)/2)^2.
    pairs = [(1.0, 3.0), (1.0, 2.0), (1.0, 5.0), (1.0, 9.0)]  # CV^2: 1/4, 1/9, 4/9, 16/25
    truth = np.zeros((16, 16))
    checker = (np.indices((8, 8)).sum(axis=0) % 2).astype(bool)
    for (a, b), (row, col) in zip(pairs, [(0, 0), (0, 8), (8, 0), (8, 8)], strict=True):
        truth[row : row + 8, col : col + 8] = np.where(checker, b, a)

    # A quarter of 4 windows is 1: the window (1, 2), whose ENL is 9.
    same = enl_sums(truth, truth.copy())
    assert same.windows == 1
    assert same.truth_enl == pytest.approx(9.0)
    assert same.ratio == pytest.approx(1.0)

    # Values 1.25 and 1.75 in that window: variance 1/16, mean 1.5, ENL 36, ratio 4.
    smoother = truth.copy()
    smoother[0:8, 8:16] = np.where(checker, 1.75, 1.25)
    assert enl_sums(truth, smoother).ratio == pytest.approx(4.0)

    # A constant prediction has no speckle left: the ratio is infinite.
    assert enl_sums(truth, np.full_like(truth, 1.5)).ratio == math.inf


def test_enl_sums_pool_by_window() -> None:
    pooled = EnlSums(1, 0.25, 0.5) + EnlSums(3, 0.75, 0.25)
    assert pooled.windows == 4
    assert pooled.truth_enl == pytest.approx(4.0)  # 4 windows / sum of CV^2 1.0
    assert pooled.ratio == pytest.approx(4 / 3)


# Masks and aggregation


def test_masks_leave_out_invalid_pixels() -> None:
    truth = np.full((1, 4, 4), 0.2)
    prediction = np.full((1, 4, 4), 0.3)
    truth[0, 0, :] = np.nan  # 4 invalid truth pixels with a large prediction error
    prediction[0, 0, :] = 5.0
    prediction[0, 1, 0] = np.nan  # 1 pixel without a prediction
    summary = summarize(score_chip(truth, prediction, optical_context(1)))["bands"]["B0"]
    assert summary["valid_pixels"] == 11
    assert summary["rmse"] == pytest.approx(0.1)
    assert summary["coverage"] == pytest.approx(11 / 12)


def test_two_chips_weigh_by_valid_pixels() -> None:
    # Chip A: 4 valid pixels with error 1. Chip B: 12 valid pixels with error -3.
    truth_a = np.full((1, 4, 4), np.nan)
    truth_a[0, 0, :] = 0.0
    truth_b = np.zeros((1, 4, 4))
    truth_b[0, 3, :] = np.nan
    context = ChipContext(Kind.OTHER, ["x"])
    chip_a = score_chip(truth_a, np.full((1, 4, 4), 1.0), context)
    chip_b = score_chip(truth_b, np.full((1, 4, 4), -3.0), context)
    split = summarize(chip_a + chip_b)["bands"]["x"]
    assert split["valid_pixels"] == 16
    assert split["rmse"] == pytest.approx(math.sqrt((4 * 1 + 12 * 9) / 16))  # sqrt 7, not 2
    assert split["mae"] == pytest.approx((4 * 1 + 12 * 3) / 16)
    assert split["bias"] == pytest.approx((4 * 1 - 12 * 3) / 16)


def test_two_chips_pool_spectral_angle_and_ssim() -> None:
    # Chip A: 2 pixels of SSIM 0.5 and angle 10. Chip B: 6 pixels of SSIM 0.9 and angle 30.
    first = Score({"b": BandScore(ErrorSums(), WeightedMean(2 * 0.5, 2))}, WeightedMean(20.0, 2))
    second = Score({"b": BandScore(ErrorSums(), WeightedMean(6 * 0.9, 6))}, WeightedMean(180.0, 6))
    split = summarize(first + second)
    assert split["sam_deg"] == pytest.approx(25.0)  # not the mean of chip means, 20
    assert split["bands"]["b"]["ssim"] == pytest.approx((2 * 0.5 + 6 * 0.9) / 8)


def test_correlation_pools_like_concatenation() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=300)
    y = 0.5 * x + rng.normal(size=300)
    pooled = CorrelationSums.of(x[:50], y[:50]) + CorrelationSums.of(x[50:], y[50:])
    assert pooled.correlation == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)


def test_correlation_of_constant_is_nan() -> None:
    sums = CorrelationSums.of(np.array([0.1, 0.2, 0.3]), np.full(3, 0.3))
    assert math.isnan(sums.correlation)


# NDVI, elevation and azimuth


def test_ndvi_consistency_hand_values() -> None:
    truth = np.stack([np.full((4, 4), 0.1), np.full((4, 4), 0.3)])  # NDVI 0.5
    prediction = np.stack([np.full((4, 4), 0.1), np.full((4, 4), 0.5)])  # NDVI 2/3
    truth[1, 0, 0] = 0.9  # one pixel of NDVI 0.8, so the truth is not constant
    summary = summarize(score_chip(truth, prediction, optical_context(2, ndvi_bands=(0, 1))))
    errors = np.full(16, 2 / 3 - 0.5)
    errors[0] = 2 / 3 - 0.8
    assert summary["ndvi"]["rmse"] == pytest.approx(math.sqrt(np.mean(errors**2)))
    assert summary["ndvi"]["bias"] == pytest.approx(np.mean(errors))
    assert math.isnan(summary["ndvi"]["correlation"])  # the prediction's NDVI is constant


def test_slope_error_uses_pixel_spacing() -> None:
    # Heights rise 10 m per pixel towards the east: 45 degrees at 10 m, atan(0.5) at 20 m.
    ramp = np.tile(np.arange(8, dtype=np.float64) * 10.0, (8, 1))[np.newaxis]
    flat = np.zeros_like(ramp)
    for spacing, slope in ((10.0, 45.0), (20.0, math.degrees(math.atan(0.5)))):
        context = ChipContext(Kind.ELEVATION, ["dem"], spacing_m=(spacing, spacing))
        summary = summarize(score_chip(ramp, flat, context))
        assert summary["slope"]["rmse_deg"] == pytest.approx(slope, abs=1e-4)
        assert summary["slope"]["valid_pixels"] == 36  # 1 px edge left out
        assert summary["bands"]["dem"]["rmse"] == pytest.approx(math.sqrt(np.mean(ramp**2)))


def test_azimuth_errors_wrap() -> None:
    truth = np.array([[[350.0, 10.0, 90.0]]])
    prediction = np.array([[[10.0, 350.0, 270.0]]])
    summary = summarize(score_chip(truth, prediction, ChipContext(Kind.AZIMUTH, ["aspect"])))
    band = summary["bands"]["aspect"]
    assert band["bias"] == pytest.approx((20 - 20 - 180) / 3)
    assert band["mae"] == pytest.approx((20 + 20 + 180) / 3)


def test_coherence_rmse_and_bias() -> None:
    truth = np.array([[[0.2, 0.4], [0.6, 0.8]]])
    prediction = truth + np.array([[[0.1, -0.1], [0.3, 0.1]]])
    summary = summarize(score_chip(truth, prediction, ChipContext(Kind.COHERENCE, ["coherence"])))
    band = summary["bands"]["coherence"]
    assert band["bias"] == pytest.approx(0.1)
    assert band["rmse"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0.09 + 0.01) / 4))
    assert "ssim" not in band
