"""The prober: runs the readiness and liveness probes of every running instance it is told
about, each when due, a few at a time, and keeps each instance's Ready and Live conditions
and observed addresses. The daemon ticks it from a thread of its own; `--once --wait`,
`reconcile wait` and `status` without a daemon drive it from theirs.

An instance is watched from when it is seen running (`watch`): its probes start over then
(initialDelaySeconds counts from there) and whenever it is seen starting again (`restarted`).
A change of a condition's status is reported to `on_change` (from a prober thread).

Each instance's probes and conditions are also kept in its `health.json` (see
health.record), so that `status` in another process knows them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from reconciler.clock import Clock
from reconciler.drivers.base import Driver
from reconciler.errors import ReconcilerError
from reconciler.health.addresses import observe_addresses
from reconciler.health.checks import ConsoleFollower, Target, check
from reconciler.health.conditions import (
    Condition,
    ConditionStatus,
    ConditionType,
    ProbeResult,
    ProbeTracker,
    without_probe,
)
from reconciler.health.record import read_health, write_health
from reconciler.layout import StateLayout
from reconciler.model.desired import ProbeSpec
from reconciler.model.machine import Machine
from reconciler.planning.addresses import InterfaceAddress, first_address

LOG = logging.getLogger("reconciler.health")
DEFAULT_WORKERS = 4
ADDRESS_REFRESH_SECONDS = 10.0
TICK_SECONDS = 0.2

ChangeCallback = Callable[[str, ConditionType, Condition], None]
Probes = dict[ConditionType, ProbeSpec | None]


@dataclass(slots=True)
class _Watched:
    """One instance the prober knows: its probes, as it runs, and what they found."""

    name: str
    machine: Machine | None  # as it runs (None: not running)
    state: str  # its power state, in words
    trackers: dict[ConditionType, ProbeTracker | None]
    plain: dict[ConditionType, Condition]  # the conditions of a probe it does not have
    console: ConsoleFollower
    probes: dict[ConditionType, ProbeSpec | None] = field(default_factory=dict)
    addresses: tuple[InterfaceAddress, ...] = ()
    addresses_due: float = 0.0
    in_flight: set[ConditionType | str] = field(default_factory=set)
    boot_seen: float = 0.0  # wall time when this boot was first seen running
    saved: object = None  # the probes and conditions its health.json was last given

    def condition(self, kind: ConditionType) -> Condition:
        tracker = self.trackers.get(kind)
        return tracker.condition if tracker is not None else self.plain[kind]


class Prober:
    """The probes of the instances it watches (thread-safe)."""

    def __init__(
        self,
        driver: Driver,
        layout: StateLayout,
        clock: Clock | None = None,
        on_change: ChangeCallback | None = None,
        workers: int = DEFAULT_WORKERS,
        record: bool = True,
    ) -> None:
        self._record = record  # keep each instance's health.json (the daemon's prober does)
        self._driver = driver
        self._layout = layout
        self._clock = clock or Clock()
        self._on_change = on_change or (lambda _name, _kind, _condition: None)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}

    # -- what is watched -----------------------------------------------------------------------

    def watch(
        self,
        name: str,
        probes: Probes,
        machine: Machine | None,
        state: str,
    ) -> None:
        """Tell the prober how `name` is now: its probes, its machine as it runs (None: not
        running) and its power state. Probes start over when it was not running before, or
        when they changed."""
        now, wall = self._clock.monotonic(), self._clock.wall()
        with self._lock:
            known = name in self._watched
        # first seen by this process: a status that has not changed since the last one
        # recorded it (the daemon restarted) keeps the time of its transition
        recorded = {} if known or not self._record else read_health(self._layout.instance(name))[1]
        with self._lock:
            old = self._watched.get(name)
            running = machine is not None
            plain = {kind: without_probe(kind, running, state, wall) for kind in ConditionType}
            earlier = recorded if old is None else old.plain
            plain = {
                kind: earlier[kind].moved(c.status, c.reason, c.message, wall)
                if kind in earlier
                else c
                for kind, c in plain.items()
            }
            fresh = old is None or old.machine is None or not running
            if old is not None and not fresh and _probes_of(old) == _complete(probes):
                old.machine, old.state, old.plain = machine, state, plain
                return
            trackers: dict[ConditionType, ProbeTracker | None] = {}
            for kind in ConditionType:
                spec = probes.get(kind)
                trackers[kind] = (
                    ProbeTracker.begin(spec, kind, now, wall)
                    if spec is not None and running
                    else None
                )
            console = ConsoleFollower(self._layout.instance(name).console_log)
            self._watched[name] = _Watched(
                name, machine, state, trackers, plain, console, _complete(probes),
                boot_seen=wall if fresh or old is None else old.boot_seen,
                saved=None if old is None else old.saved,
            )  # fmt: skip
            if old is not None:
                for kind in ConditionType:  # a status kept keeps its transition time
                    tracker = trackers[kind]
                    before = old.condition(kind)
                    if tracker is not None and tracker.condition.status is before.status:
                        tracker.condition = tracker.condition.moved(
                            before.status, tracker.condition.reason, tracker.condition.message,
                            before.last_transition,
                        )  # fmt: skip
        self._changed(name, old)

    def restarted(self, name: str, reboot: bool = False) -> None:
        """`name` was seen starting again (a new boot): its probes start over. A `reboot`
        keeps its QEMU and so its console log: what the earlier boots wrote there (cloud-init
        finished, once) is not read again."""
        with self._lock:
            watched = self._watched.get(name)
            if watched is None or watched.machine is None:
                return
            machine, state = watched.machine, watched.state
            probes = _probes_of(watched)
            watched.machine = None  # seen stopped: watch() starts over
        self.watch(name, probes, machine, state)
        if reboot:
            with self._lock:
                current = self._watched.get(name)
                if current is not None:
                    current.console.skip_to_end()

    def forget(self, name: str) -> None:
        with self._lock:
            self._watched.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._watched)

    # -- what they found -----------------------------------------------------------------------

    def conditions(self, name: str) -> tuple[Condition, Condition] | None:
        """(Ready, Live) of `name` (None: not watched)."""
        with self._lock:
            watched = self._watched.get(name)
            if watched is None:
                return None
            return watched.condition(ConditionType.READY), watched.condition(ConditionType.LIVE)

    def ready_since(self, name: str) -> float | None:
        """The wall time since which `name` has been ready in its current boot (None: it is
        not ready, or not watched): a ready condition kept from an earlier boot counts from
        when this boot was seen."""
        with self._lock:
            watched = self._watched.get(name)
            if watched is None or watched.machine is None:
                return None
            ready = watched.condition(ConditionType.READY)
            if ready.status is not ConditionStatus.TRUE:
                return None
            return max(ready.last_transition, watched.boot_seen)

    def knows_readiness(self, name: str) -> bool:
        """Whether the prober can say if `name` is ready: it is watched, and either does not
        run or its readiness has been checked in this boot (a prober just started knows
        nothing of an instance yet: that is not "not ready")."""
        with self._lock:
            watched = self._watched.get(name)
            if watched is None:
                return False
            tracker = watched.trackers.get(ConditionType.READY)
            # no probe: running is ready; a probe: known once it has been checked
            return watched.machine is None or tracker is None or tracker.checks > 0

    def liveness_failure(self, name: str) -> str | None:
        """Why `name`'s liveness probe fails past its threshold (None: it does not)."""
        with self._lock:
            watched = self._watched.get(name)
            tracker = None if watched is None else watched.trackers.get(ConditionType.LIVE)
            if tracker is None or tracker.condition.status is not ConditionStatus.FALSE:
                return None
            return tracker.condition.message

    def addresses(self, name: str) -> tuple[InterfaceAddress, ...]:
        with self._lock:
            watched = self._watched.get(name)
            return () if watched is None else watched.addresses

    # -- checking ------------------------------------------------------------------------------

    def tick(self) -> list[Future[None]]:
        """Start every check that is due now (each in a pool thread); their futures."""
        now = self._clock.monotonic()
        started: list[Future[None]] = []
        with self._lock:
            for watched in self._watched.values():
                if watched.machine is None:
                    continue
                if "addresses" not in watched.in_flight and now >= watched.addresses_due:
                    watched.in_flight.add("addresses")
                    watched.addresses_due = now + ADDRESS_REFRESH_SECONDS
                    started.append(self._pool.submit(self._refresh_addresses, watched.name))
                for kind, tracker in watched.trackers.items():
                    if tracker is not None and kind not in watched.in_flight and tracker.due(now):
                        watched.in_flight.add(kind)
                        started.append(self._pool.submit(self._check, watched.name, kind))
        return started

    def check_all_now(self) -> None:
        """Check every probe of every running instance once, now, and let that one check set
        its condition, whatever the thresholds (status without a daemon)."""
        with self._lock:
            for watched in self._watched.values():
                for tracker in watched.trackers.values():
                    if tracker is not None:
                        tracker.next_due = 0.0
                        tracker.spec = _single_check(tracker.spec)
        for future in self.tick():
            future.result()

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set (the daemon's prober thread)."""
        while not self._clock.wait(stop, TICK_SECONDS):
            self.tick()
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _target(self, name: str) -> Target | None:
        with self._lock:
            watched = self._watched.get(name)
            if watched is None or watched.machine is None:
                return None
            known = watched.addresses
            return Target(
                name,
                watched.machine,
                self._driver,
                watched.console,
                lambda mac: first_address(known, mac),
            )

    def _check(self, name: str, kind: ConditionType) -> None:
        try:
            target = self._target(name)
            with self._lock:
                watched = self._watched.get(name)
                tracker = None if watched is None else watched.trackers.get(kind)
            if target is None or tracker is None:
                return
            try:
                result = check(tracker.spec, target)
            except Exception as err:  # a bug in a check must not stop the others
                LOG.exception("%s: %s probe", name, kind)
                result = ProbeResult(False, f"internal error: {type(err).__name__}")
            with self._lock:
                current = self._watched.get(name)
                if (
                    current is None
                    or current is not watched
                    or current.trackers.get(kind) is not tracker
                ):
                    return  # started over meanwhile: this result is of another boot
                changed = tracker.record(result, self._clock.monotonic(), self._clock.wall())
                condition = tracker.condition
            if changed:
                LOG.info("%s: %s %s (%s)", name, kind, condition.status, condition.message)
                self._on_change(name, kind, condition)
                self._save(name)
        finally:
            with self._lock:
                watched = self._watched.get(name)
                if watched is not None:
                    watched.in_flight.discard(kind)

    def _refresh_addresses(self, name: str) -> None:
        try:
            target = self._target(name)
            if target is None:
                return
            try:
                found = observe_addresses(self._driver, name, target.machine)
            except ReconcilerError:
                return
            with self._lock:
                watched = self._watched.get(name)
                if watched is not None:
                    watched.addresses = found
        finally:
            with self._lock:
                watched = self._watched.get(name)
                if watched is not None:
                    watched.in_flight.discard("addresses")

    def _changed(self, name: str, old: _Watched | None) -> None:
        """After watch(): report the conditions whose status moved, and save them."""
        conditions = self.conditions(name)
        if conditions is None:
            return
        for condition in conditions:
            before = None if old is None else old.condition(condition.type)
            if before is None or before.status is not condition.status:
                self._on_change(name, condition.type, condition)
        self._save(name)

    def _save(self, name: str) -> None:
        if not self._record:
            return
        with self._lock:
            watched = self._watched.get(name)
            if watched is None:
                return
            probes = _probes_of(watched)
            conditions = [watched.condition(kind) for kind in ConditionType]
            if watched.saved == (probes, conditions):
                return  # told again what it knew: the file says it already
        try:
            kept = write_health(self._layout.instance(name), probes, conditions)
        except OSError as err:
            LOG.warning("%s: cannot record its health: %s", name, err)
            return
        if kept:  # (no directory: written once there is one again)
            with self._lock:
                watched.saved = (probes, conditions)


def _single_check(spec: ProbeSpec) -> ProbeSpec:
    return replace(spec, initial_delay_seconds=0, success_threshold=1, failure_threshold=1)


def _complete(probes: Probes) -> Probes:
    return {kind: probes.get(kind) for kind in ConditionType}


def _probes_of(watched: _Watched) -> Probes:
    """The probes `watched` has (those of a domain not running included: kept aside)."""
    return _complete(watched.probes)
