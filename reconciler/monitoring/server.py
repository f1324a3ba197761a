"""The daemon's HTTP listener (`--metrics-address HOST:PORT`): `/metrics` (Prometheus text
format), `/healthz` (the loop is alive) and `/readyz` (the first full pass is done and the
hypervisor connection is up), as controller-runtime's health probes answer: 200 and `ok`, or
503 and the reason.

The listener is the daemon's least important part: an address in use (or any other reason it
cannot listen) is logged once with what to do, and the daemon goes on reconciling; the
address is tried again every RETRY_SECONDS. It answers GET and HEAD only, on these paths;
requests are read with a timeout, so a client that sends nothing holds one thread a while,
never the daemon.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reconciler.errors import ConfigError
from reconciler.monitoring.metrics import DaemonMetrics

LOG = logging.getLogger(__name__)
RETRY_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 10.0
_ADDRESS = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]*)):(?P<port>\d{1,5})")

# a check: None when it passes, else why not
Check = Callable[[], str | None]


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT ([::1]:PORT for IPv6; an empty host: every address) as the listener's."""
    match = _ADDRESS.fullmatch(text)
    port = int(match.group("port")) if match else 0
    if match is None or not 0 < port < 65536:
        raise ConfigError(
            f"--metrics-address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9177 or [::1]:9177"
        )
    return match.group("v6") or match.group("host") or "", port


class MonitoringServer:
    """/metrics, /healthz and /readyz on one address, in threads of their own."""

    def __init__(
        self, address: tuple[str, int], metrics: DaemonMetrics, healthy: Check, ready: Check
    ) -> None:
        self._address = address
        self._metrics = metrics
        self._healthy = healthy
        self._ready = ready
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None  # why it does not listen (None: it does, or not yet)

    @property
    def shown(self) -> str:
        host, port = self._address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        """Listen now if the address is free; else say why and keep trying in the
        background. Never raises: the daemon does not depend on it."""
        if not self._listen():
            self._thread = threading.Thread(target=self._retry, name="metrics-bind", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()

    def _retry(self) -> None:
        while not self._stop.wait(RETRY_SECONDS):
            if self._listen():
                return

    def _listen(self) -> bool:
        handler = _handler(self._metrics, self._healthy, self._ready)
        try:
            server = _Server(self._address, handler)
        except OSError as err:
            if self.error is None:  # said once, not every retry
                LOG.error(
                    "metrics: cannot listen on %s: %s; the daemon goes on reconciling without "
                    "/metrics, /healthz and /readyz, and tries the address again every %.0fs "
                    "(free it, or choose another with --metrics-address)",
                    self.shown, err.strerror or err, RETRY_SECONDS,
                )  # fmt: skip
            self.error = f"cannot listen on {self.shown}: {err.strerror or err}"
            return False
        self._server, self.error = server, None
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        LOG.info("metrics: serving /metrics, /healthz and /readyz on http://%s/", self.shown)
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


def _handler(metrics: DaemonMetrics, healthy: Check, ready: Check) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_SECONDS
        server_version = "reconciler"
        sys_version = ""

        def log_message(self, *_args: object) -> None:  # scrapes are not news
            pass

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def _answer(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = metrics.exposition()
                status = 200
            elif path in ("/healthz", "/readyz"):
                why = (healthy if path == "/healthz" else ready)()
                status = 200 if why is None else 503
                body = ("ok\n" if why is None else f"{why}\n").encode()
                content_type = "text/plain; charset=utf-8"
            else:
                status, content_type = 404, "text/plain; charset=utf-8"
                body = b"not found: /metrics, /healthz and /readyz are served here\n"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    return Handler
