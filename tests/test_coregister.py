"""Sub-pixel offsets, confidence, image shifts and the coregistration policy of pipeline.coregister.

Known shifts are made with a Fourier shift (scipy.ndimage.fourier_shift), never with
shift_image, and a margin is cropped from both images so that the wrap-around of the Fourier
shift stays outside the compared area.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from pipeline.coregister import (
    CoregPolicy,
    Offset,
    decide,
    measure_offset,
    shift_image,
)
from pipeline.errors import ConfigError, CoregistrationError

MARGIN_PX = 8
# Over about 260 unrelated pairs (EnMAP tiles, Sentinel-1 and Sentinel-2 chips from different
# places, random textures; 32 to 128 px) the highest confidence was 0.35.
UNRELATED_MAX_CONFIDENCE = 0.4
# Suggested CoregPolicy.min_confidence. It is above every unrelated pair and above all offsets
# more than 1 px wrong but one (0.52, SWIR against NIR on a 52 px EnMAP crop, edges=False).
MIN_CONFIDENCE = 0.5
KNOWN_SHIFTS_PX = [(0.3, -0.7), (-1.25, 0.45), (2.6, -0.15), (-0.45, 1.9)]
# Adjacent EnMAP tiles, named by (x, y) pixel origin, that form a mosaic of 128 rows by 64 columns.
ENMAP_TILE_COLUMNS = (160, 192)
ENMAP_TILE_ROWS = (64, 96, 128, 160)
S1_S2_SHIFT_PX = (1.4, -0.6)


def fourier_shift(values: np.ndarray, dy_px: float, dx_px: float) -> np.ndarray:
    """Move the content of ``values`` by (dy_px, dx_px) with a periodic Fourier shift."""
    spectrum = ndimage.fourier_shift(np.fft.fft2(values), (dy_px, dx_px))
    return np.fft.ifft2(spectrum).real


def crop(values: np.ndarray) -> np.ndarray:
    return values[MARGIN_PX:-MARGIN_PX, MARGIN_PX:-MARGIN_PX]


def texture(
    rng: np.random.Generator, shape: tuple[int, int], sigma_px: float, *, periodic: bool = False
) -> np.ndarray:
    """Gaussian noise smoothed to a correlation length of about ``sigma_px``."""
    smoothed: np.ndarray = ndimage.gaussian_filter(
        rng.normal(size=shape), sigma_px, mode="wrap" if periodic else "reflect"
    )
    return smoothed


def hole_mask(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Blob-shaped mask covering about ``fraction`` of the pixels."""
    field: np.ndarray = ndimage.gaussian_filter(rng.normal(size=shape), 4.0)
    mask: np.ndarray = field > np.quantile(field, 1.0 - fraction)
    return mask


def enmap_band(folder: Path, wavelength_nm: float) -> np.ndarray:
    """Read the EnMAP band nearest ``wavelength_nm`` as a mosaic of adjacent tiles, NaN for nodata."""
    rows = []
    for tile_y in ENMAP_TILE_ROWS:
        row = []
        for tile_x in ENMAP_TILE_COLUMNS:
            with rasterio.open(folder / f"enmap_potsdam_tile_{tile_x}_{tile_y}.tif") as source:
                wavelengths = [float(source.tags(band)["wavelength"]) for band in source.indexes]
                band = source.indexes[int(np.argmin(np.abs(np.array(wavelengths) - wavelength_nm)))]
                values = source.read(band).astype(np.float64)
                values[values == source.nodata] = np.nan
            row.append(values)
        rows.append(np.hstack(row))
    return np.vstack(rows)


@pytest.fixture(scope="module")
def enmap_nir(shared_data: Path) -> np.ndarray:
    return enmap_band(shared_data / "enmap-potsdam", 860.0)


@pytest.fixture(scope="module")
def enmap_red(shared_data: Path) -> np.ndarray:
    return enmap_band(shared_data / "enmap-potsdam", 660.0)


