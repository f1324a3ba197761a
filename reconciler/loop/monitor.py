"""The daemon's side of monitoring: what its metrics read (monitoring.metrics), its liveness
and readiness (monitoring.server's /healthz and /readyz, and systemd's watchdog), and the
counters a reconcile moves.

Liveness is the loop going round: the controller's loop ticks at least once a second, and a
tick older than STALE_SECONDS means it is wedged. Readiness: the first full pass is done and
the hypervisor connection is up. The same liveness feeds systemd's watchdog (WATCHDOG=1 on
each tick while it holds, when the unit sets WatchdogSec=).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Set
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.images.download import TOTALS
from reconciler.loop.names import Trigger
from reconciler.loop.results import InstanceResult
from reconciler.monitoring.metrics import DaemonMetrics, DaemonView, GitView, InstanceView
from reconciler.monitoring.server import MonitoringServer

if TYPE_CHECKING:
    from reconciler.loop.controller import Controller

LOG = logging.getLogger(__name__)
STALE_SECONDS = 30.0  # $RECONCILER_HEALTHZ_STALE_SECONDS overrides it
WATCHDOG_EVERY_SECONDS = 5.0
# a test hook: while the file this names exists, the loop stands still (a wedged loop)
ENV_WEDGE = "RECONCILER_TEST_WEDGE_FILE"
# which trigger a reconcile is counted under when several asked for it: the most specific
_TRIGGER_ORDER = [
    Trigger.REQUEST, Trigger.MANIFEST, Trigger.GIT, Trigger.RELOAD, Trigger.PROBE,
    Trigger.ROLLOUT, Trigger.SCHEDULE, Trigger.EVENT, Trigger.TRANSITION, Trigger.RECONNECT,
    Trigger.START, Trigger.RESYNC,
]  # fmt: skip


class DaemonMonitor:
    def __init__(self, controller: Controller, address: tuple[str, int] | None) -> None:
        self._controller = controller
        self._tick = time.monotonic()
        self._watchdog_sent = 0.0
        self._first_pass = False
        self._stale = float(os.environ.get("RECONCILER_HEALTHZ_STALE_SECONDS") or STALE_SECONDS)
        self.metrics = DaemonMetrics(self.view)
        self.server = (
            None
            if address is None
            else MonitoringServer(address, self.metrics, self.unhealthy, self.unready)
        )

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def tick(self) -> None:
        """The loop went round (and, under the test hook, stands still first)."""
        wedge = os.environ.get(ENV_WEDGE)
        while wedge and os.path.exists(wedge):
            time.sleep(0.2)
        now = time.monotonic()
        self._tick = now
        every = _watchdog_every()
        if every is not None and now - self._watchdog_sent >= every:
            from reconciler.loop.controller import notify_systemd

            notify_systemd("WATCHDOG=1")
            self._watchdog_sent = now

    def first_pass_done(self) -> None:
        self._first_pass = True

    def reconciled(self, result: InstanceResult, triggers: Set[str]) -> None:
        trigger = next((t.value for t in _TRIGGER_ORDER if t.value in triggers), "request")
        failure = result.failure.value if result.failure is not None else None
        self.metrics.reconciled(result.outcome.value, trigger, result.seconds, failure)

    def unhealthy(self) -> str | None:
        """Why the daemon is not alive (None: it is)."""
        age = time.monotonic() - self._tick
        if age > self._stale:
            return f"the loop has not gone round for {age:.0f}s"
        return None

    def unready(self) -> str | None:
        """Why the daemon is not ready (None: it is)."""
        if not self._first_pass:
            return "the first pass over every instance is not done"
        if not self._controller.driver.connected():
            return f"the connection to {self._controller.driver.uri} is lost"
        return None

    def view(self) -> DaemonView:
        controller = self._controller
        rows, manifest_errors = controller.status.metrics_rows()
        cache_bytes, cache_entries = _cache_size(controller.state.images)
        source = controller.options.git
        git = None
        if source is not None:
            state = source.state
            git = GitView(state.applied_time, state.newest_time, state.current_at,
                          state.refused is not None)  # fmt: skip
        return DaemonView(
            instances=tuple(InstanceView(*row) for row in rows),
            queue_depth=len(controller.queue),
            queue_longest_wait=controller.queue.longest_wait(controller.clock.monotonic()),
            connected=controller.driver.connected(),
            first_pass_done=self._first_pass,
            cache_bytes=cache_bytes,
            cache_entries=cache_entries,
            download_bytes=TOTALS.received,
            download_failures=TOTALS.failed,
            manifest_errors=manifest_errors,
            git=git,
            loop_tick_age=time.monotonic() - self._tick,
        )


def _watchdog_every() -> float | None:
    """How often to send WATCHDOG=1: when systemd asks for it (WatchdogSec= sets
    $WATCHDOG_USEC, for this process: $WATCHDOG_PID), at most half its period; None when it
    does not."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return min(WATCHDOG_EVERY_SECONDS, int(usec) / 2e6)


def _cache_size(images: Path) -> tuple[int, int]:
    """Bytes and count of the cached bases (STATE/images/sha256-*)."""
    total = count = 0
    try:
        with os.scandir(images) as entries:
            for entry in entries:
                if entry.name.startswith("sha256-") and not entry.name.endswith(".lock"):
                    try:
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                        count += 1
                    except OSError:
                        continue
    except OSError:
        return 0, 0
    return total, count
