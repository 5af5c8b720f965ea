"""Crash safety: kill -9 a real `sensorcube run` at several points, rerun, compare bytes.

Also one writer per store: a second concurrent run is rejected while the first one runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.test_end_to_end import SENSORCUBE, make_workdir, run_cli, tree_digest

STORE = "cubes/sample.zarr"
MANIFEST = "splits/sample/manifest.json"
POLL_S = 0.01
MAX_POLLS = 60_000


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = make_workdir(tmp_path_factory.mktemp("reference"))
    result = run_cli(workdir, "run", "sample", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


def records_written(workdir: Path) -> int:
    folder = workdir / STORE / "chip_record" / "c"
    return (
        sum(1 for path in folder.iterdir() if path.suffix != ".partial") if folder.is_dir() else 0
    )


def start_run(workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            [SENSORCUBE, "run", "sample", "--workers", "2"],
            cwd=workdir,
            env=os.environ.copy(),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> bool:
    """SIGKILL the run once ``ready()`` holds; wait until its workers are gone too.

    Returns False when the run finished before the condition held.
    """
    children: list[psutil.Process] = []
    for _ in range(MAX_POLLS):
        if process.poll() is not None:
            return False
        try:
            children = psutil.Process(process.pid).children(recursive=True) or children
        except psutil.NoSuchProcess:
            return False
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            psutil.wait_procs(children, timeout=30)
            return True
        time.sleep(POLL_S)
    raise AssertionError("the run neither finished nor reached the kill point")


def rerun_and_compare(workdir: Path, reference: Path) -> str:
    result = run_cli(workdir, "run", "sample", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert tree_digest(workdir / STORE) == tree_digest(reference / STORE)
    assert (workdir / MANIFEST).read_bytes() == (reference / MANIFEST).read_bytes()
    assert not (workdir / "cubes/sample.zarr.lock").exists()
    assert not list((workdir / STORE).rglob("*.partial"))
    return result.stderr


@pytest.mark.parametrize("records", [1, 12, 30], ids=["first-chips", "early", "late"])
def test_kill_during_extraction(reference: Path, tmp_path: Path, records: int) -> None:
    workdir = make_workdir(tmp_path / "run")
    process = start_run(workdir, tmp_path / "killed.log")
    killed = kill_when(process, lambda: records_written(workdir) >= records)
    assert killed, "the run finished before the kill point; the sample is too small to kill"
    assert (workdir / "cubes/sample.zarr.lock").exists()
    stderr = rerun_and_compare(workdir, reference)
    assert "clearing stale lock" in stderr


def test_kill_during_freeze(reference: Path, tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "run")
    log = tmp_path / "killed.log"
    process = start_run(workdir, log)
    # Extraction has finished once every chip has a record; freeze runs next.
    killed = kill_when(process, lambda: records_written(workdir) >= 47)
    assert killed, "the run finished before the kill point"
    rerun_and_compare(workdir, reference)


def test_second_run_on_locked_store_rejected(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "run")
    first = start_run(workdir, tmp_path / "first.log")
    lock = workdir / "cubes/sample.zarr.lock"
    for _ in range(MAX_POLLS):
        if lock.exists() or first.poll() is not None:
            break
        time.sleep(POLL_S)
    second = run_cli(workdir, "run", "sample", "--workers", "1")
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    assert second.returncode == 1
    assert f"store 'cubes/sample.zarr' is locked by process {first.pid} on host" in second.stderr
    assert "wait for that run to finish, or, if it is no longer running, delete" in second.stderr
    assert "cubes/sample.zarr.lock' and rerun" in second.stderr
    assert not lock.exists()


def test_stale_lock_of_dead_process_cleared(reference: Path, tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path / "run")
    (workdir / "cubes").mkdir()
    lock = workdir / "cubes/sample.zarr.lock"
    # The id of a process that has exited and been reaped, as a killed run leaves behind.
    probe = subprocess.Popen(["true"])
    probe.wait()
    holder = {"pid": probe.pid, "host": socket.gethostname(), "started": "x", "command": "y"}
    lock.write_text(json.dumps(holder))
    stderr = rerun_and_compare(workdir, reference)
    assert f"clearing stale lock {lock.relative_to(workdir)} left by process {probe.pid}" in stderr
