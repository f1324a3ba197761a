"""The work queue: merging, single flight, backoff growth and cap, with a fake clock."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import pytest

from reconciler.clock import Clock
from reconciler.loop.queue import WorkQueue


@dataclass
class FakeClock:
    now: float = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, sleep=self.advance)


def queue_with_fake_clock(
    *, jitter: float = 0.0, backoff_cap: float = 300.0, rng: random.Random | None = None
) -> tuple[WorkQueue, FakeClock]:
    fake = FakeClock()
    return WorkQueue(fake.clock(), jitter=jitter, backoff_cap=backoff_cap, rng=rng), fake


def test_a_name_added_twice_is_reconciled_once() -> None:
    queue, fake = queue_with_fake_clock()
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert queue.pop_ready(fake.now) == "a"
    assert queue.pop_ready(fake.now) == "b"
    assert queue.pop_ready(fake.now) is None


def test_a_name_is_never_handed_out_twice_at_once() -> None:
    queue, fake = queue_with_fake_clock()
    queue.add("a")
    assert queue.pop_ready(fake.now) == "a"
    queue.add("a")  # e.g. an event while it is being reconciled
    queue.add("a")
    assert queue.pop_ready(fake.now) is None
    queue.done("a")
    assert queue.pop_ready(fake.now) == "a"  # once more, and only once
    queue.done("a")
    assert queue.pop_ready(fake.now) is None
    assert not queue.busy


def test_delayed_names_come_due_and_the_earlier_time_wins() -> None:
    queue, fake = queue_with_fake_clock()
    queue.add("a", delay=10)
    assert queue.pop_ready(fake.now) is None
    assert queue.next_due(fake.now) == 10
    queue.add("a", delay=3)  # earlier: wins
    queue.add("a", delay=30)  # later: merged into the earlier
    assert queue.next_due(fake.now) == 3
    fake.advance(3)
    assert queue.pop_ready(fake.now) == "a"
    assert queue.next_due(fake.now) is None


def test_backoff_doubles_from_one_second_to_the_cap_and_resets_on_success() -> None:
    queue, fake = queue_with_fake_clock()
    delays = []
    for _ in range(12):
        queue.add("a")
        assert queue.pop_ready(fake.now) == "a"
        delays.append(queue.retry("a"))  # the reconcile failed
        queue.done("a")
        assert queue.retry_state("a").due == pytest.approx(fake.now + delays[-1])
        fake.advance(delays[-1])
        assert queue.pop_ready(fake.now) == "a"
        queue.done("a")
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert queue.retry_state("a").failures == 12
    queue.forget("a")  # it succeeded
    assert queue.retry("a") == 1


def test_jitter_stretches_each_delay_by_at_most_a_tenth() -> None:
    fake = FakeClock()
    queue = WorkQueue(fake.clock(), rng=random.Random(7))
    delays = [queue.retry(f"n{i}") for i in range(50)]
    assert all(1.0 <= delay <= 1.1 for delay in delays)
    assert len(set(delays)) > 40  # they do not march in step


def test_a_trigger_during_backoff_brings_the_name_back_at_once() -> None:
    queue, fake = queue_with_fake_clock()
    queue.add("a")
    assert queue.pop_ready(fake.now) == "a"
    for _ in range(5):
        queue.retry("a")  # failing repeatedly: due in 16 s
    queue.add("a")  # the manifest changed meanwhile
    queue.done("a")
    assert queue.pop_ready(fake.now) == "a"


def test_a_name_not_retried_is_not_scheduled_again() -> None:
    queue, fake = queue_with_fake_clock()
    queue.add("a")
    assert queue.pop_ready(fake.now) == "a"
    queue.forget("a")  # a permanent error: waits for its manifest or source to change
    queue.done("a")
    fake.advance(3600)
    assert queue.pop_ready(fake.now) is None and not queue.busy


def test_get_blocks_until_due_and_returns_none_when_closed() -> None:
    queue = WorkQueue()
    assert queue.get(timeout=0.01) is None
    queue.add("a", delay=0.05)
    assert queue.get(timeout=5) == "a"
    waiter: list[str | None] = []
    thread = threading.Thread(target=lambda: waiter.append(queue.get()))
    thread.start()
    queue.close()
    thread.join(5)
    assert waiter == [None]


def test_workers_never_hold_the_same_name_at_once() -> None:
    queue = WorkQueue()
    names = [f"n{i % 7}" for i in range(200)]
    holding: set[str] = set()
    lock = threading.Lock()
    overlaps: list[str] = []
    handled: list[str] = []

    def work() -> None:
        while (name := queue.get(timeout=0.5)) is not None:
            with lock:
                if name in holding:
                    overlaps.append(name)
                holding.add(name)
            for _ in range(1000):
                pass
            with lock:
                holding.discard(name)
                handled.append(name)
            queue.done(name)

    workers = [threading.Thread(target=work) for _ in range(4)]
    for worker in workers:
        worker.start()
    for name in names:
        queue.add(name)
    for worker in workers:
        worker.join(10)
    assert overlaps == []
    assert set(handled) == set(names)
    assert not queue.busy
