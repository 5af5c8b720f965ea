"""Shared fixtures: the sample catalog cache, the repository paths and the shared fixtures folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real fixtures live beside the repository, never inside it.
SHARED_DATA = Path(os.environ.get("SENSORCUBE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
# CI sets this so tests that need SHARED_DATA fail instead of skipping when it is missing.
REQUIRE_SHARED_ENV = "SENSORCUBE_REQUIRE_SHARED_DATA"


@pytest.fixture(scope="session", autouse=True)
def sample_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point SENSORCUBE_CACHE at one folder per test session, shared with subprocesses."""
    configured = os.environ.get("SENSORCUBE_TEST_CACHE")
    cache = Path(configured) if configured else tmp_path_factory.mktemp("cache")
    previous = os.environ.get("SENSORCUBE_CACHE")
    os.environ["SENSORCUBE_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("SENSORCUBE_CACHE", None)
    else:
        os.environ["SENSORCUBE_CACHE"] = previous


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real fixtures folder; skip (or fail under CI) when it is absent."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    message = f"shared fixtures folder {SHARED_DATA} is absent"
    if os.environ.get(REQUIRE_SHARED_ENV) == "1":
        pytest.fail(f"{message}, and {REQUIRE_SHARED_ENV}=1 requires it")
    pytest.skip(message)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A working folder holding copies of catalogs/ and splits/sample, as a user's clone has."""
    import shutil

    shutil.copytree(REPO_ROOT / "catalogs", tmp_path / "catalogs")
    (tmp_path / "splits").mkdir()
    shutil.copytree(
        REPO_ROOT / "splits" / "sample",
        tmp_path / "splits" / "sample",
        ignore=shutil.ignore_patterns("manifest.json"),
    )
    return tmp_path


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder where ``sensorcube run sample`` finished, for tests that only read it.

    Tests that change the store or the manifest copy them first or make their own run.
    """
    from tests.test_end_to_end import make_workdir, run_cli

    workdir = make_workdir(tmp_path_factory.mktemp("sample-run"))
    result = run_cli(workdir, "run", "sample", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return workdir


@pytest.fixture(autouse=True)
def restore_pipeline_log_level() -> Iterator[None]:
    """Undo the level that an in-process ``pipeline.cli.main`` call sets on the pipeline logger.

    ``main(["-q", ...])`` sets it to ERROR, which would hide later tests' log records from caplog.
    """
    logger = logging.getLogger("pipeline")
    level = logger.level
    yield
    logger.setLevel(level)
