"""`sensorcube evaluate` on the real sample store and on a small hand-made store.

The sample store comes from one `sensorcube run sample` for the whole module. Prediction stores
are written in the test with zarr, from the truth with a known change (noise, a dB offset, a
missing chip, swapped bands). Expected scores are computed here with NumPy from the truth read
through zarr. The hand-made store carries s2, hsi and dem, which the sample does not, for the
identity baseline and the slope error.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image

from pipeline.cli import main
from pipeline.errors import EvaluationError
from pipeline.evaluate import EvaluationRequest, evaluate, write_evaluation
from pipeline.grid import Chip
from pipeline.manifest import chips_digest
from pipeline.store import VariableSpec, create_store, dimension_names, write_chip
from tests.test_end_to_end import run_cli

EXIT_USAGE = 2


@pytest.fixture(scope="module")
def sample(sample_run: Path) -> Path:
    return sample_run


@pytest.fixture(scope="module")
def store(sample: Path) -> Path:
    return sample / "cubes" / "sample.zarr"


@pytest.fixture(scope="module")
def manifest_path(sample: Path) -> Path:
    return sample / "splits" / "sample" / "manifest.json"


@pytest.fixture(scope="module")
def manifest(manifest_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(manifest_path.read_text())
    return data


def split_chips(manifest: dict[str, Any], split: str) -> list[str]:
    return sorted(entry["id"] for entry in manifest["chips"] if entry["split"] == split)


def read_truth(store: Path, variable: str, chips: Sequence[str]) -> np.ndarray:
    """Read the chips of a variable, in the order given, as float64 (chip, ...)."""
    root = zarr.open_group(str(store), mode="r")
    ids = [str(value) for value in np.asarray(root["chip"][...]).tolist()]
    array = root[variable]
    assert isinstance(array, zarr.Array)
    return np.stack([np.asarray(array[ids.index(chip)], dtype=np.float64) for chip in chips])


def truth_labels(store: Path, variable: str) -> tuple[tuple[str, ...], list[Any]]:
    """Return the dimension names of a variable and its band labels (empty without bands).

    Labels are strings, or floats for wavelengths in nm, as written in the store.
    """
    root = zarr.open_group(str(store), mode="r")
    array = root[variable]
    assert isinstance(array, zarr.Array)
    dims = dimension_names(array)
    if len(dims) < 4:
        return dims, []
    return dims, list(np.asarray(root[dims[1]][...]).tolist())


def write_predictions(
    path: Path,
    variable: str,
    chips: Sequence[str],
    values: np.ndarray,
    *,
    dims: Sequence[str],
    labels: Sequence[Any] = (),
    units: str | None = "1",
) -> Path:
    """Write a prediction store in the truth store's layout: the variable, chip and band labels."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = root.create_array(
        variable,
        shape=values.shape,
        chunks=(1, *values.shape[1:]),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=tuple(dims),
        attributes={} if units is None else {"units": units},
    )
    array[...] = values.astype(np.float32)
    chip = root.create_array("chip", shape=(len(chips),), dtype=str, dimension_names=("chip",))
    chip[...] = np.array(chips)
    if labels:
        label_values = np.array(labels)
        dtype = str if label_values.dtype.kind == "U" else label_values.dtype
        band = root.create_array(
            dims[1], shape=label_values.shape, dtype=dtype, dimension_names=(dims[1],)
        )
        band[...] = label_values
    return path


def predictions_from_truth(
    store: Path,
    manifest: dict[str, Any],
    variable: str,
    path: Path,
    change: Callable[[np.ndarray], np.ndarray] = lambda values: values,
    *,
    chips: Sequence[str] | None = None,
) -> Path:
    """Write the test-split truth of ``variable``, changed by ``change``, as a prediction store."""
    chosen = list(chips) if chips is not None else split_chips(manifest, "test")
    dims, labels = truth_labels(store, variable)
    values = change(read_truth(store, variable, chosen))
    return write_predictions(path, variable, chosen, values, dims=dims, labels=labels)


def add_noise(values: np.ndarray) -> np.ndarray:
    return values * (1.0 + 0.1 * np.random.default_rng(0).standard_normal(values.shape))


def result_of(scores: dict[str, Any], label: str, predictor: str) -> dict[str, Any]:
    for result in scores["results"]:
        if result["label"] == label and result["predictor"] == predictor:
            found: dict[str, Any] = result
            return found
    raise AssertionError(f"no result {label} {predictor}")


