"""A range-capable HTTP file server on 127.0.0.1 that injects seeded faults, for read tests.

It serves the files of one folder with HEAD, GET and single byte ranges, as object stores do, so
GDAL reads them through /vsicurl/ as in production. A :class:`FaultPlan` makes a share of the
requests fail with a 503 response, with a response that stalls longer than the client's
timeout, or with a body cut short. The headers of a cut body announce more bytes than are sent
before the connection closes.

Whether a request fails depends only on the seed, the request (method, path and range) and how
many times that same request was seen before, so a run gets the same faults whatever order its
worker processes send requests in.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

FAULT_KINDS = ("503", "stall", "truncate")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class FaultPlan:
    """Which requests fail, and how.

    ``rate`` is the share of requests that fail (0 to 1), each with a kind drawn from ``kinds``.
    Requests whose path contains one of ``failing_paths`` fail with kind ``failing_kind``: every
    time, or only the first ``failing_times`` times the same request is seen. A stalled response
    sends nothing until the client closes the connection, or for at most ``stall_s`` seconds,
    which must exceed the client's timeout.
    """

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    stall_s: float = 2.0
    failing_paths: tuple[str, ...] = ()
    failing_kind: str = "503"
    failing_times: int | None = None

    def fault_for(self, key: str, repeat: int) -> str | None:
        """Return the fault kind for the ``repeat``-th sight of request ``key`` (from 0), or None."""
        path = key.split(" ", 2)[1]
        if any(part in path for part in self.failing_paths):
            if self.failing_times is None or repeat < self.failing_times:
                return self.failing_kind
            return None
        if self.rate <= 0.0:
            return None
        digest = hashlib.sha256(f"{self.seed}|{key}|{repeat}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= self.rate:
            return None
        return self.kinds[digest[8] % len(self.kinds)]


@dataclass
class ServerStats:
    """Counts of requests served and faults injected, by kind. Guarded by ``lock``.

    A stalled response ends when its client closes the connection (``stalls_ended_by_client``)
    or when ``stall_s`` has passed (``stalls_ended_by_server``). A client timeout shorter than
    ``stall_s`` keeps the second count at 0.
    """

    requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    stalls_ended_by_client: int = 0
    stalls_ended_by_server: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultServer(ThreadingHTTPServer):
    """ThreadingHTTPServer over ``root`` with a fault plan that tests may replace at any time."""

    daemon_threads = True
    # Handler threads of stalled responses may still be waiting at shutdown.
    block_on_close = False

    def __init__(self, root: Path, plan: FaultPlan) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.plan = plan
        self.stats = ServerStats()
        self._seen: Counter[str] = Counter()
        self._seen_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def next_fault(self, key: str) -> str | None:
        with self._seen_lock:
            repeat = self._seen[key]
            self._seen[key] += 1
        fault = self.plan.fault_for(key, repeat)
        with self.stats.lock:
            self.stats.requests += 1
            if fault is not None:
                self.stats.faults[fault] += 1
        return fault

    def reset(self, plan: FaultPlan) -> None:
        """Install ``plan`` and forget the requests and faults counted so far."""
        with self._seen_lock:
            self._seen.clear()
        with self.stats.lock:
            self.stats.requests = 0
            self.stats.faults.clear()
            self.stats.stalls_ended_by_client = 0
            self.stats.stalls_ended_by_server = 0
        self.plan = plan

    def record_stall(self, *, ended_by_client: bool) -> None:
        with self.stats.lock:
            if ended_by_client:
                self.stats.stalls_ended_by_client += 1
            else:
                self.stats.stalls_ended_by_server += 1


class _Handler(BaseHTTPRequestHandler):
    server: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output free of one line per request."""

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, *, send_body: bool) -> None:
        path = self._file_path()
        if path is None:
            self._send_status(HTTPStatus.NOT_FOUND)
            return
        data = path.read_bytes()
        byte_range = self.headers.get("Range")
        fault = self.server.next_fault(f"{self.command} {self.path} {byte_range}")
        if fault == "503":
            self._send_status(HTTPStatus.SERVICE_UNAVAILABLE)
            return
        if fault == "stall":
            ended_by_client = self._wait_for_client_close(self.server.plan.stall_s)
            self.server.record_stall(ended_by_client=ended_by_client)
            self.close_connection = True
            return

        span = _parse_range(byte_range, len(data))
        if isinstance(span, str):
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if span is None:
            self.send_response(HTTPStatus.OK)
            body = data
        else:
            start, end = span
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            body = data[start : end + 1]
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Length", str(len(body)))
        if fault == "truncate":
            self.send_header("Connection", "close")
        self.end_headers()
        if not send_body:
            return
        if fault == "truncate":
            # Half the announced bytes, then the connection closes.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _wait_for_client_close(self, limit_s: float) -> bool:
        """Wait until the client closes the connection or ``limit_s`` passes; True if it closed."""
        readable, _, _ = select.select([self.connection], [], [], limit_s)
        if not readable:
            return False
        try:
            data: bytes = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return data == b""

    def _file_path(self) -> Path | None:
        relative = unquote(urlsplit(self.path).path).lstrip("/")
        path = (self.server.root / relative).resolve()
        if not path.is_relative_to(self.server.root) or not path.is_file():
            return None
        return path

    def _send_status(self, status: HTTPStatus) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Return the inclusive (start, end) of a single byte range, None for the whole file.

    A header with several ranges, or one that is not a byte range, gets the whole file, which
    HTTP allows. A range that starts past the end is "unsatisfiable".
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = min(int(last), size)
        return (size - suffix, size - 1) if suffix else "unsatisfiable"
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if end >= start else None


@contextmanager
def serve_folder(root: Path, plan: FaultPlan | None = None) -> Iterator[FaultServer]:
    """Serve ``root`` on a free port of 127.0.0.1 until the block ends."""
    server = FaultServer(root, plan or FaultPlan())
    # A short poll interval lets shutdown() return within 0.05 s instead of 0.5 s.
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="fault-server",
        daemon=True,
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
