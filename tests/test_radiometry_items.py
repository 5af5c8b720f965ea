"""Sentinel-2 DN-to-reflectance rules decided from real STAC Items of public catalogs.

Products of processing baseline 04.00 and later store ``DN = reflectance * 10000 + 1000``.
Planetary Computer items leave that offset undeclared, and stactools (Earth Search style) items
declare it as ``raster:bands`` scale 0.0001 and offset -0.1. Either way one DN maps to one
reflectance, so the declared offset must not be combined with the baseline offset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import S2Radiometry
from pipeline.radiometry import BASELINE_OFFSET_DN, reflectance_rule

pytestmark = pytest.mark.shared_data

RADIOMETRY = S2Radiometry(scale=0.0001, offset="baseline")
PLANETARY_COMPUTER_S2 = "planetary-computer-sentinel-2-l2a.json"
STACTOOLS_S2 = {
    "02.12": "stactools-sentinel-2-l2a-baseline-02.12.json",
    "04.00": "stactools-sentinel-2-l2a-baseline-04.00.json",
    "05.09": "stactools-sentinel-2-l2a-baseline-05.09.json",
}


def _read_items(shared_data: Path, name: str) -> list[dict[str, Any]]:
    """Read a file holding one Item, a JSON list of Items or a FeatureCollection."""
    data = json.loads((shared_data / "stac-items" / name).read_text(encoding="utf-8"))
    if isinstance(data, list):
        return data
    if data.get("type") == "FeatureCollection":
        return list(data["features"])
    return [data]


def _raster_band(asset: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the first ``raster:bands`` entry, as the Sentinel-2 reader passes it."""
    return (asset.get("raster:bands") or [None])[0]


def _spectral_assets(item: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Return the single-band reflectance assets (one ``eo:bands`` entry) of an item."""
    return {
        key: asset for key, asset in item["assets"].items() if len(asset.get("eo:bands", [])) == 1
    }


def _red_asset(item: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the 10 m B04 asset: key ``B04`` on Planetary Computer, ``red`` in stactools."""
    for key in ("B04", "red"):
        if key in item["assets"]:
            asset: Mapping[str, Any] = item["assets"][key]
            assert asset["eo:bands"][0]["name"] == "B04"
            return asset
    raise AssertionError(f"item {item['id']} has no B04 asset under the keys B04 or red")


def test_planetary_computer_items_use_baseline_offset(shared_data: Path) -> None:
    items = _read_items(shared_data, PLANETARY_COMPUTER_S2)
    assert len(items) == 4

    for item in items:
        red = _red_asset(item)
        assert item["properties"]["s2:processing_baseline"] == "05.10"
        assert "raster:bands" not in red

        rule = reflectance_rule(RADIOMETRY, item["properties"], _raster_band(red))

        assert rule.offset_dn == BASELINE_OFFSET_DN
        assert rule.offset_dn == -1000.0
        assert rule.scale == 0.0001
        assert "05.10" in rule.reason


def test_planetary_computer_every_band_same_rule(shared_data: Path) -> None:
    for item in _read_items(shared_data, PLANETARY_COMPUTER_S2):
        assets = _spectral_assets(item)
        assert len(assets) == 12, sorted(assets)

        rules = {}
        for key, asset in assets.items():
            rule = reflectance_rule(RADIOMETRY, item["properties"], _raster_band(asset))
            rules[key] = (rule.scale, rule.offset_dn)
        assert rules == {key: (0.0001, -1000.0) for key in assets}


@pytest.mark.parametrize(
    ("baseline", "declared_offset", "expected_offset_dn"),
    [("02.12", 0.0, 0.0), ("04.00", -0.1, -1000.0), ("05.09", -0.1, -1000.0)],
)
def test_stactools_item_uses_declared_values(
    shared_data: Path, baseline: str, declared_offset: float, expected_offset_dn: float
) -> None:
    (item,) = _read_items(shared_data, STACTOOLS_S2[baseline])
    red = _red_asset(item)
    raster_band = _raster_band(red)
    assert item["properties"]["s2:processing_baseline"] == baseline
    assert raster_band is not None
    assert raster_band["scale"] == 0.0001
    assert raster_band["offset"] == declared_offset

    rule = reflectance_rule(RADIOMETRY, item["properties"], raster_band)

    assert rule.scale == 0.0001
    assert rule.offset_dn == pytest.approx(expected_offset_dn, rel=1e-12, abs=1e-9)
    assert rule.reason.startswith("raster:bands")


@pytest.mark.parametrize("baseline", ["04.00", "05.09"])
def test_declared_offset_not_added_to_baseline(shared_data: Path, baseline: str) -> None:
    (item,) = _read_items(shared_data, STACTOOLS_S2[baseline])
    rule = reflectance_rule(RADIOMETRY, item["properties"], _raster_band(_red_asset(item)))
    dn = np.array([1000, 1001, 11000], dtype=np.uint16)

    reflectance = rule.apply(dn)

    # With -1000 DN applied twice, DN 1000 would map to -0.1 instead of 0.
    assert reflectance.dtype == np.float32
    assert reflectance[0] == pytest.approx(0.0, abs=1e-7)
    assert reflectance[1] == pytest.approx(0.0001, rel=1e-5)
    assert reflectance[2] == pytest.approx(1.0, rel=1e-6)


def test_baseline_02_12_has_no_offset(shared_data: Path) -> None:
    (item,) = _read_items(shared_data, STACTOOLS_S2["02.12"])
    rule = reflectance_rule(RADIOMETRY, item["properties"], _raster_band(_red_asset(item)))
    dn = np.array([1, 1000, 10000], dtype=np.uint16)

    reflectance = rule.apply(dn)

    assert rule.offset_dn == 0.0
    assert reflectance[0] == pytest.approx(0.0001, rel=1e-5)
    assert reflectance[1] == pytest.approx(0.1, rel=1e-6)
    assert reflectance[2] == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("baseline", sorted(STACTOOLS_S2))
def test_stactools_every_band_same_rule(shared_data: Path, baseline: str) -> None:
    (item,) = _read_items(shared_data, STACTOOLS_S2[baseline])
    assets = _spectral_assets(item)
    expected = {}
    actual = {}
    for key, asset in assets.items():
        # The declared rule and the rule decided from the baseline alone must agree per band.
        declared = reflectance_rule(RADIOMETRY, item["properties"], _raster_band(asset))
        from_baseline = reflectance_rule(RADIOMETRY, item["properties"], None)
        expected[key] = (from_baseline.scale, from_baseline.offset_dn)
        actual[key] = (declared.scale, round(declared.offset_dn, 6))

    assert len(assets) >= 12, sorted(assets)
    assert actual == expected
