"""An in-memory driver behind the same seam, for fast tests of the steps and the loop.

It keeps machines and power states in a dict, emits the events libvirt would, and can be
told to misbehave: a guest that ignores the ACPI power button, a crash, a lost connection, an
operation that fails. It checks what a hypervisor checks where it matters to the reconciler:
a domain starts only when its boot disk file exists, a redefinition keeps the uuid, an active
domain cannot be undefined. It proves nothing about disks or QEMU; the e2e tests do.
"""

from __future__ import annotations

import os
import threading
import uuid as uuid_module
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.drivers.base import DomainEvent, EventCallback, EventKind, LostCallback
from reconciler.errors import ConnectionLost, DriverError
from reconciler.model.accel import KvmSupport
from reconciler.model.actual import DomainFacts, ObservedDomain, PowerState, StateReason
from reconciler.model.desired import NetworkSpec
from reconciler.model.machine import BOOT_DISK_TARGET, Disk, Machine, Nic


@dataclass
class FakeDomain:
    machine: Machine
    state: PowerState = PowerState.SHUTOFF
    reason: StateReason = StateReason.UNKNOWN
    live: Machine | None = None
    capacities: dict[str, int] = field(default_factory=dict)
    honours_acpi: bool = True
    presses_missed: int = 0  # ACPI presses the guest misses before it listens (early boot)
    autostart: bool = False
    # the guest agent: (command, arguments) -> its result; None: no agent answers
    agent: Callable[[str, dict[str, Any] | None], Any] | None = None


