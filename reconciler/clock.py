"""The clock steps and the daemon wait on, injectable so that tests never really sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


def _wait(event: threading.Event, seconds: float) -> bool:
    return event.wait(seconds)


@dataclass(frozen=True, slots=True)
class Clock:
    """Monotonic time, wall time, sleeping, and waiting for an event with a timeout."""

    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    wall: Callable[[], float] = time.time  # seconds since the epoch: what is shown to people
    wait: Callable[[threading.Event, float], bool] = _wait  # True: the event was set
