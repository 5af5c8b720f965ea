"""PyTorch wrappers of the training feed: a map-style Dataset and an epoch sampler.

Shuffling is the sampler's job: :class:`EpochSampler` runs in the main process and yields the
same order as :meth:`ChipPairs.epoch_order`, so the DataLoader hands each index to exactly one
worker and no ``worker_init_fn`` is needed. Workers open their own Zarr handles on their first
read (see :class:`pipeline.feed.ChipPairs`), with the fork and the spawn start methods alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypedDict

import torch
from torch.utils.data import Dataset, Sampler

from pipeline.feed import ChipPairs


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
