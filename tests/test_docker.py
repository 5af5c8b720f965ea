"""The Docker image and compose files, checked without a Docker engine.

No test here builds the image or starts a container. `docker compose config` runs when the
local Docker client has the compose plugin. Every other check reads the files with PyYAML,
packaging and the real command-line parsers of sensorcube and Dask.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import dask.config
import pytest
import yaml
from distributed.cli import dask_scheduler, dask_worker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from pipeline.cli import build_parser
from pipeline.cluster import CLUSTER_SETTINGS
from tests.conftest import REPO_ROOT

DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
LOCK_FILE = DOCKER_DIR / "requirements.lock"
SERVICES = {"scheduler", "worker", "runner"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def lock_pins() -> dict[str, Version]:
    """Map each package of the lock file to its pinned version, failing on any other line form."""
    pins: dict[str, Version] = {}
    for number, line in enumerate(LOCK_FILE.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=]+)", text)
        assert match, f"{LOCK_FILE.name} line {number} is not an exact pin NAME==VERSION: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{LOCK_FILE.name} pins {name} twice"
        pins[name] = Version(match[2])
    return pins


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Map each named-volume mount of a service (short syntax) to its path in the container."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        mounts[source] = target
    return mounts


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def option(arguments: list[str], name: str) -> str:
    assert name in arguments, f"{name} missing from {arguments}"
    return arguments[arguments.index(name) + 1]


def image_path_to_repo(path: str) -> Path:
    """Map a path inside the image to the repository file that the Dockerfile copies there."""
    copies = re.findall(r"^COPY\s+(\S+)\s+(/\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    target = PurePosixPath(path)
    for source, destination in copies:
        if target.is_relative_to(destination):
            return REPO_ROOT / source / target.relative_to(destination)
    raise AssertionError(f"no COPY line of {DOCKERFILE.name} puts anything at {path}")


def test_compose_config_accepted_by_docker() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH, so `docker compose config` cannot run")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0:
        pytest.skip(
            "the docker client has no compose plugin, so `docker compose config` cannot run: "
            + (version.stderr or version.stdout).strip().splitlines()[0]
        )
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_has_three_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_compose_services_share_volume(compose: dict[str, Any]) -> None:
    mounts = {name: volume_mounts(service) for name, service in compose["services"].items()}
    assert all(len(service_mounts) == 1 for service_mounts in mounts.values()), mounts
    assert len({tuple(service_mounts.items()) for service_mounts in mounts.values()}) == 1, mounts
    volume, mount_point = next(iter(mounts["runner"].items()))
    assert volume in compose["volumes"]
    assert PurePosixPath(mount_point).is_absolute()


def test_compose_cache_and_store_on_volume(compose: dict[str, Any]) -> None:
    runner = compose["services"]["runner"]
    mount_point = PurePosixPath(next(iter(volume_mounts(runner).values())))
    for name in ("worker", "runner"):
        cache = environment(compose["services"][name]).get("SENSORCUBE_CACHE")
        assert cache is not None, f"{name} does not set SENSORCUBE_CACHE"
        assert PurePosixPath(cache).is_relative_to(mount_point), (name, cache)
    arguments = [str(argument) for argument in runner["command"]]
    for name in ("--out", "--splits-dir"):
        assert PurePosixPath(option(arguments, name)).is_relative_to(mount_point), name


def test_compose_uses_the_local_cluster_dask_settings(compose: dict[str, Any]) -> None:
    for name in ("scheduler", "worker"):
        settings = dask.config.collect(paths=[], env=environment(compose["services"][name]))
        for key, value in CLUSTER_SETTINGS.items():
            assert dask.config.get(key, default=None, config=settings) == value, (name, key)


def test_compose_scheduler_address_matches(compose: dict[str, Any]) -> None:
    services = compose["services"]
    scheduler_arguments = [str(argument) for argument in services["scheduler"]["command"]]
    address = f"tcp://scheduler:{option(scheduler_arguments, '--port')}"
    runner_arguments = [str(argument) for argument in services["runner"]["command"]]
    assert option(runner_arguments, "--scheduler") == address
    assert str(services["worker"]["command"][1]) == address


def test_compose_worker_replicas(compose: dict[str, Any]) -> None:
    replicas = compose["services"]["worker"]["deploy"]["replicas"]
    assert isinstance(replicas, int)
    assert replicas >= 2


def test_compose_builds_repository_dockerfile(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == REPO_ROOT, name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert service["image"] == compose["services"]["runner"]["image"], name


def test_compose_commands_parse(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["scheduler"]["entrypoint"] == ["dask"]
    assert services["worker"]["entrypoint"] == ["dask"]
    assert "entrypoint" not in services["runner"]

    scheduler_arguments = [str(argument) for argument in services["scheduler"]["command"]]
    assert scheduler_arguments[0] == "scheduler"
    dask_scheduler.main.make_context("dask scheduler", scheduler_arguments[1:])
    worker_arguments = [str(argument) for argument in services["worker"]["command"]]
    assert worker_arguments[0] == "worker"
    worker = dask_worker.main.make_context("dask worker", worker_arguments[1:])
    assert worker.params["n_workers"] == "1"
    assert worker.params["nthreads"] == 1
    # The nanny replaces a worker process that dies, as tests/test_worker_failure.py checks.
    assert worker.params["nanny"] is True

    runner = build_parser().parse_args(
        [str(argument) for argument in services["runner"]["command"]]
    )
    assert runner.command == "run"
    assert image_path_to_repo(runner.region).is_file()
    assert image_path_to_repo(str(runner.catalogs_dir)).is_dir()


def test_dockerfile_base_user_and_entrypoint(pyproject: dict[str, Any]) -> None:
    text = DOCKERFILE.read_text()
    base = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(base) == 1, base
    match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-[a-z]+", base[0])
    assert match, f"base image {base[0]!r} is not pinned to a Python release tag"
    assert (
        Version(match[1])
        in Requirement(f"python{pyproject['project']['requires-python']}").specifier
    )
    lock_header = re.search(r"CPython (\d+\.\d+\.\d+)", LOCK_FILE.read_text())
    assert lock_header, "the lock file does not name the Python it was generated with"
    assert lock_header[1] == match[1]

    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users, "the image runs as root"
    assert users[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["sensorcube"\]$', text, flags=re.MULTILINE)
    assert "--no-deps --requirement /tmp/requirements.lock" in text
    assert "pip check" in text


def test_lock_pins_satisfy_pyproject(pyproject: dict[str, Any]) -> None:
    pins = lock_pins()
    requirements = [
        Requirement(line)
        for line in [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]]
    ]
    missing = sorted(
        requirement.name
        for requirement in requirements
        if canonicalize_name(requirement.name) not in pins
    )
    assert missing == [], f"pyproject dependencies without a pin in {LOCK_FILE.name}"
    outside = {
        requirement.name: f"{pins[canonicalize_name(requirement.name)]} not in {requirement.specifier}"
        for requirement in requirements
        if not requirement.specifier.contains(
            pins[canonicalize_name(requirement.name)], prereleases=True
        )
    }
    assert outside == {}
