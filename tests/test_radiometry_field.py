"""Radiometry field bugs pinned with the real item metadata of Earth Search and Planetary Computer.

Sentinel-2: one DN maps to one reflectance whichever way a catalog states the baseline offset,
DN 0 is no data, and an item whose metadata or pixels contradict its offset is quarantined
(``check_s2_radiometry``). Sentinel-1: power is averaged, never amplitude or dB.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import shapely.geometry
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import wrap_xr, xr_reproject

from pipeline.config import BandSpec, MaskSpec, ModalitySource, S1Radiometry, S2Radiometry
from pipeline.errors import ReadError
from pipeline.gdal_io import DEFAULT_GDAL_OPTIONS
from pipeline.grid import Chip, project_geometry
from pipeline.radiometry import (
    amplitude_to_power,
    check_s2_radiometry,
    db_to_linear,
    reflectance_rule,
)
from pipeline.read import read_s1, read_s2
from tests.stac_fixtures import read_items
from tests.test_read import EPSG, ORIGIN_X, ORIGIN_Y, write_cog

RADIOMETRY = S2Radiometry(scale=0.0001, offset="baseline")
PC_S2 = "planetary-computer-sentinel-2-l2a.json"
ES_S2 = {
    "02.12": "stactools-sentinel-2-l2a-baseline-02.12.json",
    "04.00": "stactools-sentinel-2-l2a-baseline-04.00.json",
    "05.09": "stactools-sentinel-2-l2a-baseline-05.09.json",
}


def _raster_band(asset: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first ``raster:bands`` entry, as the Sentinel-2 reader passes it to the rule."""
    return (asset.get("raster:bands") or [None])[0]


def _one_item(shared_data: Path, name: str) -> dict[str, Any]:
    (item,) = read_items(shared_data, name)
    return item


