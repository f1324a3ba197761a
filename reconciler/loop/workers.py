"""Worker threads that take names from the work queue and hand each to a handler.

The queue guarantees that one name is never with two workers at once; the pool only makes
sure that every name taken is given back (`done`), whatever the handler does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from reconciler.loop.queue import WorkQueue

LOG = logging.getLogger(__name__)
DEFAULT_WORKERS = 4  # the daemon's worker threads


class WorkerPool:
    """`count` threads running `handle(name)` for the names the queue hands out."""

    def __init__(
        self, queue: WorkQueue, handle: Callable[[str], None], count: int, prefix: str = "worker"
    ) -> None:
        self._queue = queue
        self._handle = handle
        self._threads = [
            threading.Thread(target=self._work, name=f"{prefix}-{i}", daemon=True)
            for i in range(max(1, count))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            name = self._queue.get()
            if name is None:
                return  # closed
            try:
                self._handle(name)
            except Exception:  # the handler reports its own errors; this is a bug
                LOG.exception("%s: unexpected error in the worker", name)
            finally:
                self._queue.done(name)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the workers to exit (after the queue is closed); False on timeout."""
        deadline = None if timeout is None else self._queue.clock.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - self._queue.clock.monotonic())
            thread.join(left)
            if thread.is_alive():
                return False
        return True

    def drain(self) -> None:
        """Run until the queue is empty and idle, then stop the workers (for --once)."""
        self.start()
        self._queue.wait_idle()
        self._queue.close()
        self.join()
