"""Signing of Planetary Computer asset hrefs against a token endpoint on 127.0.0.1.

The planetary-computer package reads its token endpoint from ``PC_SDK_SAS_URL``. Every test
here points it at a server started in this module. That server issues SAS-like tokens per
collection and serves small COGs only to requests that carry a token it issued, so no request
leaves 127.0.0.1. The tests check the signed hrefs, the cache per collection, the refresh before
expiry, and that no token reaches a log, an error message, a chip read or the item dict.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import re
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pystac
import pytest
import shapely
import shapely.geometry
from planetary_computer.settings import Settings

import pipeline.search
from pipeline.config import ModalitySource, load_catalog
from pipeline.errors import ReadError
from pipeline.gdal_io import DEFAULT_GDAL_OPTIONS
from pipeline.grid import Chip, project_geometry
from pipeline.read import read_s1, read_s2
from pipeline.search import sign_item
from tests.stac_fixtures import keep_requests_local, read_items
from tests.test_read import EPSG, ORIGIN_X, ORIGIN_Y, write_cog

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN_PATH = "/api/sas/v1/token"
# One attempt per read and no GDAL retries keep a rejected read fast.
GDAL_OPTIONS = {**DEFAULT_GDAL_OPTIONS, "GDAL_HTTP_MAX_RETRY": 0}
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class TokenServer(ThreadingHTTPServer):
    """A token endpoint and a file server in one, on a free port of 127.0.0.1.

    ``GET /api/sas/v1/token/<collection>`` returns ``{"msft:expiry", "token"}`` with a new
    secret ``sig`` each time, valid for ``lifetime_s`` seconds (per collection, default 3600).
    ``/files/<name>`` serves the files of ``root`` with byte ranges. It serves only requests
    whose query string is a token issued here, and only while ``accept_tokens`` is true. Other
    requests get 403.
    """

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.root = root
        self.lifetime_s: dict[str, float] = {}
        self.fail_first: dict[str, list[int]] = {}
        self.token_requests: list[tuple[str, dict[str, str]]] = []
        self.issued: list[str] = []
        self.file_queries: list[str] = []
        self.accept_tokens = True
        self.lock = threading.Lock()
        self._serial = itertools.count(1)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def netloc(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def new_token(self, collection: str) -> dict[str, str]:
        lifetime = self.lifetime_s.get(collection, 3600.0)
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lifetime)
        secret = f"SECRET{next(self._serial):04d}{collection.replace('-', '')}"
        token = f"st=2024-01-01T00%3A00%3A00Z&se=2099-01-01&sp=rl&sv=2021-06-08&sr=c&sig={secret}"
        with self.lock:
            self.issued.append(token)
        return {"msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": token}


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output free of one line per request."""

    def do_GET(self) -> None:
        self._handle(send_body=True)

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def _handle(self, *, send_body: bool) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith(f"{TOKEN_PATH}/"):
            self._send_token(parts.path.removeprefix(f"{TOKEN_PATH}/"))
        elif parts.path.startswith("/files/"):
            self._send_file(unquote(parts.path.removeprefix("/files/")), parts.query, send_body)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain", send_body)

    def _send_token(self, collection: str) -> None:
        with self.server.lock:
            self.server.token_requests.append((collection, dict(self.headers)))
            failures = self.server.fail_first.get(collection)
            status = failures.pop(0) if failures else None
        if status is not None:
            self._send(HTTPStatus(status), b"{}", "application/json", True)
            return
        body = json.dumps(self.server.new_token(collection)).encode()
        self._send(HTTPStatus.OK, body, "application/json", True)

    def _send_file(self, name: str, query: str, send_body: bool) -> None:
        with self.server.lock:
            self.server.file_queries.append(query)
            allowed = self.server.accept_tokens and query in self.server.issued
        path = self.server.root / name
        if not allowed:
            self._send(HTTPStatus.FORBIDDEN, b"AuthenticationFailed", "text/plain", send_body)
            return
        if not path.is_file():
            self._send(HTTPStatus.NOT_FOUND, b"BlobNotFound", "text/plain", send_body)
            return
        data = path.read_bytes()
        match = _RANGE.match(self.headers.get("Range", ""))
        if match is None:
            self._send(HTTPStatus.OK, data, "image/tiff", send_body)
            return
        start = int(match.group(1))
        end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if send_body:
            self.wfile.write(data[start : end + 1])

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if send_body:
            self.wfile.write(body)


@pytest.fixture()
def token_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    """Start the server and point the planetary-computer settings at it, and only at it."""
    server = TokenServer(tmp_path)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="token-server",
        daemon=True,
    )
    thread.start()
    monkeypatch.setenv("PC_SDK_SAS_URL", f"{server.url}{TOKEN_PATH}")
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    monkeypatch.setattr(pipeline.search, "_tokens", {})
    Settings.get.cache_clear()
    try:
        with keep_requests_local():
            yield server
    finally:
        Settings.get.cache_clear()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _pc_source(modality: str) -> ModalitySource:
    return load_catalog(REPO_ROOT / "catalogs" / "planetary-computer.yaml").source(modality)


