"""Bad or unusual geometry and catalog input through the CLI: polar caps, the antimeridian,
unknown catalog keys. Each case pins its message and exit code and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import shapely

from pipeline.config import GridSpec
from pipeline.grid import UPS_NORTH_EPSG, chips_for_aoi
from tests.test_cli_errors import (
    CATALOG_FILE,
    EXIT_FAILURE,
    EXIT_USAGE,
    REGION_FILE,
    cwd,
    edit_yaml,
    run_cli_without_writes,
    set_key,
)

__all__ = ["cwd"]  # the fixture is used by name

ARCTIC = {
    "type": "Polygon",
    "coordinates": [[[10.0, 85.0], [10.2, 85.0], [10.2, 85.02], [10.0, 85.02], [10.0, 85.0]]],
}
# Drawn from 179E to 179W the long way round: 358 degrees wide.
ACROSS_ANTIMERIDIAN = {
    "type": "Polygon",
    "coordinates": [
        [[179.0, -17.0], [-179.0, -17.0], [-179.0, -16.0], [179.0, -16.0], [179.0, -17.0]]
    ],
}


def test_arctic_aoi_uses_ups_north() -> None:
    chips = chips_for_aoi(shapely.geometry.shape(ARCTIC), GridSpec(32, 10.0, "intersects"))
    assert chips
    assert {chip.epsg for chip in chips} == {UPS_NORTH_EPSG}


def test_arctic_aoi_without_items(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("aoi", value=ARCTIC))
    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")
    assert code == EXIT_FAILURE
    assert "catalog 'sample' returned no items in collection 'bigearthnet-s2-l2a'" in stderr


def test_antimeridian_polygon_rejected(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("aoi", value=ACROSS_ANTIMERIDIAN))
    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")
    assert code == EXIT_USAGE
    assert "an aoi polygon spans 358.0 degrees of longitude (-179 to 179)" in stderr
    assert "split it at 180 degrees into a MultiPolygon" in stderr


def test_antimeridian_multipolygon_planned(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both_sides = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[179.0, -17.0], [180.0, -17.0], [180.0, -16.9], [179.0, -16.9], [179.0, -17.0]]],
            [[[-180.0, -17.0], [-179.0, -17.0], [-179.0, -16.9], [-180.0, -16.9], [-180.0, -17.0]]],
        ],
    }
    chips = chips_for_aoi(shapely.geometry.shape(both_sides), GridSpec(264, 10.0, "intersects"))
    assert {chip.epsg for chip in chips} == {32760, 32701}
    assert len({chip.id for chip in chips}) == len(chips)


def test_catalog_unknown_key(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / CATALOG_FILE, set_key("modalities", "s2", "band_names", value=["B04"]))
    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")
    assert code == EXIT_USAGE
    assert "catalogs/sample.yaml: unknown key 'modalities.s2.band_names'" in stderr
    assert "valid keys here are ['collection', 'bands', 'nodata', 'radiometry', 'mask']" in stderr
