"""Reflectance rules, dB conversion and NDVI from pipeline.radiometry."""

from __future__ import annotations

import numpy as np

from pipeline.config import S2Radiometry
from pipeline.radiometry import canonical_nan, db_to_linear, ndvi, reflectance_rule

BASELINE = S2Radiometry(scale=0.0001, offset="baseline")


def test_baseline_before_04_has_no_offset() -> None:
    rule = reflectance_rule(BASELINE, {"s2:processing_baseline": "02.05"}, {"nodata": 0})
    assert rule.offset_dn == 0.0
    assert rule.apply(np.array([1234.0]))[0] == np.float32(0.1234)


def test_baseline_04_and_later_removes_1000() -> None:
    for baseline in ("04.00", "05.10"):
        rule = reflectance_rule(BASELINE, {"s2:processing_baseline": baseline}, {"nodata": 0})
        assert rule.offset_dn == -1000.0
        assert rule.apply(np.array([1000.0, 11000.0])).tolist() == [0.0, 1.0]


def test_declared_offset_not_applied_twice() -> None:
    declared = {"scale": 0.0001, "offset": -0.1, "nodata": 0}
    rule = reflectance_rule(BASELINE, {"s2:processing_baseline": "05.09"}, declared)
    assert rule.offset_dn == -1000.0
    assert "raster:bands" in rule.reason
    assert np.isclose(rule.apply(np.array([1500.0]))[0], 0.05)


def test_fixed_catalog_offset() -> None:
    rule = reflectance_rule(
        S2Radiometry(0.0001, -1000.0), {"s2:processing_baseline": "02.05"}, None
    )
    assert rule.offset_dn == -1000.0


def test_missing_baseline_means_no_offset() -> None:
    rule = reflectance_rule(BASELINE, {}, None)
    assert rule.offset_dn == 0.0
    assert "missing" in rule.reason


def test_nan_stays_nan() -> None:
    rule = reflectance_rule(BASELINE, {"s2:processing_baseline": "04.00"}, None)
    assert np.isnan(rule.apply(np.array([np.nan]))[0])


def test_db_to_linear() -> None:
    values = db_to_linear(np.array([0.0, 10.0, -10.0, np.nan], dtype=np.float32))
    assert values.dtype == np.float32
    np.testing.assert_allclose(values[:3], [1.0, 10.0, 0.1], rtol=1e-7)
    assert np.isnan(values[3])


def test_ndvi_negative_from_integer_bands() -> None:
    red = np.array([3000, 500, 0, 100], dtype=np.uint16)
    nir = np.array([1000, 4500, 0, np.iinfo(np.uint16).max], dtype=np.uint16)
    result = ndvi(red, nir)
    assert result.dtype == np.float32
    assert np.isclose(result[0], -0.5)
    assert np.isclose(result[1], 0.8)
    assert np.isnan(result[2])
    assert np.isclose(result[3], (65535 - 100) / (65535 + 100))


def test_ndvi_nan_where_band_invalid() -> None:
    result = ndvi(np.array([0.1, np.nan], np.float32), np.array([np.nan, 0.3], np.float32))
    assert np.isnan(result).all()


def test_canonical_nan_unifies_payloads() -> None:
    payload = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)
    canonical = canonical_nan(np.concatenate([payload, np.array([np.nan], np.float32)]))
    assert canonical.view(np.uint32)[0] == canonical.view(np.uint32)[1]