def _secrets(server: TokenServer) -> list[str]:
    return [token.rsplit("sig=", 1)[1] for token in server.issued]


def _assert_no_secret(server: TokenServer, *texts: str) -> None:
    secrets = _secrets(server)
    assert secrets
    for text in texts:
        for secret in secrets:
            assert secret not in text


# ----------------------------------------------------------------------------------------------
# Tokens and signed hrefs


@pytest.mark.shared_data
def test_blob_hrefs_signed_others_not(shared_data: Path, token_server: TokenServer) -> None:
    item_dict = read_items(shared_data, "planetary-computer-sentinel-2-l2a.json")[0]
    item = pystac.Item.from_dict(item_dict)
    before = {key: asset.href for key, asset in item.assets.items()}

    signed = sign_item(item, _pc_source("s2"))
    (token,) = token_server.issued

    assert [collection for collection, _ in token_server.token_requests] == ["sentinel-2-l2a"]
    assert {key: asset.href for key, asset in item.assets.items()} == before
    for key, href in before.items():
        if urlsplit(href).netloc.endswith(".blob.core.windows.net"):
            assert signed.assets[key].href == f"{href}?{token}", key
        else:
            assert signed.assets[key].href == href, key
    assert signed.assets["B04"].href != before["B04"]
    assert signed.assets["tilejson"].href == before["tilejson"]


@pytest.mark.shared_data
def test_token_cached_per_collection(shared_data: Path, token_server: TokenServer) -> None:
    s2_items = read_items(shared_data, "planetary-computer-sentinel-2-l2a.json")
    s1_items = read_items(shared_data, "planetary-computer-sentinel-1-rtc.json")

    for item in s2_items:
        sign_item(pystac.Item.from_dict(item), _pc_source("s2"))
    for item in s1_items:
        signed = sign_item(pystac.Item.from_dict(item), _pc_source("s1"))

    requested = [collection for collection, _ in token_server.token_requests]
    assert requested == ["sentinel-2-l2a", "sentinel-1-rtc"]
    assert signed.assets["vv"].href.endswith(token_server.issued[1])


@pytest.mark.parametrize(("lifetime_s", "fetches"), [(3600.0, 1), (300.0, 3)])
def test_token_refreshed_before_expiry(
    token_server: TokenServer, lifetime_s: float, fetches: int
) -> None:
    # The cache replaces a token with less than TOKEN_REFRESH_MARGIN_S (600 s) left.
    token_server.lifetime_s["sentinel-2-l2a"] = lifetime_s

    tokens = [pipeline.search.collection_token("sentinel-2-l2a").token for _ in range(3)]

    assert len(token_server.token_requests) == fetches
    assert len(set(tokens)) == fetches
    assert tokens[-1] == token_server.issued[-1]


def test_subscription_key_sent_not_logged(
    token_server: TokenServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "KEY-0123456789")
    Settings.get.cache_clear()

    with caplog.at_level(logging.DEBUG):
        pipeline.search.collection_token("sentinel-1-rtc")
    (_, headers) = token_server.token_requests[0]

    assert headers["Ocp-Apim-Subscription-Key"] == "KEY-0123456789"
    assert "KEY-0123456789" not in caplog.text
    _assert_no_secret(token_server, caplog.text)
    assert f"SAS token from {token_server.url}{TOKEN_PATH}/sentinel-1-rtc fetched" in caplog.text


def test_token_endpoint_errors(token_server: TokenServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.search, "TOKEN_RETRY_DELAY_S", 0.0)
    token_server.fail_first["forbidden"] = [403]
    token_server.fail_first["busy"] = [503, 503]
    token_server.fail_first["down"] = [503, 503, 503]

    with pytest.raises(
        ReadError,
        match=rf"fetching a SAS token from {token_server.url}{TOKEN_PATH}/forbidden failed: "
        r"HTTP 403 Forbidden \(attempts made: 1\); check the network, PC_SDK_SAS_URL",
    ):
        pipeline.search.collection_token("forbidden")
    busy = pipeline.search.collection_token("busy")
    with pytest.raises(ReadError, match=r"HTTP 503 Service Unavailable \(attempts made: 3\)"):
        pipeline.search.collection_token("down")

    requested = [collection for collection, _ in token_server.token_requests]
    assert requested.count("forbidden") == 1
    assert requested.count("busy") == 3
    assert requested.count("down") == 3
    assert busy.token == token_server.issued[0]


