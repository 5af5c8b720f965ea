"""PyTorch wrappers of the training feed: a map-style Dataset, an epoch sampler and a loader.

Shuffling is the sampler's job: :class:`EpochSampler` runs in the main process and yields the
same order as :meth:`ChipPairs.epoch_order`, so the DataLoader hands each index to exactly one
worker and no ``worker_init_fn`` is needed. Workers open their own Zarr handles on their first
read (see :class:`pipeline.feed.ChipPairs`), with the fork and the spawn start methods alike.

:class:`ChipPairLoader` runs a DataLoader whose workers write each batch into shared memory
that is reused from batch to batch, instead of new shared memory per batch (see its docstring).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from pipeline.errors import FeedError
from pipeline.feed import ChipPairs
from pipeline.feed_chunks import is_unreferenced


class ChipPairSample(TypedDict):
    """One item of :class:`ChipPairDataset`, in a form that the default collate function stacks."""

    chip_id: str
    source: torch.Tensor  # float32, e.g. (band, y, x)
    target: torch.Tensor
    source_valid: torch.Tensor  # bool, True where the stored value was finite
    target_valid: torch.Tensor


class ChipPairDataset(Dataset[ChipPairSample]):
    """The pairs of a :class:`ChipPairs` as tensors, indexed in manifest order."""

    def __init__(self, pairs: ChipPairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> ChipPairSample:
        pair = self.pairs[index]
        return {
            "chip_id": pair.chip_id,
            "source": torch.from_numpy(pair.source),
            "target": torch.from_numpy(pair.target),
            "source_valid": torch.from_numpy(pair.source_valid),
            "target_valid": torch.from_numpy(pair.target_valid),
        }


class EpochSampler(Sampler[int]):
    """Yield the indices of ``pairs.epoch_order(epoch)``: seeded, and new for every epoch.

    Call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``. Without it, every
    epoch repeats the order of epoch 0.
    """

    def __init__(self, pairs: ChipPairs) -> None:
        self.pairs = pairs
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(self.pairs.epoch_order(self.epoch).tolist())

    def __len__(self) -> int:
        return len(self.pairs)


class ChipPairBatch(TypedDict):
    """A batch of :class:`ChipPairLoader`: ChipPairDataset items stacked as the default
    collate function stacks them."""

    chip_id: list[str]
    source: torch.Tensor  # float32 (batch, band, y, x)
    target: torch.Tensor
    source_valid: torch.Tensor  # bool
    target_valid: torch.Tensor


_TENSOR_KEYS = ("source", "target", "source_valid", "target_valid")
_FREE, _IN_USE = 0, 1


@dataclass(frozen=True)
class _Filled:
    """Result of a batch that a worker wrote into a slot: the slot and the chip ids."""

    slot: int
    chip_ids: list[str]


class _Slots:
    """Batch-sized arrays in shared memory, ``per_worker`` slots for each DataLoader worker.

    Worker ``w`` claims only its own slots, so no two processes write into one slot, and only
    the main process frees them. Each slot array is a NumPy view of its own shared tensor. Any
    view made from it, and any tensor made from such a view with ``torch.from_numpy``, refers
    to that array. So a slot is unused when only this object refers to its arrays.
    """

    def __init__(self, pairs: ChipPairs, *, batch_size: int, workers: int, per_worker: int) -> None:
        first = pairs[0]
        self.per_worker = per_worker
        self.state = _shared(torch.zeros(workers * per_worker, dtype=torch.uint8))
        self.tensors: list[dict[str, torch.Tensor]] = []
        for _ in range(workers * per_worker):
            slot = {}
            for key in _TENSOR_KEYS:
                example = torch.from_numpy(getattr(first, key))
                shape = (batch_size, *example.shape)
                slot[key] = _shared(torch.empty(shape, dtype=example.dtype))
            self.tensors.append(slot)
        self._arrays: list[dict[str, npt.NDArray[Any]]] | None = None
        self.handed_out: set[int] = set()  # slots whose views the main process yielded

    @property
    def arrays(self) -> list[dict[str, npt.NDArray[Any]]]:
        if self._arrays is None:
            self._arrays = [{k: t.numpy() for k, t in slot.items()} for slot in self.tensors]
        return self._arrays

    def claim(self, worker: int) -> int | None:
        """Mark a free slot of ``worker`` in use and return it, or None when none is free."""
        state = self.state.numpy()
        first = worker * self.per_worker
        for slot in range(first, first + self.per_worker):
            if state[slot] == _FREE:
                state[slot] = _IN_USE
                return slot
        return None

    def release(self, slots: Iterable[int]) -> None:
        """Free those of ``slots`` that nothing outside this object refers to."""
        state = self.state.numpy()
        for slot in list(slots):
            arrays = self.arrays[slot]
            if all(is_unreferenced(arrays, key) for key in arrays):
                state[slot] = _FREE
                self.handed_out.discard(slot)

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers receive the shared tensors (torch passes their memory, not a copy)
        # and make their own NumPy views.
        return {"per_worker": self.per_worker, "state": self.state, "tensors": self.tensors}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.per_worker = state["per_worker"]
        self.state = state["state"]
        self.tensors = state["tensors"]
        self._arrays = None
        self.handed_out = set()


def _shared(tensor: torch.Tensor) -> torch.Tensor:
    """Move ``tensor`` into shared memory, which worker processes map instead of copying."""
    shared: torch.Tensor = tensor.share_memory_()  # type: ignore[no-untyped-call]
    return shared


class _SlotDataset(Dataset[Any]):
    """Dataset that reads each batch of pairs into a free slot of the calling worker.

    A worker whose slots are all in use returns the batch in new memory, stacked as the
    default collate function would stack it.
    """

    def __init__(self, pairs: ChipPairs, slots: _Slots) -> None:
        self.pairs = pairs
        self.slots = slots

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> _Filled | ChipPairBatch:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> _Filled | ChipPairBatch:
        info = get_worker_info()
        slot = None if info is None else self.slots.claim(info.id)
        if slot is None:
            samples = [ChipPairDataset(self.pairs)[index] for index in indices]
            batch: ChipPairBatch = default_collate(samples)
            return batch
        arrays = self.slots.arrays[slot]
        chip_ids = []
        for position, index in enumerate(indices):
            pair = self.pairs[index]
            chip_ids.append(pair.chip_id)
            for key in _TENSOR_KEYS:
                np.copyto(arrays[key][position], getattr(pair, key))
        return _Filled(slot, chip_ids)


def _pass_through(batch: Any) -> Any:
    """The collate function: ``_SlotDataset.__getitems__`` returns whole batches."""
    return batch


class _ReleasingSampler(EpochSampler):
    """An EpochSampler that frees the slots of batches the last iteration left unused.

    The DataLoader starts iterating its sampler once its persistent workers have finished every
    earlier task and before it sends new ones (``_MultiProcessingDataLoaderIter._reset`` in
    torch 2.13), so no worker is writing into a slot then. Batches of an
    iteration abandoned midway never reach the caller, and their slots are freed here.
    """

    def __init__(self, pairs: ChipPairs, slots: _Slots) -> None:
        super().__init__(pairs)
        self._slots = slots

    def __iter__(self) -> Iterator[int]:
        self._slots.release(range(len(self._slots.tensors)))
        return super().__iter__()


class ChipPairLoader:
    """Batches of a :class:`ChipPairs` from DataLoader worker processes, through shared memory
    reused from batch to batch.

    ``DataLoader(ChipPairDataset(pairs), ...)`` stacks every batch into new shared memory in
    the worker, and new memory costs more to fill than the chunks cost to read. Here each
    worker owns ``slots_per_worker`` batch-sized slots, created once in the main process, and
    writes each batch into a free one. The loader yields tensors that are views of the slot and
    frees the slot once neither they nor any view of them is referenced, so a batch that the
    training loop keeps is never overwritten. When all of a worker's slots are in use, the
    worker returns the batch in new memory instead: slower, not wrong. Batches are the dicts
    that the default collate function makes of ChipPairDataset items.

    Workers are persistent. The default of ``prefetch_factor + 2`` slots per worker covers the
    batches in flight and the one being used. Shared memory taken:
    ``num_workers * slots_per_worker * batch_size`` chips. Call :meth:`set_epoch` before each
    epoch, as with :class:`EpochSampler`.
    """

    def __init__(
        self,
        pairs: ChipPairs,
        *,
        batch_size: int,
        num_workers: int,
        drop_last: bool = False,
        prefetch_factor: int = 2,
        multiprocessing_context: str | None = None,
        slots_per_worker: int | None = None,
    ) -> None:
        _check_loader_options(
            pairs,
            batch_size=batch_size,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            slots_per_worker=slots_per_worker,
        )
        per_worker = prefetch_factor + 2 if slots_per_worker is None else slots_per_worker
        self._slots = _Slots(
            pairs, batch_size=batch_size, workers=num_workers, per_worker=per_worker
        )
        self.sampler = _ReleasingSampler(pairs, self._slots)
        # Batches that came in new memory because their worker had no free slot. If this grows
        # while batches are not kept, slots_per_worker is too small for the prefetching.
        self.batches_in_new_memory = 0
        self.loader = DataLoader(
            _SlotDataset(pairs, self._slots),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_pass_through,
            drop_last=drop_last,
            prefetch_factor=prefetch_factor,
            persistent_workers=True,
            multiprocessing_context=multiprocessing_context,
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[ChipPairBatch]:
        for batch in self.loader:
            self._slots.release(self._slots.handed_out)
            if isinstance(batch, _Filled):
                yield self._views(batch)
            else:
                self.batches_in_new_memory += 1
                yield batch

    def _views(self, filled: _Filled) -> ChipPairBatch:
        self._slots.handed_out.add(filled.slot)
        arrays = self._slots.arrays[filled.slot]
        count = len(filled.chip_ids)
        return {
            "chip_id": filled.chip_ids,
            "source": torch.from_numpy(arrays["source"][:count]),
            "target": torch.from_numpy(arrays["target"][:count]),
            "source_valid": torch.from_numpy(arrays["source_valid"][:count]),
            "target_valid": torch.from_numpy(arrays["target_valid"][:count]),
        }


def _check_loader_options(
    pairs: ChipPairs,
    *,
    batch_size: int,
    num_workers: int,
    prefetch_factor: int,
    slots_per_worker: int | None,
) -> None:
    if len(pairs) == 0:
        raise FeedError(
            f"split {pairs.split!r} has no chips to load; choose a split that the manifest's "
            "split counts list with chips"
        )
    options = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "prefetch_factor": prefetch_factor,
        "slots_per_worker": 1 if slots_per_worker is None else slots_per_worker,
    }
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            hint = ""
            if name == "num_workers":
                hint = (
                    "; for reads in this process, iterate ChipPairs.iter_epoch or use "
                    "ChipPairDataset in a DataLoader"
                )
            raise FeedError(f"invalid {name} {value!r}: give a whole number of 1 or more{hint}")
