"""Plan: a pure function from (desired, actual) to the ordered steps that converge them.

No I/O here: `reconcile plan` prints the result as it is, and the unit tests table-test it.
Step order is always: recover an interrupted transition, fetch base, create overlay, build
the config drive, stop, resize, define, swap the config drive's medium, start, remove
replaced config drives (or, for `state: absent`: recover, stop, undefine).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from reconciler.model.accel import AcceleratorChoice, KvmSupport, resolve_accelerator
from reconciler.model.actual import DomainFacts, InstanceActual, PowerState
from reconciler.model.desired import Accelerator, DesiredState, ImageSource, InstanceSpec
from reconciler.model.machine import CONFIG_DRIVE_TARGET, Machine, OwnershipMarker
from reconciler.planning.cloudinit import DriveContent, drive_content
from reconciler.planning.machine import (
    DomainLayout,
    build_machine,
    describe_changes,
    shape_of,
    with_config_drive,
)
from reconciler.planning.network import build_nics, choose_macs, instance_uuid
from reconciler.sizes import format_size
from reconciler.statedir import InstancePaths

# Where KVM is forced against the probe's advice, guests typically pause on an emulation
# failure within seconds of starting; the start step watches that long for it.
START_WATCH_SECONDS = 10.0


class StepKind(enum.StrEnum):
    RECOVER = "recover"
    FETCH_BASE = "fetch-base"
    CREATE_OVERLAY = "create-overlay"
    RESIZE_DISK = "resize-disk"
    BUILD_CONFIG_DRIVE = "build-config-drive"
    CHANGE_MEDIUM = "change-medium"
    REMOVE_FILES = "remove-files"
    DEFINE = "define"
    START = "start"
    STOP = "stop"
    UNDEFINE = "undefine"


@dataclass(frozen=True, slots=True)
class RecoverDomain:
    """Clear a start or shutdown that a killed process left half-done (domain paused in
    libvirt's `starting-up` or `shutting-down`), so that the instance can converge."""

    kind: ClassVar[StepKind] = StepKind.RECOVER
    instance: str
    reason: str

    def describe(self) -> str:
        what = "start" if self.reason == "starting-up" else "shutdown"
        return (
            f"recover an interrupted {what} (domain paused in {self.reason} with no one "
            "finishing it): tear the domain down"
        )


@dataclass(frozen=True, slots=True)
class FetchBase:
    kind: ClassVar[StepKind] = StepKind.FETCH_BASE
    instance: str
    image: ImageSource
    cache_path: Path
    size: int | None = None  # bytes to download, when the source says

    def describe(self) -> str:
        return (
            f"fetch base image {self.image.location} into the cache "
            f"(sha256 {(self.image.sha256 or '?')[:12]}..., {self.image.format.value}"
            + (f", stored as {self.image.convert_to.value}" if self.image.convert_to else "")
            + (f", {format_size(self.size)}" if self.size is not None else "")
            + ")"
        )


@dataclass(frozen=True, slots=True)
class CreateOverlay:
    kind: ClassVar[StepKind] = StepKind.CREATE_OVERLAY
    instance: str
    path: Path
    image: ImageSource  # the base, verified (and fetched again if spoiled) before use
    base_path: Path
    base_format: str
    size: int

    def describe(self) -> str:
        base = self.base_path.name
        short = base[:19] + "..." if len(base) > 22 else base
        return f"create disk {self.path} ({format_size(self.size)}, qcow2 over {short})"


@dataclass(frozen=True, slots=True)
class ResizeDisk:
    kind: ClassVar[StepKind] = StepKind.RESIZE_DISK
    instance: str
    path: Path
    current: int
    size: int
    online: bool

    def describe(self) -> str:
        how = "online, the guest sees it now" if self.online else "offline"
        return f"grow disk {format_size(self.current)} -> {format_size(self.size)} ({how})"


@dataclass(frozen=True, slots=True)
class BuildConfigDrive:
    """Write the config drive's ISO (mode 0600: user-data often holds secrets)."""

    kind: ClassVar[StepKind] = StepKind.BUILD_CONFIG_DRIVE
    instance: str
    path: Path
    content: DriveContent

    def describe(self) -> str:
        return f"build config drive {self.path.name} ({self.content.describe()})"


@dataclass(frozen=True, slots=True)
class ChangeMedium:
    """Swap the running domain's config drive medium to the rebuilt ISO."""

    kind: ClassVar[StepKind] = StepKind.CHANGE_MEDIUM
    instance: str
    target: str
    path: Path

    def describe(self) -> str:
        return (
            f"swap the running domain's config drive to {self.path.name} (the guest reads the "
            "new files from the drive at once)"
        )


@dataclass(frozen=True, slots=True)
class RemoveFiles:
    """Remove files of the instance that nothing uses any more (replaced config drives)."""

    kind: ClassVar[StepKind] = StepKind.REMOVE_FILES
    instance: str
    paths: tuple[Path, ...]

    def describe(self) -> str:
        return "remove replaced config drive " + ", ".join(p.name for p in self.paths)


@dataclass(frozen=True, slots=True)
class DefineDomain:
    kind: ClassVar[StepKind] = StepKind.DEFINE
    instance: str
    machine: Machine  # complete: with the uuid (when redefining) and the ownership marker
    changes: tuple[str, ...]
    effect: str

    def describe(self) -> str:
        what = (
            "define domain" if not self.changes else "redefine domain: " + ", ".join(self.changes)
        )
        return f"{what} ({self.effect})"


@dataclass(frozen=True, slots=True)
class StartDomain:
    kind: ClassVar[StepKind] = StepKind.START
    instance: str
    accelerator: AcceleratorChoice
    image: ImageSource | None = None  # the base under the disk, verified before QEMU opens it
    watch_seconds: float = 0.0  # how long to watch for a pause on error right after start

    def describe(self) -> str:
        choice = self.accelerator
        return f"start domain (accelerator {choice.accelerator.value}; {choice.reason})"


@dataclass(frozen=True, slots=True)
class StopDomain:
    kind: ClassVar[StepKind] = StepKind.STOP
    instance: str
    timeout_seconds: int

    def describe(self) -> str:
        return f"shut down domain (ACPI power button, forced off after {self.timeout_seconds}s)"


@dataclass(frozen=True, slots=True)
class UndefineDomain:
    kind: ClassVar[StepKind] = StepKind.UNDEFINE
    instance: str
    kept: Path

    def describe(self) -> str:
        return f"undefine domain (its files in {self.kept} are kept)"


Step = (
    RecoverDomain
    | FetchBase
    | CreateOverlay
    | ResizeDisk
    | BuildConfigDrive
    | ChangeMedium
    | RemoveFiles
    | DefineDomain
    | StartDomain
    | StopDomain
    | UndefineDomain
)


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Facts beside desired and actual that the plan needs: paths, KVM, defaults, and what was
    resolved outside the manifest (source and base sizes, the host's memory)."""

    paths: InstancePaths
    base_path: Path
    kvm: KvmSupport
    default_accelerator: Accelerator = Accelerator.AUTO
    source_size: int | None = None  # of the image source, when known (shown in the plan)
    state_dir_id: str | None = None  # None before the state directory exists: nothing is ours
    host_memory: int | None = None  # bytes of memory where the domain runs, when known
    base_virtual_size: int | None = None  # the disk size the base image holds, when known
    macs_in_use: frozenset[str] = frozenset()  # by other domains (derived MACs avoid them)
    unavailable: tuple[str, ...] = ()  # why the interfaces cannot attach (a missing bridge...)


@dataclass(frozen=True, slots=True)
class InstancePlan:
    """The steps for one instance, or why there are none (`refusal`), plus notes to print."""

    name: str
    steps: tuple[Step, ...] = ()
    refusal: str | None = None
    notes: tuple[str, ...] = field(default=())
    accelerator: AcceleratorChoice | None = None
    pending_restart: bool = False  # the running domain's definition is older than the wanted one

    @property
    def converged(self) -> bool:
        return not self.steps and self.refusal is None

    def view(self) -> PlanView:
        """What is printed of the plan (and what the daemon sends for it)."""
        return PlanView(
            self.name, tuple(step.describe() for step in self.steps), self.refusal, self.notes
        )


@dataclass(frozen=True, slots=True)
class PlanView:
    """A plan in words: step descriptions, refusal and notes (JSON-friendly)."""

    name: str
    steps: tuple[str, ...]
    refusal: str | None
    notes: tuple[str, ...]


def plan_instance(spec: InstanceSpec, actual: InstanceActual, context: PlanContext) -> InstancePlan:
    """Decide what converges `spec` from `actual`; refuse what would harm data or others."""
    domain = actual.domain
    if domain is not None:
        foreign = foreign_reason(domain, context)
        if foreign is not None:
            return InstancePlan(
                spec.name,
                refusal=(
                    f"a libvirt domain named {spec.name!r} exists but {foreign}; it is left "
                    "untouched: rename the instance or remove that domain yourself"
                ),
            )
    if spec.state is DesiredState.ABSENT:
        return _plan_absent(spec, domain, context)
    return _plan_present(spec, actual, context)


def foreign_reason(domain: DomainFacts, context: PlanContext) -> str | None:
    """Why `domain` is not proven to be this instance's (None when it is): it must carry our
    marker with this state directory's id, and boot from this instance's disk."""
    marker = domain.marker
    if marker is None:
        return "was not created by reconciler (no ownership marker)"
    if context.state_dir_id is None or marker.state_dir_id != context.state_dir_id:
        return (
            "its reconciler marker does not name this state directory "
            f"(marker: {marker.state_dir_id or 'no state directory id'})"
        )
    disk = domain.definition.boot_disk_path
    if disk != str(context.paths.disk):
        return f"its boot disk is {disk or 'missing'}, not this instance's {context.paths.disk}"
    return None


def _plan_absent(
    spec: InstanceSpec, domain: DomainFacts | None, context: PlanContext
) -> InstancePlan:
    if domain is None:
        return InstancePlan(spec.name)
    steps: list[Step] = []
    if domain.interrupted:
        steps.append(RecoverDomain(spec.name, domain.state_reason))
    elif domain.state.active:
        steps.append(StopDomain(spec.name, spec.shutdown_timeout_seconds))
    steps.append(UndefineDomain(spec.name, context.paths.directory))
    return InstancePlan(spec.name, tuple(steps))


def _plan_present(spec: InstanceSpec, actual: InstanceActual, context: PlanContext) -> InstancePlan:
    domain = actual.domain
    paths = context.paths
    choice = resolve_accelerator(spec.accelerator or context.default_accelerator, context.kvm)
    refusal = _refusal(spec, actual, context)
    if refusal is not None:
        return InstancePlan(spec.name, refusal=refusal, accelerator=choice)
    steps: list[Step] = []
    notes: list[str] = []
    interrupted = domain is not None and domain.interrupted
    if domain is not None and interrupted:
        steps.append(RecoverDomain(spec.name, domain.state_reason))
    active = domain is not None and domain.state.active and not interrupted
    stopping = spec.state is DesiredState.STOPPED and active
    starting = spec.state is DesiredState.RUNNING and not active
    grow_from: int | None = None
    if actual.overlay is None:
        if not actual.base_cached:
            steps.append(FetchBase(spec.name, spec.image, context.base_path, context.source_size))
        steps.append(
            CreateOverlay(
                spec.name,
                paths.disk,
                spec.image,
                context.base_path,
                spec.image.cached_format.value,
                spec.disk_bytes,
            )
        )
        if domain is not None:  # allowed by _refusal only with allowReplace
            notes.append(f"disk {paths.disk} was missing: a new, empty one is made (allowReplace)")
    else:
        if not actual.base_cached and starting:
            steps.append(FetchBase(spec.name, spec.image, context.base_path, context.source_size))
        if actual.overlay.virtual_size < spec.disk_bytes:
            grow_from = actual.overlay.virtual_size
    if actual.base_changed:
        notes.append(
            f"cached base {context.base_path.name} changed since it was verified: it is "
            "checked again before use, and fetched again if it no longer matches"
        )
    paused = domain is not None and domain.state is PowerState.PAUSED
    if paused and domain is not None and domain.state_reason == "user" and not stopping:
        notes.append("domain was paused by hand; it is left paused")
    if stopping:
        steps.append(StopDomain(spec.name, spec.shutdown_timeout_seconds))
    if grow_from is not None:
        online = active and not stopping
        steps.append(ResizeDisk(spec.name, paths.disk, grow_from, spec.disk_bytes, online))

    uuid = domain.uuid if domain else instance_uuid(context.state_dir_id or "", spec.name)
    content = _drive_content(spec, uuid)
    drive = None if content is None else paths.directory / f"config-{content.digest[:16]}.iso"
    if content is not None and drive is not None and drive.name not in actual.config_drives:
        steps.append(BuildConfigDrive(spec.name, drive, content))
    current = domain.definition if domain else None
    macs = choose_macs(spec.name, spec.networks, current, context.macs_in_use)
    layout = DomainLayout(
        str(paths.disk),
        str(paths.console_log),
        choice.accelerator,
        None if drive is None else str(drive),
        build_nics(spec.networks, macs),
    )
    shape = build_machine(spec, layout)
    digest = shape.spec_digest()
    live = domain.live_definition if domain is not None and active and not stopping else None
    # a running domain with a config drive takes a rebuilt one at once, as a medium change
    swap = (
        drive is not None
        and live is not None
        and live.config_drive_path is not None
        and live.config_drive_path != str(drive)
    )
    if swap and live is not None and drive is not None:
        live = with_config_drive(live, str(drive))
    pending_restart = False
    if domain is None or domain.marker is None or domain.marker.spec_digest != digest:
        same_shape = domain is not None and shape_of(domain.definition) == shape
        live_same = live is not None and shape_of(live) == shape
        if domain is None:
            changes: tuple[str, ...] = ()
            effect = "new"
        elif same_shape:  # only the marker is out of date (e.g. made by an older version)
            changes = ("ownership marker updated",)
            effect = "the machine itself is unchanged"
        else:
            changes = describe_changes(domain.definition, shape)
            if live_same:
                effect = "takes effect now: the running domain's medium is swapped"
            elif active and not stopping:
                effect = "takes effect at the next restart of the running domain"
            elif starting:
                effect = "takes effect now: the domain starts next"
            else:
                effect = "takes effect at the next start"
        marker = OwnershipMarker(str(spec.manifest), digest, context.state_dir_id or "")
        machine = dataclasses.replace(shape, uuid=uuid, marker=marker)
        steps.append(DefineDomain(spec.name, machine, changes, effect))
        if active and not stopping and not same_shape and not live_same:
            pending_restart = True
            notes.append("restart the domain (state: stopped, then running) to apply the change")
    elif (
        live is not None
        and (live.marker is None or live.marker.spec_digest != digest)
        and shape_of(live) != shape
    ):
        pending_restart = True
        notes.append(
            "running with an older definition: the current one takes effect at the next "
            "restart (state: stopped, then running)"
        )
    if swap and drive is not None:
        steps.append(ChangeMedium(spec.name, CONFIG_DRIVE_TARGET, drive))
    if (
        drive is not None
        and domain is not None
        and (swap or drive.name not in actual.config_drives)
    ):
        notes.append(_drive_note(spec, uuid))
    if starting:
        risky = choice.accelerator is Accelerator.KVM and not context.kvm.usable
        if risky:
            notes.append(f"KVM was requested, but {context.kvm.reason}: the guest may fail")
        watch = START_WATCH_SECONDS if risky else 0.0
        steps.append(StartDomain(spec.name, choice, spec.image, watch))
    # drives nothing uses once this plan is carried out: not the wanted one, not the live one
    in_use = {drive.name} if drive is not None else set()
    if live is not None and live.config_drive_path is not None:
        in_use.add(Path(live.config_drive_path).name)
    stale = sorted(actual.config_drives - in_use)
    if stale:
        steps.append(RemoveFiles(spec.name, tuple(paths.directory / name for name in stale)))
    return InstancePlan(spec.name, tuple(steps), None, tuple(notes), choice, pending_restart)


def _drive_content(spec: InstanceSpec, uuid: str) -> DriveContent | None:
    """The config drive's files (None when the manifest configures nothing in the guest)."""
    if not spec.guest.configured:
        return None
    return drive_content(spec.guest, spec.name, spec.guest.instance_id or uuid)


def _drive_note(spec: InstanceSpec, uuid: str) -> str:
    """What a guest that has booted makes of a rebuilt config drive."""
    instance_id = spec.guest.instance_id or uuid
    return (
        f"config drive rebuilt with instance-id {instance_id} unchanged: the guest sees the new "
        "files on the drive, but cloud-init applies most modules (users, keys, write_files) "
        "only once per instance-id; see the README to make it run them again"
    )


def _refusal(spec: InstanceSpec, actual: InstanceActual, context: PlanContext) -> str | None:
    """Why converging `spec` would harm data or cannot work (None when it can go ahead).
    One branch per reason."""
    domain, overlay, paths = actual.domain, actual.overlay, context.paths
    # more memory than the host has: libvirt would refuse the start, or the host would swap
    if context.host_memory is not None and spec.memory_bytes > context.host_memory:
        return (
            f"memory {format_size(spec.memory_bytes)} is more than this host has "
            f"({format_size(context.host_memory)})"
        )
    # a disk that exists but is not a qcow2 we can read: replacing it would lose what it holds
    if actual.overlay_problem is not None:
        return _replacement(actual.overlay_problem)
    # the disk vanished under a defined domain: the guest's data is gone, which is not a step
    # to take quietly
    if overlay is None and domain is not None and not spec.allow_replace:
        return (
            f"disk {paths.disk} is missing although the domain exists: the guest's disk was "
            "deleted or moved, and nothing was created in its place. Put the file back, or set "
            "allowReplace: true to give the instance a new, empty disk"
        )
    # a new disk smaller than its base would truncate the guest's file system (Nova's
    # verify_base_size)
    base_size = context.base_virtual_size
    if overlay is None and base_size is not None and spec.disk_bytes < base_size:
        return (
            f"disk.size {format_size(spec.disk_bytes)} is smaller than the base image's virtual "
            f"size {format_size(base_size)}; ask for at least {format_size(base_size)}"
        )
    if overlay is not None:
        # another base under the existing disk
        if overlay.backing_file != str(context.base_path) or (
            overlay.backing_format != spec.image.cached_format.value
        ):
            return _replacement(
                f"disk {paths.disk} is built on {overlay.backing_file} "
                f"({overlay.backing_format}), the manifest asks for {context.base_path.name}: "
                "changing the base image would discard the guest's data"
            )
        # a smaller disk
        if overlay.virtual_size > spec.disk_bytes:
            return _replacement(
                f"disk.size {format_size(spec.disk_bytes)} is smaller than the disk's current "
                f"{format_size(overlay.virtual_size)}: disks never shrink"
            )
    # an interface that cannot attach (a missing network or bridge, a host port in use): the
    # start would fail, so nothing is made for it
    if context.unavailable:
        return "; ".join(context.unavailable)
    # paused on an error (not by hand, not an interrupted transition): report, do not act
    if (
        domain is not None
        and domain.state is PowerState.PAUSED
        and not domain.interrupted
        and domain.state_reason != "user"
        and spec.state is not DesiredState.STOPPED
    ):
        return (
            f"domain is paused after an error (reason: {domain.state_reason}); it is not "
            "running. Set state: stopped to stop it, then running to start it again"
        )
    return None


def _replacement(problem: str) -> str:
    return f"{problem}; the disk would have to be replaced, so nothing was changed"
