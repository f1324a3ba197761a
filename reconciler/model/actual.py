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


class StateReason(enum.StrEnum):
    """Why a domain is in its power state: one vocabulary for every driver (its words are
    libvirt's, which each driver maps its own codes to, once)."""

    UNKNOWN = "unknown"
    # running
    BOOTED = "booted"
    RESTORED = "restored"
    UNPAUSED = "unpaused"
    WAKEUP = "wakeup"
    MIGRATION_CANCELED = "migration-canceled"
    SAVE_CANCELED = "save-canceled"
    # paused
    USER = "user"  # paused by hand
    STARTING_UP = "starting-up"  # a start whose process died (or under way)
    SHUTTING_DOWN = "shutting-down"  # a shutdown whose process died (or under way)
    IOERROR = "ioerror"
    WATCHDOG = "watchdog"
    MIGRATION = "migration"
    SAVE = "save"
    DUMP = "dump"
    SNAPSHOT = "snapshot"
    POSTCOPY = "postcopy"
    POSTCOPY_FAILED = "postcopy-failed"
    API_ERROR = "api-error"
    # shut off
    SHUTDOWN = "shutdown"  # the guest powered off
    DESTROYED = "destroyed"  # pulled the plug
    CRASHED = "crashed"
    FAILED = "failed"  # the emulator failed
    MIGRATED = "migrated"
    SAVED = "saved"
    FROM_SNAPSHOT = "from-snapshot"
    DAEMON = "daemon"

    @classmethod
    def of(cls, word: str) -> StateReason:
        """The reason a word names (UNKNOWN for one no driver uses)."""
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN


# the paused reasons of a domain caught between two states by a process that died
INTERRUPTED_REASONS = frozenset({StateReason.STARTING_UP, StateReason.SHUTTING_DOWN})


@dataclass(frozen=True, slots=True)
class DomainFacts:
    """One domain as a driver observes it: its state and its persistent (and, while it runs,
    live) definition. What every driver returns, and what the plan reads."""

    name: str
    uuid: str
    state: PowerState
    state_reason: StateReason
    persistent: bool
    definition: Machine
    live_definition: Machine | None = None  # only while the domain is active
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
class UnreadableDomain:
    """A domain whose definition the driver could not read (`problem` says why): it cannot
    carry a marker we could trust, so it is never touched."""

    name: str
    uuid: str
    state: PowerState
    state_reason: StateReason
    problem: str


ObservedDomain = DomainFacts | UnreadableDomain


@dataclass(frozen=True, slots=True)
class DiskFacts:
    """A disk file as its header describes it."""

    path: str
    format: str
    virtual_size: int
    backing_file: str | None
    backing_format: str | None
    snapshot_count: int = 0  # internal snapshots in its table (qcow2)


@dataclass(frozen=True, slots=True)
class SnapshotFacts:
    """One restore point as the disks record it: its label, when it was taken, and the disk
    files whose snapshot table holds it (the disks are its only record; see
    steps.snapshots for the side file that adds what it preceded)."""

    label: str
    taken: float  # seconds since the epoch
    files: tuple[str, ...]
    vm_state_size: int = 0  # bytes of saved memory (0: the disks only)


@dataclass(frozen=True, slots=True)
class HoldFacts:
    """A revert holds its instance: the change it undid is not applied again until the
    manifest asks for something else, or the user resumes it (reconcile resume)."""

    label: str  # the snapshot reverted to
    reverted_digest: str  # the manifest digest of the definition the revert undid
    at: float  # when, seconds since the epoch
    complete: bool = True  # False: the revert was cut short (it is run again to finish)
    running: bool = False  # the guest ran before the revert (it is started again after)


@dataclass(frozen=True, slots=True)
class InstanceActual:
    """Everything observed that matters to one instance."""

    domain: DomainFacts | None
    overlay: DiskFacts | None
    overlay_problem: str | None  # the overlay exists but could not be read as ours
    config_drives: frozenset[str] = frozenset()  # config-*.iso files in the instance directory
    data_disks: tuple[DiskFacts, ...] = ()  # the manifest's data disks whose files exist
    data_disk_problem: str | None = None  # a data disk file that is not what it should be
    host_shutdown: bool = False  # the domain was shut down with the host (not a stop of its own)
    liveness_failed: str | None = None  # why its liveness probe fails past its threshold
    snapshots: tuple[SnapshotFacts, ...] = ()  # oldest first
    snapshot_problem: str | None = None  # a disk whose snapshot table could not be read
    snapshot_records: frozenset[str] = frozenset()  # snapshot-*.json in the directory
    # the config drives the definitions those records keep name: kept for a revert
    snapshot_drives: frozenset[str] = frozenset()
    hold: HoldFacts | None = None  # held after a revert
    frozen: bool = False  # a snapshot cut short may have left the guest's file systems frozen
