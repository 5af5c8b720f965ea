"""GDAL reads and writes through rasterio, apart from the bands of chip reads.

Chip bands are read by odc-loader's driver in :mod:`pipeline.rio_reader`. This module contains
the GDAL settings that travel to every Dask worker, the other reads (mosaics, complex rasters,
NetCDF variables) and the cloud-optimized GeoTIFF writer used to build local catalogs.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import rasterio
import rasterio.shutil
import rasterio.warp
import rasterio.windows
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.warp import reproject

from pipeline.errors import ConfigError, ReadError
from pipeline.retry import RetryPolicy, gdal_path, mask_secrets, retry_read

# GDAL configuration options applied around every read, on every worker. They are passed to
# tasks explicitly because environment variables of the client do not reach remote workers.
# GDAL retries one HTTP request on 429, 502, 503 and 504 responses and on timeouts, waiting
# GDAL_HTTP_RETRY_DELAY seconds and longer each time. GDAL_HTTP_TIMEOUT bounds a whole request
# in seconds, so a stalled response costs at most that long per try. pipeline.retry repeats
# whole asset reads on top. GDAL drops a dataset's cached blocks and its VSI_CACHE when the
# dataset closes. Each read attempt of a remote asset reopens its dataset, so neither cache keeps
# bytes of a failed attempt. GDAL_CACHEMAX sizes the block cache of a process. Chip reads keep
# local datasets open (pipeline.rio_reader), so their decoded tiles stay in it up to that size.
DEFAULT_GDAL_OPTIONS: Mapping[str, str | int | bool] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": 5,
    "GDAL_HTTP_RETRY_DELAY": 1,
    "GDAL_HTTP_TIMEOUT": 30,
    "GDAL_HTTP_CONNECTTIMEOUT": 10,
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2",
    "VSI_CACHE": True,
    "GDAL_CACHEMAX": 32 * 2**20,
}
# GDAL reads a GDAL_CACHEMAX below this as megabytes, and from it on as bytes.
CACHEMAX_BYTES_FROM = 100_000


def capture_gdal_options(environ: Mapping[str, str] | None = None) -> dict[str, str | int | bool]:
    """Return DEFAULT_GDAL_OPTIONS, each overridden by an environment variable of its name.

    Chip jobs capture this on the client, so ``GDAL_HTTP_TIMEOUT=5 sensorcube run ...``
    reaches every worker, local or remote.
    """
    source = os.environ if environ is None else environ
    options = dict(DEFAULT_GDAL_OPTIONS)
    options.update({key: source[key] for key in DEFAULT_GDAL_OPTIONS if key in source})
    options["GDAL_CACHEMAX"] = cache_max_bytes(options["GDAL_CACHEMAX"])
    return options


def cache_max_bytes(value: str | int | bool) -> int:
    """Return a GDAL_CACHEMAX value in bytes, which is the only form rasterio.Env accepts.

    As GDAL reads it: a number below 100,000 is megabytes, a larger one bytes, and ``N%`` a
    share of the machine's physical memory.
    """
    text = str(value).strip()
    try:
        if text.endswith("%"):
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            share = float(text[:-1])
            if not 0 < share <= 100:
                raise ValueError(text)
            return int(memory * share / 100)
        number = int(text)
    except ValueError:
        number = 0
    if number <= 0 or isinstance(value, bool):
        raise ConfigError(
            f"invalid GDAL_CACHEMAX {value!r}: give megabytes (for example 64), bytes (100000 "
            "or more) or a share of physical memory (for example 5%)"
        )
    return number * 2**20 if number < CACHEMAX_BYTES_FROM else number


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


# Reads of band tags and warps onto a chip grid, used for hyperspectral scenes.
# Every href may be a local path, a GDAL virtual path such as /vsicurl/https://... or an
# http(s) URL, which rasterio opens through /vsicurl/.


@contextmanager
def _open_dataset(
    href: str, gdal_options: Mapping[str, str | int | bool]
) -> Iterator[DatasetReader]:
    """Open ``href`` inside ``rasterio.Env(**gdal_options)``, raising ReadError on failure."""
    with rasterio.Env(**gdal_options):
        try:
            dataset = rasterio.open(href)
        except (RasterioError, CPLE_BaseError) as error:
            raise ReadError(
                mask_secrets(
                    f"opening {href!r} failed: {error}; check that the path or URL exists and "
                    "is a raster GDAL can read"
                )
            ) from error
        with dataset:
            yield dataset


def band_tags(href: str, *, gdal_options: Mapping[str, str | int | bool]) -> list[dict[str, str]]:
    """Read the GDAL metadata tags of every band of ``href``, band 1 first."""
    with _open_dataset(href, gdal_options) as dataset:
        return [dict(dataset.tags(index)) for index in range(1, dataset.count + 1)]


def dataset_tags(href: str, *, gdal_options: Mapping[str, str | int | bool]) -> dict[str, str]:
    """Read the dataset-level GDAL metadata tags of ``href`` (default domain)."""
    with _open_dataset(href, gdal_options) as dataset:
        return dict(dataset.tags())


def _resampling(name: str) -> Resampling:
    try:
        return Resampling[name]
    except KeyError:
        names = ", ".join(member.name for member in Resampling)
        raise ConfigError(f"unknown resampling {name!r}; use one of: {names}") from None


def _north_up_transform(transform: Sequence[float]) -> Affine:
    """Build the Affine of a north-up chip grid given as (a, b, c, d, e, f)."""
    if len(transform) < 6:
        raise ConfigError(
            f"transform {tuple(transform)!r} has {len(transform)} terms; pass the 6 affine "
            "terms (a, b, c, d, e, f) = (x resolution, 0, x origin, 0, -y resolution, y origin)"
        )
    a, b, c, d, e, f = (float(term) for term in transform[:6])
    if b != 0.0 or d != 0.0 or a <= 0.0 or e >= 0.0:
        raise ConfigError(
            f"transform {tuple(transform)!r} is not a north-up grid in affine order; pass "
            "(a, b, c, d, e, f) = (x resolution, 0, x origin, 0, -y resolution, y origin), "
            "not the GDAL geotransform order (x origin, x resolution, 0, y origin, 0, ...)"
        )
    return Affine(a, b, c, d, e, f)


def _check_indexes(href: str, indexes: Sequence[int], count: int) -> None:
    if not indexes:
        raise ConfigError(f"no band indexes were requested from {href!r}; pass at least one")
    for index in indexes:
        if not 1 <= index <= count:
            raise ReadError(
                f"band index {index} is out of range for {href!r}, which has {count} bands; "
                f"band indexes are one-based, from 1 to {count}"
            )


def _warp_dataset(
    dataset: DatasetReader,
    *,
    crs: str,
    transform: Affine,
    shape: tuple[int, int],
    resampling: Resampling,
    indexes: Sequence[int],
    src_nodata: float | None,
) -> np.ndarray:
    destination = np.full((len(indexes), *shape), np.nan, dtype=np.float32)
    reproject(
        source=rasterio.band(dataset, list(indexes)),
        destination=destination,
        src_nodata=dataset.nodata if src_nodata is None else src_nodata,
        dst_transform=transform,
        dst_crs=crs,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return destination


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    height, width = shape
    if height < 1 or width < 1:
        raise ConfigError(f"chip shape {shape!r} is empty; pass (height, width) of at least 1")
    return int(height), int(width)


def warp_to_grid(
    href: str,
    *,
    crs: str,
    transform: tuple[float, ...],
    shape: tuple[int, int],
    resampling: str,
    indexes: Sequence[int],
    src_nodata: float | None,
    gdal_options: Mapping[str, str | int | bool],
) -> np.ndarray:
    """Warp bands of one raster onto a chip grid as float32 (band, y, x).

    ``transform`` is the chip's north-up affine transform in rasterio order (a, b, c, d, e, f),
    ``indexes`` are one-based band numbers and ``src_nodata`` overrides the raster's own nodata
    (None keeps it). The result is NaN where the source has no data or does not cover the chip.
    GDAL reads only the source windows the chip needs.
    """
    grid = _north_up_transform(transform)
    method = _resampling(resampling)
    size = _check_shape(shape)

    def read() -> np.ndarray:
        with _open_dataset(href, gdal_options) as dataset:
            _check_indexes(href, indexes, dataset.count)
            try:
                return _warp_dataset(
                    dataset,
                    crs=crs,
                    transform=grid,
                    shape=size,
                    resampling=method,
                    indexes=indexes,
                    src_nodata=src_nodata,
                )
            except (RasterioError, CPLE_BaseError) as error:
                message = f"warping {href!r} onto the chip grid failed: {error}"
                raise ReadError(mask_secrets(message)) from error

    # A remote href is read again after a transient failure, from a reopened dataset.
    return retry_read(read, hrefs=[href], policy=RetryPolicy.from_gdal_options(gdal_options))


@dataclass(frozen=True)
class _Tile:
    """Header of one tile of a mosaic: its path for a VRT and its pixel grid."""

    href: str
    gdal_path: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    block_shape: tuple[int, int]


def _gdal_path(href: str, dataset: DatasetReader) -> str:
    # URLs keep the /vsicurl/ (or /vsis3/ ...) path that rasterio opened. Local paths become
    # absolute so that the VRT does not depend on the working directory.
    if href.startswith("/vsi"):
        return href
    if "://" in href:
        return str(dataset.name)
    return str(Path(href).resolve())


def _read_tile(href: str, gdal_options: Mapping[str, str | int | bool]) -> _Tile:
    with _open_dataset(href, gdal_options) as dataset:
        if dataset.crs is None:
            raise ReadError(f"{href!r} has no CRS; a mosaic needs georeferenced tiles")
        return _Tile(
            href=href,
            gdal_path=_gdal_path(href, dataset),
            crs=dataset.crs,
            transform=dataset.transform,
            width=dataset.width,
            height=dataset.height,
            count=dataset.count,
            dtype=dataset.dtypes[0],
            nodata=dataset.nodata,
            block_shape=dataset.block_shapes[0],
        )


# Largest distance, in pixels, between a tile's origin and the pixel grid of the first tile.
_ALIGNMENT_TOLERANCE_PX = 1e-3


def _tile_offset(tile: _Tile, first: _Tile, origin: tuple[float, float]) -> tuple[int, int]:
    """Return the (column, row) of ``tile``'s first pixel in a mosaic starting at ``origin``."""
    same_resolution = math.isclose(tile.transform.a, first.transform.a, rel_tol=1e-9) and (
        math.isclose(tile.transform.e, first.transform.e, rel_tol=1e-9)
    )
    if tile.crs != first.crs or not same_resolution:
        raise ReadError(
            f"{tile.href!r} ({tile.crs}, {tile.transform.a:g} x {-tile.transform.e:g}) is not on "
            f"the grid of {first.href!r} ({first.crs}, {first.transform.a:g} x "
            f"{-first.transform.e:g}); read tiles of one grid together and combine the chips "
            "with pipeline.hyperspectral.mosaic_first_valid"
        )
    column = (tile.transform.c - origin[0]) / first.transform.a
    row = (tile.transform.f - origin[1]) / first.transform.e
    if max(abs(column - round(column)), abs(row - round(row))) > _ALIGNMENT_TOLERANCE_PX:
        raise ReadError(
            f"{tile.href!r} starts {column:.4f} columns and {row:.4f} rows from the mosaic origin, "
            f"which is not a whole pixel of the grid of {first.href!r}; read the tiles separately "
            "and combine the chips with pipeline.hyperspectral.mosaic_first_valid"
        )
    return round(column), round(row)


