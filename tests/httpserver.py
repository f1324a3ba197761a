"""A real HTTP server on 127.0.0.1 for tests, which misbehaves on request.

Each served path has a Behaviour: drop the connection part-way, answer 5xx first, stall,
send a wrong body, ignore Range, redirect. The server counts GET requests and full-body
deliveries per path.
"""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Behaviour:
    """How one path is served."""

    body: bytes = b""
    honour_range: bool = True
    fail_first: int = 0  # answer `fail_status` to the first N GETs
    fail_status: int = 500
    drop_after: int | None = None  # close the connection after this many body bytes...
    drop_times: int = 1  # ...this many times
    stall_after: int | None = None  # stop sending after this many bytes, keep the socket open
    stall_seconds: float = 5.0
    stall_times: int = 1  # ...on this many requests
    redirect_to: str | None = None
    status: int = 200
    chunk_delay: float = 0.0  # seconds between 64 KiB chunks (a slow server)
    gets: int = 0
    completed: int = 0
    ranges: list[str] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        behaviour = self.server.paths.get(self.path)
        if behaviour is None or behaviour.redirect_to or behaviour.status != 200:
            self.send_response(404 if behaviour is None else behaviour.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(behaviour.body)))
        self.end_headers()

    def do_GET(self) -> None:
        behaviour = self.server.paths.get(self.path)
        if behaviour is None:
            self._empty(404)
            return
        with self.server.lock:
            behaviour.gets += 1
            attempt = behaviour.gets
            behaviour.ranges.append(self.headers.get("Range", ""))
        if behaviour.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", behaviour.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if behaviour.status != 200:
            self._empty(behaviour.status)
            return
        if attempt <= behaviour.fail_first:
            self._empty(behaviour.fail_status)
            return
        body, start = behaviour.body, 0
        requested = self.headers.get("Range", "")
        if requested.startswith("bytes=") and behaviour.honour_range:
            start = int(requested[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self._send(behaviour, body, start, attempt)

    def _send(self, behaviour: Behaviour, body: bytes, start: int, attempt: int) -> None:
        position = start
        while position < len(body):
            chunk = body[position : position + 65536]
            dropping = behaviour.drop_after is not None and attempt <= behaviour.drop_times
            if dropping and position + len(chunk) > (behaviour.drop_after or 0):
                cut = max(0, (behaviour.drop_after or 0) - position)
                self.wfile.write(chunk[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            stalling = behaviour.stall_after is not None and attempt <= behaviour.stall_times
            if stalling and position >= (behaviour.stall_after or 0):
                self.wfile.flush()
                time.sleep(behaviour.stall_seconds)
                self.close_connection = True
                return
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            position += len(chunk)
            if behaviour.chunk_delay:
                time.sleep(behaviour.chunk_delay)
        with self.server.lock:
            behaviour.completed += 1

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    paths: dict[str, Behaviour]
    lock: threading.Lock


@dataclass
class ImageServer:
    """A running server; `serve(path, behaviour)` publishes a path, `url(path)` names it."""

    server: _Server

    def serve(self, path: str, behaviour: Behaviour) -> Behaviour:
        self.server.paths[path] = behaviour
        return behaviour

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        scheme = "https" if isinstance(self.server.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://{host!s}:{port}{path}"


@contextmanager
def image_server(tls: ssl.SSLContext | None = None) -> Iterator[ImageServer]:
    """A server on 127.0.0.1; with `tls`, it speaks HTTPS."""
    server = _Server(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.paths = {}
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImageServer(server)
    finally:
        server.shutdown()
        server.server_close()