class FakeDriver:
    """A hypervisor in memory. `calls` lists every changing operation, in order."""

    uri = "fake:///"

    def __init__(
        self,
        kvm: KvmSupport | None = None,
        host_memory: int | None = 64 * 1024**3,
        *,
        check_disks: bool = True,
    ) -> None:
        self.domains: dict[str, FakeDomain] = {}
        self.calls: list[tuple[str, str]] = []
        self.failures: dict[str, Exception] = {}  # operation -> error to raise, once
        self._kvm = kvm or KvmSupport(False, "the fake driver runs no guests")
        self._host_memory = host_memory
        self._check_disks = check_disks
        self._connected = True
        self._watchers: tuple[EventCallback, LostCallback] | None = None
        self._lock = threading.RLock()
        self.unavailable: tuple[str, ...] = ()  # what check_attachments answers
        self.leases: dict[str, dict[str, str]] = {}  # network -> MAC -> address
        # name -> (label, disk files) of each snapshot taken while running
        self.snapshots: dict[str, list[tuple[str, tuple[str, ...]]]] = {}

    # -- the seam --------------------------------------------------------------------------

    def kvm_support(self) -> KvmSupport:
        return self._kvm

    def host_memory(self) -> int | None:
        return self._host_memory

    def list_domains(self) -> list[ObservedDomain]:
        with self._lock:
            self._check("list domains")
            return [self._record(name) for name in sorted(self.domains)]

    def lookup(self, name: str) -> ObservedDomain | None:
        with self._lock:
            self._check(f"look up {name}")
            return self._record(name) if name in self.domains else None

    def cannot_express(self, machine: Machine) -> tuple[str, ...]:
        return ()

    def define(self, machine: Machine) -> None:
        with self._lock:
            self._act("define", machine.name)
            existing = self.domains.get(machine.name)
            if existing is None:
                uuid = machine.uuid or str(uuid_module.uuid4())
                self.domains[machine.name] = FakeDomain(replace(machine, uuid=uuid))
            else:
                if machine.uuid not in (None, existing.machine.uuid):
                    raise DriverError(f"define {machine.name}", "domain exists with another uuid")
                existing.machine = replace(machine, uuid=existing.machine.uuid)
        self._emit(machine.name, EventKind.LIFECYCLE, "defined")

    def set_marker(self, name: str, machine: Machine) -> None:
        with self._lock:
            self._act("mark", name)
            domain = self._require("mark", name)
            marked = replace(
                domain.machine,
                marker=machine.marker,
                protected=machine.protected,
                delete_disks=machine.delete_disks,
                shutdown_timeout_seconds=machine.shutdown_timeout_seconds,
                asked_running=machine.asked_running,
            )
            domain.machine = marked

    def repoint_boot_disk(self, name: str, path: str) -> None:
        with self._lock:
            self._act("repoint", name)
            domain = self._require("point the boot disk of", name)
            disks = tuple(
                replace(disk, path=path) if disk.target == BOOT_DISK_TARGET else disk
                for disk in domain.machine.disks
            )
            domain.machine = replace(domain.machine, disks=disks)

    def start(self, name: str) -> None:
        with self._lock:
            domain = self._require("start", name)
            if domain.state.active:
                raise DriverError(f"start {name}", "domain is already running")
            boot = domain.machine.boot_disk_path
            if self._check_disks and boot is not None and not os.path.exists(boot):
                raise DriverError(f"start {name}", f"Cannot access storage file '{boot}'")
            domain.state, domain.reason, domain.live = (
                PowerState.RUNNING,
                StateReason.BOOTED,
                domain.machine,
            )
        self._emit(name, EventKind.LIFECYCLE, "started")

    def request_shutdown(self, name: str) -> bool:
        with self._lock:
            domain = self._require("shut down", name)
            if domain.state is not PowerState.RUNNING:
                return False
            if not domain.honours_acpi:
                return True
            if domain.presses_missed:
                domain.presses_missed -= 1
                return True
            self._power_off(domain, StateReason.SHUTDOWN)
        self._emit(name, EventKind.LIFECYCLE, "stopped: shutdown")
        return True

    def force_stop(self, name: str) -> None:
        with self._lock:
            domain = self._require("stop", name)
            if not domain.state.active:
                return
            self._power_off(domain, StateReason.DESTROYED)
        self._emit(name, EventKind.LIFECYCLE, "stopped: destroyed")

    def resume(self, name: str) -> None:
        with self._lock:
            domain = self._require("resume", name)
            if domain.state is not PowerState.PAUSED:
                raise DriverError(f"resume {name}", "domain is not paused")
            domain.state, domain.reason = PowerState.RUNNING, StateReason.UNPAUSED
        self._emit(name, EventKind.LIFECYCLE, "resumed: unpaused")

    def tear_down(self, name: str) -> str:
        self.force_stop(name)
        return "destroyed the half-started domain"

    def undefine(self, name: str) -> None:
        with self._lock:
            domain = self._require("undefine", name)
            if domain.state.active:
                raise DriverError(f"undefine {name}", "cannot undefine an active domain here")
            del self.domains[name]
        self._emit(name, EventKind.LIFECYCLE, "undefined")

    def resize_disk(self, name: str, target: str, size_bytes: int) -> None:
        with self._lock:
            domain = self._require("resize disk of", name)
            domain.capacities[target] = size_bytes

    def set_memory(self, name: str, memory_kib: int) -> None:
        with self._lock:
            domain = self._require("set memory of", name)
            live = domain.live
            if live is None or memory_kib > (live.max_memory_kib or live.memory_kib):
                raise DriverError(f"set memory of {name}", "beyond the maximum, or not running")
            domain.live = replace(live, memory_kib=memory_kib)

    def set_vcpus(self, name: str, vcpus: int) -> None:
        with self._lock:
            domain = self._require("set vCPUs of", name)
            live = domain.live
            if live is None or vcpus > (live.max_vcpus or live.vcpus):
                raise DriverError(f"set vCPUs of {name}", "beyond the maximum, or not running")
            domain.live = replace(live, vcpus=vcpus)

    def attach_disk(self, name: str, disk: Disk) -> None:
        with self._lock:
            domain = self._require("attach a disk to", name)
            if domain.live is None:
                raise DriverError(f"attach a disk to {name}", "domain is not running")
            domain.live = replace(domain.live, disks=(*domain.live.disks, disk))

    def detach_disk(self, name: str, disk: Disk) -> None:
        with self._lock:
            domain = self._require("detach a disk from", name)
            if domain.live is None:
                raise DriverError(f"detach a disk from {name}", "domain is not running")
            kept = tuple(d for d in domain.live.disks if d.path != disk.path)
            domain.live = replace(domain.live, disks=kept)

    def attach_nic(self, name: str, nic: Nic, index: int) -> None:
        with self._lock:
            domain = self._require("attach a network interface to", name)
            if domain.live is None or index != len(domain.live.nics):
                raise DriverError(f"attach a network interface to {name}", "not at the end")
            domain.live = replace(domain.live, nics=(*domain.live.nics, nic))

    def detach_nic(self, name: str, nic: Nic, index: int) -> None:
        with self._lock:
            domain = self._require("detach a network interface from", name)
            if domain.live is None:
                raise DriverError(f"detach a network interface from {name}", "not running")
            kept = tuple(n for n in domain.live.nics if n.mac != nic.mac)
            domain.live = replace(domain.live, nics=kept)

    def set_autostart(self, name: str, autostart: bool) -> None:
        with self._lock:
            self._require("set autostart of", name).autostart = autostart

    def change_medium(self, name: str, target: str, path: str) -> None:
        with self._lock:
            domain = self._require("change medium of", name)
            if domain.live is None or domain.live.disk(target) is None:
                raise DriverError(f"change medium of {name}", f"no running CD-ROM {target}")
            disks = tuple(
                replace(disk, path=path) if disk.target == target else disk
                for disk in domain.live.disks
            )
            domain.live = replace(domain.live, disks=disks)

    def check_attachments(self, networks: tuple[NetworkSpec, ...]) -> tuple[str, ...]:
        return self.unavailable

    def disk_capacity(self, name: str, target: str) -> int:
        with self._lock:
            return self._require("read disk of", name).capacities.get(target, 0)

    def log_hint(self, name: str) -> str:
        return f"the fake driver keeps no log for {name}"

    def cpu_seconds(self, name: str) -> float | None:
        """The fake driver runs no guest: it cannot tell."""
        return None

    def snapshot_disks(self, name: str, label: str, paths: tuple[str, ...]) -> None:
        """Recorded only (`snapshots`): the fake has no disks to write."""
        with self._lock:
            self._require("snapshot disks of", name)
            self.snapshots.setdefault(name, []).append((label, paths))

    def delete_disk_snapshots(self, name: str, label: str, paths: tuple[str, ...]) -> None:
        with self._lock:
            self._require("delete a snapshot of", name)
            taken = self.snapshots.get(name, [])
            self.snapshots[name] = [(each, where) for each, where in taken if each != label]

    def dhcp_leases(self, network: str) -> dict[str, str]:
        return dict(self.leases.get(network, {}))

    def agent_command(
        self, name: str, command: str, arguments: dict[str, Any] | None, timeout: float
    ) -> Any:
        """What the domain's scripted agent answers (FakeDomain.agent)."""
        with self._lock:
            subject = f"ask the guest agent of {name}"
            domain = self.domains.get(name)
            if domain is None or domain.state is not PowerState.RUNNING:
                raise DriverError(subject, "domain is not running")
            if domain.agent is None or not domain.machine.guest_agent:
                raise DriverError(subject, "the guest agent is not connected")
            agent = domain.agent
        return agent(command, arguments)

    def watch(self, on_event: EventCallback, on_lost: LostCallback) -> None:
        self._watchers = (on_event, on_lost)

    def connected(self) -> bool:
        return self._connected

    def reconnect(self) -> None:
        if not self._connected:
            raise DriverError("reconnect", "the fake hypervisor is still down")

    def close(self) -> None:
        self._watchers = None

    # -- what tests do to it ---------------------------------------------------------------

    def crash(self, name: str) -> None:
        """The domain's emulator dies (as after a SIGKILL of QEMU)."""
        with self._lock:
            self._power_off(self.domains[name], StateReason.CRASHED)
        self._emit(name, EventKind.LIFECYCLE, "stopped: crashed")

    def ignore_acpi(self, name: str) -> None:
        self.domains[name].honours_acpi = False

    def miss_acpi(self, name: str, presses: int) -> None:
        """The guest misses its next `presses` ACPI presses (it is not listening yet)."""
        self.domains[name].presses_missed = presses

    def lose_connection(self) -> None:
        self._connected = False
        if self._watchers is not None:
            self._watchers[1]("the fake hypervisor went away")

    def restore_connection(self) -> None:
        self._connected = True

    # -- inside ----------------------------------------------------------------------------

    def _record(self, name: str) -> ObservedDomain:
        domain = self.domains[name]
        return DomainFacts(
            name=name,
            uuid=domain.machine.uuid or "",
            state=domain.state,
            state_reason=domain.reason,
            persistent=True,
            definition=domain.machine,
            live_definition=domain.live if domain.state.active else None,
            autostart=domain.autostart,
        )

    def _check(self, action: str) -> None:
        if not self._connected:
            raise ConnectionLost(action, "the fake hypervisor went away")

    def _act(self, operation: str, name: str) -> None:
        self._check(f"{operation} {name}")
        failure = self.failures.pop(operation, None)
        if failure is not None:
            raise failure
        self.calls.append((operation, name))

    def _require(self, operation: str, name: str) -> FakeDomain:
        self._act(operation, name)
        domain = self.domains.get(name)
        if domain is None:
            raise DriverError(f"{operation} {name}", "no such domain")
        return domain

    @staticmethod
    def _power_off(domain: FakeDomain, reason: StateReason) -> None:
        domain.state, domain.reason, domain.live = PowerState.SHUTOFF, reason, None

    def _emit(self, name: str, kind: EventKind, detail: str) -> None:
        if self._watchers is not None:
            self._watchers[0](DomainEvent(name, kind, detail))