def _check_north_up(tile: _Tile) -> None:
    transform = tile.transform
    if transform.b != 0.0 or transform.d != 0.0 or transform.a <= 0.0 or transform.e >= 0.0:
        raise ReadError(
            f"{tile.href!r} has the transform {tuple(transform)[:6]!r}; only north-up tiles "
            "without rotation can be mosaicked"
        )


def _source_element(
    tile: _Tile, band: int, offset: tuple[int, int], nodata: float | None
) -> ElementTree.Element:
    source = ElementTree.Element("ComplexSource")
    ElementTree.SubElement(source, "SourceFilename", relativeToVRT="0").text = tile.gdal_path
    ElementTree.SubElement(source, "SourceBand").text = str(band)
    # With declared properties GDAL opens a source only when a read touches it (checked with
    # GDAL 3.10: a deleted tile outside the chip did not fail the warp).
    ElementTree.SubElement(
        source,
        "SourceProperties",
        RasterXSize=str(tile.width),
        RasterYSize=str(tile.height),
        DataType=_gdal_data_type(tile.dtype),
        BlockXSize=str(tile.block_shape[1]),
        BlockYSize=str(tile.block_shape[0]),
    )
    size = {"xSize": str(tile.width), "ySize": str(tile.height)}
    ElementTree.SubElement(source, "SrcRect", {"xOff": "0", "yOff": "0", **size})
    destination = {"xOff": str(offset[0]), "yOff": str(offset[1]), **size}
    ElementTree.SubElement(source, "DstRect", destination)
    if nodata is not None:
        # Pixels equal to NODATA leave the VRT band's NaN in place instead of painting.
        ElementTree.SubElement(source, "NODATA").text = repr(float(nodata))
    return source


