"""A Dask worker killed with SIGKILL in the middle of `sensorcube run` on a running scheduler.

The cluster is a real `dask scheduler` with one or two `dask worker` processes on 127.0.0.1.
Each worker has a nanny, which starts a new worker process when its worker dies. The scheduler
reassigns the killed worker's tasks to the workers that remain or to the replacement, so the run
must still succeed and write the same bytes as an undisturbed local run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from distributed import Client

from tests.test_end_to_end import SENSORCUBE, make_workdir, run_cli, tree_digest

DASK = str(Path(sys.executable).parent / "dask")
SAMPLE_CHIPS = 47
MANIFEST = Path("splits") / "sample" / "manifest.json"
STORE = Path("cubes") / "sample.zarr"
# Chips finished before the kill: the run is then under way, with most chips still to go.
RECORDS_BEFORE_KILL = 3
POLL_INTERVAL_S = 0.02
# Each poll sleeps POLL_INTERVAL_S, so this bounds one wait to about ten minutes.
MAX_POLLS = 30_000
# A run that finishes before the kill lands is repeated in a new folder, at most this often.
KILL_ATTEMPTS = 3
# Every process the tests start inherits this variable, so its descendants can still be found
# after they have been re-parented.
PROCESS_MARK_VARIABLE = "SENSORCUBE_TEST_PROCESS_MARK"


@dataclass(frozen=True)
class Cluster:
    """A running scheduler and its `dask worker` processes, each a nanny with one worker."""

    address: str
    scheduler: subprocess.Popen[bytes]
    nannies: tuple[subprocess.Popen[bytes], ...]


@dataclass(frozen=True)
class Kill:
    """The worker process killed during a run, and the run's state at that moment."""

    process: psutil.Process
    worker_address: str
    tasks_on_worker: int
    records_before: int


@pytest.fixture(scope="module")
def process_mark() -> Iterator[str]:
    """Set PROCESS_MARK_VARIABLE for every process started by this module's tests."""
    mark = uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PROCESS_MARK_VARIABLE, mark)
        yield mark


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, process_mark: str) -> Path:
    """An undisturbed run of the sample on a local cluster of one worker."""
    workdir = make_workdir(tmp_path_factory.mktemp("local"))
    result = run_cli(workdir, "run", "sample", "--workers", "1")
    assert result.returncode == 0, result.stderr
    return workdir


def marked_processes(mark: str) -> list[psutil.Process]:
    """Processes whose environment carries ``mark``, other than this one."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(PROCESS_MARK_VARIABLE) == mark:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_for_scheduler_file(path: Path, scheduler: subprocess.Popen[bytes]) -> str:
    for _ in range(MAX_POLLS):
        if path.is_file() and path.stat().st_size > 0:
            return str(json.loads(path.read_text())["address"])
        if scheduler.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {scheduler.returncode} before start")
        time.sleep(POLL_INTERVAL_S)
    raise TimeoutError(f"dask scheduler wrote no {path}")


@contextmanager
def running_cluster(
    directory: Path, workers: int, *, allowed_failures: int | None = None
) -> Iterator[Cluster]:
    """Start `dask scheduler` and ``workers`` `dask worker` processes on 127.0.0.1.

    Every worker has one thread and a nanny. Scheduler and worker logs go to ``directory``.
    ``allowed_failures`` sets how often a task may lose its worker before it fails.
    """
    scheduler_file = directory / "scheduler.json"
    scheduler_env = os.environ.copy()
    if allowed_failures is not None:
        scheduler_env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(allowed_failures)
    with (directory / "scheduler.log").open("wb") as scheduler_log:
        scheduler = subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            stdout=scheduler_log,
            stderr=subprocess.STDOUT,
            env=scheduler_env,
        )
    nannies: list[subprocess.Popen[bytes]] = []
    try:
        address = wait_for_scheduler_file(scheduler_file, scheduler)
        for number in range(workers):
            with (directory / f"worker-{number}.log").open("wb") as worker_log:
                nannies.append(
                    subprocess.Popen(
                        [
                            DASK,
                            "worker",
                            address,
                            "--nworkers",
                            "1",
                            "--nthreads",
                            "1",
                            "--nanny",
                            "--host",
                            "127.0.0.1",
                            "--no-dashboard",
                        ],
                        stdout=worker_log,
                        stderr=subprocess.STDOUT,
                    )
                )
        if workers:
            with Client(address, timeout="20s") as probe:
                probe.wait_for_workers(workers, timeout=60)
        yield Cluster(address=address, scheduler=scheduler, nannies=tuple(nannies))
    finally:
        for process in (*nannies, scheduler):
            process.terminate()
            process.wait(timeout=60)


def finished_records(store: Path) -> int:
    """Count the chip records in the store, without zarr's temporary ``*.partial`` files."""
    records = store / "chip_record" / "c"
    if not records.is_dir():
        return 0
    return sum(1 for path in records.iterdir() if path.name.isdigit())


def worker_pids(probe: Client) -> dict[str, int]:
    """Process id of each worker, keyed by worker address, as the workers report it."""
    pids: dict[str, int] = probe.run(os.getpid)
    return pids


