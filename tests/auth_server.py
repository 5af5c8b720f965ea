"""A range-capable file server on 127.0.0.1 that serves only requests with an accepted login.

It serves a folder as :class:`tests.http_server.FaultServer` does (HEAD, GET, byte ranges). A
request whose ``Authorization`` header is not one of ``accepted`` gets 401 with
``WWW-Authenticate``, as a wrong login gets from Earthdata's and DLR's download services.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path

from tests.http_server import FaultPlan, FaultServer, _Handler


def basic_authorization(user: str, password: str) -> str:
    """Return the ``Authorization`` header value of HTTP Basic for ``user`` and ``password``."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {token}"


class AuthServer(FaultServer):
    """FaultServer over ``root`` that requires one of the ``accepted`` Authorization values."""

    def __init__(self, root: Path, accepted: Collection[str]) -> None:
        super().__init__(root, FaultPlan())
        self.RequestHandlerClass = _AuthHandler
        self.accepted = set(accepted)
        self.rejected = 0
        self.served = 0
        self.counts_lock = threading.Lock()


class _AuthHandler(_Handler):
    server: AuthServer

    def _serve(self, *, send_body: bool) -> None:
        if self.headers.get("Authorization") not in self.server.accepted:
            with self.server.counts_lock:
                self.server.rejected += 1
            body = b"401 Unauthorized\n"
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Basic realm="test", Bearer')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
            return
        with self.server.counts_lock:
            self.server.served += 1
        super()._serve(send_body=send_body)


@contextmanager
def serve_with_auth(root: Path, accepted: Collection[str]) -> Iterator[AuthServer]:
    """Serve ``root`` on a free port of 127.0.0.1 to requests with an accepted login."""
    server = AuthServer(root, accepted)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="auth-server",
        daemon=True,
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
