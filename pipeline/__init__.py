"""sensorcube: co-located multi-sensor Earth-observation benchmark cubes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sensorcube")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
