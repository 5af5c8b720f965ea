"""Chip reads of the training feed: one Zarr chunk file per chip and variable, decoded here.

zarr's read path costs more per call than decoding a chunk of a sensorcube store takes, so
:class:`ChipReader` opens each chunk file itself, checks it and decodes it. Without a
compressor (the store's default codec, ``crc32c``) the values are read straight into the
returned array. Layouts it does not decode are read through zarr. Arrays come from
:class:`BufferPool`s, which reuse an array once no object refers to it any more, so a reader
does not fault in new memory on every read. :mod:`pipeline.feed` reads through this module,
and :mod:`pipeline.feed_torch` uses its reference check for shared batch slots.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numcodecs  # type: ignore[import-untyped]  # numcodecs ships no type information
import numcodecs.abc  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import zarr
import zarr.codecs
from zarr.codecs.bytes import Endian
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.metadata import ArrayV3Metadata

from pipeline.errors import FeedError
from pipeline.store import CRC32C_BYTES, get_array

try:
    import google_crc32c
except ImportError:  # zarr 3.0.8 to 3.1.3 depend on the crc32c package instead
    google_crc32c = None  # type: ignore[assignment]  # crc32c chunks are then read through zarr

log = logging.getLogger(__name__)

# Compressors that ChunkFiles decodes itself. A chunk with any other codec is read through zarr.
_COMPRESSORS: dict[type[Any], Callable[[], numcodecs.abc.Codec]] = {
    zarr.codecs.ZstdCodec: numcodecs.Zstd,
    zarr.codecs.BloscCodec: numcodecs.Blosc,
}
# Arrays a pool keeps for reuse. A DataLoader worker keeps one batch of pairs alive at a time, so
# batches of up to 32 chips need no new memory.
MAX_POOLED_ARRAYS = 32


def _reference_count(container: Sequence[Any] | Mapping[Any, Any], key: Any) -> int:
    return sys.getrefcount(container[key])


# The count _reference_count returns for an array that only its container refers to, measured
# at import because the temporary references it counts differ between Python versions.
_UNREFERENCED = _reference_count([np.empty(0)], 0)


def is_unreferenced(container: Sequence[Any] | Mapping[Any, Any], key: Any) -> bool:
    """Return whether nothing but ``container`` refers to ``container[key]``.

    A NumPy view, and a tensor made with ``torch.from_numpy``, refer to the array they were
    made from, so an array with live views or tensors counts as referenced.
    """
    return _reference_count(container, key) <= _UNREFERENCED


class BufferPool:
    """Arrays of one shape and dtype, each handed out again once nothing else refers to it.

    A NumPy view or a tensor made with ``torch.from_numpy`` refers to the array it was made
    from, so an array is reused only after every view of it is gone. Up to MAX_POOLED_ARRAYS
    are kept, which is at most the number that were in use at the same time; beyond that,
    :meth:`take` returns new arrays that are not kept.
    """

    def __init__(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self._arrays: list[npt.NDArray[Any]] = []
        self._lock = threading.Lock()

    def take(self) -> npt.NDArray[Any]:
        """Return an array that no other object refers to. Its values are undefined."""
        with self._lock:
            for index in range(len(self._arrays)):
                if is_unreferenced(self._arrays, index):
                    array = self._arrays[index]
                    return array
            array = np.empty(self.shape, dtype=self.dtype)
            if len(self._arrays) < MAX_POOLED_ARRAYS:
                self._arrays.append(array)
            return array


class ChunkFiles:
    """The chunk files of one store variable that has one chunk per chip."""

    def __init__(
        self,
        folder: Path,
        metadata: ArrayV3Metadata,
        compressor: numcodecs.abc.Codec | None,
        *,
        crc32c: bool,
    ) -> None:
        self._folder = folder
        self._metadata = metadata
        self._compressor = compressor
        self._crc32c = crc32c
        chunk_shape = metadata.chunk_grid.chunk_shape  # type: ignore[attr-defined]
        self.shape = tuple(int(size) for size in chunk_shape[1:])
        self._zeros = (0,) * len(self.shape)
        # Values are little-endian on disk whatever the machine.
        self._dtype = np.dtype(metadata.dtype.to_native_dtype()).newbyteorder("<")
        self._nbytes = math.prod(self.shape) * self._dtype.itemsize
        self._fill_value = metadata.fill_value
        raw_bytes = self._nbytes + (CRC32C_BYTES if crc32c else 0)
        self._raw = BufferPool((raw_bytes,), np.uint8)

    @classmethod
    def for_array(cls, folder: Path, array: zarr.Array[Any]) -> ChunkFiles | None:
        """Return a reader of the array's chunk files, or None when zarr must decode them.

        Supported: Zarr v3, a regular chunk grid of one chip per chunk, little-endian bytes,
        then at most one of zstd and Blosc, then at most a crc32c checksum (checked with the
        google-crc32c package, which zarr 3.1.4 and later install).
        """
        metadata = array.metadata
        if not isinstance(metadata, ArrayV3Metadata) or metadata.storage_transformers:
            return None
        grid = metadata.chunk_grid
        if not isinstance(grid, RegularChunkGrid) or grid.chunk_shape != (1, *array.shape[1:]):
            return None
        codecs = list(metadata.codecs)
        if not codecs or not isinstance(codecs[0], zarr.codecs.BytesCodec):
            return None
        if codecs[0].endian not in (None, Endian.little):
            return None
        crc32c = isinstance(codecs[-1], zarr.codecs.Crc32cCodec)
        if crc32c and google_crc32c is None:
            return None
        compressors = codecs[1:-1] if crc32c else codecs[1:]
        if len(compressors) > 1:
            return None
        compressor = None
        if compressors:
            make = _COMPRESSORS.get(type(compressors[0]))
            if make is None:
                return None
            compressor = make()
        return cls(folder, metadata, compressor, crc32c=crc32c)

    def read(self, index: int) -> npt.NDArray[Any]:
        """Return the values of chunk ``index`` along the chip axis, without the chip axis.

        The array is writable unless the chunk was compressed. zarr writes no chunk whose
        values all equal the fill value, so a missing file reads as the fill value.
        """
        path = self._folder / self._metadata.encode_chunk_key((index, *self._zeros))
        try:
            file = open(path, "rb", buffering=0)
        except FileNotFoundError:
            return np.full(self.shape, self._fill_value, dtype=self._dtype)
        with file:
            size = os.fstat(file.fileno()).st_size
            if self._compressor is None:
                return self._read_raw(file, path, size)
            return self._read_compressed(file, path, size)

    def _read_raw(self, file: io.FileIO, path: Path, size: int) -> npt.NDArray[Any]:
        buffer = self._raw.take()
        if size != buffer.size:
            raise _damaged(path, f"it has {size} bytes, expected {buffer.size}")
        _read_into(file, buffer, path)
        if self._crc32c:
            _check_crc32c(buffer, path)
        return buffer[: self._nbytes].view(self._dtype).reshape(self.shape)

    def _read_compressed(self, file: io.FileIO, path: Path, size: int) -> npt.NDArray[Any]:
        assert self._compressor is not None
        payload = np.empty(size, dtype=np.uint8)
        _read_into(file, payload, path)
        if self._crc32c:
            payload = _check_crc32c(payload, path)
        try:
            decoded = self._compressor.decode(payload)
        except (RuntimeError, ValueError) as error:
            raise _damaged(path, f"it does not decode: {error}") from error
        if len(decoded) != self._nbytes:
            raise _damaged(path, f"it decodes to {len(decoded)} bytes, expected {self._nbytes}")
        return np.frombuffer(decoded, dtype=self._dtype).reshape(self.shape)


def _read_into(file: io.FileIO, buffer: npt.NDArray[np.uint8], path: Path) -> None:
    """Fill ``buffer`` from ``file``, raising FeedError when the file ends first.

    The file's size was checked before, so ending early means it was truncated meanwhile.
    """
    view = buffer.data
    filled = 0
    while filled < len(view):
        count = file.readinto(view[filled:])
        if not count:
            raise _damaged(path, f"it ended after {filled} of {len(view)} bytes")
        filled += count


def _check_crc32c(data: npt.NDArray[np.uint8], path: Path) -> npt.NDArray[np.uint8]:
    """Check the CRC-32C that zarr's crc32c codec appends, and return the bytes before it."""
    payload, stored = data[:-CRC32C_BYTES], data[-CRC32C_BYTES:]
    # google_crc32c takes read-only buffers and NumPy arrays, but no writable memoryview.
    computed = google_crc32c.value(payload)
    if computed != int.from_bytes(stored.tobytes(), "little"):
        raise _damaged(path, "its CRC-32C checksum does not match its bytes")
    return payload


