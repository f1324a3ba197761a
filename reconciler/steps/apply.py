"""Steps: the only code that changes disk files and domains. Each re-checks its precondition
before acting, so a step planned from stale facts does the right thing or nothing."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

from reconciler.clock import Clock
from reconciler.drivers.base import Driver
from reconciler.errors import DriverError, InstanceError, ReplacementNeeded, StepError
from reconciler.fileops import (
    fsync_directory,
    is_out_of_space,
    no_space_left,
    publish,
    remove_leftovers,
    temporary_path,
    write_atomically,
)
from reconciler.images.cache import ImageCache
from reconciler.images.diskheaders import (
    HeaderError,
    image_virtual_size,
    parse_qcow2_header,
    read_head,
)
from reconciler.images.qemuimg import QemuImg
from reconciler.model.actual import INTERRUPTED_REASONS, DomainFacts, PowerState
from reconciler.model.desired import ImageSource
from reconciler.planning.steps import (
    AttachDisk,
    AttachNic,
    BuildConfigDrive,
    ChangeMedium,
    CreateDataDisk,
    CreateOverlay,
    DefineDomain,
    DeleteSnapshots,
    DetachDisk,
    DetachNic,
    FetchBase,
    MoveDiskAside,
    RecoverDomain,
    ReleaseHold,
    RemoveFiles,
    ResizeDisk,
    ResumeDomain,
    SetAutostart,
    SetMemory,
    SetVcpus,
    StartDomain,
    Step,
    StopDomain,
    TakeSnapshot,
    ThawFilesystems,
    UndefineDomain,
)
from reconciler.sizes import format_size
from reconciler.steps import devices, snapshots
from reconciler.steps.configdrive import render_iso

LOG = logging.getLogger(__name__)
POLL_SECONDS = 0.25
# a guest started where its accelerator may not work is watched until it has used this much
# CPU time (a guest that faults does so at its bootloader, long before), up to this long
WATCH_CPU_SECONDS = 2.0
WATCH_LONGEST_SECONDS = 120.0
SHUTDOWN_REPRESS_SECONDS = 10  # as Nova's SHUTDOWN_RETRY_INTERVAL
# libvirt itself tears down a start it finds interrupted when it reconnects to the domain, in
# the background, about a second after the connection opens: wait that long before acting.
RECOVER_SETTLE_SECONDS = 5.0
# a domain paused on an I/O error is resumed when its disks' file system has this much room
# (or a twentieth of its size, if that is less), and watched this long for a pause again
RESUME_ROOM_BYTES = 64 * 1024**2
RESUME_WATCH_SECONDS = 2.0
RECOVER_STOP_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class StepContext:
    """What steps act through."""

    driver: Driver
    cache: ImageCache
    qemu_img: QemuImg
    clock: Clock = field(default_factory=Clock)


def apply_step(step: Step, context: StepContext) -> str:
    """Carry out one step; return what was done, in words. Raises ReconcilerError subclasses."""
    match step:
        case RecoverDomain():
            return _recover(step, context)
        case ResumeDomain():
            return _resume(step, context)
        case FetchBase():
            use = context.cache.ensure(step.image)
            done = (
                "fetched base image into the cache" if use.fetched else "base image already cached"
            )
            return _with_note(done, use.note)
        case CreateOverlay():
            return _create_overlay(step, context)
        case ResizeDisk():
            return _resize_disk(step, context)
        case CreateDataDisk():
            return devices.create_data_disk(step, context.qemu_img)
        case MoveDiskAside():
            return devices.move_disk_aside(step)
        case SetMemory():
            return devices.set_memory(step, context.driver)
        case SetVcpus():
            return devices.set_vcpus(step, context.driver)
        case AttachDisk():
            return devices.attach_disk(step, context.driver)
        case DetachDisk():
            return devices.detach_disk(step, context.driver)
        case AttachNic():
            return devices.attach_nic(step, context.driver)
        case DetachNic():
            return devices.detach_nic(step, context.driver)
        case SetAutostart():
            return devices.set_autostart(step, context.driver)
        case BuildConfigDrive():
            return _build_config_drive(step)
        case ChangeMedium():
            return _change_medium(step, context)
        case RemoveFiles():
            return _remove_files(step)
        case DefineDomain():
            context.driver.define(step.machine)
            return "defined domain" if not step.changes else f"redefined domain ({step.effect})"
        case StartDomain():
            return _start(step, context)
        case StopDomain():
            return _stop(step.instance, step.timeout_seconds, context)
        case UndefineDomain():
            return _undefine(step, context)
        case ThawFilesystems():
            return snapshots.thaw_filesystems(step, context)
        case TakeSnapshot():
            return snapshots.take_snapshot(step, context)
        case DeleteSnapshots():
            return snapshots.delete_snapshots(step, context)
        case ReleaseHold():
            return snapshots.release_hold(step)


def _with_note(done: str, note: str | None) -> str:
    return f"{done} ({note})" if note else done


def _create_overlay(step: CreateOverlay, context: StepContext) -> str:
    if step.path.exists():
        _check_existing_overlay(step)
        return "disk already exists"
    use = context.cache.ensure(step.image)
    try:
        base_size = image_virtual_size(str(use.path), step.base_format)
    except (HeaderError, OSError) as err:
        raise StepError(f"cannot read the size of base {use.path}: {err}") from err
    if step.size < base_size:  # the plan checks this too, where the base's size is known
        raise InstanceError(
            f"disk.size {format_size(step.size)} is smaller than the base image's virtual size "
            f"{format_size(base_size)}; ask for at least {format_size(base_size)}"
        )
    step.path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(step.path)
    temporary = temporary_path(step.path)
    try:
        context.qemu_img.create_overlay(temporary, step.base_path, step.base_format, step.size)
        publish(temporary, step.path)
    finally:
        temporary.unlink(missing_ok=True)
    return _with_note(f"created disk ({format_size(step.size)})", use.note)


def _check_existing_overlay(step: CreateOverlay) -> None:
    try:
        header = parse_qcow2_header(read_head(str(step.path)))
    except (HeaderError, OSError) as err:
        raise ReplacementNeeded(f"{step.path} exists but is not our qcow2 disk: {err}") from err
    if header.backing_file != str(step.base_path):
        raise ReplacementNeeded(f"{step.path} exists with another base: {header.backing_file}")


def _remove_files(step: RemoveFiles) -> str:
    """Each file is renamed to a temporary name first, then removed: a crash in between
    leaves a leftover (removed by the next pass), never a file that looks like a real one.
    A path is removed only when its directory, symlinks resolved, is the instance's own, and
    only the entry itself goes (a symlink, never what it points to)."""
    own = os.path.realpath(step.directory)
    removed: list[str] = []
    for path in step.paths:
        if os.path.realpath(path.parent) != own or path.name in ("", ".", ".."):
            LOG.warning("%s: not removing %s: it is not in %s", step.instance, path, own)
            continue
        doomed = temporary_path(path)
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            continue
        doomed.unlink()
        removed.append(str(path))
    if removed:
        fsync_directory(step.directory)
    return "removed " + (", ".join(removed) or "nothing (already gone)")


def _build_config_drive(step: BuildConfigDrive) -> str:
    """Write the ISO (0600: user-data often holds secrets); its name carries its content's
    digest, so an existing file is already the right one."""
    if step.path.exists():
        return "config drive already built"
    image = render_iso(step.content)
    try:
        step.path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(step.path)
        write_atomically(step.path, image, 0o600)
    except OSError as err:
        if is_out_of_space(err):
            raise no_space_left(err, step.path, len(image)) from err
        raise
    return f"built config drive {step.path.name} ({format_size(len(image))})"


def _change_medium(step: ChangeMedium, context: StepContext) -> str:
    record = context.driver.lookup(step.instance)
    if record is None or not record.state.active:
        return "domain not running: the new config drive is used at its next start"
    live = record.live_definition if isinstance(record, DomainFacts) else None
    if live is not None and live.config_drive_path == str(step.path):
        return "config drive medium already swapped"
    context.driver.change_medium(step.instance, step.target, str(step.path))
    return f"swapped the config drive medium to {step.path.name}"


def _resize_disk(step: ResizeDisk, context: StepContext) -> str:
    record = context.driver.lookup(step.instance)
    if record is not None and record.state.active:
        context.driver.resize_disk(step.instance, step.target, step.size)
        return f"grew disk {step.target} to {format_size(step.size)} online"
    try:
        if step.format == "qcow2":
            current = parse_qcow2_header(read_head(str(step.path))).virtual_size
        else:  # a raw disk is never probed: its size is its file's
            current = step.path.stat().st_size
    except (HeaderError, OSError) as err:
        raise StepError(f"cannot read {step.path} before resizing: {err}") from err
    if current >= step.size:
        return "disk already large enough"
    context.qemu_img.resize(step.path, step.format, step.size)
    return f"grew disk {step.target} to {format_size(step.size)}"


def _start(step: StartDomain, context: StepContext) -> str:
    record = context.driver.lookup(step.instance)
    if record is not None and record.state.active:
        if step.host_shutdown is not None:  # started meanwhile: its host shutdown is over
            step.host_shutdown.unlink(missing_ok=True)
        return "domain already running"
    note = _verify_base(step.image, context)
    context.driver.start(step.instance)
    _watch_for_pause(step, context)
    again = ""
    if step.host_shutdown is not None:  # its host shutdown is over
        step.host_shutdown.unlink(missing_ok=True)
        again = " again after the host shut it down"
    done = f"started domain{again} (accelerator {step.accelerator.accelerator.value})"
    return _with_note(done, note)


def _verify_base(image: ImageSource | None, context: StepContext) -> str | None:
    """QEMU opens the disk's whole backing chain at start: check the cached base first (and
    fetch it again if it was spoiled). An UnsafeImageError or a failed fetch refuses the start."""
    if image is None:
        return None
    try:
        return context.cache.ensure(image).note
    except InstanceError as err:
        raise InstanceError(
            f"the base image under the disk cannot be used, so the domain was not started: {err}"
        ) from err


def _recover(step: RecoverDomain, context: StepContext) -> str:
    """Clear a start or shutdown that a killed process left half-done.

    libvirt usually tears such a domain down itself when the next connection reconnects to it;
    give it a moment, then destroy it, and where libvirt cannot (the dead process's job still
    holds the domain) kill its verified QEMU process."""
    clock, driver, name = context.clock, context.driver, step.instance
    deadline = clock.monotonic() + RECOVER_SETTLE_SECONDS
    while clock.monotonic() < deadline:
        record = driver.lookup(name)
        if record is None or not _still_interrupted(record.state, record.state_reason):
            state = "gone" if record is None else record.state.value
            return f"recovered an interrupted {_what(step)}: the driver tore it down (now {state})"
        clock.sleep(POLL_SECONDS)
    how = driver.tear_down(name)
    deadline = clock.monotonic() + RECOVER_STOP_SECONDS
    while clock.monotonic() < deadline:
        record = driver.lookup(name)
        if record is None or not record.state.active:
            return f"recovered an interrupted {_what(step)}: {how}"
        clock.sleep(POLL_SECONDS)
    raise StepError(f"the interrupted {_what(step)} could not be torn down ({how})")


def _resume(step: ResumeDomain, context: StepContext) -> str:
    """Let a domain paused on an I/O error run again, once the file system of its disks has
    room; a StepError (retried with backoff) while it has none, or when the guest pauses
    again at once (its pause arrives during the step: it does not queue the name again)."""
    clock, driver, name = context.clock, context.driver, step.instance
    try:
        stat = os.statvfs(step.disk_directory)
    except OSError as err:
        raise StepError(f"cannot see the file system of {step.disk_directory}: {err}") from err
    room = stat.f_bavail * stat.f_frsize
    if room < min(RESUME_ROOM_BYTES, stat.f_blocks * stat.f_frsize // 20):
        raise StepError(
            f"the domain is paused on an I/O error and the file system of {step.disk_directory} "
            f"still has {format_size(room)} free: it stays paused until there is room"
        )
    driver.resume(name)
    deadline = clock.monotonic() + RESUME_WATCH_SECONDS
    while clock.monotonic() < deadline:
        clock.sleep(POLL_SECONDS)
        record = driver.lookup(name)
        if record is not None and record.state is PowerState.PAUSED:
            raise StepError(
                f"resumed, the domain paused again at once (reason: {record.state_reason}): "
                "its disks still fail to write"
            )
    return "resumed the domain paused on an I/O error: the guest goes on where it stopped"


def _still_interrupted(state: PowerState, reason: str) -> bool:
    return state is PowerState.PAUSED and reason in INTERRUPTED_REASONS


def _what(step: RecoverDomain) -> str:
    return "start" if step.reason == "starting-up" else "shutdown"


def _watch_for_pause(step: StartDomain, context: StepContext) -> None:
    """Fail the step if the domain pauses on an error (or stops) before it has shown it runs:
    the watch window has passed and the guest has used WATCH_CPU_SECONDS of CPU time (on a
    loaded host a guest gets less of it in the same time, so the watch lasts longer; up to
    WATCH_LONGEST_SECONDS, and just the window where the driver cannot tell CPU time)."""
    if step.watch_seconds <= 0:
        return
    clock = context.clock
    window = clock.monotonic() + step.watch_seconds
    longest = clock.monotonic() + WATCH_LONGEST_SECONDS
    while True:
        record = context.driver.lookup(step.instance)
        if record is None or record.state is not PowerState.RUNNING:
            state = "gone" if record is None else f"{record.state.value} ({record.state_reason})"
            raise StepError(
                f"domain is {state} right after start with accelerator "
                f"{step.accelerator.accelerator.value}; {context.driver.log_hint(step.instance)}"
            )
        now = clock.monotonic()
        if now >= longest:
            return
        if now >= window:
            used = context.driver.cpu_seconds(step.instance)
            if used is None or used >= WATCH_CPU_SECONDS:
                return
        clock.sleep(POLL_SECONDS)


def _stop(name: str, timeout_seconds: int, context: StepContext) -> str:
    """ACPI power button, pressed again every SHUTDOWN_REPRESS_SECONDS (a guest that was not
    listening yet, early in its boot, misses a press), wait up to the timeout, then pull the
    plug."""
    record = context.driver.lookup(name)
    if record is None or not record.state.active:
        return "domain already stopped"
    clock = context.clock
    deadline = clock.monotonic() + timeout_seconds
    if timeout_seconds > 0:
        # a domain already going down (its shutdown was asked by a process that died) is
        # waited for; one that cannot take the request (paused) is forced off at once
        requested = context.driver.request_shutdown(name)
        if requested or record.state is PowerState.SHUTDOWN:
            presses = 1
            next_press = clock.monotonic() + SHUTDOWN_REPRESS_SECONDS
            while clock.monotonic() < deadline:
                record = context.driver.lookup(name)
                if record is None or not record.state.active:
                    again = f" (pressed {presses} times)" if presses > 1 else ""
                    return f"shut down gracefully{again}"
                if clock.monotonic() >= next_press and record.state is PowerState.RUNNING:
                    with contextlib.suppress(DriverError):  # it may be going down meanwhile
                        if context.driver.request_shutdown(name):
                            presses += 1
                    next_press = clock.monotonic() + SHUTDOWN_REPRESS_SECONDS
                clock.sleep(POLL_SECONDS)
        elif not _active(name, context):
            return "domain already stopped"
        else:
            context.driver.force_stop(name)
            return f"forced off (it was {record.state.value} and cannot take an ACPI shutdown)"
    context.driver.force_stop(name)
    return f"forced off (no shutdown within {timeout_seconds}s)"


def _active(name: str, context: StepContext) -> bool:
    record = context.driver.lookup(name)
    return record is not None and record.state.active


def _undefine(step: UndefineDomain, context: StepContext) -> str:
    record = context.driver.lookup(step.instance)
    if record is None:
        return "domain already gone"
    if record.state.active:
        context.driver.force_stop(step.instance)
    context.driver.undefine(step.instance)
    if not step.disks_kept:  # deletionPolicy: delete: the removal step that follows says what
        return "undefined domain"
    return f"undefined domain; files kept in {step.kept}"
