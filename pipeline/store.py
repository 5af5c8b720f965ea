"""The Zarr (v3) store of a region: chip-stacked variables and the chip table.

Layout, one chunk per chip per variable:

- ``s2`` (chip, band, y, x) float32 surface reflectance, NaN where invalid
- ``s1`` (chip, polarization, y, x) float32 linear backscatter power
- ``ndvi`` (chip, y, x) float32
- ``dem``, ``slope``, ``aspect``, ``coherence`` (chip, y, x) float32 on the base lattice
- ``hsi`` (chip, wavelength, hsi_y, hsi_x) float32 reflectance on a coarser lattice nested in the
  base one (``pixel_factor`` base pixels per hyperspectral pixel along each axis)
- ``chip_record`` (chip,) one JSON document per chip: the chip-table row, written last, so a
  chip with a record is complete
- coordinates ``chip`` (ids), ``band``, ``polarization``, ``chip_crs``, ``chip_transform``,
  ``chip_col``, ``chip_row``
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numcodecs  # type: ignore[import-untyped]  # numcodecs ships no type information
import numcodecs.abc  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
import zarr
import zarr.codecs
from zarr.abc.codec import BytesBytesCodec
from zarr.core.common import JSON
from zarr.core.metadata import ArrayV3Metadata

from pipeline.config import RegionSpec
from pipeline.errors import StoreError, StoreExistsError, StoreNotFoundError
from pipeline.grid import Chip
from pipeline.radiometry import canonical_nan

try:
    import google_crc32c
except ImportError:  # zarr 3.0.8 to 3.1.3 depend on the crc32c package instead
    google_crc32c = None  # type: ignore[assignment]  # chunks are then written through zarr

STORE_FORMAT = 1
RECORD_VARIABLE = "chip_record"
# Chunk codecs of the data variables, by name. Each makes a chunk whose bytes changed fail to
# decode. "crc32c" stores the raw little-endian values followed by a CRC-32C, "lz4" compresses
# them with Blosc (LZ4, bit shuffle) before the CRC-32C, and "zstd" uses its frame checksum.
# "crc32c" is the default because float32 reflectance and backscatter compress poorly (LZ4
# saved 17 to 23% and zstd 10 to 13% on the BigEarthNet sample), while decompression took most
# of the feed's time per chip. `python -m tests.benchmarks codec` measures all three.
CHUNK_CODECS = ("crc32c", "lz4", "zstd")
DEFAULT_CHUNK_CODEC = "crc32c"
ZSTD_LEVEL = 1
CRC32C_BYTES = 4
_DEFAULT_KEY_ENCODING = {"name": "default", "configuration": {"separator": "/"}}


@dataclass(frozen=True)
class VariableSpec:
    """One chip-stacked data variable of the store.

    ``factor`` is the number of base pixels per pixel of the variable along each axis: 1 on the
    base lattice, 3 for a 30 m hyperspectral lattice nested in a 10 m one. ``upsample`` is the
    number of the variable's pixels per base pixel: 4 for a 2.5 m lattice in a 10 m one.
    """

    name: str
    dims: tuple[str, ...]
    labels: tuple[str, ...]  # band, polarization or wavelength labels; empty for 2-D variables
    units: str
    long_name: str
    factor: int = 1
    label_values: tuple[float, ...] = ()  # numeric labels (wavelength in nm) when given
    label_widths: tuple[float, ...] = ()  # full width at half maximum in nm, for wavelengths
    upsample: int = 1

    def chunk_shape(self, chip_size: int) -> tuple[int, ...]:
        size = chip_size * self.upsample // self.factor
        if self.labels:
            return (1, len(self.labels), size, size)
        return (1, size, size)


_PLANE = ("chip", "y", "x")
_DERIVED_SPECS = {
    "ndvi": VariableSpec("ndvi", _PLANE, (), "1", "normalized difference vegetation index"),
    "slope": VariableSpec("slope", _PLANE, (), "degree", "terrain slope from the DEM"),
    "aspect": VariableSpec(
        "aspect", _PLANE, (), "degree", "terrain aspect, downslope azimuth clockwise from north"
    ),
}


def variable_specs(
    region: RegionSpec,
    *,
    hsi_bands: Sequence[tuple[float, float]] = (),
    vhr_units: str = "1",
) -> list[VariableSpec]:
    """List the data variables a region writes, in store order.

    ``hsi_bands`` contains the (wavelength, FWHM) in nm of each hyperspectral band kept, and
    ``vhr_units`` the units of the very-high-resolution image (``DN`` or ``1``).
    """
    specs = []
    if region.s2 is not None:
        specs.append(
            VariableSpec(
                "s2",
                ("chip", "band", "y", "x"),
                region.s2.bands,
                "1",
                "Sentinel-2 L2A surface reflectance",
            )
        )
    if region.s1 is not None:
        specs.append(
            VariableSpec(
                "s1",
                ("chip", "polarization", "y", "x"),
                region.s1.bands,
                "1",
                "Sentinel-1 backscatter as linear power",
            )
        )
    if region.dem is not None:
        specs.append(VariableSpec("dem", _PLANE, (), "m", "surface height above the datum"))
    if region.coherence is not None:
        specs.append(
            VariableSpec("coherence", _PLANE, (), "1", "interferometric coherence magnitude")
        )
    if region.hsi is not None:
        specs.append(_hsi_spec(region, hsi_bands))
    if region.vhr is not None:
        specs.append(
            VariableSpec(
                "vhr",
                ("chip", "vhr_band", "vhr_y", "vhr_x"),
                region.vhr.bands,
                vhr_units,
                "very-high-resolution image",
                upsample=region.vhr.upsample(region.grid.resolution_m),
            )
        )
    specs.extend(_DERIVED_SPECS[name] for name in region.derived)
    return specs


def _hsi_spec(region: RegionSpec, hsi_bands: Sequence[tuple[float, float]]) -> VariableSpec:
    assert region.hsi is not None
    if not hsi_bands:
        raise StoreError("a hyperspectral variable needs the wavelengths of its bands")
    return VariableSpec(
        "hsi",
        ("chip", "wavelength", "hsi_y", "hsi_x"),
        tuple(f"{wavelength:g}" for wavelength, _ in hsi_bands),
        "1",
        "hyperspectral surface reflectance",
        factor=region.hsi.factor(region.grid.resolution_m),
        label_values=tuple(wavelength for wavelength, _ in hsi_bands),
        label_widths=tuple(width for _, width in hsi_bands),
    )


def _compressors(codec: str) -> list[BytesBytesCodec]:
    """Return the bytes-to-bytes codecs of a data variable for a name in CHUNK_CODECS."""
    if codec == "crc32c":
        return [zarr.codecs.Crc32cCodec()]
    if codec == "lz4":
        blosc = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=4)
        return [blosc, zarr.codecs.Crc32cCodec()]
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=ZSTD_LEVEL, checksum=True)]
    valid = ", ".join(repr(name) for name in CHUNK_CODECS)
    raise StoreError(f"unknown chunk codec {codec!r}; valid codecs: {valid}")


def create_store(
    path: Path,
    *,
    chips: Sequence[Chip],
    variables: Sequence[VariableSpec],
    attrs: Mapping[str, Any],
    replace: bool = False,
    codec: str = DEFAULT_CHUNK_CODEC,
) -> None:
    """Create the store's arrays and coordinates, atomically: built aside, then renamed.

    With ``replace``, an existing store at ``path`` is swapped out only once the new one is
    complete, so a failure while creating leaves the old store in place. ``codec`` names the
    chunk codec of the data variables, one of CHUNK_CODECS.
    """
    compressors = _compressors(codec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.tmp-") as tmp:
        staging = Path(tmp) / path.name
        root = zarr.open_group(str(staging), mode="w", zarr_format=3, attributes=dict(attrs))
        chip_size = chips[0].chip_size if chips else 1
        count = len(chips)
        for spec in variables:
            array = root.create_array(
                spec.name,
                shape=(count, *spec.chunk_shape(chip_size)[1:]),
                chunks=spec.chunk_shape(chip_size),
                dtype="float32",
                fill_value=np.nan,
                compressors=compressors,
                dimension_names=spec.dims,
                attributes={
                    "units": spec.units,
                    "long_name": spec.long_name,
                    "coordinates": "chip_crs chip_transform chip_col chip_row",
                    "pixel_factor": spec.factor,
                    "pixel_upsample": spec.upsample,
                },
            )
            del array
        _create_coordinates(root, chips, variables)
        records = root.create_array(
            RECORD_VARIABLE,
            shape=(count,),
            chunks=(1,),
            dtype=str,
            dimension_names=("chip",),
            attributes={
                "long_name": "chip table row as JSON",
                "coordinates": "chip_crs chip_transform",
            },
        )
        del records
        _consolidate(staging)
        if replace and path.exists():
            retired = Path(tmp) / "replaced"
            path.rename(retired)
        staging.rename(path)


def _consolidate(path: Path) -> None:
    """Consolidate metadata so xarray opens the store in one read and without a warning.

    Array metadata never changes after creation; chips only add chunks.
    """
    with warnings.catch_warnings():
        # zarr warns that consolidated metadata is not yet part of the Zarr v3 specification.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))


def _create_coordinates(
    root: zarr.Group, chips: Sequence[Chip], variables: Sequence[VariableSpec]
) -> None:
    count = len(chips)
    columns: dict[str, tuple[np.ndarray, tuple[str, ...], dict[str, JSON]]] = {
        "chip": (
            np.array([c.id for c in chips], dtype=str),
            ("chip",),
            {"long_name": "chip id <epsg>_<col>_<row>"},
        ),
        "chip_crs": (
            np.array([c.crs for c in chips], dtype=str),
            ("chip",),
            {"long_name": "CRS of the chip"},
        ),
        "chip_col": (
            np.array([c.col for c in chips], dtype=np.int64),
            ("chip",),
            {"long_name": "lattice column"},
        ),
        "chip_row": (
            np.array([c.row for c in chips], dtype=np.int64),
            ("chip",),
            {"long_name": "lattice row"},
        ),
        "chip_transform": (
            np.array([c.transform for c in chips], dtype=np.float64).reshape(count, 6),
            ("chip", "affine"),
            {"long_name": "GDAL-order affine transform (a, b, c, d, e, f) of the chip, metres"},
        ),
    }
    for spec in variables:
        if spec.label_values:
            columns[spec.dims[1]] = (
                np.array(spec.label_values, dtype=np.float64),
                (spec.dims[1],),
                {"long_name": "band centre wavelength", "units": "nm"},
            )
            columns["fwhm"] = (
                np.array(spec.label_widths, dtype=np.float64),
                (spec.dims[1],),
                {"long_name": "band full width at half maximum", "units": "nm"},
            )
        elif spec.labels:
            label_dim = spec.dims[1]
            columns[label_dim] = (
                np.array(spec.labels, dtype=str),
                (label_dim,),
                {"long_name": label_dim},
            )
    for name, (values, dims, attributes) in columns.items():
        array = root.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype if values.dtype.kind != "U" else str,
            dimension_names=dims,
            attributes=attributes,
        )
        array[...] = values


def open_root(path: Path, mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """Open a store's root group, raising :class:`StoreNotFoundError` when it is not a store."""
    if not path.exists():
        raise StoreNotFoundError(
            f"store {str(path)!r} not found; check the path or run 'sensorcube extract' "
            "to create it"
        )
    if not (path / "zarr.json").is_file():
        raise StoreNotFoundError(
            f"{str(path)!r} is not a sensorcube store (no zarr.json); check the path"
        )
    return zarr.open_group(str(path), mode=mode)


