"""Waiting for instances to be ready, live or stopped, and checking their health once, in
this process (`--once --wait`, `reconcile wait` and `status` when no daemon runs; with a
daemon the client asks it instead). The probes are those the last pass recorded in each
instance's health.json; the domains are looked up afresh every second."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from reconciler.clock import Clock
from reconciler.drivers.base import Driver
from reconciler.errors import ReconcilerError
from reconciler.health.conditions import Condition, ConditionStatus, ConditionType
from reconciler.health.prober import Prober
from reconciler.health.record import read_health
from reconciler.layout import StateLayout
from reconciler.model.actual import DomainFacts, ObservedDomain, PowerState
from reconciler.planning.addresses import InterfaceAddress

LOOKUP_SECONDS = 1.0
TICK_SECONDS = 0.2


class Want(enum.StrEnum):
    """What `reconcile wait --for` waits for."""

    READY = "ready"
    LIVE = "live"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Health:
    """One instance as checked now."""

    name: str
    state: str  # its power state, or "absent"
    ready: Condition
    live: Condition
    addresses: tuple[InterfaceAddress, ...] = ()

    def satisfies(self, want: Want) -> bool:
        if want is Want.STOPPED:
            return self.state in ("shutoff", "absent")
        condition = self.ready if want is Want.READY else self.live
        return condition.status is ConditionStatus.TRUE

    def why_not(self, want: Want) -> str:
        if want is Want.STOPPED:
            return f"it is {self.state}"
        condition = self.ready if want is Want.READY else self.live
        return f"{condition.reason}: {condition.message}"


class HealthWatch:
    """A prober over some instances of a state directory, fed from fresh lookups."""

    def __init__(self, driver: Driver, layout: StateLayout, clock: Clock | None = None) -> None:
        self._driver = driver
        self._layout = layout
        self._clock = clock or Clock()
        self.prober = Prober(driver, layout, self._clock, record=False)
        self._states: dict[str, str] = {}
        self._recorded: dict[str, dict[ConditionType, Condition]] = {}

    def observe(self, names: Iterable[str]) -> None:
        """Look each name up and tell the prober how it is."""
        for name in names:
            try:
                record = self._driver.lookup(name)
            except ReconcilerError as err:
                self._states[name] = f"unknown ({err})"
                continue
            self.observed(name, record)

    def observed(self, name: str, record: ObservedDomain | None) -> None:
        """Tell the prober how `name` is, from `record` (None: no such domain)."""
        probes, self._recorded[name] = read_health(self._layout.instance(name))
        if record is None:
            self._states[name] = "absent"
            self.prober.watch(name, probes, None, "absent")
            return
        self._states[name] = record.state.value
        machine = None
        if isinstance(record, DomainFacts) and record.state is PowerState.RUNNING:
            machine = record.live_definition or record.definition
        self.prober.watch(name, probes, machine, record.state.value)

    def health(self, name: str) -> Health | None:
        conditions = self.prober.conditions(name)
        if conditions is None:
            return None
        ready, live = (self._since(name, condition) for condition in conditions)
        state = self._states.get(name, "unknown")
        return Health(name, state, ready, live, self.prober.addresses(name))

    def _since(self, name: str, condition: Condition) -> Condition:
        """`condition` with the transition time the health record gives it, when the record
        (the daemon's, or an earlier pass's) has the same status."""
        recorded = self._recorded.get(name, {}).get(condition.type)
        if recorded is None or recorded.status is not condition.status:
            return condition
        return replace(condition, last_transition=recorded.last_transition)

    def check_once(self, records: list[ObservedDomain]) -> dict[str, Health]:
        """Every probe of each domain listed checked once now (its condition is that one
        check's)."""
        for record in records:
            self.observed(record.name, record)
        self.prober.check_all_now()
        names = [record.name for record in records]
        return {name: health for name in names if (health := self.health(name)) is not None}

    def wait(
        self, names: list[str], want: Want, timeout: float, stop: threading.Event | None = None
    ) -> dict[str, str]:
        """Wait until every name satisfies `want`, or `timeout` seconds pass; the names that
        do not, with why (empty: all of them do)."""
        stop = stop or threading.Event()
        clock = self._clock
        deadline = clock.monotonic() + timeout
        next_lookup = 0.0
        while True:
            now = clock.monotonic()
            if now >= next_lookup:
                self.observe(names)
                next_lookup = now + LOOKUP_SECONDS
            self.prober.tick()
            pending = {}
            for name in names:
                health = self.health(name)
                if health is None or not health.satisfies(want):
                    pending[name] = "not observed" if health is None else health.why_not(want)
            if not pending or now >= deadline or clock.wait(stop, TICK_SECONDS):
                return pending

    def close(self) -> None:
        self.prober.close()
