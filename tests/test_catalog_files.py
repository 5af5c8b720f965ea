"""The catalog files of the VHR and hyperspectral sources: each loads, names its licence, and
serves a region that requests its modality."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import pipeline.search
from pipeline.chip_modalities import asset_href
from pipeline.config import load_catalog, load_catalogs, load_region

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "planetary-computer-naip": ("vhr", "naip", "public domain"),
    "maxar-open-data": ("vhr", "Kahramanmaras-turkey-earthquake-23", "CC BY-NC 4.0"),
    "enmap-dlr": ("hsi", "ENMAP_HSI_L2A", "(c) DLR"),
    "emit-cmr": ("hsi", "EMITL2ARFL_001", "10.5067/EMIT/EMITL2ARFL.001"),
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_catalog_declares_source_and_licence(name: str) -> None:
    modality, collection, licence = SOURCES[name]

    catalog = load_catalog(REPO_ROOT / "catalogs" / f"{name}.yaml")

    assert list(catalog.modalities) == [modality]
    assert catalog.source(modality).collection == collection
    assert licence in catalog.licence


def test_naip_bands_are_the_four_image_bands() -> None:
    source = load_catalog(REPO_ROOT / "catalogs/planetary-computer-naip.yaml").source("vhr")

    assert [(band.name, band.asset, band.index) for band in source.bands] == [
        ("red", "image", 1),
        ("green", "image", 2),
        ("blue", "image", 3),
        ("nir", "image", 4),
    ]
    assert source.signing == "planetary-computer"
    assert source.vhr is not None
    assert source.vhr.units == "dn"


@pytest.mark.parametrize(
    ("modalities"),
    [
        {
            "vhr": {
                "catalog": "planetary-computer-naip",
                "bands": ["red", "nir"],
                "resolution": 1.25,
            }
        },
        {"vhr": {"catalog": "maxar-open-data", "bands": ["red", "green", "blue"]}},
        {"hsi": {"catalog": "enmap-dlr", "resolution": 30}},
        {"hsi": {"catalog": "emit-cmr", "resolution": 60}},
    ],
    ids=["naip", "maxar", "enmap", "emit"],
)
def test_region_requests_modality_from_catalog(tmp_path: Path, modalities: dict[str, Any]) -> None:
    region_path = tmp_path / "region.yaml"
    region_path.write_text(
        yaml.safe_dump(
            {
                "name": "check",
                "aoi": {
                    "type": "Polygon",
                    "coordinates": [[[13.0, 52.4], [13.1, 52.4], [13.1, 52.5], [13.0, 52.4]]],
                },
                "time": {"start": "2023-06-01", "end": "2023-06-30"},
                "grid": {"chip_size": 96, "resolution": 10},
                "modalities": modalities,
            }
        ),
        encoding="utf-8",
    )

    region = load_region(region_path)
    catalogs = load_catalogs(region, REPO_ROOT / "catalogs")

    assert set(region.selections()) == set(modalities)
    assert len(catalogs) == 1


def test_signed_catalog_signs_vhr_hrefs(monkeypatch: pytest.MonkeyPatch) -> None:
    source = load_catalog(REPO_ROOT / "catalogs/planetary-computer-naip.yaml").source("vhr")
    token = SimpleNamespace(token="sv=2021&sig=FAKE")
    monkeypatch.setattr(pipeline.search, "collection_token", lambda collection: token)
    href = "https://naipeuwest.blob.core.windows.net/naip/v002/nd/2018/m_4709963_se_14_060.tif"
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "nd_m_4709963_se_14_060_20180716",
        "geometry": None,
        "properties": {"datetime": dt.datetime(2018, 7, 16, tzinfo=dt.UTC).isoformat()},
        "assets": {"image": {"href": href}},
        "links": [],
    }

    assert asset_href(item, source, "image") == f"{href}?sv=2021&sig=FAKE"
    assert item["assets"]["image"]["href"] == href
