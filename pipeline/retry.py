"""Retries of remote raster reads, and masking of the secrets that URLs carry.

GDAL retries a single HTTP request by itself (``GDAL_HTTP_MAX_RETRY``, ``GDAL_HTTP_RETRY_DELAY``)
on 429, 502, 503 and 504 responses and on timeouts. It does not retry a body cut short. Its
/vsicurl/ cache also keeps a failed outcome for the life of the process. With GDAL 3.10.3, a second
open of a URL that failed with 503 or a timeout fails again without sending a request, and a block
read that got a short body fails the same way until the cache is bypassed. So sensorcube repeats
the whole read of one asset on top, with backoff and jitter. Every retry runs with
``CPL_VSIL_CURL_NON_CACHED`` naming that asset, so GDAL fetches it anew. Each attempt also reopens
the dataset, which drops its block cache (``GDAL_CACHEMAX``) and ``VSI_CACHE``, so no bytes of a
failed attempt reach the pixels. tests/test_http_faults.py checks that a run with faults writes the
same checksums as a run without.

URLs often carry credentials, such as the SAS token of Azure Blob Storage (``?sv=...&sig=...``)
or ``user:password@``. :func:`mask_secrets` removes them from every message and log line this
module writes, and a logging filter does the same for the GDAL messages that rasterio logs and
for odc-loader's read failures.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from odc.loader import RioDriver, RioReader
from odc.loader.types import RasterLoadParams, RasterSource, ReaderSubsetSelection
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from pipeline.errors import ReadError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Attempts per asset read, the first included. Each attempt may itself send up to
# 1 + GDAL_HTTP_MAX_RETRY requests for a failing block.
READ_ATTEMPTS = 4
# Maximum wait between two attempts, in seconds.
MAX_RETRY_DELAY_S = 30.0
# Base wait when the GDAL options name no GDAL_HTTP_RETRY_DELAY, in seconds (GDAL's own default).
DEFAULT_RETRY_DELAY_S = 1.0

_JITTER = random.Random()

# ----------------------------------------------------------------------------------------------
# Masking


_MASK = "***"
# The user:password@ part of a URL.
_USERINFO = re.compile(r"(?<=://)[^/\s@'\"<>]+@")
# A query string with at least one key=value pair, up to the next space or quote.
_QUERY = re.compile(r"\?[^\s'\"<>]*=[^\s'\"<>]*")
# Credential parameters outside a query string, for messages that cut a URL before its "?".
_SECRET_PARAMETER = re.compile(
    r"(?i)(?<![\w-])(sig|signature|token|access_token|api_?key|key|password|secret|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential)"
    r"=[^&\s'\"<>]+"
)
_TRAILING_PUNCTUATION = re.compile(r"[.,;:)\]]+$")


def _mask_query(match: re.Match[str]) -> str:
    trailing = _TRAILING_PUNCTUATION.search(match.group())
    return f"?{_MASK}{trailing.group() if trailing else ''}"


def mask_secrets(text: str) -> str:
    """Replace query strings, ``user:password@`` and credential parameters in ``text`` by ***.

    The path stays, so ``https://u:p@host/b/x.tif?sv=1&sig=abc`` becomes
    ``https://***@host/b/x.tif?***``.
    """
    text = _USERINFO.sub(f"{_MASK}@", text)
    text = _QUERY.sub(_mask_query, text)
    return _SECRET_PARAMETER.sub(lambda match: f"{match.group(1)}={_MASK}", text)


class SecretMaskingFilter(logging.Filter):
    """Logging filter that masks secrets in the formatted message of each record it filters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg = masked
            record.args = ()
        return True


# Loggers of other libraries whose messages contain asset URLs: rasterio logs GDAL's errors and
# warnings (including GDAL's own HTTP retries with the full URL), and odc-loader logs the URL of
# every failed read before raising. A logger's filters see only the records of that logger, not
# those of its children, so each module's logger is listed.
MASKED_LOGGERS = (
    "rasterio",
    "rasterio._env",
    "rasterio._err",
    "rasterio._base",
    "rasterio._io",
    "rasterio.env",
    "odc.loader._rio",
)


