"""The one module that calls GDAL through rasterio directly.

odc-stac does the chip reads. This module contains the GDAL settings that travel to every Dask
worker and the cloud-optimized GeoTIFF writer used to build local catalogs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import rasterio
import rasterio.shutil

# GDAL configuration options applied around every read, on every worker. They are passed to
# tasks explicitly because environment variables of the client do not reach remote workers.
DEFAULT_GDAL_OPTIONS: Mapping[str, str | int | bool] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": 5,
    "GDAL_HTTP_RETRY_DELAY": 1,
    "GDAL_HTTP_TIMEOUT": 60,
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2",
    "VSI_CACHE": True,
    "GDAL_CACHEMAX": 256,
}


def raster_profile(path: Path) -> dict[str, object]:
    """Return the CRS, transform, shape, dtype and nodata of a raster file."""
    with rasterio.open(path) as dataset:
        return {
            "epsg": dataset.crs.to_epsg() if dataset.crs else None,
            "transform": tuple(dataset.transform)[:6],
            "shape": (dataset.height, dataset.width),
            "dtype": dataset.dtypes[0],
            "nodata": dataset.nodata,
            "count": dataset.count,
        }


def write_cog(src_path: Path, dst_path: Path, *, nodata: float | None = None) -> None:
    """Copy a GeoTIFF into a cloud-optimized GeoTIFF (deflate, internal tiles).

    ``nodata`` is set on an intermediate GeoTIFF because the COG driver takes no nodata
    creation option.
    """
    source = src_path
    intermediate = dst_path.with_name(f".{dst_path.name}.nodata.tif")
    with rasterio.Env(GDAL_NUM_THREADS="1"):
        if nodata is not None:
            with rasterio.open(src_path) as src:
                profile = {**src.profile, "driver": "GTiff", "nodata": nodata}
                with rasterio.open(intermediate, "w", **profile) as dst:
                    dst.write(src.read())
            source = intermediate
        rasterio.shutil.copy(
            str(source), str(dst_path), driver="COG", compress="DEFLATE", blocksize=256
        )
    intermediate.unlink(missing_ok=True)