def cli_args(store: Path, direction: str, predictions: Path, out: Path, *extra: str) -> list[str]:
    """Arguments of `sensorcube evaluate` run from the sample folder, then ``extra``."""
    return [
        *("--store", str(store), "--manifest", "splits/sample/manifest.json"),
        *("--direction", direction, "--predictions", str(predictions), "--out", str(out)),
        *extra,
    ]


def evaluate_cli(cwd: Path, *args: str) -> int:
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        return main(["-q", "evaluate", *args])
    finally:
        os.chdir(previous)


# Scores on the sample store


def test_perfect_prediction_scores(
    store: Path, manifest: dict[str, Any], manifest_path: Path, tmp_path: Path
) -> None:
    predictions = predictions_from_truth(store, manifest, "s2", tmp_path / "s2.zarr")
    request = EvaluationRequest(store, manifest_path, "s1->s2", predictions)
    split = result_of(evaluate(request).scores, "s1->s2", "model")["split"]
    assert split["all_bands"]["rmse"] == 0.0
    assert split["all_bands"]["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert split["all_bands"]["psnr_db"] == math.inf
    assert split["sam_deg"] == 0.0
    assert split["ndvi"]["correlation"] == pytest.approx(1.0, abs=1e-9)
    assert split["all_bands"]["valid_pixels"] == 8 * 12 * 32 * 32


def test_noisy_prediction_rmse_pools_pixels(
    store: Path, manifest: dict[str, Any], manifest_path: Path, tmp_path: Path
) -> None:
    predictions = predictions_from_truth(store, manifest, "s2", tmp_path / "s2.zarr", add_noise)
    request = EvaluationRequest(store, manifest_path, "s1->s2", predictions)
    scores = evaluate(request).scores

    chips = split_chips(manifest, "test")
    truth = read_truth(store, "s2", chips)
    predicted = read_truth(predictions, "s2", chips)
    errors = predicted - truth
    model = result_of(scores, "s1->s2", "model")["split"]["bands"]
    for position, band in enumerate(truth_labels(store, "s2")[1]):
        expected = math.sqrt(np.nanmean(errors[:, position] ** 2))
        assert model[band]["rmse"] == pytest.approx(expected, rel=1e-9), band


def test_train_mean_baseline_values(
    store: Path, manifest: dict[str, Any], manifest_path: Path, tmp_path: Path
) -> None:
    predictions = predictions_from_truth(store, manifest, "s2", tmp_path / "s2.zarr")
    scores = evaluate(EvaluationRequest(store, manifest_path, "s1->s2", predictions)).scores

    train = read_truth(store, "s2", split_chips(manifest, "train"))
    test = read_truth(store, "s2", split_chips(manifest, "test"))
    means = np.nanmean(train, axis=(0, 2, 3))
    baseline = result_of(scores, "s1->s2", "train-mean")["split"]["bands"]
    for position, band in enumerate(truth_labels(store, "s2")[1]):
        expected = math.sqrt(np.nanmean((test[:, position] - means[position]) ** 2))
        assert baseline[band]["rmse"] == pytest.approx(expected, rel=1e-6), band


def test_sar_offset_of_one_db(
    store: Path, manifest: dict[str, Any], manifest_path: Path, tmp_path: Path
) -> None:
    predictions = predictions_from_truth(
        store, manifest, "s1", tmp_path / "s1.zarr", lambda values: values * 10.0**0.1
    )
    scores = evaluate(EvaluationRequest(store, manifest_path, "s2->s1", predictions)).scores
    split = result_of(scores, "s2->s1", "model")["split"]
    assert split["all_bands"]["bias"] == pytest.approx(1.0, abs=1e-5)
    assert split["all_bands"]["rmse"] == pytest.approx(1.0, abs=1e-5)
    # Scaling keeps every window's coefficient of variation, so the ENL is unchanged.
    assert split["all_bands"]["enl_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert result_of(scores, "s2->s1", "model")["error_units"] == "dB"


# Prediction stores that do not fit


def test_missing_chip_rejected(
    store: Path, manifest: dict[str, Any], manifest_path: Path, tmp_path: Path
) -> None:
    chips = split_chips(manifest, "test")
    predictions = predictions_from_truth(
        store, manifest, "s2", tmp_path / "s2.zarr", chips=chips[1:]
    )
    request = EvaluationRequest(store, manifest_path, "s1->s2", predictions)
    with pytest.raises(
        EvaluationError, match=rf"1 chips of split 'test' are missing \(first: '{chips[0]}'\)"
    ):
        evaluate(request)


def test_wrong_band_order_rejected(
    store: Path, manifest: dict[str, Any], manifest_path: Path, tmp_path: Path
) -> None:
    chips = split_chips(manifest, "test")
    dims, labels = truth_labels(store, "s2")
    swapped = [labels[1], labels[0], *labels[2:]]
    values = read_truth(store, "s2", chips)[:, [1, 0, *range(2, len(labels))]]
    predictions = write_predictions(
        tmp_path / "s2.zarr", "s2", chips, values, dims=dims, labels=swapped
    )
    request = EvaluationRequest(store, manifest_path, "s1->s2", predictions)
    with pytest.raises(EvaluationError, match=r"wrong band order \['B02', 'B01', "):
        evaluate(request)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("extra chip", r"1 chips are not in split 'test' of the manifest \(first: '"),
        (
            "wrong shape",
            r"wrong shape: a chip is \(12, 16, 16\) where the truth's is \(12, 32, 32\)",
        ),
        ("wrong units", r"wrong units attribute 'dB': the truth has '1'"),
        ("no units", r"no units attribute; set it to '1'"),
        ("missing band", r"bands missing: \['B12'\]"),
        ("other dimensions", r"dimension names \['chip', 'wavelength', 'y', 'x'\] differ"),
    ],
)
def test_layout_differences_rejected(
    store: Path,
    manifest: dict[str, Any],
    manifest_path: Path,
    tmp_path: Path,
    case: str,
    message: str,
) -> None:
    chips = split_chips(manifest, "test")
    dims, labels = truth_labels(store, "s2")
    values = read_truth(store, "s2", chips)
    units: str | None = "1"
    if case == "extra chip":
        chips = [*chips, split_chips(manifest, "train")[0]]
        values = np.concatenate([values, values[:1]])
    elif case == "wrong shape":
        values = values[:, :, :16, :16]
    elif case in ("wrong units", "no units"):
        units = "dB" if case == "wrong units" else None
    elif case == "missing band":
        labels, values = labels[:-1], values[:, :-1]
    else:
        dims = ("chip", "wavelength", "y", "x")
    predictions = write_predictions(
        tmp_path / "s2.zarr", "s2", chips, values, dims=dims, labels=labels, units=units
    )
    with pytest.raises(EvaluationError, match=message):
        evaluate(EvaluationRequest(store, manifest_path, "s1->s2", predictions))


