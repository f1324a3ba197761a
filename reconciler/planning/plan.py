"""Plan: a pure function from (desired, actual) to the ordered steps that converge them.

No I/O here: `reconcile plan` prints the result as it is, and the unit tests table-test it.
Step order is always: recover an interrupted transition, fetch base, create overlay, build
the config drive, stop, resize, define, swap the config drive's medium, start, remove
replaced config drives (or, for `state: absent`: recover, stop, undefine).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from reconciler.layout import InstancePaths
from reconciler.model.accel import resolve_accelerator
from reconciler.model.actual import (
    DiskFacts,
    DomainFacts,
    InstanceActual,
    PowerState,
    StateReason,
)
from reconciler.model.desired import (
    Accelerator,
    DesiredState,
    InstanceSpec,
    RunPolicy,
    UpdatePolicy,
)
from reconciler.model.machine import Machine, OwnershipMarker
from reconciler.model.resolved import ResolvedInstance
from reconciler.planning import snapshots
from reconciler.planning.cloudinit import DriveContent, drive_content
from reconciler.planning.context import InstancePlan, PlanContext
from reconciler.planning.disks import data_disk_devices
from reconciler.planning.live import disk_steps, live_changes, removals
from reconciler.planning.machine import (
    Change,
    ChangeClass,
    DomainLayout,
    build_machine,
    describe_changes,
    running_shape,
    shape_of,
)
from reconciler.planning.network import build_nics, choose_macs, instance_uuid
from reconciler.planning.removal import plan_removal
from reconciler.planning.review import PlanView
from reconciler.planning.runpolicy import (
    PowerFacts,
    decide_power,
    held_by_run_policy,
    stop_reason,
    stopped_unasked,
)
from reconciler.planning.steps import (
    BuildConfigDrive,
    DefineDomain,
    RecoverDomain,
    ReleaseHold,
    ResumeDomain,
    SetAutostart,
    StartDomain,
    Step,
    StepKind,
    StopDomain,
    TakeSnapshot,
    ThawFilesystems,
)
from reconciler.sizes import format_size

__all__ = [
    "InstancePlan",
    "PlanContext",
    "PlanView",
    "Step",
    "StepKind",
    "plan_instance",
    "plan_removal",
]


# Where KVM is forced against the probe's advice, guests typically pause on an emulation
# failure within seconds of starting; the start step watches that long for it.
START_WATCH_SECONDS = 10.0


_RESTARTING_POLICIES = frozenset({RunPolicy.ALWAYS, RunPolicy.RERUN_ON_FAILURE})


def plan_instance(
    resolved: ResolvedInstance, actual: InstanceActual, context: PlanContext
) -> InstancePlan:
    """Decide what converges the resolved spec from `actual`; refuse what would harm data or
    others."""
    spec = resolved.spec
    domain = actual.domain
    if domain is not None:
        foreign = foreign_reason(domain, context)
        if foreign is not None:
            adopt = (
                f", or adopt it if it is the machine this manifest describes (reconcile adopt "
                f"{spec.name} DIR)"
                if domain.marker is None
                else ""
            )
            return InstancePlan(
                spec.name,
                refusal=(
                    f"a domain named {spec.name!r} exists but {foreign}; it is left "
                    f"untouched: rename the instance or remove that domain yourself{adopt}"
                ),
            )
    if spec.state is DesiredState.ABSENT:
        return _plan_absent(spec, domain, context, actual.config_drives | actual.snapshot_records)
    return _plan_present(resolved, actual, context)


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
    spec: InstanceSpec, domain: DomainFacts | None, context: PlanContext, files: frozenset[str]
) -> InstancePlan:
    return plan_removal(
        spec.name, domain, context, files, spec.shutdown_timeout_seconds, "state: absent"
    )


def _plan_present(
    resolved: ResolvedInstance, actual: InstanceActual, context: PlanContext
) -> InstancePlan:
    spec = resolved.spec
    domain = actual.domain
    paths = context.paths
    choice = resolve_accelerator(spec.accelerator or context.default_accelerator, context.kvm)
    refusal = _refusal(resolved, actual, context)
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
    drive = None if content is None else paths.config_drive(content.digest)
    shape = _wanted_machine(spec, domain, context, choice.accelerator, drive)
    digest = shape.spec_digest(spec.labels)
    held = _held(spec.name, actual, digest, paths)
    if held is not None:
        return held
    live = domain.live_definition if domain is not None and active else None
    live_steps, live_after = live_changes(spec.name, live, shape)
    needs_restart = live_after is not None and running_shape(live_after) != running_shape(shape)
    replacing = _replacing(resolved, actual)
    # runPolicy Halted keeps the domain off; the others decide about a stop nobody asked for
    halted = spec.run_policy is RunPolicy.HALTED
    run = spec.state is DesiredState.RUNNING and not halted
    # a liveness probe failing past its threshold restarts the guest where the run policy
    # restarts failed guests; elsewhere it is only said
    liveness = actual.liveness_failed if active else None
    restart_for_liveness = liveness is not None and spec.run_policy in _RESTARTING_POLICIES
    power = decide_power(
        PowerFacts(
            run=run,
            exists=domain is not None,
            active=active,
            change_needs_restart=replacing is not None
            or restart_for_liveness
            or (needs_restart and spec.update_policy is UpdatePolicy.RESTART),
            stopped_unasked=domain is not None and stopped_unasked(domain),
            # shut down with the host (reconcile shutdown-guests): started again, whatever
            # the policy
            host_shutdown=actual.host_shutdown,
            held=held_by_run_policy(spec, domain) if domain is not None else None,
        )
    )
    restart, stopping, starting = power.restart, power.stop, power.start
    host_shutdown = power.after_host_shutdown
    if power.held is not None:
        notes.append(power.held)
    restart_after: str | None = None
    if power.after_unasked_stop and domain is not None:
        restart_after = stop_reason(domain)
    if restart_for_liveness and restart:  # crash-loop guarded, as a start after a failure
        restart_after = f"liveness failed: {liveness}"
    elif liveness is not None:
        notes.append(
            f"liveness failed: {liveness}; runPolicy {spec.run_policy.value} only reports it "
            "(Always and RerunOnFailure restart the guest)"
        )

    if stopping:  # before the disks: a replaced or offline-grown disk must not be in use
        steps.append(StopDomain(spec.name, spec.shutdown_timeout_seconds))
    elif _paused_on_io_error(domain) and spec.state is DesiredState.RUNNING:
        steps.append(ResumeDomain(spec.name, paths.directory))
    steps += disk_steps(
        resolved, actual, context, shape, replacing, starting, online=active and not stopping
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
    forecasts = (
        (
            f"cached base {resolved.base_path.name} changed since it was verified: it is "
            "checked again before use, and fetched again if it no longer matches",
        )
        if resolved.base_changed
        else ()
    )
    paused = domain is not None and domain.state is PowerState.PAUSED
    if paused and domain is not None and domain.state_reason is StateReason.USER and not stopping:
        notes.append("domain was paused by hand; it is left paused")

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
        instance_id = None if content is None else spec.guest.instance_id or uuid
        marker = OwnershipMarker(
            str(spec.manifest), digest, context.state_dir_id or "", instance_id, spec.labels
        )
        machine = dataclasses.replace(shape, uuid=uuid, marker=marker)
        problems = context.cannot_express(machine)  # what the driver cannot run is refused
        if problems:
            return InstancePlan(spec.name, refusal="; ".join(problems))
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
        notes.append(_drive_note(spec, uuid, domain.marker))
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
        record = paths.host_shutdown if host_shutdown else None
        steps.append(StartDomain(spec.name, choice, spec.image, watch, record))
    problem = _add_snapshot_steps(resolved, actual, context, steps, digest)
    if problem is not None:
        return InstancePlan(spec.name, refusal=problem, accelerator=choice)
    due_in = snapshots.due_in(spec, actual, steps, context.now)
    if actual.hold is not None:  # the manifest changed since the revert (see _held)
        steps.insert(0, ReleaseHold(spec.name, paths.hold, actual.hold.label))
    if actual.frozen:  # a stopped guest has nothing frozen: the step only removes the marker
        steps.insert(0, ThawFilesystems(spec.name, paths.fs_frozen))
    recorded = _recorded_drive(domain, steps)
    removal_steps, removal_notes = removals(
        spec.name, actual, domain, drive, shape, live_after if running_on else None, paths,
        recorded,
    )  # fmt: skip
    steps += removal_steps
    notes += removal_notes
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
        forecasts,
        snapshot_due_in=due_in,
    )


def _recorded_drive(domain: DomainFacts | None, steps: list[Step]) -> frozenset[str]:
    """The config drive of the definition a snapshot of this plan records (kept: a revert
    puts that definition back), if the plan takes one."""
    drive = domain.definition.config_drive_path if domain is not None else None
    if drive is None or not any(isinstance(step, TakeSnapshot) for step in steps):
        return frozenset()
    return frozenset({Path(drive).name})


def _held(
    name: str, actual: InstanceActual, digest: str, paths: InstancePaths
) -> InstancePlan | None:
    """The plan of an instance a revert holds (None: none does, or the manifest asks for
    something else since, which ends the hold): nothing is done, and it says why. A revert
    cut short holds it too, as a failure that says how to finish it."""
    hold = actual.hold
    if hold is None:
        return None
    if not hold.complete:
        return InstancePlan(
            name,
            refusal=(
                f"a revert to snapshot {hold.label} was cut short: run `reconcile revert {name} "
                f"{hold.label}` again to finish it, or `reconcile resume {name}` to apply the "
                "manifest to the disks as they are"
            ),
        )
    if hold.reverted_digest != digest:
        return None
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(hold.at))
    return InstancePlan(
        name,
        notes=(
            f"held: reverted to snapshot {hold.label} at {when}; the manifest still asks for "
            f"the change that was reverted, which is not applied again until the manifest "
            f"changes or `reconcile resume {name}`",
        ),
        held=True,
    )


def _add_snapshot_steps(
    resolved: ResolvedInstance,
    actual: InstanceActual,
    context: PlanContext,
    steps: list[Step],
    digest: str,
) -> str | None:
    """Put the snapshot steps the policy asks for into `steps`: the restore point before a
    disruptive change, one the schedule asks for, and the removal of those past keep or
    expiry. Why the change cannot go ahead, when its restore point cannot be taken."""
    spec, paths = resolved.spec, context.paths
    before = snapshots.before_change(spec, actual, steps, digest, paths)
    if before is not None and actual.snapshot_problem is not None:
        return (
            f"{actual.snapshot_problem}: the restore point before the change cannot be taken, so "
            "nothing was changed"
        )
    if actual.snapshot_problem is not None:
        return None  # no automatic snapshot is taken or removed while a table is unreadable
    taking = []
    if before is not None:
        where, step = before
        steps.insert(where, step)
        taking.append(step)
    elif not steps:  # a scheduled one waits for a quiet pass
        due = snapshots.scheduled(spec, actual, paths, context.now)
        if due is not None:
            steps.append(due)
            taking.append(due)
    removal = snapshots.pruned(spec, actual, tuple(taking), paths, context.now)
    if removal is not None:
        position = steps.index(taking[-1]) + 1 if taking else len(steps)
        steps.insert(position, removal)
    return None


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
        str(paths.nvram),
    )
    return build_machine(spec, layout)


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


def _drive_content(spec: InstanceSpec, uuid: str) -> DriveContent | None:
    """The config drive's files (None when the manifest configures nothing in the guest)."""
    if not spec.guest.configured:
        return None
    return drive_content(spec.guest, spec.name, spec.guest.instance_id or uuid)


