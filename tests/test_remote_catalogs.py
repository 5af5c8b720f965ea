"""The Earth Search and Planetary Computer catalog files, checked against real recorded items.

Both catalogs are validated, their asset keys are compared with the real items of
``stac-items``, the uncalibrated Sentinel-1 GRD source is rejected with its fix, and the
example regions under ``splits/`` produce a dry-run plan from the recorded items. For that the
test serves the items with ``rustac serve`` on 127.0.0.1 and swaps only the catalog's
``source.url``, so no test contacts the public APIs the catalogs name.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import catalog_to_json, load_catalog
from pipeline.errors import ConfigError
from tests.stac_fixtures import read_items, serve_items, with_changes

REPO_ROOT = Path(__file__).resolve().parents[1]
EARTH_SEARCH = REPO_ROOT / "catalogs" / "earth-search.yaml"
PLANETARY_COMPUTER = REPO_ROOT / "catalogs" / "planetary-computer.yaml"
EXIT_OK = 0
EXIT_USAGE = 2
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
# Real Earth Search style items and the collection each stands for in Earth Search v1. The
# stactools output names other collections (or none), so the served copies get these names.
EARTH_SEARCH_ITEMS = {
    "stactools-sentinel-2-l2a-baseline-02.12.json": "sentinel-2-l2a",
    "stactools-sentinel-2-l2a-baseline-04.00.json": "sentinel-2-l2a",
    "stactools-sentinel-2-l2a-baseline-05.09.json": "sentinel-2-l2a",
    "stactools-sentinel-1-grd.json": "sentinel-1-grd",
    "stactools-cop-dem-glo-30.json": "cop-dem-glo-30",
}
PLANETARY_COMPUTER_ITEMS = (
    "planetary-computer-sentinel-2-l2a.json",
    "planetary-computer-sentinel-1-rtc.json",
)


def test_catalogs_load_with_expected_sources() -> None:
    earth_search = load_catalog(EARTH_SEARCH)
    planetary_computer = load_catalog(PLANETARY_COMPUTER)

    assert earth_search.url == "https://earth-search.aws.element84.com/v1"
    assert planetary_computer.url == "https://planetarycomputer.microsoft.com/api/stac/v1"
    assert {m: s.collection for m, s in earth_search.modalities.items()} == {
        "s2": "sentinel-2-l2a",
        "s1": "sentinel-1-grd",
        "dem": "cop-dem-glo-30",
    }
    assert {m: s.collection for m, s in planetary_computer.modalities.items()} == {
        "s2": "sentinel-2-l2a",
        "s1": "sentinel-1-rtc",
        "dem": "cop-dem-glo-30",
    }
    assert {s.signing for s in earth_search.modalities.values()} == {None}
    assert {s.signing for s in planetary_computer.modalities.values()} == {"planetary-computer"}
    for catalog in (earth_search, planetary_computer):
        assert "Contains modified Copernicus Sentinel data" in catalog.licence
        assert "(c) DLR e.V. 2010-2014" in catalog.licence
        assert catalog.source("dem").dem is not None
        assert catalog.source("dem").dem.vertical_datum == "EGM2008"


def test_radiometry_declared_per_source() -> None:
    earth_search = load_catalog(EARTH_SEARCH)
    planetary_computer = load_catalog(PLANETARY_COMPUTER)

    for catalog in (earth_search, planetary_computer):
        s2 = catalog.source("s2")
        assert s2.nodata == 0
        assert s2.s2 is not None
        assert s2.s2.scale == 0.0001
        assert s2.s2.offset == "baseline"
    assert earth_search.source("s1").s1 is not None
    assert earth_search.source("s1").s1.units == "dn"
    rtc = planetary_computer.source("s1")
    assert rtc.s1 is not None
    assert (rtc.s1.units, rtc.s1.quantity, rtc.s1.product) == ("linear", "gamma0", "RTC")
    assert rtc.s1.terrain_flattening is True
    assert rtc.nodata == -32768


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("catalog_path", "file_name", "modality"),
    [
        (EARTH_SEARCH, "stactools-sentinel-2-l2a-baseline-02.12.json", "s2"),
        (EARTH_SEARCH, "stactools-sentinel-2-l2a-baseline-05.09.json", "s2"),
        (EARTH_SEARCH, "stactools-sentinel-1-grd.json", "s1"),
        (EARTH_SEARCH, "stactools-cop-dem-glo-30.json", "dem"),
        (PLANETARY_COMPUTER, "planetary-computer-sentinel-2-l2a.json", "s2"),
        (PLANETARY_COMPUTER, "planetary-computer-sentinel-1-rtc.json", "s1"),
    ],
)
def test_asset_keys_match_real_items(
    shared_data: Path, catalog_path: Path, file_name: str, modality: str
) -> None:
    source = load_catalog(catalog_path).source(modality)

    for item in read_items(shared_data, file_name):
        assets = item["assets"]
        for band in source.bands:
            assert band.asset in assets, (item["id"], band.name)
            if modality == "s2":
                assert assets[band.asset]["eo:bands"][0]["name"] == band.name
        if source.mask is not None and source.mask.asset is not None:
            assert source.mask.asset in assets, item["id"]
    if modality == "s2":
        assert [band.name for band in source.bands] == list(S2_BANDS)


@pytest.mark.shared_data
def test_rtc_nodata_matches_items(shared_data: Path) -> None:
    source = load_catalog(PLANETARY_COMPUTER).source("s1")

    for item in read_items(shared_data, "planetary-computer-sentinel-1-rtc.json"):
        for band in source.bands:
            assert item["assets"][band.asset]["raster:bands"][0]["nodata"] == source.nodata


def test_signing_stays_out_of_config_hash(tmp_path: Path) -> None:
    data = yaml.safe_load(PLANETARY_COMPUTER.read_text(encoding="utf-8"))
    del data["source"]["signing"]
    unsigned_path = tmp_path / "planetary-computer.yaml"
    unsigned_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    signed = catalog_to_json(load_catalog(PLANETARY_COMPUTER))
    unsigned = catalog_to_json(load_catalog(unsigned_path))

    assert "signing" not in json.dumps(signed)
    assert signed == unsigned


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"kind": "stac-api", "url": "http://127.0.0.1:9/", "signing": "aws"},
            r"invalid source\.signing 'aws'; choose one of \['planetary-computer'\]",
        ),
        (
            {"kind": "stac-geoparquet", "href": "items.parquet", "signing": "planetary-computer"},
            r"source\.signing applies to source\.kind 'stac-api' only, not 'stac-geoparquet'; "
            r"remove source\.signing",
        ),
    ],
    ids=["unknown-method", "not-stac-api"],
)
def test_invalid_signing_rejected(tmp_path: Path, source: dict[str, Any], message: str) -> None:
    data = yaml.safe_load(PLANETARY_COMPUTER.read_text(encoding="utf-8"))
    data["source"] = source
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    with pytest.raises(ConfigError, match=message):
        load_catalog(path)


def test_signing_without_package_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec

    def without_planetary_computer(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "planetary_computer" else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_planetary_computer)

    with pytest.raises(
        ConfigError,
        match=r"source\.signing 'planetary-computer' needs the planetary-computer package; "
        r"install it with: pip install 'sensorcube\[planetary-computer\]'",
    ):
        load_catalog(PLANETARY_COMPUTER)


# ----------------------------------------------------------------------------------------------
# Example regions, planned offline


def _working_folder(root: Path, url: str, catalog: str, region: str) -> Path:
    """Copy a catalog (with ``source.url`` set to ``url``) and an example region into ``root``."""
    (root / "catalogs").mkdir(parents=True)
    data = yaml.safe_load((REPO_ROOT / "catalogs" / f"{catalog}.yaml").read_text("utf-8"))
    data["source"]["url"] = url
    (root / "catalogs" / f"{catalog}.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    shutil.copytree(REPO_ROOT / "splits" / region, root / "splits" / region)
    return root


def _plan_summary(
    workdir: Path, region: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.chdir(workdir)
    capsys.readouterr()

    code = main(["plan", region])
    captured = capsys.readouterr()

    assert code == EXIT_OK, captured.err
    summary: dict[str, Any] = json.loads(captured.out)
    assert not (workdir / "cubes").exists()
    assert sorted(p.name for p in (workdir / "splits" / region).iterdir()) == ["region.yaml"]
    return summary


@pytest.mark.shared_data
def test_earth_search_example_plans_offline(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [
        with_changes(item, collection=collection)
        for file_name, collection in EARTH_SEARCH_ITEMS.items()
        for item in read_items(shared_data, file_name)
    ]
    with serve_items(items, tmp_path / "api") as url:
        workdir = _working_folder(tmp_path / "work", url, "earth-search", "example-earth-search")
        summary = _plan_summary(workdir, "example-earth-search", capsys, monkeypatch)

    assert summary["region"] == "example-earth-search"
    assert summary["chips"] == 67
    assert summary["chips_per_crs"] == {"EPSG:32701": 35, "EPSG:32760": 32}
    assert summary["s2_items"] == 1
    assert summary["chips_without_s2_items"] == 0


@pytest.mark.shared_data
def test_planetary_computer_example_plans_offline(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [item for name in PLANETARY_COMPUTER_ITEMS for item in read_items(shared_data, name)]
    with serve_items(items, tmp_path / "api") as url:
        workdir = _working_folder(
            tmp_path / "work", url, "planetary-computer", "example-planetary-computer"
        )
        summary = _plan_summary(workdir, "example-planetary-computer", capsys, monkeypatch)

    assert summary["chips"] == 20
    assert summary["chips_per_crs"] == {"EPSG:32646": 10, "EPSG:32647": 10}
    assert summary["s2_items"] == 2
    assert summary["chips_without_s2_items"] == 0


def test_earth_search_grd_rejected_with_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real catalog file, unchanged: validation fails before any search is sent.
    workdir = tmp_path / "work"
    shutil.copytree(REPO_ROOT / "catalogs", workdir / "catalogs")
    shutil.copytree(
        REPO_ROOT / "splits" / "example-earth-search", workdir / "splits" / "example-earth-search"
    )
    region_path = workdir / "splits" / "example-earth-search" / "region.yaml"
    region = yaml.safe_load(region_path.read_text(encoding="utf-8"))
    region["modalities"]["s1"] = {"catalog": "earth-search", "bands": ["VV", "VH"]}
    region_path.write_text(yaml.safe_dump(region, sort_keys=False), encoding="utf-8")
    monkeypatch.chdir(workdir)

    code = main(["plan", "example-earth-search"])
    stderr = capsys.readouterr().err

    assert code == EXIT_USAGE
    assert re.search(
        r"splits/example-earth-search/region\.yaml: modalities\.s1 reads collection "
        r"'sentinel-1-grd' of catalog 'earth-search' \(catalogs/earth-search\.yaml\), whose "
        r"rasters are uncalibrated digital numbers \(radiometry\.units dn\) in radar geometry, "
        r"not backscatter, and sensorcube neither calibrates nor terrain-corrects them; read "
        r"Sentinel-1 from collection 'sentinel-1-rtc' of catalog 'planetary-computer' "
        r"\(terrain-flattened gamma0\) or from another catalog of calibrated sigma0 or gamma0 "
        r"products",
        stderr,
    )


def test_dn_source_given_a_quantity_rejected(tmp_path: Path) -> None:
    data = yaml.safe_load(EARTH_SEARCH.read_text(encoding="utf-8"))
    data["modalities"]["s1"]["radiometry"]["quantity"] = "sigma0"
    path = tmp_path / "earth-search.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    with pytest.raises(
        ConfigError, match=r"invalid modalities\.s1\.radiometry\.quantity 'sigma0'; choose one of"
    ):
        load_catalog(path)
