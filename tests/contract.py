"""The seam's contract: one scenario every driver is held to, in the seam's own vocabulary
(power states, StateReason, events that say whether they may echo our own step).

Run against the fake driver in the unit tests, libvirt's test:/// driver in integration, and
the embedded libvirt driver and the QMP driver on real QEMU in e2e: define, list, start, a
shutdown request (which a guest may ignore), a forced stop, a crash of the emulator (where the
test can cause one), undefine; the states and reasons after each, and the events seen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.drivers.base import DomainEvent, Driver
from reconciler.model.actual import DomainFacts, PowerState, StateReason
from reconciler.model.machine import Machine
from tests.helpers import poll

# what a crash of the emulator may read as, by driver: a stop nobody asked for, a failure
CRASH_REASONS = {StateReason.CRASHED, StateReason.FAILED, StateReason.UNKNOWN}


@dataclass
class Seen:
    """The events a driver delivered, from its own threads."""

    events: list[DomainEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: DomainEvent) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, name: str) -> list[DomainEvent]:
        with self.lock:
            return [event for event in self.events if event.name == name]

    def has(self, name: str, detail: str) -> bool:
        return any(event.detail.startswith(detail) for event in self.of(name))


def exercise(
    driver: Driver,
    machine: Machine,
    *,
    crash: Callable[[str], None] | None = None,
    timeout: float = 60.0,
) -> Seen:
    """Take `machine` through the scenario on `driver`, asserting the contract at each step;
    the events seen (the caller may assert more)."""
    name = machine.name
    seen = Seen()
    driver.watch(seen.add, lambda _reason: None)

    def record() -> DomainFacts:
        found = driver.lookup(name)
        assert isinstance(found, DomainFacts), f"{name}: {found}"
        return found

    def reaches(state: PowerState, what: str) -> DomainFacts:
        def there() -> DomainFacts | None:
            found = record()
            return found if found.state is state else None

        return poll(there, timeout, what)

    def expect_event(detail: str) -> None:
        poll(lambda: seen.has(name, detail), timeout, f"the {detail} event of {name}")

    assert driver.lookup(name) is None
    driver.define(machine)
    defined = record()
    assert defined.state is PowerState.SHUTOFF and isinstance(defined.state_reason, StateReason)
    assert defined.definition is not None and defined.definition.name == name
    assert defined.definition.vcpus == machine.vcpus
    assert defined.definition.memory_kib == machine.memory_kib
    assert name in {listed.name for listed in driver.list_domains()}

    driver.start(name)
    running = reaches(PowerState.RUNNING, f"{name} to run")
    assert running.state_reason is StateReason.BOOTED, running.state_reason

    assert driver.request_shutdown(name) is True  # asked: the guest may or may not listen
    if record().state.active:
        driver.force_stop(name)
    stopped = reaches(PowerState.SHUTOFF, f"{name} to stop")
    assert stopped.state_reason in (StateReason.DESTROYED, StateReason.SHUTDOWN)
    assert driver.request_shutdown(name) is False  # nothing to ask of a stopped domain

    if crash is not None:
        driver.start(name)
        reaches(PowerState.RUNNING, f"{name} to run again")
        crash(name)
        crashed = reaches(PowerState.SHUTOFF, f"{name} to be seen dead")
        assert crashed.state_reason in CRASH_REASONS, crashed.state_reason
        poll(
            lambda: any(not e.may_echo_a_step for e in seen.of(name)),
            timeout,
            f"an event of {name}'s crash (one that no step of ours causes)",
        )

    driver.undefine(name)
    assert driver.lookup(name) is None
    assert name not in {listed.name for listed in driver.list_domains()}
    # our own steps' events read as their echo
    for detail in ("defined", "started", "undefined"):
        expect_event(detail)
    for event in seen.of(name):
        if event.detail.startswith(("defined", "started", "undefined", "stopped: destroyed")):
            assert event.may_echo_a_step, event
    return seen