# --- real EnMAP ---------------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.parametrize("edges", [False, True])
@pytest.mark.parametrize(("dy_px", "dx_px"), KNOWN_SHIFTS_PX)
def test_enmap_nir_known_shift(
    enmap_nir: np.ndarray, dy_px: float, dx_px: float, edges: bool
) -> None:
    assert enmap_nir.shape == (128, 64)
    assert np.isfinite(enmap_nir).all()
    moving = crop(fourier_shift(enmap_nir, dy_px, dx_px))

    offset = measure_offset(crop(enmap_nir), moving, edges=edges)

    print(f"EnMAP NIR shift ({dy_px}, {dx_px}) edges={edges}: measured {offset}")
    assert offset.dy_px == pytest.approx(-dy_px, abs=0.05)
    assert offset.dx_px == pytest.approx(-dx_px, abs=0.05)
    assert offset.confidence > 0.9


@pytest.mark.shared_data
@pytest.mark.parametrize("edges", [False, True])
def test_enmap_red_against_nir(enmap_nir: np.ndarray, enmap_red: np.ndarray, edges: bool) -> None:
    # Both bands come from the EnMAP VNIR spectrometer, so their true offset is expected to be
    # close to 0. Structure that differs between red and NIR (vegetation is dark in red and
    # bright in NIR) leaves a bias of up to 0.2 px that stays the same for every shift.
    unshifted = measure_offset(crop(enmap_nir), crop(enmap_red), edges=edges)
    print(f"EnMAP red vs NIR, edges={edges}, unshifted: {unshifted}")
    assert unshifted.shift_px < 0.35

    for dy_px, dx_px in KNOWN_SHIFTS_PX:
        moving = crop(fourier_shift(enmap_red, dy_px, dx_px))
        offset = measure_offset(crop(enmap_nir), moving, edges=edges)
        print(f"  shift ({dy_px}, {dx_px}): measured {offset}")
        assert math.hypot(offset.dy_px + dy_px, offset.dx_px + dx_px) < 0.35
        # Relative to the unshifted pair, the known shift is recovered much more closely.
        assert offset.dy_px - unshifted.dy_px == pytest.approx(-dy_px, abs=0.1)
        assert offset.dx_px - unshifted.dx_px == pytest.approx(-dx_px, abs=0.1)


@pytest.mark.shared_data
@pytest.mark.parametrize("edges", [False, True])
def test_enmap_nir_with_holes(enmap_nir: np.ndarray, edges: bool) -> None:
    rng = np.random.default_rng(21)
    reference = crop(enmap_nir)
    for dy_px, dx_px in KNOWN_SHIFTS_PX:
        moving = crop(fourier_shift(enmap_nir, dy_px, dx_px))
        # Different blob-shaped holes, 30 % of each image.
        holed_reference = np.where(hole_mask(rng, reference.shape, 0.3), np.nan, reference)
        moving[hole_mask(rng, moving.shape, 0.3)] = np.nan

        offset = measure_offset(holed_reference, moving, edges=edges)

        print(f"EnMAP NIR with holes, shift ({dy_px}, {dx_px}) edges={edges}: {offset}")
        assert offset.dy_px == pytest.approx(-dy_px, abs=0.05)
        assert offset.dx_px == pytest.approx(-dx_px, abs=0.05)
        # Holes lower the confidence (to 0.47 in one case here), but not to the unrelated level.
        assert offset.confidence > UNRELATED_MAX_CONFIDENCE


# --- real Sentinel-1 against Sentinel-2 ---------------------------------------------------------


