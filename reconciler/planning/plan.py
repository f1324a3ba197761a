"""Plan: a pure function from (desired, actual) to the ordered steps that converge them.

No I/O here: `reconcile plan` prints the result as it is, and the unit tests table-test it.
Step order is always: recover an interrupted transition, fetch base, create overlay, build
the config drive, stop, resize, define, swap the config drive's medium, start, remove
replaced config drives (or, for `state: absent`: recover, stop, undefine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.model.accel import AcceleratorChoice, KvmSupport, resolve_accelerator
from reconciler.model.actual import DiskFacts, DomainFacts, InstanceActual, PowerState
from reconciler.model.desired import (
    Accelerator,
    DesiredState,
    InstanceSpec,
    RunPolicy,
    UpdatePolicy,
)
from reconciler.model.machine import CONFIG_DRIVE_TARGET, Machine, OwnershipMarker
from reconciler.planning.cloudinit import DriveContent, drive_content
from reconciler.planning.disks import data_disk_devices
from reconciler.planning.machine import (
    Change,
    ChangeClass,
    DomainLayout,
    build_machine,
    describe_changes,
    live_memory_change,
    live_nic_change,
    live_vcpu_change,
    running_shape,
    shape_of,
    with_config_drive,
)
from reconciler.planning.network import build_nics, choose_macs, instance_uuid
from reconciler.planning.steps import (
    AttachDisk,
    AttachNic,
    BuildConfigDrive,
    ChangeMedium,
    CreateDataDisk,
    CreateOverlay,
    DefineDomain,
    DetachDisk,
    DetachNic,
    FetchBase,
    MoveDiskAside,
    RecoverDomain,
    RemoveFiles,
    ResizeDisk,
    SetAutostart,
    SetMemory,
    SetVcpus,
    StartDomain,
    Step,
    StepKind,
    StopDomain,
    UndefineDomain,
)
from reconciler.sizes import format_size
from reconciler.statedir import InstancePaths

__all__ = ["InstancePlan", "PlanContext", "Step", "StepKind", "plan_instance"]

NVRAM_FILE = "nvram.fd"  # UEFI variables, in the instance directory
REPLACED_SUFFIX = "replaced"  # a boot disk moved aside by a replacement (gc removes it)

# Where KVM is forced against the probe's advice, guests typically pause on an emulation
# failure within seconds of starting; the start step watches that long for it.
START_WATCH_SECONDS = 10.0


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
    restart_after: str | None = None  # the start is a restart after a stop nobody asked for
    kept_off: bool = False  # its run policy keeps it off although the manifest says running

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
        return _plan_absent(spec, domain, context, actual.config_drives)
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
    spec: InstanceSpec, domain: DomainFacts | None, context: PlanContext, drives: frozenset[str]
) -> InstancePlan:
    return plan_removal(
        spec.name, domain, context, drives, spec.shutdown_timeout_seconds, "state: absent"
    )


def plan_removal(
    name: str,
    domain: DomainFacts | None,
    context: PlanContext,
    drives: frozenset[str],
    timeout_seconds: int,
    reason: str,
) -> InstancePlan:
    """Delete an instance's domain (for `state: absent`, or a prune): stop it gracefully,
    undefine it (its NVRAM and managed save image with it), remove its config drives and, as
    its recorded deletionPolicy says, its disks. A protected domain is refused."""
    if domain is None:
        return InstancePlan(name)
    definition = domain.definition
    if definition.protected:
        return InstancePlan(
            name,
            refusal=(
                f"the domain is protected (protect: true is recorded on it), so {reason} does "
                "not delete it; set protect: false with the instance kept, apply, then remove it"
            ),
        )
    steps: list[Step] = []
    if domain.interrupted:
        steps.append(RecoverDomain(name, domain.state_reason))
    elif domain.state.active:
        steps.append(StopDomain(name, timeout_seconds))
    steps.append(UndefineDomain(name, context.paths.directory, not definition.delete_disks))
    doomed = [context.paths.directory / drive for drive in sorted(drives)]
    doomed += [
        Path(disk.path)
        for disk in definition.disks
        if disk.device == "disk"
        and (definition.delete_disks or disk.delete_when_removed)
        and Path(disk.path).parent == context.paths.directory
    ]
    if doomed:
        steps.append(RemoveFiles(name, tuple(doomed), "files of the deleted instance"))
    return InstancePlan(name, tuple(steps))


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

    # the machine the manifest asks for, and what the running domain still lacks after the
    # changes it can take live
    uuid = domain.uuid if domain else instance_uuid(context.state_dir_id or "", spec.name)
    content = _drive_content(spec, uuid)
    drive = None if content is None else paths.directory / f"config-{content.digest[:16]}.iso"
    shape = _wanted_machine(spec, domain, context, choice.accelerator, drive)
    live = domain.live_definition if domain is not None and active else None
    live_steps, live_after = _live_changes(spec.name, live, shape)
    needs_restart = live_after is not None and running_shape(live_after) != running_shape(shape)
    replacing = _replacing(spec, actual, context)
    # runPolicy Halted keeps the domain off; the others decide about a stop nobody asked for
    halted = spec.run_policy is RunPolicy.HALTED
    run = spec.state is DesiredState.RUNNING and not halted
    restart = (
        active
        and run
        and (
            replacing is not None or (needs_restart and spec.update_policy is UpdatePolicy.RESTART)
        )
    )
    stopping = active and (not run or restart)
    unasked = run and not active and domain is not None and _stopped_unasked(domain)
    held = _held_by_run_policy(spec, domain) if unasked and domain is not None else None
    if held is not None:
        notes.append(held)
    starting = run and held is None and (not active or restart)
    restart_after = _stop_reason(domain) if unasked and starting and domain is not None else None

    if stopping:  # before the disks: a replaced or offline-grown disk must not be in use
        steps.append(StopDomain(spec.name, spec.shutdown_timeout_seconds))
    steps += _disk_steps(
        spec, actual, context, shape, replacing, starting, online=active and not stopping
    )
    if actual.overlay is None and domain is not None:  # allowed by _refusal: allowReplace
        notes.append(f"disk {paths.disk} was missing: a new, empty one is made (allowReplace)")
    if actual.overlay is not None and domain is None:
        # an interrupted creation (disk made, define refused or never reached), or a domain
        # undefined by hand: the disk is this instance's (checked against its base above)
        notes.append(
            f"completing the instance: its disk {paths.disk.name} exists without a domain (a "
            "creation cut short, or a domain undefined by hand) and is used as it is"
        )
    if content is not None and drive is not None and drive.name not in actual.config_drives:
        steps.append(BuildConfigDrive(spec.name, drive, content))
    if actual.base_changed:
        notes.append(
            f"cached base {context.base_path.name} changed since it was verified: it is "
            "checked again before use, and fetched again if it no longer matches"
        )
    paused = domain is not None and domain.state is PowerState.PAUSED
    if paused and domain is not None and domain.state_reason == "user" and not stopping:
        notes.append("domain was paused by hand; it is left paused")

    digest = shape.spec_digest()
    running_on = active and not stopping
    # drift: a definition edited behind the reconciler's back, its marker left as it was
    drift = (
        domain is not None
        and domain.marker is not None
        and domain.marker.spec_digest == digest
        and shape_of(domain.definition) != shape_of(shape)
    )
    if domain is None or domain.marker is None or domain.marker.spec_digest != digest or drift:
        changes, effect = _redefinition(domain, shape, running_on, needs_restart, starting, restart)
        if drift:
            changes = tuple(change.as_drift() for change in changes)
        marker = OwnershipMarker(str(spec.manifest), digest, context.state_dir_id or "")
        machine = dataclasses.replace(shape, uuid=uuid, marker=marker)
        steps.append(DefineDomain(spec.name, machine, changes, effect))
    if running_on:
        steps += live_steps
    pending_restart = running_on and needs_restart
    if pending_restart:
        notes.append(
            "running with an older definition: the domain takes the change at its next restart "
            "(updatePolicy: next-boot); set updatePolicy: restart, or stop and start it, to "
            "apply it now"
        )
    if drive is not None and domain is not None and drive.name not in actual.config_drives:
        notes.append(_drive_note(spec, uuid))
    # libvirt's autostart: set after the definition (where the driver keeps it at all)
    known = domain is not None and domain.autostart is not None
    if (known and domain is not None and domain.autostart != spec.autostart) or (
        domain is None and spec.autostart
    ):
        steps.append(SetAutostart(spec.name, spec.autostart))
    if starting:
        risky = choice.accelerator is Accelerator.KVM and not context.kvm.usable
        if risky:
            notes.append(f"KVM was requested, but {context.kvm.reason}: the guest may fail")
        watch = START_WATCH_SECONDS if risky else 0.0
        steps.append(StartDomain(spec.name, choice, spec.image, watch))
    steps += _removals(
        spec.name, actual, domain, drive, shape, live_after if running_on else None, paths
    )
    kept_off = spec.state is DesiredState.RUNNING and not starting and not active
    return InstancePlan(
        spec.name,
        tuple(steps),
        None,
        tuple(notes),
        choice,
        pending_restart,
        restart_after,
        kept_off or (halted and spec.state is DesiredState.RUNNING),
    )


def _wanted_machine(
    spec: InstanceSpec,
    domain: DomainFacts | None,
    context: PlanContext,
    accelerator: Accelerator,
    drive: Path | None,
) -> Machine:
    """The machine `spec` asks for (its shape), with its MACs and disk targets chosen against
    the current definition."""
    paths = context.paths
    current = domain.definition if domain else None
    macs = choose_macs(spec.name, spec.networks, current, context.macs_in_use)
    layout = DomainLayout(
        str(paths.disk),
        str(paths.console_log),
        accelerator,
        None if drive is None else str(drive),
        build_nics(spec.networks, macs),
        data_disk_devices(spec.disks, paths.directory, current),
        str(paths.directory / NVRAM_FILE),
    )
    return build_machine(spec, layout)


def _live_changes(
    name: str, live: Machine | None, wanted: Machine
) -> tuple[list[Step], Machine | None]:
    """The steps that change the running domain (`live`) towards `wanted` without a restart,
    and what it is after them. One branch per live-class change."""
    if live is None:
        return [], None
    steps: list[Step] = []
    after = live
    # a rebuilt config drive: a medium change
    drive, running_drive = wanted.config_drive_path, live.config_drive_path
    if drive is not None and running_drive is not None and running_drive != drive:
        steps.append(ChangeMedium(name, CONFIG_DRIVE_TARGET, Path(drive)))
        after = with_config_drive(after, drive)
    # memory within the maximum: the balloon
    if live_memory_change(live, wanted):
        steps.append(SetMemory(name, wanted.memory_kib))
        after = dataclasses.replace(after, memory_kib=wanted.memory_kib)
    # vCPUs within the maximum
    if live_vcpu_change(live, wanted):
        steps.append(SetVcpus(name, wanted.vcpus))
        after = dataclasses.replace(after, vcpus=wanted.vcpus)
    # data disks on a bus that takes hot-plugging: attached and detached
    running = {disk.path: disk for disk in live.data_disks}
    disks = dict(running)
    for disk in wanted.data_disks:
        if disk.path not in running and disk.hotpluggable:
            steps.append(AttachDisk(name, disk))
            disks[disk.path] = disk
    wanted_paths = {disk.path for disk in wanted.data_disks}
    for path, disk in running.items():
        if path not in wanted_paths and disk.hotpluggable:
            steps.append(DetachDisk(name, disk))
            del disks[path]
    others = tuple(disk for disk in after.disks if not disk.is_data_disk)
    after = dataclasses.replace(after, disks=others + tuple(disks.values()))
    # NICs added at the end or removed from the end: attached and detached
    if live_nic_change(live, wanted):
        kept = min(len(live.nics), len(wanted.nics))
        steps += [DetachNic(name, nic, i) for i, nic in enumerate(live.nics) if i >= kept]
        steps += [AttachNic(name, nic, i) for i, nic in enumerate(wanted.nics) if i >= kept]
        after = dataclasses.replace(after, nics=wanted.nics)
    return steps, after


def _disk_steps(
    spec: InstanceSpec,
    actual: InstanceActual,
    context: PlanContext,
    shape: Machine,
    replacing: str | None,
    starting: bool,
    *,
    online: bool,
) -> list[Step]:
    """The boot disk (fetched base, overlay, a replacement, growth) and the data disks (made
    empty, grown)."""
    steps: list[Step] = []
    paths, overlay = context.paths, actual.overlay
    fetch = FetchBase(spec.name, spec.image, context.base_path, context.source_size)
    if replacing is not None:
        aside = paths.directory / aside_name(overlay)
        steps.append(MoveDiskAside(spec.name, paths.disk, aside, replacing))
    if overlay is None or replacing is not None:
        if not actual.base_cached:
            steps.append(fetch)
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
    else:
        if not actual.base_cached and starting:
            steps.append(fetch)
        if overlay.virtual_size < spec.disk_bytes:
            steps.append(
                ResizeDisk(spec.name, paths.disk, overlay.virtual_size, spec.disk_bytes, online)
            )
    existing = {disk.path: disk for disk in actual.data_disks}
    for disk_spec, device in zip(spec.disks, shape.data_disks, strict=True):
        path = Path(device.path)
        found = existing.get(device.path)
        if found is None:
            steps.append(CreateDataDisk(spec.name, path, device.format, disk_spec.size_bytes))
        elif found.virtual_size < disk_spec.size_bytes:
            growth = ResizeDisk(
                spec.name, path, found.virtual_size, disk_spec.size_bytes, online, device.target,
                device.format,
            )  # fmt: skip
            steps.append(growth)
    return steps


def _redefinition(
    domain: DomainFacts | None,
    shape: Machine,
    running: bool,
    needs_restart: bool,
    starting: bool,
    restart: bool,
) -> tuple[tuple[Change, ...], str]:
    """What a definition changes, and when it takes effect, in words."""
    if domain is None:
        return (), "new"
    if shape_of(domain.definition) == shape_of(shape):  # only the marker is out of date
        return (Change("ownership marker updated", ChangeClass.LIVE),), "the machine is unchanged"
    changes = describe_changes(domain.definition, shape)
    if restart:
        effect = (
            "takes effect now: the domain is shut down and started again (updatePolicy: restart)"
        )
    elif running and needs_restart and any(c.kind is ChangeClass.LIVE for c in changes):
        effect = "live changes now, the rest at the next restart of the running domain"
    elif running and needs_restart:
        effect = "takes effect at the next restart of the running domain"
    elif running:
        effect = "takes effect now on the running domain"
    elif starting:
        effect = "takes effect now: the domain starts next"
    else:
        effect = "takes effect at the next start"
    return changes, effect


def _removals(
    name: str,
    actual: InstanceActual,
    domain: DomainFacts | None,
    drive: Path | None,
    shape: Machine,
    live_after: Machine | None,
    paths: InstancePaths,
) -> list[Step]:
    """Files nothing uses once the plan is carried out: replaced config drives, and data disks
    that left the manifest with deletionPolicy: delete (once detached)."""
    steps: list[Step] = []
    in_use = {drive.name} if drive is not None else set()
    if live_after is not None and live_after.config_drive_path is not None:
        in_use.add(Path(live_after.config_drive_path).name)
    stale = sorted(actual.config_drives - in_use)
    if stale:
        steps.append(RemoveFiles(name, tuple(paths.directory / n for n in stale)))
    if domain is not None:
        wanted = {disk.path for disk in shape.data_disks}
        running = set() if live_after is None else {d.path for d in live_after.data_disks}
        doomed = tuple(
            Path(disk.path)
            for disk in domain.definition.data_disks
            if disk.delete_when_removed and disk.path not in wanted and disk.path not in running
        )
        if doomed:
            steps.append(RemoveFiles(name, doomed, "data disk (deletionPolicy: delete)"))
    return steps


# shutoff reasons of a domain whose QEMU or guest failed ("unknown": the stop was not seen,
# as when no process held the embedded driver when QEMU died)
_FAILURE_REASONS = ("crashed", "failed", "unknown")


def _stopped_unasked(domain: DomainFacts) -> bool:
    """Whether the domain is off although the manifest last asked for it to run (the state
    recorded on the domain): a stop nobody asked for, which the run policy decides about."""
    return domain.definition.asked_running is True


def _stop_reason(domain: DomainFacts) -> str:
    return "crashed" if domain.state is PowerState.CRASHED else domain.state_reason


def _held_by_run_policy(spec: InstanceSpec, domain: DomainFacts) -> str | None:
    """Why the run policy keeps a domain off after a stop nobody asked for (None: start it).
    One branch per policy."""
    reason = _stop_reason(domain)
    again = "set state: stopped, apply, then state: running to start it again"
    if spec.run_policy is RunPolicy.RERUN_ON_FAILURE and reason not in _FAILURE_REASONS:
        return (
            f"runPolicy RerunOnFailure: the domain stopped without a failure ({reason}); it is "
            f"left off ({again})"
        )
    if spec.run_policy is RunPolicy.MANUAL:
        return (
            f"runPolicy Manual: the domain stopped ({reason}) after its first start; it is not "
            f"started again ({again})"
        )
    return None


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
        # another base under the existing disk (unless the manifest allows replacing it)
        change = _base_change(spec, overlay, context)
        if change is not None and not spec.allow_replace:
            return _replacement(
                f"disk {paths.disk} {change}: changing the base image would discard the guest's "
                "data (allowReplace: true replaces the disk)"
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


def _base_change(spec: InstanceSpec, overlay: DiskFacts, context: PlanContext) -> str | None:
    """How the base under the existing boot disk differs from the manifest's (None: it does
    not)."""
    if overlay.backing_file == str(context.base_path) and (
        overlay.backing_format == spec.image.cached_format.value
    ):
        return None
    return (
        f"is built on {overlay.backing_file} ({overlay.backing_format}), the manifest asks for "
        f"{context.base_path.name}"
    )


def _replacing(spec: InstanceSpec, actual: InstanceActual, context: PlanContext) -> str | None:
    """Why the boot disk is replaced this pass (None: it is not): a new base, allowed."""
    if actual.overlay is None or not spec.allow_replace:
        return None
    return _base_change(spec, actual.overlay, context)


def aside_name(overlay: DiskFacts | None) -> str:
    """The name a replaced boot disk is moved to: it says which base it was built on."""
    base = Path(overlay.backing_file or "unknown").name if overlay is not None else "unknown"
    return f"disk.qcow2.{REPLACED_SUFFIX}-{base[:40]}"


def _replacement(problem: str) -> str:
    return f"{problem}; the disk would have to be replaced, so nothing was changed"
