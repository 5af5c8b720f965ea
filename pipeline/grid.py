"""Chips on a global lattice in the UTM (or UPS) zone of each chip's centre.

A chip with lattice indices ``(col, row)`` in CRS ``EPSG:<epsg>`` covers
``x in [col * E, (col + 1) * E)`` and ``y in [row * E, (row + 1) * E)`` metres, where
``E = chip_size * resolution``. Origins are exact multiples of ``E``, so reruns and neighbouring
regions produce the same chips. This module is pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import antimeridian
import numpy as np
import shapely
import shapely.geometry
from odc.geo.geobox import GeoBox
from pyproj import CRS, Transformer

from pipeline.config import GridSpec

UPS_NORTH_EPSG = 32661
UPS_SOUTH_EPSG = 32761
UTM_NORTH_LIMIT_DEG = 84.0
UTM_SOUTH_LIMIT_DEG = -80.0
# Projected margin kept around a zone's longitude band so chips near the zone edge see the whole
# AOI around them.
ZONE_MARGIN_DEG = 1.0


def zone_epsg(lon: float, lat: float) -> int:
    """Return the EPSG code of the WGS 84 UTM zone (or UPS area) containing a point.

    Standard 6-degree zones are used everywhere, without the Norway and Svalbard exceptions, so
    the rule is the same at every latitude.
    """
    if lat >= UTM_NORTH_LIMIT_DEG:
        return UPS_NORTH_EPSG
    if lat < UTM_SOUTH_LIMIT_DEG:
        return UPS_SOUTH_EPSG
    zone = math.floor((lon + 180.0) / 6.0) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def zone_epsg_array(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Vectorised :func:`zone_epsg`."""
    zone = (np.floor((lon + 180.0) / 6.0).astype(np.int64) % 60) + 1
    epsg = np.where(lat >= 0, 32600, 32700) + zone
    epsg = np.where(lat >= UTM_NORTH_LIMIT_DEG, UPS_NORTH_EPSG, epsg)
    return np.where(lat < UTM_SOUTH_LIMIT_DEG, UPS_SOUTH_EPSG, epsg)


@lru_cache(maxsize=128)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(CRS.from_epsg(epsg), CRS.from_epsg(4326), always_xy=True)


def project_geometry(
    geometry: shapely.Geometry, *, src_epsg: int, dst_epsg: int
) -> shapely.Geometry:
    """Reproject a shapely geometry between two EPSG codes through PROJ."""
    if src_epsg == dst_epsg:
        return geometry
    transformer = Transformer.from_crs(
        CRS.from_epsg(src_epsg), CRS.from_epsg(dst_epsg), always_xy=True
    )
    return shapely.transform(geometry, lambda xy: np.column_stack(transformer.transform(*xy.T)))


@dataclass(frozen=True, order=True)
class Chip:
    """One square chip of the global lattice; a frozen plan object with a stable Dask token."""

    epsg: int
    col: int
    row: int
    chip_size: int
    resolution_m: float

    @property
    def id(self) -> str:
        return f"{self.epsg}_{self.col}_{self.row}"

    @property
    def extent_m(self) -> float:
        return self.chip_size * self.resolution_m

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) in metres in the chip's CRS."""
        extent = self.extent_m
        return (
            self.col * extent,
            self.row * extent,
            (self.col + 1) * extent,
            (self.row + 1) * extent,
        )

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL-order affine (a, b, c, d, e, f) of the chip's top-left pixel corner."""
        x_min, _, _, y_max = self.bounds
        return (self.resolution_m, 0.0, x_min, 0.0, -self.resolution_m, y_max)

    def geobox(self, resolution_m: float | None = None) -> GeoBox:
        """Build the chip's GeoBox at the base resolution or a coarser one that nests in it."""
        resolution = self.resolution_m if resolution_m is None else resolution_m
        return GeoBox.from_bbox(self.bounds, crs=self.crs, resolution=resolution, tight=True)

    def footprint(self) -> shapely.Polygon:
        return shapely.box(*self.bounds)

    def footprint_lonlat(self, densify: int = 8) -> shapely.Geometry:
        """Footprint in lon/lat, with points added along each edge before reprojection.

        A chip that crosses the antimeridian becomes a MultiPolygon with one part on each side,
        because as one planar polygon its longitudes would jump from +180 to -180 and it would
        cover the rest of the globe.
        """
        polygon = shapely.segmentize(self.footprint(), self.extent_m / densify)
        transformer = _to_lonlat(self.epsg)
        lonlat = shapely.transform(
            polygon, lambda xy: np.column_stack(transformer.transform(*xy.T))
        )
        min_lon, _, max_lon, _ = lonlat.bounds
        if max_lon - min_lon <= 180.0:
            return lonlat
        return shapely.geometry.shape(
            antimeridian.fix_shape(shapely.geometry.mapping(lonlat), fix_winding=True)
        )

    def centre_lonlat(self) -> tuple[float, float]:
        x_min, y_min, x_max, y_max = self.bounds
        lon, lat = _to_lonlat(self.epsg).transform((x_min + x_max) / 2, (y_min + y_max) / 2)
        return float(lon), float(lat)