class OutputAction(enum.Enum):
    """Action of an extraction on its output path."""

    CREATE = "create"
    RESUME = "resume"
    REPLACE = "replace"


def is_sensorcube_store(path: Path) -> bool:
    """True when ``path`` is a Zarr group written by sensorcube."""
    if not (path.is_dir() and (path / "zarr.json").is_file()):
        return False
    return "sensorcube_store_format" in dict(zarr.open_group(str(path), mode="r").attrs)


def check_existing_store(path: Path, *, config_hash: str, overwrite: bool) -> OutputAction:
    """Decide what to do with the output path. Nothing is deleted here.

    A store of the same configuration is resumed. A store of another configuration is replaced
    only with ``overwrite``. Any other existing file or folder is rejected, even with
    ``overwrite``.
    """
    if not path.exists():
        return OutputAction.CREATE
    if not is_sensorcube_store(path):
        raise StoreExistsError(
            f"output path {str(path)!r} exists and is not a sensorcube store; sensorcube never "
            "deletes it, even with --overwrite; choose another path with --out or remove it"
        )
    if overwrite:
        return OutputAction.REPLACE
    existing = dict(open_root(path).attrs).get("config_hash")
    if existing == config_hash:
        return OutputAction.RESUME
    raise StoreExistsError(
        f"store {str(path)!r} exists and was built from another configuration "
        f"(config hash {str(existing)[:12]}..., this run {config_hash[:12]}...); "
        "pass --overwrite to replace it or --out to write elsewhere"
    )


