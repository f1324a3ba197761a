"""The work queue of instance names (controller-runtime's shape).

Triggers only add a name; workers take one, reconcile it and say how it ended:

- one entry per name: adding a name already waiting merges with it (the earlier time wins);
- a name is never handed to two workers at once: added while being processed, it is marked
  dirty and comes back once the worker is done with it;
- `retry` schedules a name again after a failure, with per-name exponential backoff and
  jitter (1 s doubling to a 5-minute cap by default); `forget` resets it after a success.

Scheduling is apart from blocking: `pop_ready(now)` and `next_due(now)` are plain functions of
the time, so tests drive the queue with a fake clock and never sleep; `get` blocks on them.
"""

from __future__ import annotations

import heapq
import random
import threading
from dataclasses import dataclass

from reconciler.clock import Clock

BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
BACKOFF_JITTER = 0.1  # each delay is stretched by up to 10%, so failures do not march in step


@dataclass(frozen=True, slots=True)
class RetryState:
    """How a name is backing off: failures in a row, and when it comes back."""

    failures: int
    due: float | None  # monotonic time of the next attempt (None: not scheduled)


class WorkQueue:
    """Names waiting to be reconciled, safe to use from any thread."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        backoff_initial: float = BACKOFF_INITIAL_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        jitter: float = BACKOFF_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self._backoff_initial = backoff_initial
        self._backoff_cap = backoff_cap
        self._jitter = jitter
        self._rng = rng or random.Random()
        self._changed = threading.Condition()
        self._due: dict[str, float] = {}  # waiting names and when each is due
        self._heap: list[tuple[float, str]] = []  # (due, name); stale entries skipped
        self._processing: set[str] = set()
        self._dirty: dict[str, float] = {}  # added while processing: due when it is done
        self._failures: dict[str, int] = {}
        self._closed = False

    def add(self, name: str, delay: float = 0.0) -> None:
        """Have `name` reconciled after `delay` seconds (merged with a pending entry)."""
        with self._changed:
            if self._closed:
                return
            due = self.clock.monotonic() + delay
            if name in self._processing:
                self._dirty[name] = min(due, self._dirty.get(name, due))
                return
            self._schedule(name, due)
            self._changed.notify()

    def retry(self, name: str) -> float:
        """Schedule `name` again after a failure; return the delay chosen."""
        with self._changed:
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
        delay = min(self._backoff_cap, self._backoff_initial * 2.0 ** (failures - 1))
        delay *= 1 + self._jitter * self._rng.random()
        self.add(name, delay)
        return delay

    def forget(self, name: str) -> None:
        """Reset `name`'s backoff (it succeeded, or will not be retried)."""
        with self._changed:
            self._failures.pop(name, None)

    def retry_state(self, name: str) -> RetryState:
        with self._changed:
            due = self._due.get(name, self._dirty.get(name))
            return RetryState(self._failures.get(name, 0), due)

    def pop_ready(self, now: float) -> str | None:
        """The earliest name due by `now`, now marked as being processed (None: none due)."""
        with self._changed:
            while self._heap:
                due, name = self._heap[0]
                if self._due.get(name) != due:
                    heapq.heappop(self._heap)  # superseded by an earlier entry
                    continue
                if due > now:
                    return None
                heapq.heappop(self._heap)
                del self._due[name]
                self._processing.add(name)
                return name
            return None

    def next_due(self, now: float) -> float | None:
        """Seconds until the next name is due (0 if one is), None when nothing waits."""
        with self._changed:
            if not self._due:
                return None
            return max(0.0, min(self._due.values()) - now)

    def get(self, timeout: float | None = None) -> str | None:
        """Block until a name is due and take it; None on close or after `timeout` seconds."""
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        with self._changed:
            while not self._closed:
                now = self.clock.monotonic()
                name = self.pop_ready(now)
                if name is not None:
                    return name
                wait = self.next_due(now)
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._changed.wait(wait)
            return None

    def done(self, name: str) -> None:
        """The worker finished `name`; if it was added meanwhile, it is queued again."""
        with self._changed:
            self._processing.discard(name)
            due = self._dirty.pop(name, None)
            if due is not None and not self._closed:
                self._schedule(name, due)
            self._changed.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing waits or is being processed; False after `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: not self.busy, timeout)

    def close(self) -> None:
        """Stop handing out names; blocked `get` calls return None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __len__(self) -> int:
        with self._changed:
            return len(self._due)

    def longest_wait(self, now: float) -> float:
        """How long the name that has been due the longest has waited (0: none is due)."""
        with self._changed:
            earliest = min(self._due.values(), default=now)
            return max(0.0, now - earliest)

    @property
    def busy(self) -> bool:
        """Whether any name waits or is being processed."""
        with self._changed:
            return bool(self._due or self._processing or self._dirty)

    def _schedule(self, name: str, due: float) -> None:
        current = self._due.get(name)
        if current is not None and current <= due:
            return  # already due as early
        self._due[name] = due
        heapq.heappush(self._heap, (due, name))