def kill_busiest_worker(probe: Client, cluster: Cluster, records_before: int) -> Kill:
    """SIGKILL the worker process with the most tasks assigned, after checking the test started it."""
    processing = probe.processing()
    address = max(processing, key=lambda worker: len(processing[worker]))
    pid = worker_pids(probe)[address]
    children = [psutil.Process(nanny.pid).children() for nanny in cluster.nannies]
    own = {child.pid: child for group in children for child in group}
    assert pid in own, f"worker {address} has pid {pid}, which is not a child of a test nanny"
    os.kill(pid, signal.SIGKILL)
    return Kill(
        process=own[pid],
        worker_address=address,
        tasks_on_worker=len(processing[address]),
        records_before=records_before,
    )


def run_and_kill_one_worker(
    workdir: Path, cluster: Cluster, probe: Client
) -> tuple[int, str, Kill | None]:
    """Run the sample on ``cluster`` and kill a worker once RECORDS_BEFORE_KILL chips are written.

    Returns the exit code, stderr and the kill, or None when the run finished first.
    """
    stderr_path = workdir / "stderr.txt"
    kill = None
    with stderr_path.open("wb") as stderr:
        run = subprocess.Popen(
            [SENSORCUBE, "run", "sample", "--scheduler", cluster.address],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            for _ in range(MAX_POLLS):
                if run.poll() is not None:
                    break
                records = finished_records(workdir / STORE)
                if records >= RECORDS_BEFORE_KILL:
                    kill = kill_busiest_worker(probe, cluster, records)
                    break
                time.sleep(POLL_INTERVAL_S)
            returncode = run.wait(timeout=600)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    return returncode, stderr_path.read_text(), kill


@pytest.mark.parametrize("workers", [2, 1], ids=["two-workers", "one-worker"])
def test_killed_worker_run_matches_local_run(
    workers: int, tmp_path: Path, local_run: Path, process_mark: str
) -> None:
    with (
        running_cluster(tmp_path, workers) as cluster,
        Client(cluster.address, timeout="20s") as probe,
    ):
        pids_before = worker_pids(probe)
        for attempt in range(KILL_ATTEMPTS):
            workdir = make_workdir(tmp_path / f"killed-{attempt}")
            returncode, stderr, kill = run_and_kill_one_worker(workdir, cluster, probe)
            assert returncode == 0, stderr
            if kill is not None:
                break
        assert kill is not None, (
            f"the sample run finished {KILL_ATTEMPTS} times before {RECORDS_BEFORE_KILL} chip "
            "records appeared, so no worker was killed"
        )
        # The nanny of the killed worker starts a new worker process in its place.
        probe.wait_for_workers(workers, timeout=60)
        pids_after = worker_pids(probe)

    assert kill.records_before < SAMPLE_CHIPS
    assert kill.tasks_on_worker > 0, "the killed worker held no task, so nothing was retried"
    assert kill.process.pid in pids_before.values()
    assert not kill.process.is_running()
    assert len(pids_after) == workers
    assert kill.process.pid not in pids_after.values()
    assert f"{SAMPLE_CHIPS} chips, {SAMPLE_CHIPS} ok" in stderr

    local_store = tree_digest(local_run / STORE)
    killed_store = tree_digest(workdir / STORE)
    assert sorted(set(killed_store) ^ set(local_store)) == []
    assert killed_store == local_store
    assert (workdir / MANIFEST).read_bytes() == (local_run / MANIFEST).read_bytes()

    verify = run_cli(workdir, "verify", str(STORE), "--manifest", str(MANIFEST))
    assert verify.returncode == 0, verify.stderr

    psutil.wait_procs(marked_processes(process_mark), timeout=30)
    orphans = [process for process in marked_processes(process_mark) if process.is_running()]
    assert orphans == [], [process.cmdline() for process in orphans]


def test_task_without_retries_left_recorded_failed(
    tmp_path: Path, local_run: Path, process_mark: str
) -> None:
    # With no retries allowed, the chips running on the killed worker fail with KilledWorker:
    # the run records them, exits 1 under the default failure policy, and a rerun finishes.
    with (
        running_cluster(tmp_path, 1, allowed_failures=0) as cluster,
        Client(cluster.address, timeout="20s") as probe,
    ):
        for attempt in range(KILL_ATTEMPTS):
            workdir = make_workdir(tmp_path / f"killed-{attempt}")
            returncode, stderr, kill = run_and_kill_one_worker(workdir, cluster, probe)
            if kill is not None:
                break
        assert kill is not None, "no worker was killed before the run finished"
        assert returncode == 1, stderr
        assert "failed, above --max-failed-fraction 0" in stderr
        assert "KilledWorker" in stderr
        probe.wait_for_workers(1, timeout=60)

        rerun = run_cli(workdir, "run", "sample", "--scheduler", cluster.address)
        assert rerun.returncode == 0, rerun.stderr

    assert tree_digest(workdir / STORE) == tree_digest(local_run / STORE)
    assert (workdir / MANIFEST).read_bytes() == (local_run / MANIFEST).read_bytes()