def value_checksum(values: np.ndarray) -> str:
    """SHA-256 of decoded values: dtype and shape, then little-endian C-order bytes."""
    return _value_digest(_canonical_bytes(values))


def _canonical_bytes(values: np.ndarray) -> np.ndarray:
    """Return ``values`` with canonical NaN payloads, little-endian and C-contiguous."""
    return np.ascontiguousarray(canonical_nan(values), dtype=values.dtype.newbyteorder("<"))


def _value_digest(canonical: np.ndarray) -> str:
    digest = hashlib.sha256(f"{canonical.dtype.str}{canonical.shape}".encode())
    digest.update(canonical.data)
    return digest.hexdigest()


def chunk_path(store: Path, variable: str, index: int, ndim: int) -> Path:
    """File of a chip's chunk, with Zarr v3 default chunk keys."""
    return store / variable / "c" / str(index) / Path(*(["0"] * (ndim - 1)))


def chunk_checksum(store: Path, variable: str, index: int, ndim: int) -> str | None:
    """SHA-256 of a chunk's stored bytes, or None when the chunk is absent (all fill value)."""
    path = chunk_path(store, variable, index, ndim)
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def get_array(root: zarr.Group, name: str) -> zarr.Array[Any]:
    """Return the array ``name`` of a store, raising :class:`StoreError` when it is missing."""
    node = root.get(name)
    if not isinstance(node, zarr.Array):
        raise StoreError(
            f"store has no array {name!r}; it was not written by this sensorcube version"
        )
    return node