def _gdal_data_type(dtype: str) -> str:
    return str(_GDAL_DATA_TYPES.get(dtype, "Float64"))


_GDAL_DATA_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


def _mosaic_vrt_xml(
    tiles: Sequence[_Tile], *, indexes: Sequence[int], src_nodata: float | None
) -> str:
    """Build a Float32 VRT that places ``tiles`` side by side, with NaN where none has data.

    VRT band k is source band ``indexes[k - 1]``. GDAL paints sources in document order, so the
    sources are written last tile first and the first tile in ``tiles`` wins where tiles overlap.
    """
    first = tiles[0]
    for tile in tiles:
        _check_north_up(tile)
    origin = (
        min(tile.transform.c for tile in tiles),
        max(tile.transform.f for tile in tiles),
    )
    offsets = [_tile_offset(tile, first, origin) for tile in tiles]
    width = max(column + tile.width for tile, (column, _) in zip(tiles, offsets, strict=True))
    height = max(row + tile.height for tile, (_, row) in zip(tiles, offsets, strict=True))

    root = ElementTree.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ElementTree.SubElement(root, "SRS").text = first.crs.to_wkt()
    mosaic_transform = Affine(first.transform.a, 0.0, origin[0], 0.0, first.transform.e, origin[1])
    ElementTree.SubElement(root, "GeoTransform").text = ", ".join(
        repr(term) for term in mosaic_transform.to_gdal()
    )
    for vrt_band, source_band in enumerate(indexes, start=1):
        band = ElementTree.SubElement(root, "VRTRasterBand", dataType="Float32", band=str(vrt_band))
        ElementTree.SubElement(band, "NoDataValue").text = "nan"
        for tile, offset in reversed(list(zip(tiles, offsets, strict=True))):
            nodata = tile.nodata if src_nodata is None else src_nodata
            band.append(_source_element(tile, source_band, offset, nodata))
    return ElementTree.tostring(root, encoding="unicode")