@pytest.fixture(scope="module")
def s1_vv_s2_nir(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = shared_data / "sen1floods11"
    with rasterio.open(folder / "Spain_7370579_S1Hand.tif") as source:
        assert source.descriptions[0] == "VV"
        vv_db = source.read(1).astype(np.float64)
    with rasterio.open(folder / "Spain_7370579_S2Hand.tif") as source:
        assert source.descriptions[7] == "B8"
        nir = source.read(8).astype(np.float64)
        nir[nir == source.nodata] = np.nan
    return vv_db, nir


@pytest.mark.shared_data
def test_s1_against_s2_known_shift(
    s1_vv_s2_nir: tuple[np.ndarray, np.ndarray], record_property: Callable[[str, object], None]
) -> None:
    vv_db, nir = s1_vv_s2_nir
    # The real S1-to-S2 offset of this pair is not known, so the unshifted measurement is the
    # baseline, and the test checks that an added known shift moves the measurement by that much.
    unshifted = measure_offset(crop(nir), crop(vv_db), edges=True)
    print(f"S1 VV (dB) vs S2 B8, unshifted residual offset: {unshifted}")
    record_property("s1_s2_unshifted", unshifted.to_record())
    assert unshifted.shift_px < 1.5

    dy_px, dx_px = S1_S2_SHIFT_PX
    offset = measure_offset(crop(nir), crop(fourier_shift(vv_db, dy_px, dx_px)), edges=True)
    error_px = math.hypot(
        offset.dy_px - (unshifted.dy_px - dy_px), offset.dx_px - (unshifted.dx_px - dx_px)
    )
    within = error_px <= 0.2
    flagged = offset.confidence < MIN_CONFIDENCE
    branch = "within 0.2 px" if within else f"flagged: confidence below {MIN_CONFIDENCE}"
    print(f"S1 shifted by {S1_S2_SHIFT_PX}: {offset}, error {error_px:.3f} px, {branch}")
    print(f"  within 0.2 px: {within}, confidence below {MIN_CONFIDENCE}: {flagged}")
    record_property("s1_s2_branch", branch)
    record_property("s1_s2_error_px", round(error_px, 3))
    assert within or flagged


# --- synthetic textures -------------------------------------------------------------------------


def test_sign_convention_content_moved_down() -> None:
    reference = texture(np.random.default_rng(1), (96, 96), 2.0)
    moving = crop(fourier_shift(reference, 0.3, 0.0))

    offset = measure_offset(crop(reference), moving)

    assert offset.dy_px == pytest.approx(-0.3, abs=0.03)
    assert offset.dx_px == pytest.approx(0.0, abs=0.03)


@pytest.mark.parametrize("edges", [False, True])
def test_random_textures_known_shifts(edges: bool) -> None:
    rng = np.random.default_rng(20240601)
    for _ in range(8):
        reference = texture(rng, (96, 96), rng.uniform(1.0, 3.0))
        dy_px, dx_px = rng.uniform(-3.0, 3.0, size=2)
        moving = crop(fourier_shift(reference, dy_px, dx_px))

        offset = measure_offset(crop(reference), moving, edges=edges)

        assert offset.dy_px == pytest.approx(-dy_px, abs=0.05)
        assert offset.dx_px == pytest.approx(-dx_px, abs=0.05)
        assert offset.confidence > 0.8


@pytest.mark.parametrize("edges", [False, True])
@pytest.mark.parametrize("sigma_px", [0.0, 1.0, 3.0])
def test_unrelated_pair_low_confidence(edges: bool, sigma_px: float) -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        reference = texture(rng, (64, 64), sigma_px)
        moving = texture(rng, (64, 64), sigma_px)

        offset = measure_offset(reference, moving, edges=edges)

        assert offset.confidence < UNRELATED_MAX_CONFIDENCE


@pytest.mark.parametrize("edges", [False, True])
def test_repeating_pattern_low_confidence(edges: bool) -> None:
    # An 8 px tile repeated: every shift by a multiple of 8 px matches as well as the true one,
    # so the correlation coefficient is high but the peak is not unique.
    patch = np.random.default_rng(17).normal(size=(8, 8))
    reference = np.tile(patch, (12, 12))
    moving = crop(fourier_shift(reference, 0.4, -0.3))

    offset = measure_offset(crop(reference), moving, edges=edges)

    assert offset.confidence < MIN_CONFIDENCE


def test_measured_offset_aligns_with_shift_image() -> None:
    full = texture(np.random.default_rng(3), (96, 96), 2.0)
    reference = crop(full)
    moving = crop(fourier_shift(full, -1.6, 0.8))

    offset = measure_offset(reference, moving)
    aligned = shift_image(moving, dy_px=offset.dy_px, dx_px=offset.dx_px)

    interior = (slice(3, -3), slice(3, -3))
    assert np.isfinite(aligned[interior]).all()
    correlation = np.corrcoef(reference[interior].ravel(), aligned[interior].ravel())[0, 1]
    assert correlation > 0.99


@pytest.mark.parametrize("edges", [False, True])
def test_nan_holes_measured(edges: bool) -> None:
    rng = np.random.default_rng(11)
    full = texture(rng, (112, 112), 2.0)
    reference = crop(full)
    moving = crop(fourier_shift(full, 0.7, -1.2))
    reference[hole_mask(rng, reference.shape, 0.25)] = np.nan
    moving[hole_mask(rng, moving.shape, 0.25)] = np.nan

    offset = measure_offset(reference, moving, edges=edges)

    assert offset.dy_px == pytest.approx(-0.7, abs=0.05)
    assert offset.dx_px == pytest.approx(1.2, abs=0.05)
    assert offset.confidence > MIN_CONFIDENCE


def test_same_nan_border_in_both() -> None:
    rng = np.random.default_rng(12)
    full = texture(rng, (112, 112), 2.0)
    reference = crop(full)
    moving = crop(fourier_shift(full, -0.4, 0.9))
    # A swath edge at the same place in both images must not pull the offset towards 0.
    reference[:, :30] = np.nan
    moving[:, :30] = np.nan

    offset = measure_offset(reference, moving)

    assert offset.dy_px == pytest.approx(0.4, abs=0.05)
    assert offset.dx_px == pytest.approx(-0.9, abs=0.05)


def test_featureless_image_zero_confidence() -> None:
    reference = texture(np.random.default_rng(5), (32, 32), 1.0)

    offset = measure_offset(reference, np.full((32, 32), 7.0))

    assert offset == Offset(0.0, 0.0, 0.0, "phase-correlation")


@pytest.mark.parametrize("edges", [False, True])
def test_disjoint_valid_halves_low_confidence(edges: bool) -> None:
    values = texture(np.random.default_rng(15), (32, 32), 1.5)
    reference = values.copy()
    moving = values.copy()
    reference[:, :16] = np.nan
    moving[:, 16:] = np.nan

    offset = measure_offset(reference, moving, edges=edges)

    assert offset.confidence < 0.1


def test_scattered_nan_pixels_measured() -> None:
    values = texture(np.random.default_rng(16), (48, 48), 1.5)
    checkerboard = np.add.outer(np.arange(48), np.arange(48)) % 2 == 0
    holed = np.where(checkerboard, np.nan, values)

    offset = measure_offset(holed, holed.copy())

    assert offset.shift_px < 0.05
    assert offset.confidence > MIN_CONFIDENCE


def test_method_names_mode() -> None:
    reference = texture(np.random.default_rng(6), (32, 32), 1.0)

    assert measure_offset(reference, reference).method == "phase-correlation"
    assert measure_offset(reference, reference, edges=True).method == "edge-cross-correlation"


# --- measure_offset input errors ----------------------------------------------------------------


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(
        CoregistrationError,
        match=r"reference shape \(64, 64\) does not match moving shape \(64, 48\)",
    ):
        measure_offset(np.zeros((64, 64)), np.zeros((64, 48)))


def test_small_image_rejected() -> None:
    with pytest.raises(CoregistrationError, match=r"shape \(15, 40\) is smaller than 16x16 px"):
        measure_offset(np.zeros((15, 40)), np.zeros((15, 40)))


def test_too_few_valid_pixels_rejected() -> None:
    moving = np.ones((32, 32))
    moving[:, :17] = np.nan
    with pytest.raises(
        CoregistrationError,
        match=r"moving has 480 valid pixels of 1024 \(47%\), fewer than the 50% needed",
    ):
        measure_offset(np.ones((32, 32)), moving)


def test_exactly_half_valid_accepted() -> None:
    reference = texture(np.random.default_rng(8), (32, 32), 1.0)
    moving = reference.copy()
    moving[:, :16] = np.nan

    offset = measure_offset(reference, moving)

    assert offset.shift_px < 0.1


def test_three_dimensional_input_rejected() -> None:
    with pytest.raises(CoregistrationError, match=r"needs 2-D arrays, got shapes \(2, 32, 32\)"):
        measure_offset(np.zeros((2, 32, 32)), np.zeros((2, 32, 32)))


def test_upsample_factor_below_one_rejected() -> None:
    with pytest.raises(CoregistrationError, match="upsample_factor 0 is invalid"):
        measure_offset(np.zeros((32, 32)), np.zeros((32, 32)), upsample_factor=0)


def test_coregistration_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="smaller than 16x16"):
        measure_offset(np.zeros((8, 8)), np.zeros((8, 8)))


