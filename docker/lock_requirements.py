"""Write docker/requirements.lock: the installed versions of everything `pip install .` needs.

Run it with the interpreter of an environment where sensorcube is installed and tested:

    .venv/bin/python docker/lock_requirements.py

It starts from the dependencies in pyproject.toml (no optional extras), follows the requirements
of the installed distributions (with the extras each requirement names) and pins the installed
version of each. Environment markers are evaluated for the running interpreter, so run it on
Linux with the Python version of the Docker base image. The build backend named in
pyproject.toml is pinned too, because the image installs the package without build isolation.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_PATH = REPO_ROOT / "docker" / "requirements.lock"
HEADER = """\
# Dependencies of sensorcube pinned for the Docker image: the versions installed in the
# environment where this file was generated. Regenerate with:
#   .venv/bin/python docker/lock_requirements.py
# Markers were evaluated for CPython {python} on {platform}. The Docker base image must match.
"""


def applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Return whether ``requirement`` is needed on this interpreter with ``extras`` requested."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras | {""})


def installed_closure(requirements: list[Requirement]) -> dict[str, str]:
    """Map each distribution ``requirements`` need, transitively, to its installed version."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(requirement.name, frozenset(requirement.extras)) for requirement in requirements]
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError as error:
            raise SystemExit(
                f"{name} is required but not installed in {sys.prefix}. "
                "Install sensorcube there first (pip install -e .)"
            ) from error
        pinned[canonicalize_name(name)] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if applies(requirement, extras):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return pinned


def main() -> int:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    runtime = [Requirement(line) for line in pyproject["project"]["dependencies"]]
    build = [Requirement(line) for line in pyproject["build-system"]["requires"]]
    pins = {**installed_closure(runtime), **installed_closure(build)}
    header = HEADER.format(python=".".join(map(str, sys.version_info[:3])), platform=sys.platform)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    LOCK_PATH.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} pins to {LOCK_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
