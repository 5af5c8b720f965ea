"""Per-band statistics accumulated chip by chip, for normalisation and datasheets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class BandMoments:
    """Count, mean and population standard deviation (ddof 0) of one band; NaN when empty."""

    count: int
    mean: float
    std: float

    def to_json(self) -> dict[str, float | int | None]:
        if not self.count:
            return {"mean": None, "std": None, "count": 0}
        return {"mean": self.mean, "std": self.std, "count": self.count}


class RunningMoments:
    """Per-band count, mean and sum of squared deviations, merged chip by chip.

    Each chip merges with the pairwise update of Chan, Golub and LeVeque (1979) in float64,
    which avoids the cancellation of a plain sum of squares. Non-finite values are ignored.
    """

    def __init__(self, bands: int) -> None:
        self.count = np.zeros(bands, dtype=np.float64)
        self.mean = np.zeros(bands, dtype=np.float64)
        self.m2 = np.zeros(bands, dtype=np.float64)

    def update(self, values: npt.ArrayLike) -> None:
        """Merge one chip, ``values`` shaped (band, ...)."""
        array = np.asarray(values, dtype=np.float64).reshape(self.count.size, -1)
        finite = np.isfinite(array)
        count = finite.sum(axis=1).astype(np.float64)
        mean = np.where(finite, array, 0.0).sum(axis=1) / np.maximum(count, 1.0)
        m2 = (np.where(finite, array - mean[:, None], 0.0) ** 2).sum(axis=1)
        total = self.count + count
        safe_total = np.maximum(total, 1.0)
        delta = mean - self.mean
        self.mean = self.mean + delta * count / safe_total
        self.m2 = self.m2 + m2 + delta**2 * self.count * count / safe_total
        self.count = total

    def band(self, position: int) -> BandMoments:
        count = int(self.count[position])
        if count == 0:
            return BandMoments(0, math.nan, math.nan)
        std = math.sqrt(float(self.m2[position]) / count)
        return BandMoments(count, float(self.mean[position]), std)

    def bands(self, labels: Sequence[str]) -> dict[str, BandMoments]:
        return {label: self.band(position) for position, label in enumerate(labels)}
