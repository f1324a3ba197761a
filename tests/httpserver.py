"""A real HTTP server on 127.0.0.1 for tests, which misbehaves on request, and a proxy.

Each served path has a Behaviour: drop the connection part-way, answer 5xx first, stall,
send a wrong body, ignore Range, redirect. The server counts GET requests and full-body
deliveries per path. The proxy forwards plain HTTP and tunnels HTTPS (CONNECT), or refuses;
it only ever connects to 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


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


class QuietHTTPServer(http.server.ThreadingHTTPServer):
    """A test HTTP server that takes a client hanging up (an abandoned download, a retry) as
    the ordinary event it is in these tests, not as an error with a traceback on the
    terminal."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionResetError | BrokenPipeError):
            return
        super().handle_error(request, client_address)


class _Server(QuietHTTPServer):
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

    def served(self, path: str) -> Behaviour:
        """What `path` is served with (its counts of requests included)."""
        return self.server.paths[path]

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


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """Forwards absolute-form GET/HEAD and tunnels CONNECT, only ever to 127.0.0.1."""

    server: _ProxyServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:
        pass

    def _refused(self) -> bool:
        with self.server.lock:
            self.server.requests.append(f"{self.command} {self.path}")
        if self.server.mode == "refuse":
            self._answer(403)
            return True
        if self.server.mode == "auth" and (
            self.headers.get("Proxy-Authorization") != self.server.expected_authorization
        ):
            self._answer(407, {"Proxy-Authenticate": 'Basic realm="test"'})
            return True
        return False

    def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_CONNECT(self) -> None:
        if self._refused():
            return
        host, _, port = self.path.rpartition(":")
        if host != "127.0.0.1":
            self._answer(403)
            return
        upstream = socket.create_connection((host, int(port)), timeout=10)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        _relay(self.connection, upstream)
        self.close_connection = True

    def do_GET(self) -> None:
        if self._refused():
            return
        target = urlsplit(self.path)
        if target.hostname != "127.0.0.1":
            self._answer(403)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        forwarded = {k: v for k, v in self.headers.items() if not k.lower().startswith("proxy-")}
        upstream.request(self.command, path, headers=forwarded)
        response = upstream.getresponse()
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "transfer-encoding"):
                self.send_header(name, value)
        self.end_headers()
        while chunk := response.read(65536):
            self.wfile.write(chunk)
        upstream.close()

    do_HEAD = do_GET


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [client, upstream]
    try:
        while True:
            readable, _, _ = select.select(sockets, [], [], 10)
            if not readable:
                return
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                (upstream if source is client else client).sendall(data)
    except OSError:
        return
    finally:
        upstream.close()


class _ProxyServer(QuietHTTPServer):
    daemon_threads = True
    mode: str
    expected_authorization: str
    requests: list[str]
    lock: threading.Lock


@dataclass
class ProxyServer:
    """A running proxy; `requests` lists what it was asked ("GET http://...", "CONNECT h:p")."""

    server: _ProxyServer

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[str]:
        return list(self.server.requests)


@contextmanager
def proxy_server(mode: str = "forward", credentials: str = "") -> Iterator[ProxyServer]:
    """A proxy on 127.0.0.1: "forward" carries everything, "refuse" answers 403, "auth" wants
    Basic `credentials` (user:password) and answers 407 without them."""
    server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
    server.mode = mode
    server.expected_authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
    server.requests = []
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ProxyServer(server)
    finally:
        server.shutdown()
        server.server_close()


def make_test_ca(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA made here, and a server TLS context whose certificate (for 127.0.0.1) it signed.
    Returns the CA certificate's path and the context."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, request, cert = (
        directory / "server.key",
        directory / "server.csr",
        directory / "server.pem",
    )
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=reconciler test CA", "-keyout", str(ca_key), "-out", str(ca_cert))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(key), "-out", str(request))  # fmt: skip
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(extensions),
            "-out", str(cert))  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return ca_cert, context