def write_chip(
    store: Path, index: int, arrays: Mapping[str, np.ndarray], record: dict[str, Any]
) -> dict[str, Any]:
    """Write a chip's chunks, then its record; return the record with checksums added.

    Chunks of the default codec (raw values and a CRC-32C) are encoded here and written as
    zarr would write them; other codecs go through zarr.
    """
    root: zarr.Group | None = None
    checksums: dict[str, str] = {}
    chunk_checksums: dict[str, str | None] = {}
    for name, values in arrays.items():
        canonical = _canonical_bytes(values.astype(np.float32, copy=False))
        checksums[name] = _value_digest(canonical)
        if _writes_raw_chunks(store / name):
            chunk_checksums[name] = _write_raw_chunk(store, name, index, canonical)
            continue
        root = root or zarr.open_group(str(store), mode="r+")
        get_array(root, name)[index] = canonical
        chunk_checksums[name] = chunk_checksum(store, name, index, canonical.ndim + 1)
    record = {**record, "checksums": checksums, "chunk_checksums": chunk_checksums}
    text = _record_text(record)
    compressor = _record_compressor(store / RECORD_VARIABLE)
    if compressor is None:
        records = zarr.open_array(str(store / RECORD_VARIABLE), mode="r+")
        records[index] = text
    else:
        encoded = compressor.encode(numcodecs.VLenUTF8().encode(np.array([text], dtype=object)))
        _replace_file(chunk_path(store, RECORD_VARIABLE, index, 1), bytes(encoded))
    return record