def test_malformed_token_body_not_quoted(
    token_server: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A body with a token but no expiry: the error must not repeat the token.
    def token_without_expiry(collection: str) -> dict[str, str]:
        token = f"sp=rl&sig=SECRETBODY{collection}"
        token_server.issued.append(token)
        return {"token": token}

    monkeypatch.setattr(token_server, "new_token", token_without_expiry)

    with pytest.raises(ReadError, match=r"returned a body that is not a SAS token") as error:
        pipeline.search.collection_token("sentinel-2-l2a")

    assert "SECRETBODY" not in str(error.value)


# ----------------------------------------------------------------------------------------------
# Reads through signed hrefs


def _served_item(
    server: TokenServer, assets: dict[str, np.ndarray], properties: dict[str, Any]
) -> dict[str, Any]:
    """Write each array as a 10 m COG under the server root and describe them as one item."""
    item_assets = {}
    for key, values in assets.items():
        write_cog(server.root / f"{key}.tif", values, 10.0, None)
        item_assets[key] = {
            "href": f"{server.url}/files/{key}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "proj:shape": list(values.shape),
            "proj:transform": [10.0, 0.0, ORIGIN_X, 0.0, -10.0, ORIGIN_Y],
        }
    footprint = project_geometry(
        shapely.box(ORIGIN_X, ORIGIN_Y - 640, ORIGIN_X + 640, ORIGIN_Y),
        src_epsg=EPSG,
        dst_epsg=4326,
    )
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "signed-read",
        "collection": "sentinel-2-l2a",
        "geometry": shapely.geometry.mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {
            "datetime": "2024-04-19T10:00:00Z",
            "proj:code": f"EPSG:{EPSG}",
            **properties,
        },
        "assets": item_assets,
        "links": [],
    }


@pytest.fixture()
def signed_host(token_server: TokenServer, monkeypatch: pytest.MonkeyPatch) -> TokenServer:
    """Make the local server count as blob storage, so its hrefs get signed."""
    monkeypatch.setattr(pipeline.search, "SIGNED_HOST_SUFFIX", token_server.netloc)
    return token_server


def test_s2_read_through_signed_hrefs(
    signed_host: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    dn = np.full((64, 64), 1500, dtype=np.uint16)
    scl = np.full((64, 64), 4, dtype=np.uint8)  # 4: vegetation
    item = _served_item(
        signed_host, {"B04": dn, "B08": dn, "SCL": scl}, {"s2:processing_baseline": "05.10"}
    )
    unsigned = json.dumps(item, sort_keys=True)
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 32, 10.0)

    with caplog.at_level(logging.DEBUG):
        result = read_s2(item, _pc_source("s2"), ("B04", "B08"), chip.geobox(), GDAL_OPTIONS)

    np.testing.assert_allclose(result.values, 0.05, rtol=1e-6)
    assert result.usable_fraction == 1.0
    assert result.quarantine is None
    assert signed_host.file_queries
    assert set(signed_host.file_queries) == {signed_host.issued[0]}
    assert json.dumps(item, sort_keys=True) == unsigned
    _assert_no_secret(signed_host, caplog.text, repr(result.processing), unsigned)


def test_s1_rtc_read_records_gamma0(signed_host: TokenServer) -> None:
    # Gamma0 0.01 and 0.1 in a checkerboard, read onto a 20 m chip: each output pixel averages
    # two of each in linear power, 0.055 (-12.60 dB), as the source is linear already.
    checker = np.indices((64, 64)).sum(axis=0) % 2
    gamma0 = np.where(checker == 0, 0.01, 0.1).astype(np.float32)
    item = _served_item(signed_host, {"vv": gamma0, "vh": gamma0}, {})
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 16, 20.0)

    result = read_s1(item, _pc_source("s1"), ("VV", "VH"), chip.geobox(), GDAL_OPTIONS)

    np.testing.assert_allclose(result.values, 0.055, rtol=1e-6)
    np.testing.assert_allclose(10 * np.log10(result.values), -12.596, atol=1e-3)
    assert result.processing["quantity"] == "gamma0"
    assert result.processing["product"] == "RTC"
    assert result.processing["terrain_flattening"] is True
    assert result.processing["source_units"] == "linear"
    assert set(signed_host.file_queries) == {signed_host.issued[0]}
    _assert_no_secret(signed_host, repr(result.processing))


def test_rejected_read_hides_token(
    signed_host: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    dn = np.full((64, 64), 1500, dtype=np.uint16)
    item = _served_item(signed_host, {"B04": dn, "B08": dn}, {"s2:processing_baseline": "05.10"})
    chip = Chip(EPSG, int(ORIGIN_X // 320), int((ORIGIN_Y - 640) // 320), 32, 10.0)
    signed_host.accept_tokens = False

    with caplog.at_level(logging.DEBUG), pytest.raises(ReadError) as error:
        read_s2(item, _pc_source("s2"), ("B04", "B08"), chip.geobox(), GDAL_OPTIONS)

    assert "signed-read" in str(error.value)
    assert signed_host.file_queries
    _assert_no_secret(signed_host, str(error.value), caplog.text)