# --- shift_image --------------------------------------------------------------------------------


def test_shift_image_integer_shift_exact() -> None:
    values = np.arange(20 * 30, dtype=np.float64).reshape(20, 30)

    shifted = shift_image(values, dy_px=2.0, dx_px=-3.0)

    np.testing.assert_array_equal(shifted[2:, :-3], values[:-2, 3:])
    assert np.isnan(shifted[:2]).all()
    assert np.isnan(shifted[:, -3:]).all()


def test_shift_image_outside_becomes_nan() -> None:
    values = np.ones((20, 20))

    shifted = shift_image(values, dy_px=1.5, dx_px=0.0)

    # Rows 0 and 1 interpolate from at least one row above the input.
    assert np.isnan(shifted[:2]).all()
    np.testing.assert_array_equal(shifted[2:], 1.0)


def test_shift_image_round_trip() -> None:
    values = texture(np.random.default_rng(9), (64, 64), 3.0)

    shifted = shift_image(values, dy_px=0.4, dx_px=-1.3)
    restored = shift_image(shifted, dy_px=-0.4, dx_px=1.3)

    interior = (slice(3, -3), slice(3, -3))
    assert np.isfinite(restored[interior]).all()
    # Two bilinear interpolations smooth the texture slightly, so the match is close, not exact.
    np.testing.assert_allclose(restored[interior], values[interior], atol=0.05 * np.ptp(values))