def _reflectance(item: Mapping[str, Any], asset_key: str, dn: list[float]) -> np.ndarray:
    rule = reflectance_rule(RADIOMETRY, item["properties"], _raster_band(item["assets"][asset_key]))
    return rule.apply(np.array(dn, dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# DN to reflectance with real item metadata


@pytest.mark.shared_data
def test_pc_offset_from_baseline(shared_data: Path) -> None:
    for item in read_items(shared_data, PC_S2):
        assert item["properties"]["s2:processing_baseline"] == "05.10"
        for band in ("B02", "B04", "B08", "B11"):
            assert "raster:bands" not in item["assets"][band]

            nodata, value = _reflectance(item, band, [0, 1500])

            assert np.isnan(nodata), (item["id"], band)
            assert value == pytest.approx(0.05, abs=1e-7), (item["id"], band)


@pytest.mark.shared_data
def test_old_baseline_has_no_offset(shared_data: Path) -> None:
    item = _one_item(shared_data, ES_S2["02.12"])
    undeclared = copy.deepcopy(item)
    del undeclared["assets"]["red"]["raster:bands"]

    for variant in (item, undeclared):
        nodata, value = _reflectance(variant, "red", [0, 1500])

        assert np.isnan(nodata)
        assert value == pytest.approx(0.15, abs=1e-7)


@pytest.mark.shared_data
@pytest.mark.parametrize("baseline", ["04.00", "05.09"])
def test_earth_search_offset_applied_once(shared_data: Path, baseline: str) -> None:
    item = _one_item(shared_data, ES_S2[baseline])
    assert item["assets"]["red"]["raster:bands"][0]["offset"] == -0.1

    nodata, value = _reflectance(item, "red", [0, 1500])
    rule = reflectance_rule(RADIOMETRY, item["properties"], _raster_band(item["assets"]["red"]))

    assert np.isnan(nodata)
    assert value == pytest.approx(0.05, abs=1e-7)
    assert rule.reason.startswith("raster:bands")


def test_dn_zero_is_nan_for_fixed_offset() -> None:
    rule = reflectance_rule(S2Radiometry(0.0001, -1000.0), {}, None)

    values = rule.apply(np.array([0, 1, 1500], dtype=np.uint16))

    assert np.isnan(values[0])
    assert values[1] == pytest.approx(-0.0999, abs=1e-7)
    assert values[2] == pytest.approx(0.05, abs=1e-7)


# ----------------------------------------------------------------------------------------------
# Quarantine from metadata


def _rules(item: Mapping[str, Any], assets: Mapping[str, str]) -> dict[str, Any]:
    return {
        band: reflectance_rule(RADIOMETRY, item["properties"], _raster_band(item["assets"][key]))
        for band, key in assets.items()
    }


ES_ASSETS = {"B04": "red", "B08": "nir"}


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("baseline", "flag", "declared_offset", "expected"),
    [
        ("05.09", None, None, None),
        ("05.09", False, None, None),
        (
            "05.09",
            True,
            None,
            r"^band B04: raster:bands scale 0\.0001 offset -0\.1 adds -1000 DN, but "
            r"earthsearch:boa_offset_applied true \(the provider removed the offset\) implies "
            r"\+0 DN; the item's metadata contradicts itself$",
        ),
        ("02.12", None, None, None),
        (
            "02.12",
            None,
            -0.1,
            r"^band B04: .* adds -1000 DN, but s2:processing_baseline 02\.12 implies \+0 DN",
        ),
        (
            "04.00",
            None,
            0.0,
            r"^band B04: .* adds \+0 DN, but s2:processing_baseline 04\.00 implies -1000 DN",
        ),
    ],
    ids=[
        "no-flag",
        "flag-false",
        "flag-true-with-offset",
        "old-baseline",
        "old-baseline-with-offset",
        "new-baseline-without-offset",
    ],
)
def test_metadata_contradiction_quarantines(
    shared_data: Path,
    baseline: str,
    flag: bool | None,
    declared_offset: float | None,
    expected: str | None,
) -> None:
    item = copy.deepcopy(_one_item(shared_data, ES_S2[baseline]))
    if flag is not None:
        item["properties"]["earthsearch:boa_offset_applied"] = flag
    if declared_offset is not None:
        for key in ES_ASSETS.values():
            item["assets"][key]["raster:bands"][0]["offset"] = declared_offset

    reason = check_s2_radiometry(item["properties"], _rules(item, ES_ASSETS))

    if expected is None:
        assert reason is None
    else:
        assert reason is not None
        assert re.search(expected, reason), reason


@pytest.mark.shared_data
def test_pc_items_pass_metadata_check(shared_data: Path) -> None:
    for item in read_items(shared_data, PC_S2):
        rules = _rules(item, {"B04": "B04", "B08": "B08"})

        assert check_s2_radiometry(item["properties"], rules) is None


def test_item_without_baseline_not_judged() -> None:
    rules = {"B04": reflectance_rule(RADIOMETRY, {}, None)}

    assert check_s2_radiometry({}, rules) is None


# ----------------------------------------------------------------------------------------------
# Quarantine from pixels: the flag reads "not applied", but the files have the offset removed


def _land_check(
    shared_data: Path, red_dn: np.ndarray, scl: np.ndarray, *, flag: bool = False
) -> str | None:
    item = copy.deepcopy(_one_item(shared_data, ES_S2["05.09"]))
    item["properties"]["earthsearch:boa_offset_applied"] = flag
    rules = _rules(item, {"B04": "red"})
    dn = red_dn.astype(np.float64)[np.newaxis]
    reflectance = rules["B04"].apply(dn)
    return check_s2_radiometry(item["properties"], rules, reflectance, np.isin(scl, (4, 5)))


@pytest.mark.shared_data
def test_negative_land_quarantines(shared_data: Path) -> None:
    # Vegetation at reflectance 0.04 stored without the +1000 DN, read with offset -0.1.
    red_dn = np.full((32, 32), 400)
    scl = np.full((32, 32), 4)

    reason = _land_check(shared_data, red_dn, scl)

    assert reason == (
        "band B04: 100% of 1024 land pixels (SCL 4, 5) are negative after raster:bands scale "
        "0.0001 offset -0.1 (s2:processing_baseline 05.09); the files probably have the offset "
        "removed already"
    )


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("case", "negative_rows", "land_pixels", "scl_class"),
    [
        ("offset-in-files", 0, 1024, 4),
        ("minority-negative", 12, 1024, 5),
        ("water-only", 32, 1024, 6),
        ("too-few-land-pixels", 32, 99, 4),
    ],
)
def test_land_check_passes(
    shared_data: Path, case: str, negative_rows: int, land_pixels: int, scl_class: int
) -> None:
    # 1400 DN is reflectance 0.04 with the +1000 DN in the files; 400 DN reads as -0.06.
    red_dn = np.full((32, 32), 1400)
    red_dn[:negative_rows] = 400
    scl = np.full(32 * 32, 8)  # 8: cloud, medium probability
    scl[:land_pixels] = scl_class
    scl = scl.reshape(32, 32)

    assert _land_check(shared_data, red_dn, scl) is None, case


def _local_item(
    folder: Path, assets: dict[str, tuple[np.ndarray, dict[str, Any]]], properties: dict[str, Any]
) -> dict[str, Any]:
    item_assets = {}
    for key, (values, raster_band) in assets.items():
        write_cog(folder / f"{key}.tif", values, 10.0, None)
        item_assets[key] = {
            "href": str(folder / f"{key}.tif"),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "proj:shape": list(values.shape),
            "proj:transform": [10.0, 0.0, ORIGIN_X, 0.0, -10.0, ORIGIN_Y],
            "raster:bands": [raster_band],
        }
    footprint = project_geometry(
        shapely.box(ORIGIN_X, ORIGIN_Y - 640, ORIGIN_X + 640, ORIGIN_Y),
        src_epsg=EPSG,
        dst_epsg=4326,
    )
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "local",
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {
            "datetime": "2023-08-21T22:19:41Z",
            "proj:code": f"EPSG:{EPSG}",
            **properties,
        },
        "assets": item_assets,
        "links": [],
    }


