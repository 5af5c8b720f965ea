"""odc-loader's rasterio driver with local files kept open per worker thread.

odc-loader opens the file of every band it reads and closes it afterwards. A region's chips read
the same few files again and again, and adjacent chips share the files' compressed tiles, so
:class:`ChipRioDriver` keeps local datasets open: opening costs nothing after the first chip,
and GDAL's block cache of an open dataset keeps the tiles that neighbouring chips share
decompressed. A band is read as odc-loader reads it: the same region of interest, then the same
window read or ``rasterio.warp.reproject`` call. So the pixels are the same bit for bit, which
``tests/test_rio_reader.py`` checks for every kind of read. Reads from an overview and
reads of remote assets go through odc-loader itself, with retries (:mod:`pipeline.retry`).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
import rasterio.warp
from odc.geo.converters import rio_geobox
from odc.geo.geobox import GeoBox
from odc.geo.overlap import ReprojectInfo, compute_reproject_roi
from odc.geo.roi import roi_is_empty
from odc.loader import (
    RasterLoadParams,
    RasterSource,
    RioReader,
    resolve_dst_nodata,
    resolve_src_nodata,
)
from odc.loader.types import ReaderSubsetSelection
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.windows import Window

from pipeline.retry import RetryingRioDriver, RetryPolicy, _RetryingRioReader

log = logging.getLogger(__name__)

# Open datasets kept per thread. Least recently used ones are closed beyond this number.
MAX_OPEN_DATASETS = 64
# Tolerance in pixels under which odc-loader treats a source grid as a translation of the
# destination grid, so a window read can replace resampling (odc-loader 0.6).
NEAREST_TRANSLATION_TOLERANCE_PX = 0.9
TRANSLATION_TOLERANCE_PX = 0.05

_Key = tuple[str, int, int, int]


class _OpenDatasets(threading.local):
    """Datasets opened by this thread, by path and the file's identity (inode, size, mtime).

    A file that is replaced or rewritten gets a new identity, so it is opened again.
    """

    def __init__(self) -> None:
        self.datasets: collections.OrderedDict[_Key, DatasetReader] = collections.OrderedDict()

    def get(self, path: str) -> DatasetReader:
        stat = os.stat(path)
        key = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        dataset = self.datasets.get(key)
        if dataset is not None:
            self.datasets.move_to_end(key)
            return dataset
        # GDAL decides at open whether a file gets a VSI_CACHE of its raw bytes. These files stay
        # open and the OS caches their pages anyway, so they get none. Decoded tiles stay in
        # GDAL's block cache (GDAL_CACHEMAX) instead.
        with rasterio.Env(VSI_CACHE=False):
            dataset = rasterio.open(path, "r", sharing=False)
        self.datasets[key] = dataset
        if len(self.datasets) > MAX_OPEN_DATASETS:
            _, oldest = self.datasets.popitem(last=False)
            oldest.close()
        return dataset


_OPEN = _OpenDatasets()


def local_path(href: str) -> str | None:
    """Return the file path of a local href (a path or a file:// URL), or None.

    GDAL's virtual file systems (``/vsicurl/``, ``/vsizip/`` and the others) are not local.
    """
    if href.startswith("/vsi"):
        return None
    parts = urlsplit(href)
    if parts.scheme == "file":
        return parts.path
    if parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):
        return href
    return None


class ChipRioDriver(RetryingRioDriver):
    """The reader driver of chip reads: local files from open datasets, the rest retried.

    Pass an instance as ``driver`` to odc-loader. ``pipeline.read`` reads every chip band
    through it.
    """

    def open(self, src: RasterSource, ctx: Any) -> RioReader:
        path = local_path(src.uri)
        if path is None or src.subdataset is not None or not isinstance(src.band, int):
            return super().open(src, ctx)
        return _LocalReader(src, ctx, self.policy, path)


class _LocalReader(_RetryingRioReader):
    def __init__(self, src: RasterSource, ctx: Any, policy: RetryPolicy, path: str) -> None:
        super().__init__(src, ctx, policy)
        self._src = src
        self._path = path

    def read(
        self,
        cfg: RasterLoadParams,
        dst_geobox: GeoBox,
        *,
        dst: np.ndarray | None = None,
        selection: ReaderSubsetSelection | None = None,
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        dataset = _OPEN.get(self._path)
        band = self._src.band
        assert isinstance(band, int)
        tolerance = NEAREST_TRANSLATION_TOLERANCE_PX if cfg.nearest else TRANSLATION_TOLERANCE_PX
        reproject = compute_reproject_roi(rio_geobox(dataset), dst_geobox, ttol=tolerance)
        if dst is None or selection is not None or _reads_overview(dataset, band, cfg, reproject):
            return super().read(cfg, dst_geobox, dst=dst, selection=selection)

        rows, cols = reproject.roi_dst
        roi_dst = (slice(rows.start, rows.stop), slice(cols.start, cols.stop))
        target = dst[roi_dst]
        src_nodata = resolve_src_nodata(dataset.nodatavals[band - 1], cfg)
        dst_nodata = resolve_dst_nodata(target.dtype, cfg, src_nodata)
        if roi_is_empty(roi_dst):
            return roi_dst, target
        if roi_is_empty(reproject.roi_src):
            if dst_nodata is not None:
                target.fill(dst_nodata)
            return roi_dst, target
        if reproject.paste_ok and reproject.read_shrink == 1:
            window = Window.from_slices(*reproject.roi_src)
            dataset.read(band, out=target, window=window)
            if dst_nodata is not None and not _same_nodata(src_nodata, dst_nodata):
                np.copyto(target, dst_nodata, where=_nodata_mask(target, src_nodata))
        else:
            rasterio.warp.reproject(
                rasterio.band(dataset, band),
                target,
                src_nodata=src_nodata,
                dst_crs=str(dst_geobox.crs),
                dst_transform=dst_geobox[roi_dst].transform,
                dst_nodata=dst_nodata,
                resampling=Resampling[cfg.resampling],
            )
        return roi_dst, target


def _reads_overview(
    dataset: DatasetReader, band: int, cfg: RasterLoadParams, reproject: ReprojectInfo
) -> bool:
    """Return whether odc-loader would read this band from an overview."""
    if not cfg.use_overviews or reproject.read_shrink <= 1:
        return False
    overviews = dataset.overviews(band)
    return bool(overviews) and reproject.read_shrink >= overviews[0]


def _same_nodata(first: float | None, second: float | None) -> bool:
    if first is None or second is None:
        return first is None and second is None
    if math.isnan(first) or math.isnan(second):
        return math.isnan(first) and math.isnan(second)
    return first == second


def _nodata_mask(values: np.ndarray, nodata: float | None) -> np.ndarray:
    if values.dtype.kind == "f":
        missing: np.ndarray = np.isnan(values)
        if nodata is not None and not math.isnan(nodata):
            missing |= values == nodata
        return missing
    if nodata is None:
        return np.zeros(values.shape, dtype=bool)
    result: np.ndarray = values == nodata
    return result
