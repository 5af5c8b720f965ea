"""`sensorcube release` on one real sample run: STAC, datasheet, statistics, quicklooks, errors.

The module runs `sensorcube run sample` once (about ten seconds) and releases it. pystac and
`rustac validate` both fetch extension schemas (datacube, file) from the internet. So the STAC
documents are validated offline against the core STAC schemas only, by `rustac validate` on
copies with an empty `stac_extensions` list. The extension fields are checked one by one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
import pytest
import xarray as xr
from PIL import Image
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.file import FileExtension

from pipeline.cli import main
from pipeline.quicklook import quicklook_size
from pipeline.release import choose_quicklook_chips
from pipeline.stats import RunningMoments
from pipeline.store import chunk_path, open_chip_table
from tests.test_end_to_end import make_workdir, run_cli, tree_digest

EXIT_FAILURE = 1
EXIT_USAGE = 2
RUSTAC = str(Path(sys.executable).parent / "rustac")
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = make_workdir(tmp_path_factory.mktemp("release-run"))
    result = run_cli(workdir, "run", "sample", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


@pytest.fixture(scope="module")
def release(sample_run: Path) -> Path:
    result = run_cli(sample_run, "release", "sample", "--out", "release")
    assert result.returncode == 0, result.stderr
    return sample_run / "release"


@pytest.fixture(scope="module")
def manifest(sample_run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sample_run / "splits/sample/manifest.json").read_text())
    return data


def split_ids(manifest: dict[str, Any], split: str) -> list[str]:
    return [entry["id"] for entry in manifest["chips"] if entry["split"] == split]


def load_item(release: Path) -> pystac.Item:
    collection = pystac.Collection.from_file(str(release / "collection.json"))
    items = list(collection.get_items())
    assert len(items) == 1
    return items[0]


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith(f".{name}.tmp-"))


# ----------------------------------------------------------------------------------------------
# Layout and STAC


def test_release_layout(release: Path, sample_run: Path, manifest: dict[str, Any]) -> None:
    files = sorted(str(path.relative_to(release)) for path in release.rglob("*") if path.is_file())
    first_chips = [split_ids(manifest, split)[0] for split in ("train", "val", "test")]
    quicklooks = [f"sample/quicklooks/{chip_id}.png" for chip_id in first_chips]
    quicklooks.append(f"sample/quicklooks/{split_ids(manifest, 'train')[1]}.png")

    assert files == sorted(
        [
            "collection.json",
            "datasheet.md",
            "stats.json",
            "sample/sample.json",
            "sample/manifest.json",
            *quicklooks,
        ]
    )
    manifest_bytes = (sample_run / "splits/sample/manifest.json").read_bytes()
    assert (release / "sample/manifest.json").read_bytes() == manifest_bytes
    assert leftovers(sample_run, "release") == []


def test_collection_loads_with_item(release: Path) -> None:
    collection = pystac.Collection.from_file(str(release / "collection.json"))
    item = load_item(release)

    assert collection.id == "sensorcube-sample"
    assert collection.extra_fields["sensorcube:release"] == 1
    assert collection.license == "other"
    licence_links = collection.get_links("license")
    assert [link.href for link in licence_links] == ["./datasheet.md#licences-and-citations"]
    assert item.id == "sample"
    assert item.collection_id == collection.id
    for key in ("datasheet", "stats"):
        assert Path(collection.assets[key].get_absolute_href() or "").is_file(), key
    interval = collection.extent.temporal.intervals[0]
    assert interval == [item.common_metadata.start_datetime, item.common_metadata.end_datetime]


def test_item_assets_exist(release: Path, sample_run: Path) -> None:
    item = load_item(release)

    store = Path(item.assets["store"].get_absolute_href() or "")
    assert store.resolve() == (sample_run / "cubes/sample.zarr").resolve()
    assert (store / "zarr.json").is_file()
    assert item.assets["store"].media_type == "application/vnd.zarr"
    assert item.assets["store"].href == "../../cubes/sample.zarr"
    for key, asset in item.assets.items():
        assert Path(asset.get_absolute_href() or "").exists(), key
    quicklooks = [key for key in item.assets if key.startswith("quicklook-")]
    assert len(quicklooks) == 4


def test_item_datacube_fields(release: Path, sample_run: Path) -> None:
    item = load_item(release)
    cube = DatacubeExtension.ext(item)
    dimensions = {name: dim.to_dict() for name, dim in cube.dimensions.items()}
    variables = {name: var.to_dict() for name, var in (cube.variables or {}).items()}
    store = xr.open_zarr(sample_run / "cubes/sample.zarr")

    assert item.stac_extensions == [
        "https://stac-extensions.github.io/datacube/v2.2.0/schema.json",
        "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    ]
    assert set(dimensions) == {"chip", "band", "polarization", "y", "x", "affine"}
    assert dimensions["chip"]["values"] == [str(chip) for chip in store["chip"].values]
    assert dimensions["band"]["values"] == S2_BANDS
    assert dimensions["polarization"]["values"] == ["VV", "VH"]
    for axis in ("x", "y"):
        assert dimensions[axis]["type"] == "spatial"
        assert dimensions[axis]["axis"] == axis
        assert dimensions[axis]["extent"] == [5.0, 315.0]
        assert dimensions[axis]["step"] == 10.0
    assert variables["s2"]["dimensions"] == ["chip", "band", "y", "x"]
    assert variables["s1"]["dimensions"] == ["chip", "polarization", "y", "x"]
    assert variables["ndvi"]["dimensions"] == ["chip", "y", "x"]
    for name in ("s2", "s1", "ndvi"):
        assert variables[name]["type"] == "data"
        assert variables[name]["unit"] == "1"
        assert variables[name]["data_type"] == "float32"
    for name, variable in variables.items():
        assert set(variable["dimensions"]) <= set(dimensions), name


def test_manifest_asset_checksum(release: Path) -> None:
    item = load_item(release)
    asset = item.assets["manifest"]
    data = Path(asset.get_absolute_href() or "").read_bytes()
    file_info = FileExtension.ext(asset)

    assert file_info.checksum == "1220" + hashlib.sha256(data).hexdigest()
    assert file_info.size == len(data)


def test_item_splits_and_pairing_rules(
    release: Path, sample_run: Path, manifest: dict[str, Any]
) -> None:
    properties = load_item(release).properties
    splits = properties["sensorcube:splits"]
    pairing = properties["sensorcube:pairing"]
    table = open_chip_table(sample_run / "cubes/sample.zarr")

    for split in ("train", "val", "test", "buffer"):
        assert splits[split]["count"] == manifest["split_counts"][split], split
        assert splits[split]["chips"] == split_ids(manifest, split), split
    assert pairing["s1"]["max_time_gap_days"] == 3.0
    assert pairing["s1"]["orbit_state"] == "any"
    assert pairing["s2"]["min_clear_fraction"] == 0.9
    assert set(table["selection.s1.rule"]) == {pairing["s1"]["rule"]}
    assert set(table["selection.s2.rule"]) == {pairing["s2"]["rule"]}
    assert properties["sensorcube:config_hash"] == manifest["config_hash"]


def test_stac_core_schemas_valid(release: Path, tmp_path: Path) -> None:
    for name in ("collection.json", "sample/sample.json"):
        document = json.loads((release / name).read_text())
        # Without extensions rustac needs only the core schemas it ships, so it stays offline.
        document["stac_extensions"] = []
        copy = tmp_path / Path(name).name
        copy.write_text(json.dumps(document))

        result = subprocess.run(
            [RUSTAC, "validate", str(copy)], capture_output=True, text=True, check=False
        )

        assert result.returncode == 0, (name, result.stdout, result.stderr)


# ----------------------------------------------------------------------------------------------
# Datasheet and statistics


def datasheet_row(datasheet: str, *cells: str) -> list[str]:
    """Return the cells of the first table row that starts with ``cells``."""
    prefix = "| " + " | ".join(cells) + " |"
    for line in datasheet.splitlines():
        if line.startswith(prefix):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no datasheet row starting {prefix!r}")


def test_datasheet_split_counts_and_times(
    release: Path, sample_run: Path, manifest: dict[str, Any]
) -> None:
    datasheet = (release / "datasheet.md").read_text()
    table = open_chip_table(sample_run / "cubes/sample.zarr")

    for split in ("train", "val", "test", "buffer"):
        row = datasheet_row(datasheet, split)
        assert int(row[1]) == manifest["split_counts"][split], split
    train = table.loc[split_ids(manifest, "train")]
    s2_times = pd.to_datetime(train["items.s2.datetime"], utc=True)
    s1_times = pd.to_datetime(train["items.s1.datetime"], utc=True)
    expected = [
        s2_times.min().strftime("%Y-%m-%dT%H:%M:%SZ"),
        s2_times.max().strftime("%Y-%m-%dT%H:%M:%SZ"),
        s1_times.min().strftime("%Y-%m-%dT%H:%M:%SZ"),
        s1_times.max().strftime("%Y-%m-%dT%H:%M:%SZ"),
    ]
    assert datasheet_row(datasheet, "train")[2:] == expected
    assert expected[0] < expected[1]


def test_train_b04_statistics_match_xarray(
    release: Path, sample_run: Path, manifest: dict[str, Any]
) -> None:
    cube = xr.open_zarr(sample_run / "cubes/sample.zarr")
    train = split_ids(manifest, "train")
    b04 = cube["s2"].sel(chip=train, band="B04").values.astype(np.float64)
    stats = json.loads((release / "stats.json").read_text())
    row = datasheet_row((release / "datasheet.md").read_text(), "s2", "B04")

    assert stats["s2"]["B04"]["count"] == int(np.isfinite(b04).sum())
    assert stats["s2"]["B04"]["mean"] == pytest.approx(np.nanmean(b04), rel=1e-9)
    assert stats["s2"]["B04"]["std"] == pytest.approx(np.nanstd(b04), rel=1e-9)
    assert float(row[2]) == pytest.approx(np.nanmean(b04), rel=1e-5)
    assert float(row[3]) == pytest.approx(np.nanstd(b04), rel=1e-5)
    assert int(row[4]) == int(np.isfinite(b04).sum())


def test_stats_json_lists_every_band(release: Path) -> None:
    stats = json.loads((release / "stats.json").read_text())

    assert list(stats["s2"]) == sorted(S2_BANDS)
    assert sorted(stats["s1"]) == ["VH", "VV"]
    assert list(stats["ndvi"]) == ["ndvi"]
    assert -1.0 < stats["ndvi"]["ndvi"]["mean"] < 1.0
    for variable, bands in stats.items():
        for band, values in bands.items():
            assert values["std"] > 0, (variable, band)
            assert values["count"] > 0, (variable, band)


def test_datasheet_licences(release: Path) -> None:
    datasheet = (release / "datasheet.md").read_text()
    licence = datasheet.split("## Licences and citations", 1)[1]

    assert "CDLA-Permissive-1.0" in licence
    assert "Sumbul et al., BigEarthNet-MM" in licence
    assert "Contains modified Copernicus Sentinel data 2017-2018" in licence


def test_running_moments_merge_batches() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(0.2, 0.05, size=(6, 2, 500))
    values[rng.random(values.shape) < 0.1] = np.nan
    moments = RunningMoments(2)

    for batch in values:
        moments.update(batch)
    moments.update(np.full((2, 10), np.nan))

    for band in range(2):
        stats = moments.band(band)
        assert stats.count == int(np.isfinite(values[:, band]).sum())
        assert stats.mean == pytest.approx(np.nanmean(values[:, band]), rel=1e-12)
        assert stats.std == pytest.approx(np.nanstd(values[:, band]), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Quicklooks


def test_quicklooks_decode_with_size(release: Path, manifest: dict[str, Any]) -> None:
    datasheet = (release / "datasheet.md").read_text()
    expected = [
        split_ids(manifest, "train")[0],
        split_ids(manifest, "val")[0],
        split_ids(manifest, "test")[0],
        split_ids(manifest, "train")[1],
    ]

    for chip_id in expected:
        path = release / "sample" / "quicklooks" / f"{chip_id}.png"
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG"
            assert image.mode == "RGB"
            assert image.size == quicklook_size(32, 3)
            pixels = np.asarray(image)
        assert pixels.std() > 0, chip_id
        assert f"](sample/quicklooks/{chip_id}.png)" in datasheet


def test_quicklook_chips_round_robin() -> None:
    splits = {"train": ["t2", "t1", "t3"], "val": [], "test": ["s1"]}

    assert choose_quicklook_chips(splits, 4) == [
        ("train", "t1"),
        ("test", "s1"),
        ("train", "t2"),
        ("train", "t3"),
    ]
    assert choose_quicklook_chips({"train": ["a"]}, 4) == [("train", "a")]


# ----------------------------------------------------------------------------------------------
# Errors: exit code, message, nothing written


@pytest.fixture()
def cwd(sample_run: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(sample_run)
    return sample_run


def damaged_store(sample_run: Path, tmp_path: Path, manifest: dict[str, Any]) -> tuple[Path, str]:
    """Copy the store and flip one byte of one chip's s1 chunk; return the copy and the chip."""
    store = tmp_path / "damaged.zarr"
    shutil.copytree(sample_run / "cubes/sample.zarr", store)
    chip_id = split_ids(manifest, "train")[2]
    index = [str(chip) for chip in xr.open_zarr(store)["chip"].values].index(chip_id)
    path = chunk_path(store, "s1", index, 4)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    return store, chip_id


