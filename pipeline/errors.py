"""Exception hierarchy of sensorcube.

Every error derives from :class:`SensorcubeError` and also from the built-in exception a caller
would expect, so ``except ValueError`` keeps working. The CLI maps :class:`UsageError` subclasses
to exit code 2 and every other :class:`SensorcubeError` to exit code 1.
"""

from __future__ import annotations


class SensorcubeError(Exception):
    """Base class of all errors raised by sensorcube."""


class UsageError(SensorcubeError):
    """Invalid input from the user: a file, an option or a value that must be fixed."""


class ConfigError(UsageError, ValueError):
    """A region spec or catalog YAML is missing, malformed or invalid."""


class StoreExistsError(UsageError, FileExistsError):
    """The output store exists and ``--overwrite`` was not given."""


class StoreNotFoundError(UsageError, FileNotFoundError):
    """A store path given on the command line does not exist or is not a sensorcube store."""


class ReleaseExistsError(UsageError, FileExistsError):
    """The release output folder is not empty and cannot be replaced."""


class StoreLockedError(SensorcubeError, RuntimeError):
    """Another run holds the store's lock."""


class CatalogError(SensorcubeError, RuntimeError):
    """A catalog could not be searched or returned unusable items."""


class NoItemsError(CatalogError):
    """A catalog search returned no items for a modality."""


class ReadError(SensorcubeError, OSError):
    """An asset could not be read."""


class StoreError(SensorcubeError, RuntimeError):
    """A store is missing, incomplete or does not match what was expected."""


class RunFailedError(SensorcubeError, RuntimeError):
    """Chips failed beyond what the failure policy allows."""


class CoregistrationError(SensorcubeError, ValueError):
    """Input rejected by the coregistration functions: dimensions, shape, size or validity."""


class EvaluationError(UsageError, ValueError):
    """Predictions or options of an evaluation do not fit the truth store or its manifest."""


class FeedError(UsageError, ValueError):
    """A training-feed request does not fit its store: direction, split, manifest or statistics."""