def candidate_zones(aoi: shapely.Geometry) -> list[int]:
    """List the zones whose longitude band (or polar cap) the AOI touches."""
    min_lon, min_lat, max_lon, max_lat = aoi.bounds
    zones: set[int] = set()
    if max_lat >= UTM_NORTH_LIMIT_DEG - ZONE_MARGIN_DEG:
        zones.add(UPS_NORTH_EPSG)
    if min_lat < UTM_SOUTH_LIMIT_DEG + ZONE_MARGIN_DEG:
        zones.add(UPS_SOUTH_EPSG)
    first = math.floor((min_lon + 180.0) / 6.0)
    last = math.floor((min(max_lon, 179.999999) + 180.0) / 6.0)
    for index in range(first, last + 1):
        zone = index % 60 + 1
        if max_lat >= 0 - ZONE_MARGIN_DEG:
            zones.add(32600 + zone)
        if min_lat < 0 + ZONE_MARGIN_DEG:
            zones.add(32700 + zone)
    return sorted(zones)


def _zone_window(epsg: int) -> shapely.Polygon:
    """Return the lon/lat area, with margin, from which chips of a zone are generated."""
    margin = ZONE_MARGIN_DEG
    if epsg == UPS_NORTH_EPSG:
        return shapely.box(-180, UTM_NORTH_LIMIT_DEG - margin, 180, 90)
    if epsg == UPS_SOUTH_EPSG:
        return shapely.box(-180, -90, 180, UTM_SOUTH_LIMIT_DEG + margin)
    zone = epsg % 100
    west = -180.0 + (zone - 1) * 6.0
    south, north = (
        (0.0 - margin, UTM_NORTH_LIMIT_DEG) if epsg < 32700 else (UTM_SOUTH_LIMIT_DEG, margin)
    )
    return shapely.box(west - margin, south, west + 6.0 + margin, north)


def chips_for_aoi(aoi: shapely.Geometry, grid: GridSpec) -> list[Chip]:
    """List the chips whose footprint meets the AOI by the grid's coverage rule.

    Each chip is generated only in the zone that contains its centre, so a region spanning zones
    yields chips in each zone and no chip twice. The result is sorted by chip id order
    (epsg, col, row) and is the same on every run.
    """
    chips: list[Chip] = []
    for epsg in candidate_zones(aoi):
        chips.extend(_chips_in_zone(aoi, grid, epsg))
    return sorted(chips)


def _chips_in_zone(aoi: shapely.Geometry, grid: GridSpec, epsg: int) -> Iterator[Chip]:
    local_aoi = shapely.intersection(aoi, _zone_window(epsg))
    if local_aoi.is_empty:
        return
    # Densify in degrees so straight lon/lat edges stay close to their projected curves.
    local_aoi = shapely.segmentize(local_aoi, 0.01)
    projected = project_geometry(local_aoi, src_epsg=4326, dst_epsg=epsg)
    shapely.prepare(projected)
    cells: set[tuple[int, int]] = set()
    # Cells are enumerated per polygon part, so far-apart parts do not span one huge bounding box.
    for part in shapely.get_parts(projected):
        cells.update(_cells_meeting(part, projected, grid, epsg))
    for col, row in sorted(cells):
        yield Chip(
            epsg=epsg, col=col, row=row, chip_size=grid.chip_size, resolution_m=grid.resolution_m
        )


def _cells_meeting(
    part: shapely.Geometry, projected: shapely.Geometry, grid: GridSpec, epsg: int
) -> list[tuple[int, int]]:
    """Lattice cells in ``part``'s bounds that meet ``projected`` by the coverage rule and whose
    centre lies in zone ``epsg``."""
    extent = grid.chip_extent_m
    x_min, y_min, x_max, y_max = part.bounds
    cols = np.arange(math.floor(x_min / extent), math.ceil(x_max / extent))
    rows = np.arange(math.floor(y_min / extent), math.ceil(y_max / extent))
    if cols.size == 0 or rows.size == 0:
        return []
    col_grid, row_grid = np.meshgrid(cols, rows, indexing="ij")
    col_flat = col_grid.ravel()
    row_flat = row_grid.ravel()
    boxes = shapely.box(
        col_flat * extent, row_flat * extent, (col_flat + 1) * extent, (row_flat + 1) * extent
    )
    if grid.coverage == "within":
        keep = shapely.within(boxes, projected)
    else:
        keep = shapely.intersects(boxes, projected) & ~shapely.touches(boxes, projected)
    lon, lat = _to_lonlat(epsg).transform((col_flat + 0.5) * extent, (row_flat + 0.5) * extent)
    keep &= zone_epsg_array(np.asarray(lon), np.asarray(lat)) == epsg
    return [(int(c), int(r)) for c, r in zip(col_flat[keep], row_flat[keep], strict=True)]


def chip_from_id(chip_id: str, grid: GridSpec) -> Chip:
    """Parse ``<epsg>_<col>_<row>`` back into a :class:`Chip`."""
    epsg, col, row = (int(part) for part in chip_id.split("_"))
    return Chip(
        epsg=epsg, col=col, row=row, chip_size=grid.chip_size, resolution_m=grid.resolution_m
    )