def test_shift_image_matches_fourier_shift() -> None:
    # A periodic texture makes the Fourier shift exact up to the array border.
    values = texture(np.random.default_rng(10), (64, 64), 3.0, periodic=True)

    shifted = shift_image(values, dy_px=0.5, dx_px=0.25)

    expected = fourier_shift(values, 0.5, 0.25)
    interior = (slice(1, None), slice(1, None))
    np.testing.assert_allclose(shifted[interior], expected[interior], atol=0.02 * np.ptp(values))
    assert np.isnan(shifted[0]).all()
    assert np.isnan(shifted[:, 0]).all()


def test_shift_image_nan_spreads_to_neighbours_only() -> None:
    values = np.ones((20, 20))
    values[10, 10] = np.nan

    shifted = shift_image(values, dy_px=0.5, dx_px=0.0)

    assert np.isnan(shifted[10, 10])
    assert np.isnan(shifted[11, 10])
    assert int(np.isnan(shifted[1:]).sum()) == 2
    assert not (shifted[1:] == 0.0).any()


def test_shift_image_zero_shift_keeps_values() -> None:
    values = texture(np.random.default_rng(13), (24, 24), 1.0)
    values[3, 4] = np.nan

    shifted = shift_image(values, dy_px=0.0, dx_px=0.0)

    np.testing.assert_array_equal(shifted, values)


def test_shift_image_bands_like_single_band() -> None:
    rng = np.random.default_rng(14)
    bands = np.stack([texture(rng, (32, 32), 2.0) for _ in range(3)]).astype(np.float32)
    bands[1, 5, 5] = np.nan

    shifted = shift_image(bands, dy_px=-0.6, dx_px=1.2)

    assert shifted.dtype == np.float32
    for band in range(3):
        single = shift_image(bands[band], dy_px=-0.6, dx_px=1.2)
        np.testing.assert_allclose(shifted[band], single, rtol=1e-6, equal_nan=True)
    assert np.isnan(shifted[1]).sum() > np.isnan(shifted[0]).sum()


def test_shift_image_integer_input_float64() -> None:
    shifted = shift_image(np.ones((16, 16), dtype=np.uint16), dy_px=0.5, dx_px=0.0)

    assert shifted.dtype == np.float64
    assert np.isnan(shifted[0]).all()


