"""The daemon's status file, written soon after a change and paced: at most every
STATUS_WRITE_SECONDS however many instances finish meanwhile (written after each of 1,000
instances, the file of 1,000 entries made a full pass quadratic: 76 s), and a large file less
often, so that writing it never takes more than a fifth of the daemon's time."""

from __future__ import annotations

import logging
import threading

from reconciler.clock import Clock
from reconciler.loop.status import StatusBook

LOG = logging.getLogger("reconciler.daemon")
STATUS_WRITE_SECONDS = 0.25  # the status file: at most four writes a second
STATUS_WRITE_SHARE = 4.0  # and a pause of at least four times as long as the last write took


class StatusWriter:
    """Writes `book` to its file: `soon()` from anywhere, `now()` at the end."""

    def __init__(self, book: StatusBook, clock: Clock) -> None:
        self._book = book
        self._clock = clock
        self._dirty = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._write_lock = threading.Lock()

    def soon(self) -> None:
        """Have the file written within STATUS_WRITE_SECONDS (by the writer thread)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_paced, name="status-writer", daemon=True
                )
                self._thread.start()
        self._dirty.set()

    def now(self) -> None:
        """Write the file in this thread. One write (snapshot, then file) at a time: the
        writer thread's older snapshot must never land after the final one written at
        shutdown."""
        with self._write_lock:
            try:
                self._book.write()
            except OSError as err:  # a full disk must not stop the controller
                LOG.warning("cannot write the status file: %s", err)

    def _write_paced(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            started = self._clock.monotonic()
            self.now()
            took = self._clock.monotonic() - started
            self._clock.sleep(max(STATUS_WRITE_SECONDS, STATUS_WRITE_SHARE * took))