def _drive_note(spec: InstanceSpec, uuid: str, marker: OwnershipMarker | None) -> str:
    """What a guest that has booted makes of a rebuilt config drive: the same instance-id
    (cloud-init applies most modules once per instance-id), or a new one (recorded on the
    domain with the drive it was written to)."""
    instance_id = spec.guest.instance_id or uuid
    before = marker.instance_id if marker is not None else None
    if before is not None and before != instance_id:
        return (
            f"config drive rebuilt with a new instance-id {instance_id} (was {before}): "
            "cloud-init takes the guest for a new instance at its next boot and applies its "
            "per-instance modules (users, keys, write_files, runcmd) again"
        )
    return (
        f"config drive rebuilt with instance-id {instance_id} unchanged: the guest sees the new "
        "files on the drive, but cloud-init applies most modules (users, keys, write_files) "
        "only once per instance-id; see the README to make it run them again"
    )


def _refusal(
    resolved: ResolvedInstance, actual: InstanceActual, context: PlanContext
) -> str | None:
    """Why converging the spec would harm data or cannot work (None when it can go ahead).
    One branch per reason."""
    spec = resolved.spec
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
    base_size = resolved.base_virtual_size
    if overlay is None and base_size is not None and spec.disk_bytes < base_size:
        return (
            f"disk.size {format_size(spec.disk_bytes)} is smaller than the base image's virtual "
            f"size {format_size(base_size)}; ask for at least {format_size(base_size)}"
        )
    if overlay is not None:
        # another base under the existing disk (unless the manifest allows replacing it)
        change = _base_change(resolved, overlay)
        if change is not None and not spec.allow_replace:
            base = spec.image.cached_format.value
            return _replacement(
                f"disk {paths.disk} {change}: changing the base image would discard the guest's "
                "data (allowReplace: true replaces the disk). If it is the same image at another "
                f"path (a disk made by hand: sha256sum {overlay.backing_file} prints "
                f"{spec.image.sha256 or 'the sha256 of ' + str(spec.image.location)}), point the "
                "disk at the cached copy instead, with the domain shut off, which keeps its data: "
                f"qemu-img rebase -u -F {base} -b {resolved.base_path} {paths.disk}"
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
    # paused on an error (not by hand, not an interrupted transition, not an I/O error: that
    # one is resumed once its file system has room): report, do not act
    if (
        domain is not None
        and domain.state is PowerState.PAUSED
        and not domain.interrupted
        and domain.state_reason not in (StateReason.USER, StateReason.IOERROR)
        and spec.state is not DesiredState.STOPPED
    ):
        return (
            f"domain is paused after an error (reason: {domain.state_reason}); it is not "
            "running. Set state: stopped to stop it, then running to start it again"
        )
    return None


def _paused_on_io_error(domain: DomainFacts | None) -> bool:
    """QEMU paused the guest on an I/O error (werror=stop: a full file system, typically)."""
    return (
        domain is not None
        and domain.state is PowerState.PAUSED
        and domain.state_reason is StateReason.IOERROR
    )


def _base_change(resolved: ResolvedInstance, overlay: DiskFacts) -> str | None:
    """How the base under the existing boot disk differs from the manifest's (None: it does
    not)."""
    if overlay.backing_file == str(resolved.base_path) and (
        overlay.backing_format == resolved.spec.image.cached_format.value
    ):
        return None
    return (
        f"is built on {overlay.backing_file} ({overlay.backing_format}), the manifest asks for "
        f"{resolved.base_path.name}"
    )


def _replacing(resolved: ResolvedInstance, actual: InstanceActual) -> str | None:
    """Why the boot disk is replaced this pass (None: it is not): a new base, allowed."""
    if actual.overlay is None or not resolved.spec.allow_replace:
        return None
    return _base_change(resolved, actual.overlay)


def _replacement(problem: str) -> str:
    return f"{problem}; the disk would have to be replaced, so nothing was changed"
