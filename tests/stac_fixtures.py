"""STAC servers on 127.0.0.1 for search tests, and the recorded real items they serve.

``serve_items`` runs ``rustac serve`` on a JSON FeatureCollection (never a .parquet file: rustac
serves those through DuckDB, which downloads an extension from the internet). ``PagingServer``
is a minimal STAC API written here, because rustac pages consistently and cannot reproduce an
API whose pages repeat an item.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

# rustac loads a few dozen items in well under a second, so 200 polls 0.05 s apart (10 s or
# more) run out only when it failed to start.
READY_POLLS = 200
READY_POLL_INTERVAL_S = 0.05
STOP_TIMEOUT_S = 10
STAC_VERSION = "1.0.0"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/collections",
    "http://www.opengis.net/spec/ogcapi-features-1/conf/1.0/core",
    "http://www.opengis.net/spec/ogcapi-features-1/conf/1.0/geojson",
]


def read_items(shared_data: Path, name: str) -> list[dict[str, Any]]:
    """Read a recorded file of ``stac-items``: one Item, a JSON list or a FeatureCollection."""
    data = json.loads((shared_data / "stac-items" / name).read_text(encoding="utf-8"))
    if isinstance(data, list):
        return data
    if data.get("type") == "FeatureCollection":
        return list(data["features"])
    return [data]


def with_changes(item: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """Return a deep copy of ``item`` with top-level keys replaced (``properties`` is merged)."""
    copied = copy.deepcopy(dict(item))
    properties = changes.pop("properties", None)
    copied.update(changes)
    if properties is not None:
        copied["properties"] = {**copied["properties"], **properties}
    return copied


def _rustac_executable() -> str:
    beside_python = Path(sys.executable).parent / "rustac"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("rustac")
    if found is None:
        pytest.fail(f"rustac console script not found beside {sys.executable} or on PATH")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_ready(server: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    # An opener without proxy handlers, so the polls go to 127.0.0.1 even if a proxy is set.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(READY_POLLS):
        if server.poll() is not None:
            output = log_path.read_text(encoding="utf-8", errors="replace")
            pytest.fail(f"rustac serve exited with code {server.returncode}: {output}")
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(READY_POLL_INTERVAL_S)
    output = log_path.read_text(encoding="utf-8", errors="replace")
    pytest.fail(f"rustac serve did not respond at {url} after {READY_POLLS} polls: {output}")


@contextmanager
def keep_requests_local() -> Iterator[None]:
    """Set NO_PROXY for 127.0.0.1, so requests and urllib never send local traffic to a proxy."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1")
        patch.setenv("no_proxy", "127.0.0.1")
        yield


@contextmanager
def serve_items(features: Sequence[Mapping[str, Any]], folder: Path) -> Iterator[str]:
    """Serve ``features`` with ``rustac serve`` on a free port of 127.0.0.1; yield its URL."""
    folder.mkdir(parents=True, exist_ok=True)
    items_path = folder / "items.json"
    collection = {"type": "FeatureCollection", "features": list(features)}
    items_path.write_text(json.dumps(collection), encoding="utf-8")
    with serve_items_file(items_path, folder) as url:
        yield url


@contextmanager
def serve_items_file(items_path: Path, folder: Path) -> Iterator[str]:
    """Serve a FeatureCollection file with ``rustac serve`` on 127.0.0.1; yield its URL.

    The server's output goes to ``folder / "serve.log"``, quoted when it fails to start.
    """
    folder.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{_free_port()}"
    url = f"http://{address}"
    log_path = folder / "serve.log"
    command = [
        _rustac_executable(),
        "serve",
        "--addr",
        address,
        "--create-collections",
        str(items_path),
    ]
    with keep_requests_local(), log_path.open("wb") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_until_ready(server, f"{url}/", log_path)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


# ----------------------------------------------------------------------------------------------
# A STAC API whose pages are given verbatim


class PagingServer(ThreadingHTTPServer):
    """A STAC API on 127.0.0.1 that returns the same fixed pages for every search.

    ``pages`` lists the features of each page in order, so a test can put one item on two
    pages. ``number_matched`` is reported on every page when it is not None. Each page links
    the next with a POST ``next`` link carrying a ``token``, as STAC API paging does.
    """

    daemon_threads = True

    def __init__(
        self,
        collection: str,
        pages: Sequence[Sequence[Mapping[str, Any]]],
        number_matched: int | None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _PagingHandler)
        self.collection = collection
        self.pages = [list(page) for page in pages]
        self.number_matched = number_matched
        self.search_bodies: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _PagingHandler(BaseHTTPRequestHandler):
    server: PagingServer

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output free of one line per request."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "":
            self._send_json(self._landing_page())
        elif path == "/conformance":
            self._send_json({"conformsTo": CONFORMANCE})
        elif path == "/collections":
            self._send_json({"collections": [self._collection()], "links": []})
        elif path == f"/collections/{self.server.collection}":
            self._send_json(self._collection())
        else:
            self._send_json({"code": "NotFound", "description": self.path}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/search":
            self._send_json({"code": "NotFound", "description": self.path}, HTTPStatus.NOT_FOUND)
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.search_bodies.append(body)
        index = int(body.get("token", "page-0").removeprefix("page-"))
        page: dict[str, Any] = {
            "type": "FeatureCollection",
            "features": self.server.pages[index],
            "links": [],
        }
        if self.server.number_matched is not None:
            page["numberMatched"] = self.server.number_matched
            page["numberReturned"] = len(self.server.pages[index])
        if index + 1 < len(self.server.pages):
            next_body = {**body, "token": f"page-{index + 1}"}
            page["links"].append(
                {
                    "rel": "next",
                    "href": f"{self.server.url}/search",
                    "type": "application/geo+json",
                    "method": "POST",
                    "body": next_body,
                }
            )
        self._send_json(page, content_type="application/geo+json")

    def _landing_page(self) -> dict[str, Any]:
        url = self.server.url
        return {
            "type": "Catalog",
            "id": "paging-test-api",
            "stac_version": STAC_VERSION,
            "description": "Fixed pages for paging tests",
            "conformsTo": CONFORMANCE,
            "links": [
                {"rel": "self", "href": f"{url}/", "type": "application/json"},
                {"rel": "root", "href": f"{url}/", "type": "application/json"},
                {"rel": "conformance", "href": f"{url}/conformance"},
                {"rel": "data", "href": f"{url}/collections", "type": "application/json"},
                {
                    "rel": "search",
                    "href": f"{url}/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
            ],
        }

    def _collection(self) -> dict[str, Any]:
        return {
            "type": "Collection",
            "id": self.server.collection,
            "stac_version": STAC_VERSION,
            "description": "Collection of the paging test API",
            "license": "other",
            "extent": {
                "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
                "temporal": {"interval": [[None, None]]},
            },
            "links": [],
        }

    def _send_json(
        self,
        data: Mapping[str, Any],
        status: HTTPStatus = HTTPStatus.OK,
        content_type: str = "application/json",
    ) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve_pages(
    collection: str,
    pages: Sequence[Sequence[Mapping[str, Any]]],
    number_matched: int | None,
) -> Iterator[PagingServer]:
    """Run a :class:`PagingServer` until the block ends."""
    server = PagingServer(collection, pages, number_matched)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="paging-server",
        daemon=True,
    )
    with keep_requests_local():
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
