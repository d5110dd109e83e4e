"""A tiny HTTP upstream that echoes back the request headers it received.

Envoy forwards allowed requests here. The JSON answer lets a test see what the
upstream was actually sent (for instance the identity headers the authorizer
added, and that a client's spoofed copy was replaced rather than appended).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .ports import LOOPBACK
from .process import StartStop


class _EchoHandler(BaseHTTPRequestHandler):
    server: _EchoServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, each answer
    # over a kept-alive connection would wait ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._echo()

    def do_POST(self) -> None:
        self._echo()

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        record = {"method": self.command, "path": self.path, "headers": headers}
        self.server.record(record)

        body = json.dumps(record).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet; the echoed records are the log."""


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _EchoHandler)
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []

    def record(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.records.append(record)


class EchoUpstream(StartStop):
    """Serves on a kernel-chosen loopback port in a background thread.

    Every answer is ``200`` with ``{"method", "path", "headers"}``, where
    ``headers`` maps each lower-cased name to the list of values received.
    """

    def __init__(self) -> None:
        self._server = _EchoServer()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="echo-upstream",
            daemon=True,
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]

        return port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def requests_with(self, header: str, value: str) -> list[dict[str, Any]]:
        """Every received request whose ``header`` had ``value``."""
        with self._server.lock:
            records = list(self._server.records)

        return [r for r in records if value in r["headers"].get(header.lower(), [])]

    def start(self) -> EchoUpstream:
        self._thread.start()

        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
