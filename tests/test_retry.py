"""Retries of remote reads: policy, error classes, secret masking and real reads over HTTP.

The HTTP tests read the sample COGs through GDAL's /vsicurl/ from :mod:`tests.http_server` on
127.0.0.1, which fails chosen requests a set number of times.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.errors import RasterioIOError

from pipeline.config import load_catalog
from pipeline.errors import ReadError
from pipeline.gdal_io import (
    DEFAULT_GDAL_OPTIONS,
    cache_max_bytes,
    capture_gdal_options,
    warp_to_grid,
)
from pipeline.read import _native_geobox, read_s2
from pipeline.retry import (
    AssetReadError,
    RetryPolicy,
    gdal_path,
    is_transient,
    mask_secrets,
    retry_read,
)
from pipeline.sample import ITEMS_GEOJSON, sample_catalog_dir
from tests.http_server import FAULT_KINDS, FaultPlan, FaultServer, serve_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "NOT-A-REAL-SIGNATURE"
SAS_QUERY = f"?sv=2024-05-04&sp=r&sig={SECRET}%3D"
URL = f"https://account.blob.core.windows.net/container/B04.tif{SAS_QUERY}"
S2_ITEM = "S2A_MSIL2A_20170613T101031_87_48"
S2_ASSET = f"cog/{S2_ITEM}/B04.tif"
# GDAL sends each request once (no retries of its own) and waits half a second for a stalled
# response, so every fault reaches sensorcube's retries and costs little time.
FAST_GDAL_OPTIONS: dict[str, str | int | bool] = {
    **DEFAULT_GDAL_OPTIONS,
    "GDAL_HTTP_MAX_RETRY": 0,
    "GDAL_HTTP_RETRY_DELAY": "0.01",
    "GDAL_HTTP_TIMEOUT": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "0.5",
}
STALL_S = 1.5
RETRY_LOGGER = "pipeline.retry"


# ----------------------------------------------------------------------------------------------
# Masking


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (URL, "https://account.blob.core.windows.net/container/B04.tif?***"),
        ("/vsicurl/https://user:pa55@host/x.tif", "/vsicurl/https://***@host/x.tif"),
        (f"'B01.tif{SAS_QUERY}', band 1: failed", "'B01.tif?***', band 1: failed"),
        (
            f"B01.tif{SAS_QUERY}, band 1: IReadBlock failed",
            "B01.tif?***, band 1: IReadBlock failed",
        ),
        (f"cut before the query: x.tif&sig={SECRET}", "cut before the query: x.tif&sig=***"),
        (
            "https://b.s3.amazonaws.com/k.tif?X-Amz-Credential=AKIA&X-Amz-Signature=abc",
            "https://b.s3.amazonaws.com/k.tif?***",
        ),
        ("Does the file exist? Check the path.", "Does the file exist? Check the path."),
        ("s3://bucket/key.tif and /data/x.tif", "s3://bucket/key.tif and /data/x.tif"),
    ],
)
def test_mask_secrets(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


def test_masking_filter_covers_rasterio_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="rasterio._env"):
        logging.getLogger("rasterio._env").warning("HTTP error code: 503 - %s. Retrying", URL)

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "HTTP error code: 503 - https://account.blob.core.windows.net/container/B04.tif?***. Retrying"
    ]


# ----------------------------------------------------------------------------------------------
# Policy


@pytest.mark.parametrize("retry", range(1, 9))
def test_delay_is_bounded_with_jitter(retry: int) -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.5, max_delay_s=4.0)
    ceiling = min(4.0, 0.5 * 2 ** (retry - 1))
    rng = random.Random(retry)

    delays = [policy.delay_s(retry, rng) for _ in range(200)]

    assert min(delays) >= ceiling / 2
    assert max(delays) <= ceiling
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_attempts": 0}, "max_attempts 0 is invalid"),
        ({"base_delay_s": -1.0}, "give 0 <= base_delay_s <= max_delay_s"),
        ({"base_delay_s": 5.0, "max_delay_s": 1.0}, "give 0 <= base_delay_s <= max_delay_s"),
    ],
)
def test_policy_rejects_invalid_values(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**arguments)


def test_policy_base_delay_from_gdal_options() -> None:
    policy = RetryPolicy.from_gdal_options({"GDAL_HTTP_RETRY_DELAY": "0.25"})

    assert policy.base_delay_s == 0.25
    assert policy.max_attempts == 4
    assert RetryPolicy.from_gdal_options({}).base_delay_s == 1.0


def test_capture_gdal_options_takes_environment() -> None:
    options = capture_gdal_options({"GDAL_HTTP_TIMEOUT": "7", "UNRELATED": "1"})

    assert options["GDAL_HTTP_TIMEOUT"] == "7"
    assert options["GDAL_HTTP_MAX_RETRY"] == DEFAULT_GDAL_OPTIONS["GDAL_HTTP_MAX_RETRY"]
    assert "UNRELATED" not in options


@pytest.mark.parametrize(
    ("value", "expected"),
    [("64", 64 * 2**20), ("99999", 99_999 * 2**20), ("100000", 100_000), (512 * 2**20, 2**29)],
)
def test_gdal_cachemax_in_bytes(value: str | int, expected: int) -> None:
    # rasterio.Env accepts GDAL_CACHEMAX only as an integer number of bytes.
    assert capture_gdal_options({"GDAL_CACHEMAX": str(value)})["GDAL_CACHEMAX"] == expected
    assert cache_max_bytes(value) == expected


def test_gdal_cachemax_percent_of_memory() -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert cache_max_bytes("5%") == int(memory * 5 / 100)


# ----------------------------------------------------------------------------------------------
# Which errors are retried


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("HTTP response code: 503", True),
        ("HTTP response code: 500", True),
        ("HTTP response code: 504", True),
        ("HTTP response code: 429", True),
        ("HTTP response code: 408", True),
        ("CURL error: Operation timed out after 500 milliseconds with 0 bytes received", True),
        ("CURL error: Recv failure: Connection reset by peer", True),
        ("TIFFFillTile:Read error at row 0, col 0, tile 0; got 190 bytes, expected 960", True),
        ("HTTP response code: 404", False),
        ("HTTP response code: 403", False),
        (
            "'/vsicurl/https://h/x.tif' does not exist in the file system, and is not recognized",
            False,
        ),
        ("band index 3 is out of range", False),
    ],
)
def test_transient_errors(message: str, transient: bool) -> None:
    error = RasterioIOError(message)

    assert is_transient(error, href=URL) is transient


def test_truncated_block_is_transient_through_chain() -> None:
    cause = RasterioIOError(
        "B01.tif, band 1: IReadBlock failed at X offset 0: TIFFReadEncodedTile() failed."
    )
    error = RasterioIOError("Read failed. See previous exception for details.")
    error.__cause__ = cause

    assert is_transient(error, href=URL)


def test_local_and_final_errors_not_transient() -> None:
    assert not is_transient(RasterioIOError("HTTP response code: 503"), href="/data/B04.tif")
    assert not is_transient(AssetReadError("HTTP response code: 503"), href=URL)


@pytest.mark.parametrize(
    ("href", "path"),
    [
        ("https://h/x.tif?a=1", "/vsicurl/https://h/x.tif?a=1"),
        ("s3://bucket/key.tif", "/vsis3/bucket/key.tif"),
        ("/vsicurl/http://h/x.tif", "/vsicurl/http://h/x.tif"),
        ("/data/x.tif", "/data/x.tif"),
    ],
)
def test_gdal_path(href: str, path: str) -> None:
    assert gdal_path(href) == path


# ----------------------------------------------------------------------------------------------
# Retrying, with reads that fail on schedule


def failing_read(messages: list[str]) -> tuple[Callable[[], str], list[int]]:
    """A read that raises RasterioIOError with each of ``messages`` in turn, then returns "ok"."""
    calls: list[int] = []

    def read() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= len(messages):
            raise RasterioIOError(messages[len(calls) - 1])
        return "ok"

    return read, calls


def test_retry_logs_url_attempt_and_delay(caplog: pytest.LogCaptureFixture) -> None:
    read, calls = failing_read(["HTTP response code: 503", "CURL error: Operation timed out"])
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=30.0)

    with caplog.at_level(logging.WARNING, logger=RETRY_LOGGER):
        result = retry_read(read, hrefs=[URL], policy=policy, sleep=sleeps.append)

    records = [record for record in caplog.records if record.name == RETRY_LOGGER]
    masked = "https://account.blob.core.windows.net/container/B04.tif?***"
    assert result == "ok"
    assert calls == [1, 2, 3]
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5
    assert 0.5 <= sleeps[1] <= 1.0
    assert len(records) == 2
    for attempt, (record, delay) in enumerate(zip(records, sleeps, strict=True), start=1):
        message = record.getMessage()
        assert record.levelno == logging.WARNING
        assert f"reading {masked} failed on attempt {attempt} of 4" in message
        assert f"retrying in {delay:.2f} s" in message
        assert SECRET not in message
    assert "HTTP response code: 503" in records[0].getMessage()


def test_retry_gives_up_after_max_attempts() -> None:
    read, calls = failing_read(["HTTP response code: 503"] * 5)
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01)

    with pytest.raises(
        AssetReadError, match=r"B04\.tif\?\*\*\* failed after 3 attempts: HTTP response code: 503"
    ) as raised:
        retry_read(read, hrefs=[URL], policy=policy, sleep=sleeps.append)

    assert calls == [1, 2, 3]
    assert len(sleeps) == 2
    assert SECRET not in str(raised.value)
    assert isinstance(raised.value, ReadError)


def test_retry_skips_not_found() -> None:
    read, calls = failing_read(["HTTP response code: 404"])
    sleeps: list[float] = []

    with pytest.raises(AssetReadError, match=r"B04\.tif\?\*\*\* failed: HTTP response code: 404$"):
        retry_read(read, hrefs=[URL], policy=RetryPolicy(), sleep=sleeps.append)

    assert calls == [1]
    assert sleeps == []


def test_retry_skips_missing_local_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.tif")
    calls: list[int] = []
    sleeps: list[float] = []

    def read() -> None:
        calls.append(1)
        with rasterio.open(missing):
            pass

    with pytest.raises(AssetReadError, match=r"missing\.tif failed: .*No such file or directory"):
        retry_read(read, hrefs=[missing], policy=RetryPolicy(), sleep=sleeps.append)

    assert calls == [1]
    assert sleeps == []


# ----------------------------------------------------------------------------------------------
# Real reads through GDAL's /vsicurl/ from the fault server


@pytest.fixture(scope="module")
def server(sample_cache: Path) -> Iterator[FaultServer]:
    with pytest.MonkeyPatch.context() as patch, serve_folder(sample_catalog_dir()) as running:
        # curl honours proxy variables, so requests to the test server must bypass any proxy.
        patch.setenv("NO_PROXY", "127.0.0.1")
        patch.setenv("no_proxy", "127.0.0.1")
        yield running


def remote_href(server: FaultServer, path: str, request: pytest.FixtureRequest) -> str:
    """The URL of ``path`` on the server, unique to the test: GDAL caches what it read by URL."""
    tag = re.sub(r"\W", "-", request.node.name)
    return f"{server.url}/{path}{SAS_QUERY}&test={tag}"


def fail_once(server: FaultServer, kind: str, path: str) -> None:
    """Make the first sight of every request for ``path`` fail with ``kind``."""
    server.reset(
        FaultPlan(failing_paths=(path,), failing_kind=kind, failing_times=1, stall_s=STALL_S)
    )


def read_band(href: str) -> np.ndarray:
    with rasterio.Env(**FAST_GDAL_OPTIONS), rasterio.open(href) as dataset:
        values: np.ndarray = dataset.read(1)
        return values


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_retried_read_equals_local_pixels(
    server: FaultServer, kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    expected = read_band(str(sample_catalog_dir() / S2_ASSET))
    href = remote_href(server, S2_ASSET, request)
    fail_once(server, kind, S2_ASSET)
    policy = RetryPolicy.from_gdal_options(FAST_GDAL_OPTIONS)

    with caplog.at_level(logging.WARNING):
        values = retry_read(lambda: read_band(href), hrefs=[href], policy=policy)

    np.testing.assert_array_equal(values, expected)
    assert server.stats.faults[kind] >= 1
    assert server.stats.stalls_ended_by_server == 0
    assert any(record.name == RETRY_LOGGER for record in caplog.records)
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_gdal_retry_warning_is_masked(
    server: FaultServer, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    href = remote_href(server, S2_ASSET, request)
    server.reset(FaultPlan(failing_paths=(S2_ASSET,), failing_kind="503", failing_times=1))
    # GDAL retries the 503 itself once and logs a warning with the URL through rasterio.
    options = {**FAST_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY": 1}

    with (
        caplog.at_level(logging.DEBUG, logger="rasterio._env"),
        rasterio.Env(**options),
        rasterio.open(href) as dataset,
    ):
        dataset.read(1)

    messages = [record.getMessage() for record in caplog.records]
    assert any("HTTP error code: 503" in message for message in messages), messages
    assert all(SECRET not in message for message in messages)
    assert any(f"{S2_ASSET}?***" in message for message in messages)


def _http_item(
    server: FaultServer, request: pytest.FixtureRequest
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sample Sentinel-2 item as stored, and a copy whose hrefs point at the server."""
    catalog_dir = sample_catalog_dir()
    features = json.loads((catalog_dir / ITEMS_GEOJSON).read_text(encoding="utf-8"))["features"]
    local = next(feature for feature in features if feature["id"] == S2_ITEM)
    remote = json.loads(json.dumps(local))
    for asset in remote["assets"].values():
        relative = Path(asset["href"]).relative_to(catalog_dir).as_posix()
        asset["href"] = remote_href(server, relative, request)
    return local, remote


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_read_s2_retries_one_band(
    server: FaultServer,
    kind: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    local, remote = _http_item(server, request)
    source = load_catalog(REPO_ROOT / "catalogs" / "sample.yaml").source("s2")
    bands = ("B02", "B04", "B08", "B11")
    geobox = _native_geobox(pystac.Item.from_dict(local), "B02")
    assert isinstance(geobox, GeoBox)
    expected = read_s2(local, source, bands, geobox, FAST_GDAL_OPTIONS)
    fail_once(server, kind, S2_ASSET)

    with caplog.at_level(logging.WARNING):
        result = read_s2(remote, source, bands, geobox, FAST_GDAL_OPTIONS)

    retries = [record.getMessage() for record in caplog.records if record.name == RETRY_LOGGER]
    np.testing.assert_array_equal(result.values, expected.values)
    assert result.usable_fraction == expected.usable_fraction
    assert server.stats.faults[kind] >= 1
    # GDAL_HTTP_TIMEOUT of the options applies around odc-stac's reads: the client gave up.
    assert server.stats.stalls_ended_by_server == 0
    assert retries
    assert f"{S2_ASSET}?*** failed on attempt 1 of 4" in retries[0]
    assert all(f"{S2_ASSET}?*** failed on attempt" in message for message in retries)
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_read_s2_failure_names_masked_url(
    server: FaultServer, request: pytest.FixtureRequest
) -> None:
    _, remote = _http_item(server, request)
    source = load_catalog(REPO_ROOT / "catalogs" / "sample.yaml").source("s2")
    geobox = _native_geobox(pystac.Item.from_dict(remote), "B02")
    assert isinstance(geobox, GeoBox)
    server.reset(FaultPlan(failing_paths=(S2_ASSET,), failing_kind="503"))

    with pytest.raises(ReadError) as raised:
        read_s2(remote, source, ("B04",), geobox, FAST_GDAL_OPTIONS)

    message = str(raised.value)
    assert f"{S2_ASSET}?*** failed after 4 attempts: HTTP response code: 503" in message
    assert SECRET not in message


def test_warp_to_grid_retries_truncated_body(
    server: FaultServer, request: pytest.FixtureRequest
) -> None:
    local = str(sample_catalog_dir() / S2_ASSET)
    with rasterio.open(local) as dataset:
        crs = str(dataset.crs)
        transform = tuple(dataset.transform)[:6]
    arguments: dict[str, Any] = {
        "crs": crs,
        "transform": transform,
        "shape": (32, 32),
        "resampling": "bilinear",
        "indexes": [1],
        "src_nodata": None,
        "gdal_options": FAST_GDAL_OPTIONS,
    }
    expected = warp_to_grid(local, **arguments)
    fail_once(server, "truncate", S2_ASSET)

    values = warp_to_grid(remote_href(server, S2_ASSET, request), **arguments)

    np.testing.assert_array_equal(values, expected)
    assert server.stats.faults["truncate"] >= 1