def warp_mosaic_to_grid(
    hrefs: Sequence[str],
    *,
    crs: str,
    transform: tuple[float, ...],
    shape: tuple[int, int],
    resampling: str,
    indexes: Sequence[int],
    src_nodata: float | None,
    gdal_options: Mapping[str, str | int | bool],
) -> np.ndarray:
    """Warp adjacent tiles of one pixel grid as one mosaic onto a chip grid.

    The tiles are joined in an in-memory GDAL VRT and warped once, so the resampling kernel
    reads the pixels on both sides of every tile border and the chip has no seam. The first
    tile in ``hrefs`` wins where tiles overlap. The arguments and the result are those of
    :func:`warp_to_grid`. Tiles of different CRS, resolution or pixel alignment raise ReadError.
    """
    if not hrefs:
        raise ConfigError("no tiles were given to warp; pass at least one href")
    grid = _north_up_transform(transform)
    method = _resampling(resampling)
    size = _check_shape(shape)

    def read() -> np.ndarray:
        tiles = [_read_tile(href, gdal_options) for href in hrefs]
        for tile in tiles:
            _check_indexes(tile.href, indexes, tile.count)
        vrt_xml = _mosaic_vrt_xml(tiles, indexes=indexes, src_nodata=src_nodata)

        with (
            rasterio.Env(**gdal_options),
            MemoryFile(vrt_xml.encode(), ext=".vrt") as memory_file,
        ):
            try:
                with memory_file.open() as dataset:
                    return _warp_dataset(
                        dataset,
                        crs=crs,
                        transform=grid,
                        shape=size,
                        resampling=method,
                        indexes=range(1, len(indexes) + 1),
                        src_nodata=math.nan,
                    )
            except (RasterioError, CPLE_BaseError) as error:
                message = (
                    f"warping the mosaic of {len(hrefs)} tiles starting with {hrefs[0]!r} onto "
                    f"the chip grid failed: {error}"
                )
                raise ReadError(mask_secrets(message)) from error

    # After a transient failure every tile is opened again, bypassing GDAL's /vsicurl/ cache.
    label = f"the mosaic of {len(hrefs)} tiles starting with {hrefs[0]}"
    policy = RetryPolicy.from_gdal_options(gdal_options)
    return retry_read(read, hrefs=list(hrefs), policy=policy, label=label)


