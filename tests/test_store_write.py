"""write_chip: chunks of the default codec are encoded by sensorcube, the others by zarr.

With either encoder, a chunk file must contain the bytes zarr writes for the same values, so
zarr, xarray and the feed read it and manifests keep their chunk checksums.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.grid import Chip
from pipeline.store import (
    CHUNK_CODECS,
    RECORD_VARIABLE,
    VariableSpec,
    chunk_checksum,
    chunk_path,
    create_store,
    value_checksum,
    write_chip,
)

SIZE = 8
SPECS = [
    VariableSpec("s2", ("chip", "band", "y", "x"), ("B04", "B08"), "1", "reflectance"),
    VariableSpec("ndvi", ("chip", "y", "x"), (), "1", "normalized difference"),
]
ATTRS = {"sensorcube_store_format": 1, "data_variables": ["s2", "ndvi"]}


def make_store(path: Path, codec: str) -> Path:
    chips = [Chip(32632, col, 100, SIZE, 10.0) for col in range(3)]
    create_store(path, chips=chips, variables=SPECS, attrs=ATTRS, codec=codec)
    return path


def chip_arrays(index: int) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(index)
    s2 = generator.random((2, SIZE, SIZE), dtype=np.float32)
    s2[0, :2, :3] = np.nan
    # A NaN with another payload: stored bytes must use the canonical quiet NaN.
    s2[1, 4, 4] = np.frombuffer(np.uint32(0x7FC00001).tobytes(), dtype=np.float32)[0]
    ndvi = (s2[1] - s2[0]) / (s2[1] + s2[0])
    return {"s2": s2, "ndvi": ndvi}


def zarr_written_bytes(
    tmp_path: Path, codec: str, arrays: dict[str, np.ndarray]
) -> dict[str, bytes]:
    """Chunk files of chip 1 as zarr itself writes the canonical values."""
    store = make_store(tmp_path / f"zarr-{codec}.zarr", codec)
    root = zarr.open_group(str(store), mode="r+")
    files = {}
    for name, values in arrays.items():
        canonical = np.where(np.isnan(values), np.float32(np.nan), values)
        root[name][1] = canonical  # type: ignore[index]
        files[name] = chunk_path(store, name, 1, values.ndim + 1).read_bytes()
    return files


@pytest.mark.parametrize("codec", CHUNK_CODECS)
def test_chunk_bytes_equal_zarr(tmp_path: Path, codec: str) -> None:
    arrays = chip_arrays(1)
    store = make_store(tmp_path / f"{codec}.zarr", codec)
    record = write_chip(store, 1, arrays, {"chip_id": "32632_1_100", "status": "ok"})

    expected = zarr_written_bytes(tmp_path, codec, arrays)
    for name, values in arrays.items():
        written = chunk_path(store, name, 1, values.ndim + 1).read_bytes()
        assert written == expected[name]
        assert record["chunk_checksums"][name] == chunk_checksum(store, name, 1, values.ndim + 1)
        assert record["checksums"][name] == value_checksum(values)
        stored = np.asarray(zarr.open_group(str(store))[name][1])  # type: ignore[index]
        np.testing.assert_array_equal(stored, values)


def test_record_of_written_chip(tmp_path: Path) -> None:
    store = make_store(tmp_path / "record.zarr", "crc32c")
    record = write_chip(store, 2, chip_arrays(2), {"chip_id": "32632_2_100", "status": "ok"})
    records = zarr.open_group(str(store))[RECORD_VARIABLE]
    texts = np.asarray(records[...]).tolist()  # type: ignore[index]
    assert texts[:2] == ["", ""]
    assert json.loads(texts[2]) == record

    # The record chunk contains the bytes zarr writes for the same text.
    other = make_store(tmp_path / "zarr-record.zarr", "crc32c")
    zarr.open_group(str(other), mode="r+")[RECORD_VARIABLE][2] = texts[2]  # type: ignore[index]
    written = chunk_path(store, RECORD_VARIABLE, 2, 1).read_bytes()
    assert written == chunk_path(other, RECORD_VARIABLE, 2, 1).read_bytes()


@pytest.mark.parametrize("codec", CHUNK_CODECS)
def test_all_nan_chunk_not_stored(tmp_path: Path, codec: str) -> None:
    store = make_store(tmp_path / f"nan-{codec}.zarr", codec)
    write_chip(store, 0, chip_arrays(0), {"chip_id": "32632_0_100", "status": "ok"})
    assert chunk_path(store, "ndvi", 0, 3).is_file()

    arrays = chip_arrays(0)
    arrays["ndvi"] = np.full((SIZE, SIZE), np.nan, dtype=np.float32)
    record = write_chip(store, 0, arrays, {"chip_id": "32632_0_100", "status": "ok"})
    # An all-NaN chunk equals the fill value: the earlier file is deleted and not replaced.
    assert not chunk_path(store, "ndvi", 0, 3).exists()
    assert record["chunk_checksums"]["ndvi"] is None
    assert not list(store.rglob("*.partial"))


def test_recreated_store_with_other_codec(tmp_path: Path) -> None:
    # A store created again at the same path with another codec must not be written with the
    # layout of the first one.
    path = tmp_path / "again.zarr"
    arrays = chip_arrays(1)
    write_chip(make_store(path, "crc32c"), 1, arrays, {"chip_id": "a", "status": "ok"})
    create_store(
        path,
        chips=[Chip(32632, c, 100, SIZE, 10.0) for c in range(3)],
        variables=SPECS,
        attrs=ATTRS,
        replace=True,
        codec="zstd",
    )
    write_chip(path, 1, arrays, {"chip_id": "a", "status": "ok"})
    expected = zarr_written_bytes(tmp_path, "zstd", arrays)
    assert chunk_path(path, "s2", 1, 4).read_bytes() == expected["s2"]
