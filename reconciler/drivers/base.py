"""The driver interface: everything the reconciler asks of a hypervisor, and nothing more.

As in Nova's ComputeDriver, the rest of the code reaches libvirt only through this; a second
driver (QEMU over QMP, for hosts without libvirt) can slot in behind the same methods. Every
method raises reconciler.errors.DriverError (never the client library's own exceptions).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.model.accel import KvmSupport
from reconciler.model.actual import ObservedDomain
from reconciler.model.desired import NetworkSpec
from reconciler.model.machine import Disk, Machine, Nic


class EventKind(enum.StrEnum):
    """What kind of thing happened to a domain (each driver maps its own events to these)."""

    LIFECYCLE = "lifecycle"  # defined, started, stopped, ...: the detail says which
    REBOOT = "reboot"
    WATCHDOG = "watchdog"
    IO_ERROR = "io-error"
    DEVICE_REMOVED = "device-removed"
    METADATA_CHANGE = "metadata-change"


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """Something happened to a domain: its kind, and what, in words (e.g. "stopped:
    shutdown")."""

    name: str
    kind: EventKind
    detail: str = ""

    @property
    def may_echo_a_step(self) -> bool:
        """Whether a step of ours causes such events (a define, a start, a stop, an
        undefine): seen while that domain is being reconciled, it is the echo of the step.
        Crashes, failures and errors never are."""
        return self.kind is EventKind.LIFECYCLE and self.detail.startswith(_ECHOES)


# the lifecycle events our own steps cause
_ECHOES = ("defined", "undefined", "started", "resumed", "stopped: shutdown", "stopped: destroyed")


EventCallback = Callable[[DomainEvent], None]
LostCallback = Callable[[str], None]


class Driver(Protocol):
    """Operations on domains, by name."""

    uri: str

    def kvm_support(self) -> KvmSupport:
        """Whether KVM can run guests where this driver runs them."""
        ...

    def list_domains(self) -> list[ObservedDomain]:
        """Every domain the connection sees, ours or not."""
        ...

    def lookup(self, name: str) -> ObservedDomain | None:
        """One domain by name, or None when there is none."""
        ...

    def cannot_express(self, machine: Machine) -> tuple[str, ...]:
        """What in `machine` this driver cannot run, each as "field: why, naming the driver"
        (empty: all of it); the plan refuses such an instance before anything is made."""
        ...

    def define(self, machine: Machine) -> None:
        """Create or replace a persistent definition (takes effect at the next start)."""
        ...

    def set_marker(self, name: str, machine: Machine) -> None:
        """Record `machine`'s ownership marker on the persistent definition of domain `name`,
        changing nothing else in it (adoption)."""
        ...

    def repoint_boot_disk(self, name: str, path: str) -> None:
        """Point the persistent definition's boot disk (vda) at the file `path`, changing
        nothing else in it (adoption, with the domain shut off)."""
        ...

    def start(self, name: str) -> None:
        """Start a defined, inactive domain."""
        ...

    def request_shutdown(self, name: str) -> bool:
        """Ask the guest to power off (ACPI power button); returns at once. False when the
        domain cannot take the request now (not running: stopped, paused, shutting down)."""
        ...

    def force_stop(self, name: str) -> None:
        """Stop the domain's emulator now (pulling the plug)."""
        ...

    def resume(self, name: str) -> None:
        """Let a paused domain run again (QEMU retries the I/O it paused on)."""
        ...

    def tear_down(self, name: str) -> str:
        """Stop a domain that a dead process left half-started or half-stopped, even where the
        hypervisor still holds it for that process; returns what was done, in words. Kills
        only a process proven to be this domain's emulator."""
        ...

    def host_memory(self) -> int | None:
        """Bytes of memory on the host that runs the domains (None when unknown)."""
        ...

    def undefine(self, name: str) -> None:
        """Remove the persistent definition of an inactive domain."""
        ...

    def resize_disk(self, name: str, target: str, size_bytes: int) -> None:
        """Grow a running domain's disk (the guest sees the new size at once)."""
        ...

    def set_memory(self, name: str, memory_kib: int) -> None:
        """Change a running domain's memory within its maximum (the balloon's target)."""
        ...

    def set_vcpus(self, name: str, vcpus: int) -> None:
        """Change a running domain's vCPUs within its maximum."""
        ...

    def attach_disk(self, name: str, disk: Disk) -> None:
        """Attach a disk to a running domain (its persistent definition is left alone)."""
        ...

    def detach_disk(self, name: str, disk: Disk) -> None:
        """Detach a disk from a running domain (its persistent definition is left alone)."""
        ...

    def attach_nic(self, name: str, nic: Nic, index: int) -> None:
        """Attach NIC `index` to a running domain (its persistent definition is left alone)."""
        ...

    def detach_nic(self, name: str, nic: Nic, index: int) -> None:
        """Detach NIC `index` from a running domain (its persistent definition is left
        alone)."""
        ...

    def set_autostart(self, name: str, autostart: bool) -> None:
        """Set libvirt's autostart flag (only where `DomainFacts.autostart` is not None)."""
        ...

    def change_medium(self, name: str, target: str, path: str) -> None:
        """Put the image at `path` into a running domain's CD-ROM `target` (ejecting the old
        medium), so the guest reads the new one at once."""
        ...

    def check_attachments(self, networks: tuple[NetworkSpec, ...]) -> tuple[str, ...]:
        """Why the interfaces could not attach now, in words (a libvirt network, bridge or
        host device that does not exist; a forwarded host port in use); empty when they can."""
        ...

    def disk_capacity(self, name: str, target: str) -> int:
        """The size in bytes of a domain's disk as the hypervisor sees it."""
        ...

    def log_hint(self, name: str) -> str:
        """Where to read why a domain failed (its QEMU log), in words."""
        ...

    def cpu_seconds(self, name: str) -> float | None:
        """The CPU time a running domain has used so far, in seconds (None when the driver
        cannot tell): how far a guest got, whatever the host's load."""
        ...

    def agent_command(
        self, name: str, command: str, arguments: dict[str, Any] | None, timeout: float
    ) -> Any:
        """Send one command to the QEMU guest agent of running domain `name` and return its
        result (decoded JSON, which the guest wrote: check its shape before use). DriverError
        when the domain has no agent channel, the agent does not answer within `timeout`
        seconds, or answers with an error."""
        ...

    def snapshot_disks(self, name: str, label: str, paths: tuple[str, ...]) -> None:
        """Take internal snapshot `label` of the running domain's disk files `paths`, all at
        once (one QMP transaction: consistent across them). DriverError when the domain does
        not run, has one of them not open, or QEMU refuses (a name already used)."""
        ...

    def delete_disk_snapshots(self, name: str, label: str, paths: tuple[str, ...]) -> None:
        """Delete internal snapshot `label` from the running domain's disk files `paths`
        (those that do not hold it are skipped by the caller)."""
        ...

    def dhcp_leases(self, network: str) -> dict[str, str]:
        """The DHCP leases of libvirt network `network`: MAC (lower case) -> address (empty
        where the driver has no such networks)."""
        ...

    def watch(self, on_event: EventCallback, on_lost: LostCallback) -> None:
        """Deliver events about every domain to `on_event`, and call `on_lost` (with the reason)
        when the connection is lost, both from a driver thread. Kept across `reconnect`."""
        ...

    def connected(self) -> bool:
        """Whether the connection still works (a cheap check, no round trip where avoidable)."""
        ...

    def reconnect(self) -> None:
        """Open the connection again after a loss and register the watched events anew;
        raises DriverError when the hypervisor is still unreachable."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
