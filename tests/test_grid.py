"""Lattice and zone maths of pipeline.grid, with property tests on synthetic AOIs."""

from __future__ import annotations

import math

import dask.base
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import GridSpec
from pipeline.grid import Chip, chip_from_id, chips_for_aoi, zone_epsg

GRID = GridSpec(chip_size=264, resolution_m=10.0, coverage="intersects")


def test_zone_epsg_known_points() -> None:
    assert zone_epsg(13.72, 48.22) == 32633
    assert zone_epsg(-8.21, 39.36) == 32629
    assert zone_epsg(30.3, 62.7) == 32636
    assert zone_epsg(-70.0, -33.0) == 32719
    assert zone_epsg(0.0, 85.0) == 32661
    assert zone_epsg(0.0, -81.0) == 32761
    assert zone_epsg(180.0, 10.0) == 32601


def test_chip_origin_is_lattice_multiple() -> None:
    chip = Chip(epsg=32633, col=153, row=2023, chip_size=264, resolution_m=10.0)
    x_min, y_min, x_max, _y_max = chip.bounds
    assert x_min == 153 * 2640
    assert y_min == 2023 * 2640
    assert x_max - x_min == 2640
    assert chip.id == "32633_153_2023"
    assert chip_from_id(chip.id, GRID) == chip
    assert chip.geobox().shape == (264, 264)
    assert chip.geobox(30.0).shape == (88, 88)


def test_negative_indices_round_trip() -> None:
    chip = Chip(epsg=32661, col=-4, row=-7, chip_size=32, resolution_m=10.0)
    spec = GridSpec(chip_size=32, resolution_m=10.0, coverage="within")
    assert chip_from_id(chip.id, spec) == chip


def test_region_across_zones_has_no_duplicates() -> None:
    # 11.5E to 12.5E straddles the 12E boundary of zones 32 and 33.
    aoi = shapely.box(11.9, 47.0, 12.1, 47.1)
    chips = chips_for_aoi(aoi, GRID)
    zones = {chip.epsg for chip in chips}
    assert zones == {32632, 32633}
    ids = [chip.id for chip in chips]
    assert len(ids) == len(set(ids))
    for chip in chips:
        lon, lat = chip.centre_lonlat()
        assert zone_epsg(lon, lat) == chip.epsg


def test_reruns_give_same_chips() -> None:
    aoi = shapely.box(13.0, 52.0, 13.3, 52.2)
    assert chips_for_aoi(aoi, GRID) == chips_for_aoi(aoi, GRID)


def test_neighbouring_regions_share_chips() -> None:
    left = chips_for_aoi(shapely.box(13.0, 52.0, 13.2, 52.1), GRID)
    right = chips_for_aoi(shapely.box(13.1, 52.0, 13.3, 52.1), GRID)
    shared = {c.id for c in left} & {c.id for c in right}
    assert shared, "overlapping regions must produce the same chips on the overlap"


def test_within_is_subset_of_intersects() -> None:
    aoi = shapely.box(13.0, 52.0, 13.1, 52.05)
    inside = chips_for_aoi(aoi, GridSpec(264, 10.0, "within"))
    touching = chips_for_aoi(aoi, GRID)
    assert set(inside) < set(touching)


def test_dask_token_is_stable() -> None:
    chip = Chip(epsg=32633, col=1, row=2, chip_size=32, resolution_m=10.0)
    same = Chip(epsg=32633, col=1, row=2, chip_size=32, resolution_m=10.0)
    other = Chip(epsg=32633, col=1, row=3, chip_size=32, resolution_m=10.0)
    assert dask.base.tokenize(chip) == dask.base.tokenize(same)
    assert dask.base.tokenize(chip) != dask.base.tokenize(other)


@settings(max_examples=40, deadline=None)
@given(
    lon=st.floats(-179.0, 178.0),
    lat=st.floats(-79.0, 83.0),
    width=st.floats(0.005, 0.08),
    height=st.floats(0.005, 0.05),
)
def test_chips_cover_aoi_once(lon: float, lat: float, width: float, height: float) -> None:
    aoi = shapely.box(lon, lat, lon + width, lat + height)
    spec = GridSpec(chip_size=64, resolution_m=10.0, coverage="intersects")
    chips = chips_for_aoi(aoi, spec)
    assert len({c.id for c in chips}) == len(chips)
    for chip in chips:
        x_min, y_min, _, _ = chip.bounds
        assert math.isclose(x_min % chip.extent_m, 0.0, abs_tol=1e-6)
        assert math.isclose(y_min % chip.extent_m, 0.0, abs_tol=1e-6)
        lon_c, lat_c = chip.centre_lonlat()
        assert zone_epsg(lon_c, lat_c) == chip.epsg
    # The centre of the AOI falls in a chip footprint, unless it is near a zone boundary: the
    # lattices of two zones do not align, so a strip narrower than a chip there has no chip.
    centre = aoi.centroid
    boundary_distance = abs((centre.x + 180.0) / 6.0 - round((centre.x + 180.0) / 6.0)) * 6.0
    if boundary_distance > 0.1:
        union = shapely.union_all([c.footprint_lonlat() for c in chips])
        assert union.buffer(1e-6).contains(centre)


def test_chip_across_antimeridian_splits_footprint() -> None:
    """A chip over 180 degrees has a two-part lon/lat footprint a few hundred metres wide."""
    x, y = 818938.0, 8084772.0  # lon 180, lat -17.3 in EPSG:32760 (UTM 60S)
    chip = Chip(32760, int(x // 320), int(y // 320), 32, 10.0)
    footprint = chip.footprint_lonlat()
    assert footprint.geom_type == "MultiPolygon"
    west, east = sorted(footprint.geoms, key=lambda part: part.bounds[0])
    assert west.bounds[0] == -180.0
    assert west.bounds[2] < -179.99
    assert east.bounds[0] > 179.99
    assert east.bounds[2] == 180.0
    assert footprint.area < 1e-4  # square degrees; a globe-spanning polygon would be hundreds
