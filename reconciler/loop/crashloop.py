"""The crash-loop guard: a domain that keeps stopping when nobody asked is started again
after a growing wait, not at once every time (as controller-runtime's backoff, per name).

The n-th restart in a row waits 1 s, 2 s, 4 s... (up to 5 minutes) from when a pass first
found the domain stopped again; a domain that ran for a while since its last restart starts
over. The record lives in the process: each `--once` starts from zero.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from reconciler.clock import Clock
from reconciler.loop.results import CrashLoop, InstanceResult, Outcome

# restarts after a failure back off: 1 s doubling to 5 minutes, reset after 2 minutes of running
CRASH_LOOP_FIRST_SECONDS = 1.0
CRASH_LOOP_CAP_SECONDS = 300.0
CRASH_LOOP_RESET_SECONDS = 120.0


@dataclass(slots=True)
class _Restarts:
    """The crash-loop record of one instance."""

    count: int  # restarts in a row
    started: float  # monotonic: the last of them
    stop_seen: float | None = None  # monotonic: when a pass first found it stopped again


class CrashLoopGuard:
    """Restarts after stops nobody asked for, in a row, by name (thread-safe)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._restarts: dict[str, _Restarts] = {}
        self._lock = threading.Lock()

    def wait(self, name: str, reason: str) -> InstanceResult | None:
        """A result that holds a restart of `name` (stopped again: `reason`) back; None:
        restart it now."""
        now = self._clock.monotonic()
        with self._lock:
            record = self._restarts.get(name)
            if record is None:
                return None
            if record.stop_seen is None:
                if now - record.started > CRASH_LOOP_RESET_SECONDS:
                    del self._restarts[name]
                    return None
                record.stop_seen = now
            count, seen = record.count, record.stop_seen
        delay = min(CRASH_LOOP_FIRST_SECONDS * 2 ** (count - 1), CRASH_LOOP_CAP_SECONDS)
        remaining = seen + delay - now
        if remaining <= 0:
            return None
        note = (
            f"crash loop: the domain stopped again ({reason}) after {count} restart(s) in a row; "
            f"the next start is in {remaining:.1f}s"
        )
        return InstanceResult(
            name,
            Outcome.UNCHANGED,
            notes=(note,),
            requeue_after=remaining,
            crash_loop=CrashLoop(count, remaining, delay),
        )

    def restarted(self, name: str) -> CrashLoop:
        """Record that `name` was started again after such a stop; the loop as it stands."""
        with self._lock:
            record = self._restarts.get(name)
            count = record.count + 1 if record else 1
            self._restarts[name] = _Restarts(count, self._clock.monotonic())
        return CrashLoop(count)
