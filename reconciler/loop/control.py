"""The daemon's control socket: STATE/control.sock, mode 0600, JSON lines.

A client sends one request per line, a JSON object with an "op" ("ping", "status", "plan",
"pass"); the daemon answers with one or more JSON objects, one per line, the last carrying
"done": true. A "pass" streams {"progress": ...} lines before its result. A line that is not
a JSON object, is longer than MAX_REQUEST_BYTES or names an unknown op gets
{"done": true, "error": "..."}; the connection is closed after an oversized line. Nothing a
client sends can stop the daemon: each connection has its own thread, a read timeout, and
every error is answered, never raised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from reconciler.errors import DaemonUnavailable

LOG = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 64 * 1024
IDLE_TIMEOUT_SECONDS = 30.0
MAX_CONNECTIONS = 32

Reply = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], Reply], dict[str, Any]]


class RequestError(Exception):
    """A request the daemon cannot take (answered as an error, never raised further)."""


class ControlServer:
    """Serves the control socket from a thread; `handle(request, reply)` returns the final
    answer (and may call `reply` before, for progress)."""

    def __init__(self, path: Path, handle: Handler) -> None:
        self.path = path
        self._handle = handle
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        server = self

        class _Connection(socketserver.StreamRequestHandler):
            timeout = IDLE_TIMEOUT_SECONDS

            def handle(self) -> None:
                if not server._slots.acquire(blocking=False):
                    _send(self.wfile, {"done": True, "error": "too many connections"})
                    return
                try:
                    server._serve(self.rfile, self.wfile)
                finally:
                    server._slots.release()

        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a socket left by a daemon that died: we hold the state lock
        old_umask = os.umask(0o177)
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(path), _Connection)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="control", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self, rfile: Any, wfile: Any) -> None:
        while True:
            try:
                line = rfile.readline(MAX_REQUEST_BYTES + 1)
            except (TimeoutError, OSError):
                return
            if not line:
                return
            if len(line) > MAX_REQUEST_BYTES:
                _send(wfile, {"done": True, "error": f"request over {MAX_REQUEST_BYTES} bytes"})
                return
            if not line.strip():
                continue
            try:
                _send(wfile, self._answer(line, wfile))
            except OSError:
                return  # the client went away

    def _answer(self, line: bytes, wfile: Any) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise RequestError('a request is a JSON object with an "op"')
            answer = self._handle(request, lambda message: _send(wfile, message))
        except ValueError as err:
            answer = {"error": f"malformed request: {err}"}
        except RequestError as err:
            answer = {"error": str(err)}
        except OSError:
            raise
        except Exception as err:  # a bug in a handler must not take the daemon down
            LOG.exception("control request failed")
            answer = {"error": f"internal error: {type(err).__name__}: {err}"}
        return {**answer, "done": True}


def _send(wfile: Any, message: dict[str, Any]) -> None:
    wfile.write(json.dumps(message).encode() + b"\n")
    wfile.flush()


@contextlib.contextmanager
def _connect(path: Path, timeout: float | None) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        yield sock
    finally:
        sock.close()


def daemon_listening(path: Path) -> bool:
    """Whether a daemon answers on `path` (a stale socket file does not)."""
    try:
        with _connect(path, 2.0) as sock:
            sock.sendall(b'{"op": "ping"}\n')
            return bool(sock.makefile("rb").readline())
    except OSError:
        return False


def request(
    path: Path,
    message: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Send one request and return the final answer; progress lines go to `on_progress`.
    Raises DaemonUnavailable when the daemon cannot be reached or hangs up."""
    try:
        with _connect(path, timeout) as sock:
            sock.sendall(json.dumps(message).encode() + b"\n")
            reader = sock.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    raise DaemonUnavailable(f"daemon on {path}", "it hung up without answering")
                answer = json.loads(line)
                if answer.get("done"):
                    return dict(answer)
                if on_progress is not None:
                    on_progress(answer)
    except (OSError, ValueError) as err:
        raise DaemonUnavailable(f"daemon on {path}", str(err)) from err