@pytest.mark.parametrize(("red_dn", "quarantined"), [(400, True), (1400, False)])
def test_s2_read_reports_quarantine(tmp_path: Path, red_dn: int, quarantined: bool) -> None:
    declared = {"nodata": 0, "scale": 0.0001, "offset": -0.1}
    item = _local_item(
        tmp_path,
        {
            "red": (np.full((64, 64), red_dn, dtype=np.uint16), declared),
            "nir": (np.full((64, 64), 4000, dtype=np.uint16), declared),
            "scl": (np.full((64, 64), 4, dtype=np.uint8), {"nodata": 0}),
        },
        {"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False},
    )
    source = ModalitySource(
        modality="s2",
        collection="sentinel-2-l2a",
        bands=(BandSpec("B04", "red", "bilinear"), BandSpec("B08", "nir", "bilinear")),
        nodata=0,
        s2=RADIOMETRY,
        mask=MaskSpec(kind="scl", asset="scl", clear_classes=(4, 5, 6, 7, 11)),
    )
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 32, 10.0)

    result = read_s2(item, source, ("B04", "B08"), chip.geobox(), DEFAULT_GDAL_OPTIONS)

    assert (result.quarantine is not None) == quarantined
    if quarantined:
        assert result.quarantine.startswith("band B04: 100% of 1024 land pixels")


# ----------------------------------------------------------------------------------------------
# SAR: average power, not amplitude or dB


def test_amplitude_block_averages_as_power() -> None:
    # DN amplitude [100, 100, 100, 300] averaged to one pixel: mean power 30000, while the
    # square of the mean amplitude (150) would be 22500.
    amplitude = np.array([[100.0, 100.0], [100.0, 300.0]], dtype=np.float32)
    native = GeoBox((2, 2), Affine(10.0, 0.0, ORIGIN_X, 0.0, -10.0, ORIGIN_Y), f"EPSG:{EPSG}")
    coarse = GeoBox((1, 1), Affine(20.0, 0.0, ORIGIN_X, 0.0, -20.0, ORIGIN_Y), f"EPSG:{EPSG}")

    power = wrap_xr(amplitude_to_power(amplitude), native, nodata=np.nan)
    averaged = xr_reproject(power, coarse, resampling="average", dst_nodata=np.nan)
    amplitude_first = xr_reproject(
        wrap_xr(amplitude, native, nodata=np.nan), coarse, resampling="average", dst_nodata=np.nan
    )

    assert float(averaged.values[0, 0]) == pytest.approx(30000.0)
    assert float(amplitude_to_power(amplitude_first.values)[0, 0]) == pytest.approx(22500.0)


def test_gamma0_db_averaged_as_power(tmp_path: Path) -> None:
    # Gamma0 0.01 and 0.1 (-20 and -10 dB) in a checkerboard at 10 m, read onto a 20 m chip:
    # each pixel averages two of each in linear power, 0.055 or -12.60 dB, not -15 dB.
    checker = np.indices((64, 64)).sum(axis=0) % 2
    db = np.where(checker == 0, -20.0, -10.0).astype(np.float32)
    item = _local_item(tmp_path, {"VV": (db, {"unit": "dB"})}, {})
    source = ModalitySource(
        modality="s1",
        collection="gamma0-db",
        bands=(BandSpec("VV", "VV", "average"),),
        nodata=None,
        s1=S1Radiometry(units="dB", quantity="gamma0", product="RTC", terrain_flattening=True),
    )
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 16, 20.0)

    result = read_s1(item, source, ("VV",), chip.geobox(), DEFAULT_GDAL_OPTIONS)
    in_db = 10.0 * np.log10(result.values.astype(np.float64))

    np.testing.assert_allclose(db_to_linear(np.array([-20.0, -10.0])), [0.01, 0.1], rtol=1e-6)
    np.testing.assert_allclose(result.values, 0.055, rtol=1e-6)
    np.testing.assert_allclose(in_db, -12.596, atol=1e-3)
    assert result.processing["quantity"] == "gamma0"
    assert result.processing["product"] == "RTC"
    assert result.processing["terrain_flattening"] is True
    assert "before resampling" in result.processing["conversion"]


def test_dn_source_never_read_as_backscatter(tmp_path: Path) -> None:
    item = _local_item(tmp_path, {"vv": (np.full((64, 64), 120, dtype=np.uint16), {})}, {})
    source = ModalitySource(
        modality="s1",
        collection="sentinel-1-grd",
        bands=(BandSpec("VV", "vv", "average"),),
        nodata=0,
        s1=S1Radiometry(units="dn", quantity="none", product="GRD", terrain_flattening=False),
    )
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 32, 10.0)

    with pytest.raises(
        ReadError,
        match=r"collection 'sentinel-1-grd' stores Sentinel-1 as 'dn', which is not "
        r"backscatter; only linear power and dB sources can be read",
    ):
        read_s1(item, source, ("VV",), chip.geobox(), DEFAULT_GDAL_OPTIONS)
