"""Bad input to the CLI: the exit code, the message on stderr, and nothing written.

Each test calls ``pipeline.cli.main`` in-process from a copy of the sample working folder.
Exit code 2 is a usage error and 1 a run failure. Every message must name the bad value and
state the fix. No case gets as far as starting a Dask cluster: the ``run`` cases fail while
loading the configuration, checking the output path or searching the catalog.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.manifest import chips_digest

EXIT_FAILURE = 1
EXIT_USAGE = 2
REGION_FILE = Path("splits") / "sample" / "region.yaml"
CATALOG_FILE = Path("catalogs") / "sample.yaml"
MANIFEST_FILE = Path("splits") / "sample" / "manifest.json"

# A bow-tie ring: its two edges cross at (13.71, 48.21).
BOW_TIE = {
    "type": "Polygon",
    "coordinates": [
        [[13.70, 48.20], [13.72, 48.22], [13.72, 48.20], [13.70, 48.22], [13.70, 48.20]]
    ],
}
# A square in Tokyo written as [lat, lon], so its "latitudes" are 139.7 degrees.
SWAPPED_TOKYO = {
    "type": "Polygon",
    "coordinates": [
        [[35.60, 139.70], [35.60, 139.72], [35.62, 139.72], [35.62, 139.70], [35.60, 139.70]]
    ],
}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Map every path under ``root`` to its bytes, or to None for a folder."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def edit_yaml(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def set_key(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Return an edit that sets the nested key ``keys`` to ``value``."""

    def change(data: dict[str, Any]) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


def run_cli_without_writes(
    workdir: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str]:
    """Run the CLI in ``workdir``, check that it wrote nothing, and return (exit code, stderr)."""
    before = snapshot(workdir)

    code = main(list(argv))
    stderr = capsys.readouterr().err

    assert not (workdir / "cubes").exists()
    assert not (workdir / MANIFEST_FILE).exists()
    assert snapshot(workdir) == before
    return code, stderr