def read_complex_window(
    href: str,
    *,
    window: tuple[int, int, int, int],
    gdal_options: Mapping[str, str | int | bool],
) -> np.ndarray:
    """Read band 1 of a complex raster in ``window`` (row_off, col_off, height, width).

    Pixels of the window outside the raster come back as complex NaN, so a window may reach
    past the raster edge. The result is complex64.
    """
    row_off, col_off, height, width = window

    def read() -> np.ndarray:
        with _open_dataset(href, gdal_options) as dataset:
            if not np.issubdtype(np.dtype(dataset.dtypes[0]), np.complexfloating):
                raise ReadError(
                    f"raster {mask_secrets(href)!r} has data type {dataset.dtypes[0]}; a "
                    "single-look complex source needs a complex band (complex64 or complex128)"
                )
            try:
                values = dataset.read(
                    1,
                    window=rasterio.windows.Window(col_off, row_off, width, height),
                    boundless=True,
                    fill_value=complex(np.nan, np.nan),
                )
            except (RasterioError, CPLE_BaseError) as error:
                raise ReadError(
                    f"reading complex raster {mask_secrets(href)!r} failed: "
                    f"{mask_secrets(str(error))}"
                ) from error
        return np.asarray(values, dtype=np.complex64)

    return retry_read(read, hrefs=[href], policy=RetryPolicy.from_gdal_options(gdal_options))


def gdal_config(options: Mapping[str, str]) -> rasterio.Env:
    """Set GDAL configuration options for the reads inside the block, in this thread."""
    return rasterio.Env(**options)


# ----------------------------------------------------------------------------------------------
# NetCDF-4 variables (EMIT granules), read through GDAL's HDF5 driver, because a NetCDF-4 file
# is an HDF5 file. With GDAL 3.10.3 the netCDF driver reads a /vsicurl/ URL from a helper
# thread that does not see the thread-local options of rasterio.Env, so in a Dask worker
# thread its requests went out without the login. The HDF5 driver reads in the calling thread
# and keeps rows in stored order. A 3-D variable of shape (n, rows, columns) appears as n GDAL
# bands.