def test_missing_store(cwd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    cubes = tmp_path / "nocubes"

    code = main(["release", "sample", "--out", str(out), "--cubes-dir", str(cubes)])

    assert code == EXIT_USAGE
    message = (
        f"store '{cubes}/sample.zarr' of region 'sample' not found; run 'sensorcube run "
        "sample' to build it, or pass --cubes-dir or --store to point at it"
    )
    assert message in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []


def test_missing_manifest(cwd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    splits = tmp_path / "splits"
    (splits / "sample").mkdir(parents=True)
    shutil.copy(cwd / "splits/sample/region.yaml", splits / "sample")
    out = tmp_path / "out"

    code = main(["release", "sample", "--out", str(out), "--splits-dir", str(splits)])

    assert code == EXIT_USAGE
    assert f"manifest not found: '{splits}/sample/manifest.json'" in capsys.readouterr().err
    assert not out.exists()
    assert leftovers(tmp_path, "out") == []


def test_changed_region_file_rejected(
    cwd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    splits = tmp_path / "splits"
    shutil.copytree(cwd / "splits", splits)
    region_file = splits / "sample" / "region.yaml"
    text = region_file.read_text()
    assert "max_time_gap_days: 3\n" in text
    region_file.write_text(text.replace("max_time_gap_days: 3\n", "max_time_gap_days: 5\n"))
    out = tmp_path / "out"

    code = main(["release", "sample", "--out", str(out), "--splits-dir", str(splits)])

    assert code == EXIT_FAILURE
    stderr = capsys.readouterr().err
    assert (
        f"manifest '{splits}/sample/manifest.json' was frozen from another configuration" in stderr
    )
    assert "restore the files or rebuild with 'sensorcube run sample --overwrite'" in stderr
    assert not out.exists()
    assert leftovers(tmp_path, "out") == []


def test_verify_failure_names_chip(
    cwd: Path, tmp_path: Path, manifest: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    store, chip_id = damaged_store(cwd, tmp_path, manifest)
    out = tmp_path / "out"

    code = main(["release", "sample", "--out", str(out), "--store", str(store)])

    assert code == EXIT_FAILURE
    stderr = capsys.readouterr().err
    assert re.search(
        rf"store '{re.escape(str(store))}' does not match manifest "
        r"'splits/sample/manifest\.json': 1 chip variables differ in 1 chips "
        rf"\({chip_id}\); run 'sensorcube verify ",
        stderr,
    ), stderr
    assert f"and 'sensorcube repair {store} --manifest splits/sample/manifest.json'" in stderr
    assert not out.exists()
    assert leftovers(tmp_path, "out") == []


def test_non_empty_output_rejected(
    cwd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    code = main(["release", "sample", "--out", str(out)])

    assert code == EXIT_USAGE
    assert (
        f"output folder '{out}' exists and is not empty; pass --overwrite to replace the "
        "release in it, or choose another --out"
    ) in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["notes.txt"]
    assert leftovers(tmp_path, "out") == []


def test_overwrite_never_deletes_other_folder(
    cwd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")

    code = main(["release", "sample", "--out", str(out), "--overwrite"])

    assert code == EXIT_USAGE
    assert (
        f"output folder '{out}' is not empty and is not a sensorcube release (no "
        "collection.json with 'sensorcube:release'); sensorcube never deletes it, even with "
        "--overwrite"
    ) in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_store_option_needs_one_region(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["release", "sample", "splits/sample/region.yaml", "--out", "x", "--store", "cubes/x"]
    )

    assert code == EXIT_USAGE
    assert "--store applies to a single REGION, but 2 were given" in capsys.readouterr().err
    assert not (cwd / "x").exists()


def test_region_given_twice(cwd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"

    code = main(["release", "sample", "splits/sample/region.yaml", "--out", str(out)])

    assert code == EXIT_USAGE
    assert "region 'sample' is given twice; name each region once" in capsys.readouterr().err
    assert not out.exists()


def test_overwrite_replaces_release_identically(cwd: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "release", "sample", "--out", str(out)]) == 0
    first = tree_digest(out)
    (out / "stale.txt").write_text("from an earlier release")

    code = main(["-q", "release", "sample", "--out", str(out), "--overwrite"])

    assert code == 0
    assert tree_digest(out) == first
    assert leftovers(tmp_path, "out") == []


def test_failed_overwrite_keeps_old_release(
    cwd: Path, tmp_path: Path, manifest: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["-q", "release", "sample", "--out", str(out)]) == 0
    before = tree_digest(out)
    store, chip_id = damaged_store(cwd, tmp_path, manifest)

    code = main(["release", "sample", "--out", str(out), "--store", str(store), "--overwrite"])

    assert code == EXIT_FAILURE
    assert f"({chip_id})" in capsys.readouterr().err
    assert tree_digest(out) == before
    assert leftovers(tmp_path, "out") == []
