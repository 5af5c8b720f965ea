"""The test file server of tests.http_server: byte ranges, HEAD, missing files and seeded faults."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_server import FaultPlan, FaultServer, serve_folder

CONTENT = bytes(range(256)) * 4


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[FaultServer]:
    (tmp_path / "data.bin").write_bytes(CONTENT)
    with serve_folder(tmp_path) as running:
        yield running


def fetch(
    url: str, *, method: str = "GET", byte_range: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send one request without any proxy, and return the status, headers and body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, method=method)
    if byte_range is not None:
        request.add_header("Range", byte_range)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_head_announces_size_and_ranges(server: FaultServer) -> None:
    status, headers, body = fetch(f"{server.url}/data.bin", method="HEAD")

    assert status == 200
    assert headers["Content-Length"] == str(len(CONTENT))
    assert headers["Accept-Ranges"] == "bytes"
    assert body == b""


@pytest.mark.parametrize(
    ("byte_range", "start", "end"),
    [("bytes=10-19", 10, 19), ("bytes=1000-", 1000, 1023), ("bytes=-24", 1000, 1023)],
)
def test_range_returns_partial_content(
    server: FaultServer, byte_range: str, start: int, end: int
) -> None:
    status, headers, body = fetch(f"{server.url}/data.bin", byte_range=byte_range)

    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end}/{len(CONTENT)}"
    assert body == CONTENT[start : end + 1]


def test_range_past_end_is_unsatisfiable(server: FaultServer) -> None:
    status, headers, _ = fetch(f"{server.url}/data.bin", byte_range="bytes=5000-")

    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(CONTENT)}"


@pytest.mark.parametrize("path", ["missing.bin", "../data.bin", "%2e%2e/etc/passwd"])
def test_missing_or_outside_path_is_not_found(server: FaultServer, path: str) -> None:
    status, _, _ = fetch(f"{server.url}/{path}")

    assert status == 404


def test_cut_body_is_shorter_than_announced(server: FaultServer) -> None:
    server.reset(FaultPlan(failing_paths=("data.bin",), failing_kind="truncate", failing_times=1))
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=5)
    connection.request("GET", "/data.bin")
    response = connection.getresponse()

    with pytest.raises(http.client.IncompleteRead) as raised:
        response.read()

    connection.close()
    assert response.headers["Content-Length"] == str(len(CONTENT))
    assert len(raised.value.partial) == len(CONTENT) // 2
    assert fetch(f"{server.url}/data.bin")[2] == CONTENT


@pytest.mark.parametrize(
    ("client_timeout_s", "stall_s", "ended_by_server"), [(0.2, 5.0, 0), (5.0, 0.2, 1)]
)
def test_stall_ends_with_first_to_give_up(
    server: FaultServer, client_timeout_s: float, stall_s: float, ended_by_server: int
) -> None:
    server.reset(FaultPlan(failing_paths=("data.bin",), failing_kind="stall", stall_s=stall_s))
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=client_timeout_s)
    connection.request("GET", "/data.bin")

    with pytest.raises((TimeoutError, http.client.RemoteDisconnected)):
        connection.getresponse()

    connection.close()
    # The handler thread records the stall shortly after the first side gives up.
    stats = server.stats
    for _ in range(250):
        if stats.stalls_ended_by_client + stats.stalls_ended_by_server == 1:
            break
        time.sleep(0.02)
    assert stats.stalls_ended_by_server == ended_by_server
    assert stats.stalls_ended_by_client == 1 - ended_by_server


def test_fault_plan_is_seeded() -> None:
    keys = [f"GET /file{index}.tif bytes=0-16383" for index in range(2000)]
    plan = FaultPlan(rate=0.1, seed=7)

    faults = [plan.fault_for(key, 0) for key in keys]

    assert faults == [FaultPlan(rate=0.1, seed=7).fault_for(key, 0) for key in keys]
    assert faults != [FaultPlan(rate=0.1, seed=8).fault_for(key, 0) for key in keys]
    assert 150 <= sum(fault is not None for fault in faults) <= 250
    assert {fault for fault in faults if fault is not None} == {"503", "stall", "truncate"}