def _damaged(path: Path, problem: str) -> FeedError:
    return FeedError(
        f"chunk file {str(path)!r} is damaged: {problem}; run 'sensorcube verify' on the store "
        "with its manifest, then 'sensorcube repair'"
    )


class ChipReader:
    """Chunk readers of one store's variables, set up on the first read in each process.

    The process id is checked on every read, so a forked DataLoader worker sets up its own
    readers instead of using the parent's, and pickling (spawned workers) drops them.
    """

    def __init__(self, path: Path, variables: Sequence[str]) -> None:
        self._path = path
        self._variables = tuple(variables)
        self._pid: int | None = None
        self._files: dict[str, ChunkFiles] = {}
        self._arrays: dict[str, zarr.Array[Any]] = {}
        self._masks: dict[str, BufferPool] = {}

    def read(self, variable: str, index: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
        """Return one chip's values of ``variable`` as float32, and where they are finite.

        No other object refers to either array. The values array is read-only when its chunk
        was compressed.
        """
        if self._pid != os.getpid():
            self._open()
        files = self._files.get(variable)
        if files is not None:
            values = files.read(index)
        else:
            values = np.asarray(self._arrays[variable][index])
        values = values.astype(np.float32, copy=False)
        mask = self._masks.get(variable)
        if mask is None or mask.shape != values.shape:
            mask = self._masks[variable] = BufferPool(values.shape, np.bool_)
        valid = mask.take()
        np.isfinite(values, out=valid)
        return values, valid

    def _open(self) -> None:
        root = zarr.open_group(str(self._path), mode="r")
        self._files = {}
        self._arrays = {}
        self._masks = {}
        for name in self._variables:
            array = get_array(root, name)
            files = ChunkFiles.for_array(self._path / name, array)
            if files is None:
                self._arrays[name] = array
            else:
                self._files[name] = files
        self._pid = os.getpid()
        log.debug(
            "opened store %s in process %d: %s read directly, %s through zarr",
            self._path,
            self._pid,
            sorted(self._files),
            sorted(self._arrays),
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self._path, "variables": self._variables}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._path = state["path"]
        self._variables = state["variables"]
        self._pid = None
        self._files = {}
        self._arrays = {}
        self._masks = {}
