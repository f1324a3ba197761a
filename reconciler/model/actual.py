"""Actual state: frozen dataclasses observed fresh on every pass. Read-only facts."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from reconciler.model.machine import Machine, OwnershipMarker


class PowerState(enum.StrEnum):
    """A domain's run state, as libvirt reports it (simplified)."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    SHUTDOWN = "shutting-down"
    CRASHED = "crashed"
    SUSPENDED = "pmsuspended"
    OTHER = "other"

    @property
    def active(self) -> bool:
        """True while a QEMU process exists for the domain."""
        return self in (PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN)


# libvirt's paused reasons for a domain caught between two states by a process that died
INTERRUPTED_REASONS = ("starting-up", "shutting-down")


@dataclass(frozen=True, slots=True)
class DomainFacts:
    """One libvirt domain: its state and its persistent (and, when running, live) definition."""

    name: str
    uuid: str
    state: PowerState
    state_reason: str
    persistent: bool
    definition: Machine
    live_definition: Machine | None
    autostart: bool | None = None  # None where the driver does not keep libvirt's autostart

    @property
    def marker(self) -> OwnershipMarker | None:
        return self.definition.marker

    @property
    def interrupted(self) -> bool:
        """Paused in a transition that its owner never finished (a start or a shutdown whose
        process died): not a guest error, and not running."""
        return self.state is PowerState.PAUSED and self.state_reason in INTERRUPTED_REASONS


@dataclass(frozen=True, slots=True)
class DiskFacts:
    """A disk file as its header describes it."""

    path: str
    format: str
    virtual_size: int
    backing_file: str | None
    backing_format: str | None


@dataclass(frozen=True, slots=True)
class InstanceActual:
    """Everything observed that matters to one instance."""

    domain: DomainFacts | None
    overlay: DiskFacts | None
    overlay_problem: str | None  # the overlay exists but could not be read as ours
    base_cached: bool
    base_changed: bool = False  # the cached base's file changed since it was last verified
    config_drives: frozenset[str] = frozenset()  # config-*.iso files in the instance directory
    data_disks: tuple[DiskFacts, ...] = ()  # the manifest's data disks whose files exist
    data_disk_problem: str | None = None  # a data disk file that is not what it should be
    host_shutdown: bool = False  # the domain was shut down with the host (not a stop of its own)
