"""TorchGeo RasterDatasets over the synthetic COGs of :mod:`tests.benchmarks.scenes`.

This module imports torchgeo at import time. Only ``bench_torchgeo.run`` imports it, inside a
try block that reports a missing torchgeo as a skipped benchmark. The classes are defined at
module level so that DataLoader workers can unpickle them under the spawn start method too.
"""

from __future__ import annotations

from pyproj import CRS
from torchgeo.datasets import IntersectionDataset, RasterDataset

from tests.benchmarks import scenes


class SyntheticS2(RasterDataset):
    """The 7 Sentinel-2 band COGs (``cog/s2/B01.tif`` ...), one file per band."""

    # The index contains one row per scene. It is built from the B02 file alone, and RasterDataset
    # swaps the ``band`` group of that file name to read each requested band.
    filename_regex = r"^(?P<band>B\d{2})\.tif$"
    separate_files = True
    all_bands = tuple(scenes.S2_BANDS)


class SyntheticS1(RasterDataset):
    """The VV and VH Sentinel-1 COGs in EPSG:4326, which RasterDataset warps to the S2 grid."""

    filename_regex = r"^(?P<band>V[VH])\.tif$"
    separate_files = True
    all_bands = scenes.S1_BANDS


def s1_s2_dataset() -> IntersectionDataset:
    """Return the S1 and S2 scenes as one IntersectionDataset in EPSG:32632 at 10 m.

    Each sample's ``image`` has the 2 S1 bands followed by the 7 S2 bands, as float32 tensors
    of DN (S2) and linear gamma0 (S1). RasterDataset in torchgeo 0.8.1 only casts the values
    to float32 and applies no radiometric scaling.
    """
    crs = CRS.from_epsg(scenes.EPSG)
    cog = scenes.scenes_dir() / "cog"
    s1 = SyntheticS1(paths=[cog / "s1" / "VV.tif"], crs=crs, res=scenes.RESOLUTION_M)
    s2 = SyntheticS2(paths=[cog / "s2" / "B02.tif"], crs=crs, res=scenes.RESOLUTION_M)
    return IntersectionDataset(s1, s2)