def test_shift_image_one_dimensional_rejected() -> None:
    with pytest.raises(CoregistrationError, match=r"2-D \(y, x\) or 3-D \(band, y, x\).*\(10,\)"):
        shift_image(np.ones(10), dy_px=1.0, dx_px=0.0)


# --- Offset and CoregPolicy ---------------------------------------------------------------------


def test_offset_to_record_rounded() -> None:
    offset = Offset(dy_px=-0.123456, dx_px=1.98765, confidence=0.876543, method="phase-correlation")

    assert offset.to_record() == {
        "dy_px": -0.123,
        "dx_px": 1.988,
        "confidence": 0.877,
        "method": "phase-correlation",
    }


def test_offset_confidence_out_of_range_rejected() -> None:
    with pytest.raises(CoregistrationError, match=r"confidence 1\.5 is outside \[0, 1\]"):
        Offset(0.0, 0.0, 1.5, "phase-correlation")


def test_offset_not_finite_rejected() -> None:
    with pytest.raises(CoregistrationError, match=r"offset \(nan, 0\.0\) px is not finite"):
        Offset(math.nan, 0.0, 0.5, "phase-correlation")


def test_policy_unknown_action_rejected() -> None:
    with pytest.raises(
        ConfigError, match="coregistration action 'fix' is invalid: use one of record, apply, drop"
    ):
        CoregPolicy(action="fix", max_shift_px=1.0, min_confidence=0.4)


def test_policy_negative_max_shift_rejected() -> None:
    with pytest.raises(ConfigError, match=r"max_shift_px -1\.0 is invalid"):
        CoregPolicy(action="apply", max_shift_px=-1.0, min_confidence=0.4)


def test_policy_confidence_out_of_range_rejected() -> None:
    with pytest.raises(ConfigError, match=r"min_confidence 2\.0 is outside \[0, 1\]"):
        CoregPolicy(action="apply", max_shift_px=1.0, min_confidence=2.0)


# --- decide -------------------------------------------------------------------------------------

SMALL = Offset(dy_px=0.3, dx_px=-0.4, confidence=0.9, method="phase-correlation")
LARGE = Offset(dy_px=1.2, dx_px=-1.6, confidence=0.9, method="phase-correlation")
UNSURE = Offset(dy_px=1.2, dx_px=-1.6, confidence=0.2, method="phase-correlation")


@pytest.mark.parametrize(
    ("action", "offset", "outcome", "reason"),
    [
        ("record", SMALL, "recorded", "shift 0.50 px (dy +0.30, dx -0.40), confidence 0.90"),
        ("record", UNSURE, "recorded", "recorded only"),
        ("apply", SMALL, "applied", "within limit 1.00 px, applied"),
        ("apply", LARGE, "kept", "shift 2.00 px above limit 1.00 px, not applied"),
        ("apply", UNSURE, "low-confidence", "confidence 0.20 below minimum 0.40"),
        ("drop", LARGE, "dropped", "shift 2.00 px above limit 1.00 px, chip dropped"),
        ("drop", SMALL, "kept", "within limit 1.00 px, chip kept"),
        ("drop", UNSURE, "low-confidence", "shift 2.00 px chip kept"),
    ],
)
def test_decide_branches(action: str, offset: Offset, outcome: str, reason: str) -> None:
    policy = CoregPolicy(action=action, max_shift_px=1.0, min_confidence=0.4)

    decided_outcome, decided_reason = decide(offset, policy)

    assert decided_outcome == outcome
    assert reason in decided_reason
    assert "\n" not in decided_reason


def test_decide_limits_inclusive() -> None:
    at_limit = Offset(dy_px=0.6, dx_px=0.8, confidence=0.4, method="phase-correlation")

    assert decide(at_limit, CoregPolicy("apply", max_shift_px=1.0, min_confidence=0.4))[0] == (
        "applied"
    )
    assert decide(at_limit, CoregPolicy("drop", max_shift_px=1.0, min_confidence=0.4))[0] == "kept"