def _replace_file(path: Path, *parts: bytes | memoryview) -> None:
    """Write ``parts`` to a file beside ``path``, then rename it into place, as zarr does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "wb") as file:
            for part in parts:
                file.write(part)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _array_metadata(folder: Path) -> Mapping[str, Any]:
    """Return the parsed ``zarr.json`` of the array in ``folder``, read once per file version."""
    metadata_path = folder / "zarr.json"
    stat = metadata_path.stat()
    return _read_metadata(str(metadata_path), stat.st_ino, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_metadata(metadata_path: str, inode: int, mtime_ns: int) -> Mapping[str, Any]:
    # Keyed by inode and modification time too, so a store created again at the same path is
    # read again.
    del inode, mtime_ns
    metadata: Mapping[str, Any] = json.loads(Path(metadata_path).read_text())
    return metadata


def _record_compressor(folder: Path) -> numcodecs.abc.Codec | None:
    """Return the zstd codec of a chip-record array encoded as vlen-utf8 then zstd, else None.

    That is the layout zarr gives a string array by default. Others are written through zarr.
    """
    metadata = _array_metadata(folder)
    codecs = metadata["codecs"]
    if (
        metadata["data_type"] != "string"
        or metadata["fill_value"] != ""
        or [codec["name"] for codec in codecs] != ["vlen-utf8", "zstd"]
        or metadata["chunk_key_encoding"] != _DEFAULT_KEY_ENCODING
        or metadata["chunk_grid"]["configuration"]["chunk_shape"] != [1]
        or metadata.get("storage_transformers")
    ):
        return None
    configuration = codecs[1].get("configuration", {})
    level = int(configuration.get("level", 0))
    return numcodecs.Zstd(level=level, checksum=bool(configuration.get("checksum", False)))


def _writes_raw_chunks(folder: Path) -> bool:
    """Return whether the array in ``folder`` stores float32 chunks as raw values and a CRC-32C."""
    metadata = _array_metadata(folder)
    codecs = [(codec["name"], codec.get("configuration", {})) for codec in metadata["codecs"]]
    chunk_shape = metadata["chunk_grid"]["configuration"]["chunk_shape"]
    return (
        google_crc32c is not None
        and metadata["data_type"] == "float32"
        and math.isnan(float(metadata["fill_value"]))
        and codecs == [("bytes", {"endian": "little"}), ("crc32c", {})]
        and metadata["chunk_key_encoding"] == _DEFAULT_KEY_ENCODING
        and chunk_shape == [1, *metadata["shape"][1:]]
        and not metadata.get("storage_transformers")
    )


def _write_raw_chunk(store: Path, variable: str, index: int, canonical: np.ndarray) -> str | None:
    """Write one chunk as zarr's bytes and crc32c codecs encode it; return its SHA-256.

    As zarr does, a chunk whose values are all the fill value (NaN) is not stored, and a chunk
    file is written beside its final name and then renamed into place.
    """
    path = chunk_path(store, variable, index, canonical.ndim + 1)
    if np.isnan(canonical).all():
        path.unlink(missing_ok=True)
        return None
    # google_crc32c takes NumPy arrays and read-only buffers, but no writable memoryview.
    crc = google_crc32c.value(canonical.reshape(-1).view(np.uint8))
    crc_bytes = crc.to_bytes(CRC32C_BYTES, "little")
    _replace_file(path, canonical.data, crc_bytes)
    digest = hashlib.sha256(canonical.data)
    digest.update(crc_bytes)
    return digest.hexdigest()


def write_record(root: zarr.Group, index: int, record: Mapping[str, Any]) -> None:
    get_array(root, RECORD_VARIABLE)[index] = _record_text(record)


def _record_text(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def read_records(store: Path) -> list[dict[str, Any] | None]:
    """Chip records by chip index; None where a chip has not finished."""
    root = open_root(store)
    texts = np.asarray(get_array(root, RECORD_VARIABLE)[...]).tolist()
    return [_parse_record(text) for text in texts]


def _parse_record(text: str) -> dict[str, Any] | None:
    # Zarr replaces chunk files atomically, so a record is whole or absent. An unparsable record
    # is treated as absent too, so its chip is redone.
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def delete_chip_chunks(store: Path, index: int, variables: Sequence[str]) -> None:
    """Remove a chip's data chunks, so a skipped or failed chip leaves no pixels behind."""
    root = open_root(store)
    for name in variables:
        path = chunk_path(store, name, index, get_array(root, name).ndim)
        path.unlink(missing_ok=True)


def remove_partial_files(store: Path) -> int:
    """Delete temporary chunk files left by a killed writer; return how many there were."""
    # zarr's local store writes each chunk to "<key>.<uuid>.partial" and renames it into place.
    partial = list(store.rglob("*.partial"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def chip_ids(store: Path) -> list[str]:
    return [str(value) for value in np.asarray(get_array(open_root(store), "chip")[...]).tolist()]


def open_chip_table(store: str | Path) -> pd.DataFrame:
    """Read the chip table of a store: one row per chip, nested fields flattened with dots."""
    path = Path(store)
    ids = chip_ids(path)
    rows: list[dict[str, Any]] = []
    for chip_id, record in zip(ids, read_records(path), strict=True):
        rows.append(record if record is not None else {"chip_id": chip_id, "status": "pending"})
    return pd.json_normalize(rows).set_index("chip_id")


def dimension_names(array: zarr.Array[Any]) -> tuple[str, ...]:
    """Return the dimension names of a Zarr v3 array, or an empty tuple."""
    metadata = array.metadata
    names = metadata.dimension_names if isinstance(metadata, ArrayV3Metadata) else None
    return tuple(str(name) for name in names or ())


def band_labels(root: zarr.Group, variable: str) -> tuple[str, ...]:
    """Return the band or polarization names of a variable, or ``(variable,)`` for a 2-D one."""
    array = get_array(root, variable)
    if array.ndim == 3:
        return (variable,)
    dims = dimension_names(array)
    if len(dims) != 4:
        raise StoreError(
            f"store variable {variable!r} has no named band dimension; it was not written by "
            "this sensorcube version"
        )
    values = np.asarray(get_array(root, dims[1])[...]).tolist()
    return tuple(f"{label:g}" if isinstance(label, float) else str(label) for label in values)


def data_variables(root: zarr.Group) -> list[str]:
    """Names of the chip-stacked data variables, from the store attributes."""
    names = root.attrs.get("data_variables", [])
    return [str(name) for name in names] if isinstance(names, list) else []


def iter_finished(records: Iterable[dict[str, Any] | None]) -> Iterable[int]:
    for index, record in enumerate(records):
        if record is not None and record.get("status") in ("ok", "skipped"):
            yield index
