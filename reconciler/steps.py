"""Steps: the only code that changes disk files and domains. Each re-checks its precondition
before acting, so a step planned from stale facts does the right thing or nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from reconciler.actual import PowerState
from reconciler.diskheaders import HeaderError, parse_qcow2_header, read_head
from reconciler.domainxml import BOOT_DISK_TARGET
from reconciler.drivers.base import Driver
from reconciler.errors import ReplacementNeeded, StepError
from reconciler.fileops import publish, remove_leftovers, temporary_path
from reconciler.imagecache import ImageCache
from reconciler.plan import (
    CreateOverlay,
    DefineDomain,
    FetchBase,
    ResizeDisk,
    StartDomain,
    Step,
    StopDomain,
    UndefineDomain,
)
from reconciler.qemuimg import QemuImg
from reconciler.sizes import format_size
from reconciler.steps_clock import Clock

LOG = logging.getLogger(__name__)
POLL_SECONDS = 0.25


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
        case FetchBase():
            _path, fetched = context.cache.ensure(step.image)
            return "fetched base image into the cache" if fetched else "base image already cached"
        case CreateOverlay():
            return _create_overlay(step, context)
        case ResizeDisk():
            return _resize_disk(step, context)
        case DefineDomain():
            context.driver.define(step.xml)
            return "defined domain" if not step.changes else f"redefined domain ({step.effect})"
        case StartDomain():
            return _start(step, context)
        case StopDomain():
            return _stop(step.instance, step.timeout_seconds, context)
        case UndefineDomain():
            return _undefine(step, context)


def _create_overlay(step: CreateOverlay, context: StepContext) -> str:
    if step.path.exists():
        _check_existing_overlay(step)
        return "disk already exists"
    context.cache.verify_path(step.base_path, step.base_format)
    step.path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(step.path)
    temporary = temporary_path(step.path)
    try:
        context.qemu_img.create_overlay(temporary, step.base_path, step.base_format, step.size)
        publish(temporary, step.path)
    finally:
        temporary.unlink(missing_ok=True)
    return f"created disk ({format_size(step.size)})"


def _check_existing_overlay(step: CreateOverlay) -> None:
    try:
        header = parse_qcow2_header(read_head(str(step.path)))
    except (HeaderError, OSError) as err:
        raise ReplacementNeeded(f"{step.path} exists but is not our qcow2 disk: {err}") from err
    if header.backing_file != str(step.base_path):
        raise ReplacementNeeded(f"{step.path} exists with another base: {header.backing_file}")


def _resize_disk(step: ResizeDisk, context: StepContext) -> str:
    record = context.driver.lookup(step.instance)
    if record is not None and record.state.active:
        context.driver.resize_disk(step.instance, BOOT_DISK_TARGET, step.size)
        return f"grew disk to {format_size(step.size)} online"
    try:
        current = parse_qcow2_header(read_head(str(step.path))).virtual_size
    except (HeaderError, OSError) as err:
        raise StepError(f"cannot read {step.path} before resizing: {err}") from err
    if current >= step.size:
        return "disk already large enough"
    context.qemu_img.resize(step.path, "qcow2", step.size)
    return f"grew disk to {format_size(step.size)}"


def _start(step: StartDomain, context: StepContext) -> str:
    record = context.driver.lookup(step.instance)
    if record is not None and record.state.active:
        return "domain already running"
    context.driver.start(step.instance)
    _watch_for_pause(step, context)
    return f"started domain (accelerator {step.accelerator.accelerator.value})"


def _watch_for_pause(step: StartDomain, context: StepContext) -> None:
    """Fail the step if the domain pauses on an error (or stops) within the watch window."""
    clock = context.clock
    deadline = clock.monotonic() + step.watch_seconds
    while clock.monotonic() < deadline:
        record = context.driver.lookup(step.instance)
        if record is None or record.state is not PowerState.RUNNING:
            state = "gone" if record is None else f"{record.state.value} ({record.state_reason})"
            raise StepError(
                f"domain is {state} right after start with accelerator "
                f"{step.accelerator.accelerator.value}; {context.driver.log_hint(step.instance)}"
            )
        clock.sleep(POLL_SECONDS)


def _stop(name: str, timeout_seconds: int, context: StepContext) -> str:
    """ACPI power button, wait up to the timeout, then pull the plug."""
    record = context.driver.lookup(name)
    if record is None or not record.state.active:
        return "domain already stopped"
    clock = context.clock
    deadline = clock.monotonic() + timeout_seconds
    if timeout_seconds > 0:
        context.driver.request_shutdown(name)
        while clock.monotonic() < deadline:
            record = context.driver.lookup(name)
            if record is None or not record.state.active:
                return "shut down gracefully"
            clock.sleep(POLL_SECONDS)
    context.driver.force_stop(name)
    return f"forced off (no shutdown within {timeout_seconds}s)"


def _undefine(step: UndefineDomain, context: StepContext) -> str:
    record = context.driver.lookup(step.instance)
    if record is None:
        return "domain already gone"
    if record.state.active:
        context.driver.force_stop(step.instance)
    context.driver.undefine(step.instance)
    return f"undefined domain; files kept in {step.kept}"
