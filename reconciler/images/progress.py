"""Download progress for people: a bar with rate and ETA on a terminal; otherwise an INFO log
line every 10 s without the bar (the CLI keeps this logger's INFO visible by default)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from reconciler.images.download import TransferCallback
from reconciler.sizes import format_size

LOG = logging.getLogger(__name__)
LOG_INTERVAL_SECONDS = 10.0
DRAW_INTERVAL_SECONDS = 0.2
BAR_WIDTH = 24


class TransferReporter:
    """Reports each running transfer; safe to use from several threads."""

    def __init__(self, stream: TextIO | None = None, clock: object = time.monotonic) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def start(self, name: str) -> TransferCallback:
        """A callback for one transfer named `name`."""
        with self._lock:
            self._started[name] = time.monotonic()
            self._last[name] = 0.0

        def report(received: int, total: int | None) -> None:
            self._report(name, received, total)

        return report

    def finish(self, name: str) -> None:
        with self._lock:
            self._started.pop(name, None)
            self._last.pop(name, None)
            if self._tty:
                self._stream.write("\r\033[K")
                self._stream.flush()

    def _report(self, name: str, received: int, total: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            started = self._started.get(name, now)
            interval = DRAW_INTERVAL_SECONDS if self._tty else LOG_INTERVAL_SECONDS
            done = total is not None and received >= total
            if now - self._last.get(name, 0.0) < interval and not done:
                return
            self._last[name] = now
            line = render_transfer(name, received, total, max(now - started, 1e-6), self._tty)
            if self._tty:
                self._stream.write("\r\033[K" + line)
                self._stream.flush()
            else:
                LOG.info("%s", line)


def render_transfer(
    name: str, received: int, total: int | None, elapsed: float, bar: bool = True
) -> str:
    """`NAME [#####     ] 45% 120.0MiB of 1GiB, 80.0MiB/s, ETA 6s` (without the bracketed bar
    when `bar` is false)."""
    rate = received / elapsed
    if total:
        fraction = min(received / total, 1.0)
        filled = int(fraction * BAR_WIDTH)
        eta = (total - received) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        drawn = f" [{'#' * filled}{' ' * (BAR_WIDTH - filled)}]" if bar else ""
        return (
            f"{name}{drawn} {fraction:4.0%} "
            f"{format_size(received)} of {format_size(total)}, {format_size(int(rate))}/s, "
            f"ETA {eta_text}"
        )
    return f"{name} {format_size(received)}, {format_size(int(rate))}/s"