def install_secret_masking(names: Sequence[str] = MASKED_LOGGERS) -> None:
    """Add one :class:`SecretMaskingFilter` to each named logger, and none on a second call."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, SecretMaskingFilter) for existing in logger.filters):
            logger.addFilter(SecretMaskingFilter())


# Filters must be in place in every process that reads, including Dask workers, which import
# this module through pipeline.read before their first read.
install_secret_masking()

# ----------------------------------------------------------------------------------------------
# Policy


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one asset read.

    The wait before retry ``n`` (1 for the first) is drawn uniformly between half and all of
    ``min(max_delay_s, base_delay_s * 2 ** (n - 1))``, so workers that failed together do not
    retry together, and no wait is shorter than half its step.
    """

    max_attempts: int = READ_ATTEMPTS
    base_delay_s: float = DEFAULT_RETRY_DELAY_S
    max_delay_s: float = MAX_RETRY_DELAY_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts {self.max_attempts} is invalid; give 1 or more")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError(
                f"delays base {self.base_delay_s} s and max {self.max_delay_s} s are invalid; "
                "give 0 <= base_delay_s <= max_delay_s"
            )

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """Return the wait in seconds before retry number ``retry`` (1 for the first)."""
        if retry < 1:
            raise ValueError(f"retry {retry} is invalid; retries count from 1")
        # The exponent stops growing once the step reaches max_delay_s, so it cannot overflow.
        exponent = min(retry - 1, 64)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0**exponent)
        return rng.uniform(ceiling / 2, ceiling)

    @classmethod
    def from_gdal_options(cls, options: Mapping[str, Any]) -> RetryPolicy:
        """Build the policy whose base wait is the options' ``GDAL_HTTP_RETRY_DELAY``.

        GDAL waits that long before its first retry of a request, so both levels of retries
        follow one setting.
        """
        base = float(options.get("GDAL_HTTP_RETRY_DELAY", DEFAULT_RETRY_DELAY_S))
        return cls(base_delay_s=base, max_delay_s=max(base, MAX_RETRY_DELAY_S))


# ----------------------------------------------------------------------------------------------
# Which errors are retried

_REMOTE_HREF = re.compile(
    r"^(?:https?|ftp|s3|gs|az|azure|oss)://|/vsi(?:curl|s3|gs|az|adls|oss|swift)"
)
# Errors that no retry fixes: a missing object, a rejected request, a file GDAL cannot read.
# GDAL reports a URL whose failure it cached as "does not exist in the file system".
_PERMANENT = re.compile(
    r"HTTP response code: (?!408|429)4\d\d|does not exist in the file system|"
    r"No such file or directory|not recognized as (?:a|being in a) supported",
    re.IGNORECASE,
)
# Errors of the network and of bodies cut short: 408, 429 and 5xx responses, curl's errors
# (timeouts, resets, closed transfers), and the TIFF and codec errors of a short block.
_TRANSIENT = re.compile(
    r"HTTP response code: (?:408|429|5\d\d)|CURL error|timed out|Connection reset|"
    r"transfer closed|Read error at|got \d+ bytes, expected \d+|"
    r"TIFFReadEncoded(?:Tile|Strip)\(\) failed|TIFFFill(?:Tile|Strip)|IReadBlock failed|"
    r"Premature end|(?:ZIP|LZW|ZSTD|LZMA|LERC|JPEG|WEBP)Decode",
    re.IGNORECASE,
)
_UNHELPFUL = "See previous exception for details"


def is_remote(href: str) -> bool:
    """Return whether GDAL reads ``href`` over the network (http, ftp or an object store)."""
    return bool(_REMOTE_HREF.search(href))


def describe_error(error: BaseException) -> str:
    """Join the messages of ``error`` and of the errors chained to it, most specific last.

    rasterio raises ``Read failed. See previous exception for details.`` for a failed block
    read and chains GDAL's messages, which describe the failure. A message already contained in
    an earlier one is left out.
    """
    messages: list[str] = []
    current: BaseException | None = error
    while current is not None and len(messages) < 8:
        text = str(current).strip()
        if text and _UNHELPFUL not in text and not any(text in seen for seen in messages):
            messages.append(text)
        current = current.__cause__ or current.__context__
    return "; ".join(messages) or type(error).__name__


def is_transient(error: BaseException, *, href: str) -> bool:
    """Return whether a failed read of ``href`` may succeed when repeated.

    Only remote reads are retried: a local file that fails once fails again. A
    :class:`AssetReadError` has been retried already and is never retried again.
    """
    if isinstance(error, AssetReadError) or not is_remote(href):
        return False
    text = describe_error(error)
    if _PERMANENT.search(text):
        return False
    return bool(_TRANSIENT.search(text))


