"""The feed's chunk reader and buffer pool on small Zarr arrays written by zarr itself.

The end-to-end feed tests in test_feed.py read a real sample store. These tests cover every
codec the reader decodes, the layouts it leaves to zarr, damaged chunk files and array reuse.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.codecs

from pipeline import feed_chunks
from pipeline.errors import FeedError, StoreError
from pipeline.feed_chunks import MAX_POOLED_ARRAYS, BufferPool, ChipReader, ChunkFiles
from pipeline.grid import Chip
from pipeline.store import CHUNK_CODECS, DEFAULT_CHUNK_CODEC, VariableSpec, create_store

SHAPE = (3, 4, 5, 6)  # chip, band, y, x
CRC32C = zarr.codecs.Crc32cCodec()
LZ4 = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=4)
ZSTD = zarr.codecs.ZstdCodec(level=1, checksum=True)
DECODED_HERE: dict[str, list[Any]] = {
    "raw": [],
    "crc32c": [CRC32C],
    "lz4+crc32c": [LZ4, CRC32C],
    "zstd": [ZSTD],
    "lz4": [LZ4],
}


def chip_values(index: int) -> np.ndarray:
    values = np.arange(np.prod(SHAPE[1:]), dtype=np.float32).reshape(SHAPE[1:]) + 100 * index
    values[0, 0, :2] = np.nan
    values[1, 2, 3] = np.inf
    return values


def write_array(
    folder: Path, compressors: list[Any], *, chunks: tuple[int, ...] = (1, *SHAPE[1:])
) -> zarr.Array[Any]:
    """Write chips 0 and 1; chip 2 stays unwritten, so its chunk file does not exist."""
    root = zarr.open_group(str(folder), mode="w", zarr_format=3)
    array = root.create_array(
        "s2",
        shape=SHAPE,
        chunks=chunks,
        dtype="float32",
        fill_value=np.nan,
        compressors=compressors,
    )
    for index in (0, 1):
        array[index] = chip_values(index)
    return array


def chunk_file(folder: Path, index: int) -> Path:
    return folder / "s2" / "c" / str(index) / "0" / "0" / "0"


@pytest.mark.parametrize("codecs", DECODED_HERE.values(), ids=DECODED_HERE.keys())
def test_reader_decodes_like_zarr(tmp_path: Path, codecs: list[Any]) -> None:
    array = write_array(tmp_path, codecs)
    files = ChunkFiles.for_array(tmp_path / "s2", array)
    assert files is not None
    for index in range(SHAPE[0]):
        values = files.read(index)
        assert values.shape == SHAPE[1:]
        np.testing.assert_array_equal(values, np.asarray(array[index]))


def test_missing_chunk_reads_as_fill_value(tmp_path: Path) -> None:
    files = ChunkFiles.for_array(tmp_path / "s2", write_array(tmp_path, [CRC32C]))
    assert files is not None
    assert not chunk_file(tmp_path, 2).exists()
    assert np.isnan(files.read(2)).all()


@pytest.mark.parametrize(
    ("codecs", "chunks"),
    [
        ([zarr.codecs.GzipCodec()], (1, *SHAPE[1:])),
        ([LZ4, ZSTD], (1, *SHAPE[1:])),
        ([CRC32C], (2, *SHAPE[1:])),  # two chips per chunk
        ([CRC32C], (1, 2, *SHAPE[2:])),  # a chip split over two chunks
    ],
    ids=["gzip", "two-compressors", "two-chips-per-chunk", "split-chip"],
)
def test_other_layouts_left_to_zarr(
    tmp_path: Path, codecs: list[Any], chunks: tuple[int, ...]
) -> None:
    array = write_array(tmp_path, codecs, chunks=chunks)
    assert ChunkFiles.for_array(tmp_path / "s2", array) is None

    reader = ChipReader(tmp_path, ["s2"])
    values, valid = reader.read("s2", 1)
    np.testing.assert_array_equal(values, chip_values(1))
    np.testing.assert_array_equal(valid, np.isfinite(chip_values(1)))


def test_crc32c_left_to_zarr_without_google_crc32c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_chunks, "google_crc32c", None)
    array = write_array(tmp_path, [CRC32C])
    assert ChunkFiles.for_array(tmp_path / "s2", array) is None
    values, _ = ChipReader(tmp_path, ["s2"]).read("s2", 1)
    np.testing.assert_array_equal(values, chip_values(1))


def test_big_endian_left_to_zarr(tmp_path: Path) -> None:
    big = zarr.codecs.BytesCodec(endian="big")
    root = zarr.open_group(str(tmp_path), mode="w", zarr_format=3)
    array = root.create_array(
        "s2", shape=SHAPE, chunks=(1, *SHAPE[1:]), dtype="float32", serializer=big
    )
    assert ChunkFiles.for_array(tmp_path / "s2", array) is None


@pytest.mark.parametrize(
    ("codecs", "message"),
    [
        ([CRC32C], "CRC-32C checksum does not match"),
        ([LZ4, CRC32C], "CRC-32C checksum does not match"),
        ([ZSTD], "does not decode"),
    ],
    ids=["crc32c", "lz4+crc32c", "zstd"],
)
def test_flipped_byte_raises(tmp_path: Path, codecs: list[Any], message: str) -> None:
    files = ChunkFiles.for_array(tmp_path / "s2", write_array(tmp_path, codecs))
    assert files is not None
    path = chunk_file(tmp_path, 1)
    original = path.read_bytes()
    for offset in (0, len(original) // 2, len(original) - 1):
        damaged = bytearray(original)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(FeedError, match=message) as error:
            files.read(1)
        assert "sensorcube verify" in str(error.value)


def test_truncated_chunk_raises(tmp_path: Path) -> None:
    files = ChunkFiles.for_array(tmp_path / "s2", write_array(tmp_path, [CRC32C]))
    assert files is not None
    path = chunk_file(tmp_path, 0)
    expected = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(FeedError, match=f"has {expected - 1} bytes, expected {expected}"):
        files.read(0)


def test_reader_mask_marks_finite_values(tmp_path: Path) -> None:
    write_array(tmp_path, [CRC32C])
    values, valid = ChipReader(tmp_path, ["s2"]).read("s2", 0)
    assert values.dtype == np.float32
    assert values.flags.writeable
    np.testing.assert_array_equal(valid, np.isfinite(chip_values(0)))


def test_pool_reuses_released_array() -> None:
    pool = BufferPool((4,), np.float32)
    first = pool.take()
    address = first.ctypes.data
    del first
    assert pool.take().ctypes.data == address


@pytest.mark.parametrize(
    "keep",
    [
        lambda array: array,
        lambda array: array.view(np.uint8)[2:],
        lambda array: array.reshape(2, 2)[1],
        lambda array: memoryview(array),
    ],
    ids=["array", "view-of-view", "reshaped-row", "memoryview"],
)
def test_pool_keeps_referenced_array(keep: Any) -> None:
    pool = BufferPool((4,), np.float32)
    first = pool.take()
    address = first.ctypes.data
    reference = keep(first)
    del first
    gc.collect()
    second = pool.take()
    assert second.ctypes.data != address, "the array was handed out while a view existed"
    del reference, second
    assert pool.take().ctypes.data == address, "the array was not reused once released"


def test_pool_reused_array_not_shared_with_views() -> None:
    pool = BufferPool((4,), np.float32)
    taken = [pool.take() for _ in range(3)]
    for number, array in enumerate(taken):
        array[:] = number
    views = [array[1:] for array in taken]
    del taken
    fresh = pool.take()
    fresh[:] = -1.0
    for number, view in enumerate(views):
        assert (view == number).all(), "a pooled array was handed out while a view existed"


def test_pool_keeps_at_most_max_arrays() -> None:
    pool = BufferPool((1,), np.uint8)
    taken = [pool.take() for _ in range(MAX_POOLED_ARRAYS + 5)]
    assert len({array.ctypes.data for array in taken}) == len(taken)
    del taken
    again = [pool.take() for _ in range(MAX_POOLED_ARRAYS)]
    assert len({array.ctypes.data for array in again}) == MAX_POOLED_ARRAYS


def test_store_default_codec_detects_flipped_bytes(tmp_path: Path) -> None:
    # Reason for pinning: the store's chunk checksums in manifests and the feed's checks assume
    # that every codec of CHUNK_CODECS makes a damaged chunk fail to decode.
    assert DEFAULT_CHUNK_CODEC == "crc32c"
    chips = [Chip(32632, col, 100, 8, 10.0) for col in range(2)]
    spec = VariableSpec("ndvi", ("chip", "y", "x"), (), "1", "normalized difference")
    attrs = {"sensorcube_store_format": 1, "data_variables": ["ndvi"]}
    for codec in CHUNK_CODECS:
        store = tmp_path / f"{codec}.zarr"
        create_store(store, chips=chips, variables=[spec], attrs=attrs, codec=codec)
        array = zarr.open_group(str(store), mode="r+")["ndvi"]
        assert isinstance(array, zarr.Array)
        array[0] = np.ones((8, 8), dtype=np.float32)
        path = store / "ndvi" / "c" / "0" / "0" / "0"
        damaged = bytearray(path.read_bytes())
        damaged[len(damaged) // 2] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises((ValueError, RuntimeError)):
            array[0]


def test_unknown_codec_rejected(tmp_path: Path) -> None:
    chips = [Chip(32632, 0, 100, 8, 10.0)]
    spec = VariableSpec("ndvi", ("chip", "y", "x"), (), "1", "normalized difference")
    with pytest.raises(StoreError, match="unknown chunk codec 'lz5'; valid codecs: 'crc32c'"):
        create_store(tmp_path / "bad.zarr", chips=chips, variables=[spec], attrs={}, codec="lz5")