@pytest.fixture()
def cwd(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Change into the sample working folder, as a user runs sensorcube from their clone."""
    monkeypatch.chdir(workdir)
    return workdir


# ----------------------------------------------------------------------------------------------
# Region name and region file


@pytest.mark.parametrize("command", ["plan", "run"])
def test_unknown_region_lists_known(
    cwd: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, stderr = run_cli_without_writes(cwd, capsys, command, "nosuchregion")

    assert code == EXIT_USAGE
    assert re.search(
        r"region 'nosuchregion' not found: no file 'splits/nosuchregion/region\.yaml'; "
        r"known regions under 'splits': \['sample'\]; or pass a path to a region YAML",
        stderr,
    )


def test_missing_region_file(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stderr = run_cli_without_writes(cwd, capsys, "run", "splits/other/region.yaml")

    assert code == EXIT_USAGE
    assert re.search(
        r"region file not found: 'splits/other/region\.yaml'; check the name or path", stderr
    )


def test_malformed_yaml_points_at_line(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (cwd / REGION_FILE).read_text(encoding="utf-8")
    assert "bands: [VV, VH]" in text
    (cwd / REGION_FILE).write_text(
        text.replace("bands: [VV, VH]", "bands: [VV, VH"), encoding="utf-8"
    )

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"splits/sample/region\.yaml: malformed YAML in region file: .*line \d+, column \d+",
        stderr,
        re.DOTALL,
    )


def test_unknown_top_level_key(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("colour", value="red"))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"splits/sample/region\.yaml: unknown key 'colour'; valid keys here are "
        r"\['name', 'description', 'aoi', 'time', 'grid', 'modalities', 'derived', 'split'\]",
        stderr,
    )


@pytest.mark.parametrize(
    ("keys", "pattern"),
    [
        pytest.param(
            ("grid", "chip_sise"),
            r"unknown key 'grid\.chip_sise'; valid keys here are "
            r"\['chip_size', 'resolution', 'coverage'\]",
            id="grid",
        ),
        pytest.param(
            ("modalities", "s2", "max_cloud"),
            r"unknown key 'modalities\.s2\.max_cloud'; valid keys here are "
            r"\['catalog', 'bands', 'min_clear_fraction', 'max_cloud_cover', 'max_candidates'\]",
            id="modalities.s2",
        ),
    ],
)
def test_unknown_nested_key(
    cwd: Path, capsys: pytest.CaptureFixture[str], keys: tuple[str, ...], pattern: str
) -> None:
    edit_yaml(cwd / REGION_FILE, set_key(*keys, value=3))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(r"splits/sample/region\.yaml: " + pattern, stderr)


# ----------------------------------------------------------------------------------------------
# AOI and time range


def test_self_intersecting_aoi(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("aoi", value=BOW_TIE))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"aoi is not a valid polygon: Self-intersection\[13\.71 48\.21\]; fix the ring .*"
        r"shapely\.make_valid",
        stderr,
    )


@pytest.mark.parametrize(
    ("aoi", "pattern"),
    [
        pytest.param(
            {"type": "Point", "coordinates": [13.7, 48.2]},
            r"aoi has type 'Point'; it must be a Polygon or MultiPolygon",
            id="point",
        ),
        pytest.param(
            SWAPPED_TOKYO,
            r"aoi bounds \(35\.6, 139\.7, 35\.62, 139\.72\) are outside lon \[-180, 180\] and "
            r"lat \[-90, 90\]; aoi coordinates must be \[lon, lat\] in degrees",
            id="lat-lon-swapped",
        ),
    ],
)
def test_aoi_wrong_type_or_range(
    cwd: Path, capsys: pytest.CaptureFixture[str], aoi: dict[str, Any], pattern: str
) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("aoi", value=aoi))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(r"splits/sample/region\.yaml: " + pattern, stderr)


# A date-only end means the end of that day, so start and end on the same date is a valid
# one-day range. Equal datetimes are empty.
@pytest.mark.parametrize(
    ("start", "end", "pattern"),
    [
        pytest.param(
            "2018-02-28",
            "2017-06-01",
            r"time\.end 2017-06-01T23:59:59\.999999\+00:00 is not after "
            r"time\.start 2018-02-28T00:00:00\+00:00",
            id="end-before-start",
        ),
        pytest.param(
            "2017-06-01T00:00:00Z",
            "2017-06-01T00:00:00Z",
            r"time\.end 2017-06-01T00:00:00\+00:00 is not after "
            r"time\.start 2017-06-01T00:00:00\+00:00",
            id="end-equals-start",
        ),
    ],
)
def test_empty_time_range(
    cwd: Path, capsys: pytest.CaptureFixture[str], start: str, end: str, pattern: str
) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("time", value={"start": start, "end": end}))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(r"empty time range: " + pattern + r"; set an end later than the start", stderr)


# ----------------------------------------------------------------------------------------------
# Bands, catalogs and choices


def test_unknown_band_lists_valid(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("modalities", "s2", "bands", value=["B04", "B08", "B99"]))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"unknown band 'B99' in modalities\.s2\.bands; catalog 'sample' provides "
        r"\['B01', 'B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B08', 'B8A', 'B09', 'B11', 'B12'\]",
        stderr,
    )


def test_unknown_collection_no_items(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(
        cwd / CATALOG_FILE, set_key("modalities", "s2", "collection", value="no-such-collection")
    )

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_FAILURE
    assert re.search(
        r"catalog 'sample' returned no items in collection 'no-such-collection' .*"
        r"check the AOI and the collection name in catalogs/sample\.yaml",
        stderr,
    )


def test_unknown_catalog_lists_known(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("modalities", "s1", "catalog", value="nosuchcatalog"))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"unknown catalog 'nosuchcatalog': no file 'catalogs/nosuchcatalog\.yaml'; "
        r"catalogs under 'catalogs' are \['earth-search', 'emit-cmr', 'enmap-dlr', "
        r"'maxar-open-data', 'planetary-computer', 'planetary-computer-naip', 'sample'\]",
        stderr,
    )


@pytest.mark.parametrize(
    ("keys", "value", "choices"),
    [
        pytest.param(
            ("modalities", "s1", "orbit_state"),
            "sideways",
            r"\['any', 'ascending', 'descending'\]",
            id="orbit_state",
        ),
        pytest.param(("grid", "coverage"), "touches", r"\['within', 'intersects'\]", id="coverage"),
    ],
)
def test_invalid_choice_lists_choices(
    cwd: Path,
    capsys: pytest.CaptureFixture[str],
    keys: tuple[str, ...],
    value: str,
    choices: str,
) -> None:
    edit_yaml(cwd / REGION_FILE, set_key(*keys, value=value))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    key = re.escape(".".join(keys))
    assert re.search(rf"invalid {key} '{value}'; choose one of {choices}", stderr)


def test_split_fractions_not_one(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fractions = {"train": 0.6, "val": 0.2, "test": 0.1}
    edit_yaml(cwd / REGION_FILE, set_key("split", "fractions", value=fractions))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"split\.fractions \{'train': 0\.6, 'val': 0\.2, 'test': 0\.1\} sum to 0\.9; "
        r"they must sum to 1",
        stderr,
    )


def test_time_range_without_items(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(
        cwd / REGION_FILE, set_key("time", value={"start": "2010-01-01", "end": "2010-12-31"})
    )

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_FAILURE
    assert re.search(
        r"catalog 'sample' returned no items in collection 'bigearthnet-s2-l2a' for the AOI "
        r"between 2010-01-01T00:00:00\+00:00 and 2010-12-31T23:59:59\.999999\+00:00; "
        r"widen the time range",
        stderr,
    )


def test_ndvi_without_red_and_nir(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / REGION_FILE, set_key("modalities", "s2", "bands", value=["B02", "B04"]))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"derived layer 'ndvi' needs Sentinel-2 bands B04 and B08; add \['B08'\] to "
        r"modalities\.s2\.bands or remove ndvi from derived",
        stderr,
    )


def test_unknown_source_kind(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit_yaml(cwd / CATALOG_FILE, set_key("source", "kind", value="ftp"))

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"catalogs/sample\.yaml: invalid source\.kind 'ftp'; choose one of "
        r"\['stac-api', 'stac-static', 'stac-geoparquet', 'bigearthnet-sample', 'raster-files'\]",
        stderr,
    )


# ----------------------------------------------------------------------------------------------
# Options and output paths


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        pytest.param(
            ["--workers", "0"], r"--workers 0 is invalid; give 1 or more worker", id="workers"
        ),
        pytest.param(
            ["--max-failed-fraction", "1.5"],
            r"--max-failed-fraction 1\.5 is invalid; give a fraction from 0 to 1",
            id="max-failed-fraction",
        ),
        pytest.param(
            ["--scheduler", "localhost"],
            r"--scheduler 'localhost' is not a scheduler address; give one like tcp://HOST:8786",
            id="scheduler-without-scheme",
        ),
        pytest.param(
            ["--scheduler", "http://127.0.0.1:8786"],
            r"--scheduler 'http://127\.0\.0\.1:8786' has the scheme 'http', which Dask does not "
            r"support \(supported: .*tcp.*\); give an address like tcp://HOST:8786",
            id="scheduler-scheme",
        ),
        pytest.param(
            ["--scheduler", "tcp://127.0.0.1:8786", "--workers", "3"],
            r"--workers 3 sets the size of the local cluster and has no effect with --scheduler; "
            r"drop --workers",
            id="workers-with-scheduler",
        ),
    ],
)
def test_invalid_extract_option(
    cwd: Path, capsys: pytest.CaptureFixture[str], option: list[str], pattern: str
) -> None:
    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample", *option)

    assert code == EXIT_USAGE
    assert re.search(pattern, stderr)


@pytest.mark.parametrize("value", ["lots", "0", "150%", "-5"])
def test_invalid_gdal_cachemax(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GDAL_CACHEMAX", value)
    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert f"invalid GDAL_CACHEMAX '{value}': give megabytes (for example 64)" in stderr


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_out_path_not_a_store(cwd: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    out_path = cwd / "taken.zarr"
    if kind == "file":
        out_path.write_bytes(b"not a store\n")
    else:
        out_path.mkdir()
        (out_path / "notes.txt").write_bytes(b"not a store\n")

    pattern = (
        r"output path 'taken\.zarr' exists and is not a sensorcube store; sensorcube never "
        r"deletes it, even with --overwrite; choose another path with --out or remove it"
    )
    for extra in ([], ["--overwrite"]):
        code, stderr = run_cli_without_writes(
            cwd, capsys, "run", "sample", "--out", "taken.zarr", *extra
        )
        assert code == EXIT_USAGE
        assert re.search(pattern, stderr)


# ----------------------------------------------------------------------------------------------
# verify and freeze


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        pytest.param(
            None,
            r"manifest not found: 'given\.json'; run 'sensorcube freeze' first or fix the path",
            id="missing",
        ),
        pytest.param(
            "name: sample\n",
            r"manifest 'given\.json' is not valid JSON: .*; pass the manifest\.json that "
            r"'sensorcube freeze' wrote",
            id="not-json",
        ),
        pytest.param(
            '{"chips": []}\n',
            r"'given\.json' is not a sensorcube manifest \(format 1\); pass the manifest\.json "
            r"that 'sensorcube freeze' wrote",
            id="json-not-manifest",
        ),
    ],
)
def test_verify_bad_manifest(
    cwd: Path, capsys: pytest.CaptureFixture[str], content: str | None, pattern: str
) -> None:
    if content is not None:
        (cwd / "given.json").write_text(content, encoding="utf-8")

    code, stderr = run_cli_without_writes(
        cwd, capsys, "verify", "cubes/sample.zarr", "--manifest", "given.json"
    )

    assert code == EXIT_USAGE
    assert re.search(pattern, stderr)


def test_verify_missing_store(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = {"sensorcube_manifest": 1, "region": "sample", "chips": []}
    manifest["chips_sha256"] = chips_digest([])
    (cwd / "given.json").write_text(json.dumps(manifest), encoding="utf-8")

    code, stderr = run_cli_without_writes(
        cwd, capsys, "verify", "cubes/sample.zarr", "--manifest", "given.json"
    )

    assert code == EXIT_USAGE
    assert re.search(
        r"store 'cubes/sample\.zarr' not found; check the path or run 'sensorcube extract'",
        stderr,
    )


@pytest.mark.parametrize(
    ("argv", "store"),
    [
        pytest.param([], "cubes/sample.zarr", id="default-store"),
        pytest.param(["--store", "elsewhere.zarr"], "elsewhere.zarr", id="store-option"),
    ],
)
def test_freeze_missing_store(
    cwd: Path, capsys: pytest.CaptureFixture[str], argv: list[str], store: str
) -> None:
    code, stderr = run_cli_without_writes(cwd, capsys, "freeze", "sample", *argv)

    assert code == EXIT_USAGE
    assert re.search(
        rf"store '{re.escape(store)}' not found; check the path or run 'sensorcube extract' "
        r"to create it",
        stderr,
    )


# ----------------------------------------------------------------------------------------------
# Modalities, lattices and co-registration


def drop_key(*keys: str) -> Callable[[dict[str, Any]], None]:
    """Return an edit that removes the nested key ``keys``."""

    def change(data: dict[str, Any]) -> None:
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return change


@pytest.mark.parametrize(
    ("edits", "pattern"),
    [
        pytest.param(
            [set_key("modalities", "hsi", value={"catalog": "sample", "resolution": 30})],
            r"grid\.chip_size 32 at 10 m does not nest the 30 m hsi lattice: each hsi pixel "
            r"covers 3 x 3 base pixels, so the chip size must be a multiple of 3; chip sizes "
            r"that nest are 30 and 33",
            id="chip-size-not-nesting",
        ),
        pytest.param(
            [set_key("modalities", "hsi", value={"catalog": "sample", "resolution": 25})],
            r"modalities\.hsi\.resolution 25 m does not nest in the 10 m base lattice; use a "
            r"whole multiple of it, such as 20 m",
            id="resolution-not-nesting",
        ),
        pytest.param(
            [drop_key("modalities", "s2"), set_key("derived", value=[])],
            r"modalities\.s1 is paired in time with the chosen Sentinel-2 item, so it needs "
            r"modalities\.s2 as well; add s2 or remove s1",
            id="s1-without-s2",
        ),
        pytest.param(
            [set_key("derived", value=["ndvi", "slope"])],
            r"derived layer 'slope' is computed from the DEM; add modalities\.dem or remove "
            r"slope from derived",
            id="slope-without-dem",
        ),
        pytest.param(
            [set_key("modalities", "s1", "coregistration", value={"reference_band": "B8X"})],
            r"modalities\.s1\.coregistration measures against Sentinel-2 band 'B8X'; request "
            r"modalities\.s2 with that band",
            id="coregistration-reference-band",
        ),
        pytest.param(
            [set_key("modalities", "s1", "coregistration", value={"action": "shift"})],
            r"invalid modalities\.s1\.coregistration\.action 'shift'; choose one of "
            r"\['record', 'apply', 'drop'\]",
            id="coregistration-action",
        ),
        pytest.param(
            [set_key("modalities", value={})],
            r"modalities is empty; request at least one of "
            r"\['s2', 's1', 'dem', 'coherence', 'hsi', 'vhr'\]",
            id="no-modalities",
        ),
    ],
)
def test_modality_rules_rejected(
    cwd: Path,
    capsys: pytest.CaptureFixture[str],
    edits: list[Callable[[dict[str, Any]], None]],
    pattern: str,
) -> None:
    for edit in edits:
        edit_yaml(cwd / REGION_FILE, edit)

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(r"splits/sample/region\.yaml: " + pattern, stderr), stderr


def add_dem_catalog(cwd: Path, files: str) -> None:
    """Write a raster-files DEM catalog with the glob ``files`` and request it in the region."""
    (cwd / "catalogs" / "dem.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "dem",
                "source": {"kind": "raster-files"},
                "licence": "test",
                "modalities": {
                    "dem": {
                        "collection": "cop-dem-glo-30",
                        "files": files,
                        "radiometry": {"vertical_datum": "EGM2008"},
                        "bands": {"dem": {"asset": "data"}},
                    }
                },
            }
        ),
        encoding="utf-8",
    )
    edit_yaml(cwd / REGION_FILE, set_key("modalities", "dem", value={"catalog": "dem"}))


def test_raster_files_catalog_without_matches(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_dem_catalog(cwd, "no-such-folder/*.tif")

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"catalog 'dem' \(catalogs/dem\.yaml\): no file matches modalities\.dem\.files "
        r"'no-such-folder/\*\.tif' \(expanded to '.*catalogs/no-such-folder/\*\.tif'\); check "
        r"the pattern and that the folder exists",
        stderr,
    ), stderr


def test_raster_files_pattern_with_unset_variable(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SENSORCUBE_TEST_DEM_DIR", raising=False)
    add_dem_catalog(cwd, "${SENSORCUBE_TEST_DEM_DIR}/*.tif")

    code, stderr = run_cli_without_writes(cwd, capsys, "run", "sample")

    assert code == EXIT_USAGE
    assert re.search(
        r"modalities\.dem\.files '\$\{SENSORCUBE_TEST_DEM_DIR\}/\*\.tif' uses the environment "
        r"variable SENSORCUBE_TEST_DEM_DIR, which is not set; export SENSORCUBE_TEST_DEM_DIR",
        stderr,
    ), stderr