class AssetReadError(ReadError):
    """An asset read that failed for good: after its last attempt, or at once when permanent."""


# ----------------------------------------------------------------------------------------------
# Retrying


def gdal_path(href: str) -> str:
    """Return the GDAL virtual file path that rasterio opens for ``href``."""
    if href.startswith("/vsi"):
        return href
    scheme, separator, rest = href.partition("://")
    if not separator:
        return href
    if scheme in ("http", "https", "ftp"):
        return f"/vsicurl/{href}"
    prefix = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/", "azure": "/vsiaz/"}.get(scheme)
    return f"{prefix}{rest}" if prefix else href


@contextmanager
def uncached(hrefs: Sequence[str]) -> Iterator[None]:
    """Make GDAL fetch ``hrefs`` anew inside the block instead of using its /vsicurl/ cache.

    GDAL splits ``CPL_VSIL_CURL_NON_CACHED`` at colons and matches each piece as a path
    prefix, so with GDAL 3.10.3 every /vsicurl/http file opened inside the block bypasses the
    cache, not only ``hrefs``. The option is thread-local, so other threads keep their cache.
    """
    paths = [gdal_path(href) for href in hrefs if is_remote(href)]
    if not paths:
        yield
        return
    with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=":".join(paths)):
        yield


_READ_ERRORS = (RasterioError, CPLE_BaseError, OSError)


def retry_read(
    read: Callable[[], T],
    *,
    hrefs: Sequence[str],
    policy: RetryPolicy,
    label: str | None = None,
    sleep: Callable[[float], object] = time.sleep,
    rng: random.Random = _JITTER,
) -> T:
    """Call ``read`` until it succeeds, retrying transient errors of remote ``hrefs``.

    ``label`` names the read in log lines and errors (default: the hrefs). Each retry is
    logged at WARNING with the masked URL, the attempt and the wait. A permanent error, or the
    last failed attempt, raises :class:`AssetReadError` with the masked URL and GDAL's message.
    """
    name = mask_secrets(label if label is not None else ", ".join(hrefs))
    attempt = 1
    while True:
        try:
            with uncached(hrefs) if attempt > 1 else nullcontext():
                return read()
        except _READ_ERRORS as error:
            if isinstance(error, AssetReadError):
                raise
            reason = mask_secrets(describe_error(error))
            transient = any(is_transient(error, href=href) for href in hrefs)
            if not transient:
                raise AssetReadError(f"reading {name} failed: {reason}") from error
            if attempt >= policy.max_attempts:
                raise AssetReadError(
                    f"reading {name} failed after {attempt} attempts: {reason}"
                ) from error
            delay = policy.delay_s(attempt, rng)
            log.warning(
                "reading %s failed on attempt %d of %d: %s; retrying in %.2f s",
                name,
                attempt,
                policy.max_attempts,
                reason,
                delay,
            )
            sleep(delay)
            attempt += 1


# ----------------------------------------------------------------------------------------------
# odc-stac reads


class RetryingRioDriver(RioDriver):
    """odc-loader's rasterio driver whose readers retry each band read of a remote asset.

    Pass an instance as ``odc.stac.load(..., driver=...)``. odc-loader calls ``read`` without
    a destination array when it fills a chip from one item, so a failed attempt leaves nothing
    behind in the result.

    NOTE: odc-loader 0.6 logs every failed attempt at ERROR ("Failed to load ...", masked)
    before this reader retries it, so a read that recovers still leaves such lines.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        super().__init__()
        self.policy = policy

    def open(self, src: RasterSource, ctx: Any) -> RioReader:
        return _RetryingRioReader(src, ctx, self.policy)


class _RetryingRioReader(RioReader):
    def __init__(self, src: RasterSource, ctx: Any, policy: RetryPolicy) -> None:
        super().__init__(src, ctx)
        self._href = src.uri
        self._policy = policy

    def read(
        self,
        cfg: RasterLoadParams,
        dst_geobox: GeoBox,
        *,
        dst: np.ndarray | None = None,
        selection: ReaderSubsetSelection | None = None,
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        def attempt() -> tuple[tuple[slice, slice], np.ndarray]:
            return super(_RetryingRioReader, self).read(
                cfg, dst_geobox, dst=dst, selection=selection
            )

        return retry_read(attempt, hrefs=[self._href], policy=self._policy)