def test_cli_rejects_missing_chip_with_exit_2(
    sample: Path,
    store: Path,
    manifest: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chips = split_chips(manifest, "test")
    predictions = predictions_from_truth(
        store, manifest, "s2", tmp_path / "s2.zarr", chips=chips[:-1]
    )
    out = tmp_path / "evaluation"
    code = evaluate_cli(sample, *cli_args(store, "s1->s2", predictions, out))
    assert code == EXIT_USAGE
    error = capsys.readouterr().err
    assert f"chips of split 'test' are missing (first: '{chips[-1]}')" in error
    assert not out.exists()


def test_cli_rejects_wrong_band_order_with_exit_2(
    sample: Path,
    store: Path,
    manifest: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chips = split_chips(manifest, "test")
    dims, labels = truth_labels(store, "s1")
    values = read_truth(store, "s1", chips)[:, ::-1]
    predictions = write_predictions(
        tmp_path / "s1.zarr", "s1", chips, values, dims=dims, labels=labels[::-1]
    )
    code = evaluate_cli(sample, *cli_args(store, "s2->s1", predictions, tmp_path / "out"))
    assert code == EXIT_USAGE
    assert "wrong polarization order ['VH', 'VV']" in capsys.readouterr().err


def test_cli_rejects_identity_for_sar_to_optical(
    sample: Path,
    store: Path,
    manifest: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    predictions = predictions_from_truth(store, manifest, "s2", tmp_path / "s2.zarr")
    args = cli_args(store, "s1->s2", predictions, tmp_path / "out", "--baseline", "identity")
    code = evaluate_cli(sample, *args)
    assert code == EXIT_USAGE
    error = capsys.readouterr().err
    assert "--baseline identity does not apply to s1->s2" in error
    assert "'s1' is backscatter as linear power" in error


def test_cli_keeps_foreign_out_folder(
    sample: Path,
    store: Path,
    manifest: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    predictions = predictions_from_truth(store, manifest, "s2", tmp_path / "s2.zarr")
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = evaluate_cli(sample, *cli_args(store, "s1->s2", predictions, out, "--overwrite"))
    assert code == EXIT_USAGE
    assert "is not a sensorcube evaluation" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


# The whole command in a real process


def test_cli_bidirectional_with_cycle(
    sample: Path, store: Path, manifest: dict[str, Any], tmp_path: Path
) -> None:
    forward = predictions_from_truth(store, manifest, "s2", tmp_path / "s2.zarr", add_noise)
    inverse = predictions_from_truth(store, manifest, "s1", tmp_path / "s1.zarr", add_noise)
    cycle = predictions_from_truth(
        store, manifest, "s1", tmp_path / "cycle.zarr", lambda values: values * 1.5
    )
    out = tmp_path / "evaluation"
    extra = ("--inverse-predictions", str(inverse), "--cycle-predictions", str(cycle))
    args = cli_args(store, "s1->s2", forward, out, *extra, "--baseline", "train-mean")
    result = run_cli(sample, "evaluate", *args)
    assert result.returncode == 0, result.stderr

    scores = json.loads((out / "scores.json").read_text(), parse_constant=_reject_constant)
    titles = [(one["label"], one["predictor"]) for one in scores["results"]]
    assert titles == [
        ("s1->s2", "model"),
        ("s1->s2", "train-mean"),
        ("s2->s1", "model"),
        ("s2->s1", "train-mean"),
        ("s1->s2->s1", "model"),
    ]
    assert scores["chips"] == split_chips(manifest, "test")
    for label in ("s1->s2", "s2->s1"):
        model = result_of(scores, label, "model")["split"]["all_bands"]["rmse"]
        baseline = result_of(scores, label, "train-mean")["split"]["all_bands"]["rmse"]
        assert model < baseline, label
    cycle_split = result_of(scores, "s1->s2->s1", "model")["split"]["all_bands"]
    assert cycle_split["bias"] == pytest.approx(10 * math.log10(1.5), abs=1e-5)
    # The constant baseline has no speckle, so its ENL ratio is infinite: null in JSON.
    assert result_of(scores, "s2->s1", "train-mean")["split"]["all_bands"]["enl_ratio"] is None

    report = (out / "report.md").read_text()
    assert "| metric | s1->s2 model | s1->s2 train-mean | s2->s1 model |" in report
    assert "| ENL ratio (prediction / truth) | n/a | n/a |" in report
    assert "| metric | s1->s2 model |" in result.stdout
    figures = sorted(path.name for path in (out / "figures").iterdir())
    assert "s1_to_s2_scatter.png" in figures
    assert f"s2_to_s1_{split_chips(manifest, 'test')[0]}.png" in figures
    assert len(figures) == 3 * (1 + 3)  # three models: a scatter figure and three chips each
    for name in figures:
        assert f"figures/{name}" in report
        with Image.open(out / "figures" / name) as image:
            assert image.format == "PNG"


def test_overwrite_replaces_earlier_evaluation(
    store: Path, manifest: dict[str, Any], manifest_path: Path, tmp_path: Path
) -> None:
    predictions = predictions_from_truth(store, manifest, "s2", tmp_path / "s2.zarr")
    evaluation = evaluate(EvaluationRequest(store, manifest_path, "s1->s2", predictions))
    out = tmp_path / "evaluation"
    write_evaluation(evaluation, out, overwrite=False)
    with pytest.raises(EvaluationError, match="pass --overwrite to replace"):
        write_evaluation(evaluation, out, overwrite=False)
    write_evaluation(evaluation, out, overwrite=True)
    assert sorted(path.name for path in out.iterdir()) == ["figures", "report.md", "scores.json"]


def _reject_constant(name: str) -> None:
    raise AssertionError(f"scores.json contains {name}, which strict JSON does not allow")


# A hand-made store with s2, hsi (2 x 2 base pixels per pixel) and dem

HAND_BANDS = ("B02", "B04", "B08")  # centres 490, 665 and 842 nm
HAND_S2 = (0.1, 0.3, 0.5)
HAND_WAVELENGTHS = (490.0, 577.5, 665.0, 842.0)
# Linear interpolation of HAND_S2 gives 0.2 at 577.5 nm (halfway between B02 and B04). The
# truth has 0.25 there, so identity is off by -0.05 in that band only.
HAND_HSI = (0.1, 0.25, 0.3, 0.5)
HAND_SPLITS = ("train", "test", "test")


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Write the store and its manifest; return (store, manifest path)."""
    folder = tmp_path_factory.mktemp("hand")
    chips = [Chip(epsg=32633, col=col, row=600, chip_size=8, resolution_m=10.0) for col in range(3)]
    hsi_labels = tuple(f"{value:g}" for value in HAND_WAVELENGTHS)
    specs = [
        VariableSpec("s2", ("chip", "band", "y", "x"), HAND_BANDS, "1", "surface reflectance"),
        VariableSpec(
            "hsi",
            ("chip", "wavelength", "hsi_y", "hsi_x"),
            hsi_labels,
            "1",
            "surface reflectance",
            factor=2,
            label_values=HAND_WAVELENGTHS,
            label_widths=(10.0,) * 4,
        ),
        VariableSpec("dem", ("chip", "y", "x"), (), "m", "surface height"),
    ]

    attrs = {
        "sensorcube_store_format": 1,
        "region": "hand",
        "config_hash": "0" * 64,
        "chip_size": 8,
        "resolution_m": 10.0,
        "data_variables": [spec.name for spec in specs],
    }
    store = folder / "hand.zarr"
    create_store(store, chips=chips, variables=specs, attrs=attrs)
    for index, chip in enumerate(chips):
        arrays = {
            "s2": np.broadcast_to(np.array(HAND_S2)[:, None, None], (3, 8, 8)),
            "hsi": np.broadcast_to(np.array(HAND_HSI)[:, None, None], (4, 4, 4)),
            "dem": np.tile(np.arange(8.0) * 10.0 + 100.0 * index, (8, 1)),  # 10 m per pixel east
        }
        write_chip(store, index, arrays, {"chip_id": chip.id, "status": "ok"})

    entries = [
        {"id": chip.id, "split": split} for chip, split in zip(chips, HAND_SPLITS, strict=True)
    ]
    manifest = {
        "sensorcube_manifest": 1,
        "region": "hand",
        "config_hash": "0" * 64,
        "chips": entries,
        "chips_sha256": chips_digest(entries),
    }
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    return store, manifest_path


def hand_predictions(store: Path, manifest_path: Path, variable: str, path: Path) -> Path:
    manifest = json.loads(manifest_path.read_text())
    return predictions_from_truth(store, manifest, variable, path)


def test_identity_s2_to_hsi_interpolates_wavelengths(
    hand_store: tuple[Path, Path], tmp_path: Path
) -> None:
    store, manifest_path = hand_store
    forward = hand_predictions(store, manifest_path, "hsi", tmp_path / "hsi.zarr")
    inverse = hand_predictions(store, manifest_path, "s2", tmp_path / "s2.zarr")
    baselines = ("train-mean", "identity")
    request = EvaluationRequest(
        store, manifest_path, "s2->hsi", forward, inverse_predictions=inverse, baselines=baselines
    )
    scores = evaluate(request).scores

    identity = result_of(scores, "s2->hsi", "identity")["split"]["bands"]
    assert [identity[f"{value:g}"]["rmse"] for value in HAND_WAVELENGTHS] == pytest.approx(
        [0.0, 0.05, 0.0, 0.0], abs=1e-7
    )
    assert identity["577.5"]["bias"] == pytest.approx(-0.05, abs=1e-7)
    assert identity["577.5"]["valid_pixels"] == 2 * 4 * 4  # two test chips of 4 x 4 pixels
    # hsi to s2 takes 490, 665 and 842 nm as they are and repeats each pixel 2 x 2.
    inverse_identity = result_of(scores, "hsi->s2", "identity")["split"]
    assert inverse_identity["all_bands"]["rmse"] == pytest.approx(0.0, abs=1e-7)
    assert inverse_identity["all_bands"]["valid_pixels"] == 2 * 3 * 8 * 8
    # The hyperspectral bands at 665 and 842 nm replace B04 and B08 for NDVI.
    assert "ndvi" in result_of(scores, "s2->hsi", "model")["split"]


def test_slope_error_uses_chip_transform_spacing(
    hand_store: tuple[Path, Path], tmp_path: Path
) -> None:
    store, manifest_path = hand_store
    manifest = json.loads(manifest_path.read_text())
    chips = split_chips(manifest, "test")
    flat_values = np.zeros((len(chips), 8, 8))
    flat = write_predictions(
        tmp_path / "dem.zarr", "dem", chips, flat_values, dims=("chip", "y", "x"), units="m"
    )
    scores = evaluate(EvaluationRequest(store, manifest_path, "s2->dem", flat)).scores
    split = result_of(scores, "s2->dem", "model")["split"]
    # 10 m of height per 10 m pixel is a 45 degree slope; the flat prediction has slope 0.
    assert split["slope"]["rmse_deg"] == pytest.approx(45.0, abs=1e-4)
    assert split["slope"]["valid_pixels"] == 2 * 6 * 6
    assert result_of(scores, "s2->dem", "model")["error_units"] == "m"