def netcdf_gdal_options(
    gdal_options: Mapping[str, str | int | bool],
) -> dict[str, str | int | bool]:
    """Return ``gdal_options`` with .nc among the extensions that /vsicurl/ opens."""
    options = dict(gdal_options)
    extensions = str(options.get("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", ""))
    if extensions and ".nc" not in extensions.split(","):
        options["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] = f"{extensions},.nc,.NC"
    return options


def netcdf_path(href: str, variable: str) -> str:
    """Return GDAL's name of one variable of a NetCDF-4 file, such as ``HDF5:"f.nc"://g/v``."""
    return f'HDF5:"{gdal_path(href)}"://{variable.lstrip("/")}'


@dataclass(frozen=True)
class NetcdfHeader:
    """Shape in GDAL's terms (bands, rows, columns) and tags (the file's attributes too)."""

    count: int
    height: int
    width: int
    tags: Mapping[str, str]
    nodata: float | None


@contextmanager
def _open_netcdf(
    href: str, variable: str, gdal_options: Mapping[str, str | int | bool]
) -> Iterator[DatasetReader]:
    # Swaths and GLTs carry no GDAL georeferencing, which rasterio reports with a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with _open_dataset(netcdf_path(href, variable), netcdf_gdal_options(gdal_options)) as ds:
            yield ds


def read_netcdf_header(
    href: str, variable: str, *, gdal_options: Mapping[str, str | int | bool]
) -> NetcdfHeader:
    """Read the shape, the tags (its own and the global attributes) and nodata of a variable."""

    def read() -> NetcdfHeader:
        with _open_netcdf(href, variable, gdal_options) as dataset:
            return NetcdfHeader(
                count=dataset.count,
                height=dataset.height,
                width=dataset.width,
                tags=dict(dataset.tags()),
                nodata=dataset.nodata,
            )

    label = f"{href} variable {variable}"
    policy = RetryPolicy.from_gdal_options(gdal_options)
    return retry_read(read, hrefs=[href], policy=policy, label=label)


def read_netcdf_variable(
    href: str,
    variable: str,
    *,
    gdal_options: Mapping[str, str | int | bool],
    window: tuple[int, int, int, int] | None = None,
    indexes: Sequence[int] | None = None,
) -> np.ndarray:
    """Read one NetCDF variable as (band, row, column) in its stored data type.

    ``window`` is (row_off, col_off, height, width) of GDAL's rows and columns, and ``indexes``
    are one-based GDAL bands (all when None).
    """

    def read() -> np.ndarray:
        with _open_netcdf(href, variable, gdal_options) as dataset:
            bands = list(indexes) if indexes is not None else list(range(1, dataset.count + 1))
            _check_indexes(f"{href} variable {variable}", bands, dataset.count)
            area = None
            if window is not None:
                row_off, col_off, height, width = window
                area = rasterio.windows.Window(col_off, row_off, width, height)
            try:
                return np.asarray(dataset.read(bands, window=area))
            except (RasterioError, CPLE_BaseError) as error:
                message = f"reading variable {variable} of {href!r} failed: {error}"
                raise ReadError(mask_secrets(message)) from error

    label = f"{href} variable {variable}"
    policy = RetryPolicy.from_gdal_options(gdal_options)
    return retry_read(read, hrefs=[href], policy=policy, label=label)


def warp_array_to_grid(
    values: np.ndarray,
    *,
    src_crs: str,
    src_transform: tuple[float, ...],
    crs: str,
    transform: tuple[float, ...],
    shape: tuple[int, int],
    resampling: str,
) -> np.ndarray:
    """Warp an in-memory float array (band, y, x) onto a chip grid; NaN marks no data.

    Both transforms are north-up affine transforms in rasterio order (a, b, c, d, e, f).
    """
    source = np.asarray(values, dtype=np.float32)
    destination = np.full((source.shape[0], *_check_shape(shape)), np.nan, dtype=np.float32)
    reproject(
        source=source,
        destination=destination,
        src_transform=_north_up_transform(src_transform),
        src_crs=src_crs,
        src_nodata=np.nan,
        dst_transform=_north_up_transform(transform),
        dst_crs=crs,
        dst_nodata=np.nan,
        resampling=_resampling(resampling),
    )
    return destination


def transform_bounds(
    src_crs: str, dst_crs: str, bounds: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """Return ``bounds`` (left, bottom, right, top) in ``dst_crs``, densified along the edges."""
    left, bottom, right, top = rasterio.warp.transform_bounds(
        src_crs, dst_crs, *bounds, densify_pts=21
    )
    return float(left), float(bottom), float(right), float(top)
