"""Plan: a pure function from (desired, actual) to the ordered steps that converge them.

No I/O here: `reconcile plan` prints the result as it is, and the unit tests table-test it.
Step order is always: fetch base, create overlay, stop, resize, define, start (or, for
`state: absent`: stop, undefine).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from reconciler.accel import AcceleratorChoice, KvmSupport, resolve_accelerator
from reconciler.actual import DomainFacts, InstanceActual, PowerState
from reconciler.desired import Accelerator, DesiredState, ImageSource, InstanceSpec
from reconciler.domainxml import DomainLayout, build_domain_xml, spec_digest
from reconciler.sizes import format_size
from reconciler.statedir import InstancePaths

# Where KVM is forced against the probe's advice, guests typically pause on an emulation
# failure within seconds of starting; the start step watches that long for it.
START_WATCH_SECONDS = 10.0


class StepKind(enum.StrEnum):
    FETCH_BASE = "fetch-base"
    CREATE_OVERLAY = "create-overlay"
    RESIZE_DISK = "resize-disk"
    DEFINE = "define"
    START = "start"
    STOP = "stop"
    UNDEFINE = "undefine"


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
class DefineDomain:
    kind: ClassVar[StepKind] = StepKind.DEFINE
    instance: str
    xml: str
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
    FetchBase
    | CreateOverlay
    | ResizeDisk
    | DefineDomain
    | StartDomain
    | StopDomain
    | UndefineDomain
)


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Facts beside desired and actual that the plan needs: paths, KVM, defaults."""

    paths: InstancePaths
    base_path: Path
    kvm: KvmSupport
    default_accelerator: Accelerator = Accelerator.AUTO
    source_size: int | None = None  # of the image source, when known (shown in the plan)


@dataclass(frozen=True, slots=True)
class InstancePlan:
    """The steps for one instance, or why there are none (`refusal`), plus notes to print."""

    name: str
    steps: tuple[Step, ...] = ()
    refusal: str | None = None
    notes: tuple[str, ...] = field(default=())
    accelerator: AcceleratorChoice | None = None

    @property
    def converged(self) -> bool:
        return not self.steps and self.refusal is None


def plan_instance(spec: InstanceSpec, actual: InstanceActual, context: PlanContext) -> InstancePlan:
    """Decide what converges `spec` from `actual`; refuse what would harm data or others."""
    domain = actual.domain
    if domain is not None and not domain.owned:
        return InstancePlan(
            spec.name,
            refusal=(
                f"a libvirt domain named {spec.name!r} exists but was not created by reconciler "
                "(no ownership marker); it is left untouched: rename the instance or remove "
                "that domain yourself"
            ),
        )
    if spec.state is DesiredState.ABSENT:
        return _plan_absent(spec, domain, context)
    return _plan_present(spec, actual, context)


def _plan_absent(
    spec: InstanceSpec, domain: DomainFacts | None, context: PlanContext
) -> InstancePlan:
    if domain is None:
        return InstancePlan(spec.name)
    steps: list[Step] = []
    if domain.state.active:
        steps.append(StopDomain(spec.name, spec.shutdown_timeout_seconds))
    steps.append(UndefineDomain(spec.name, context.paths.directory))
    return InstancePlan(spec.name, tuple(steps))


def _plan_present(spec: InstanceSpec, actual: InstanceActual, context: PlanContext) -> InstancePlan:
    domain = actual.domain
    paths = context.paths
    choice = resolve_accelerator(spec.accelerator or context.default_accelerator, context.kvm)
    if actual.overlay_problem is not None:
        return _refuse_replacement(spec.name, actual.overlay_problem, choice)
    steps: list[Step] = []
    notes: list[str] = []
    grow_from: int | None = None
    if actual.overlay is None:
        if not actual.base_cached:
            steps.append(FetchBase(spec.name, spec.image, context.base_path, context.source_size))
        steps.append(
            CreateOverlay(
                spec.name,
                paths.disk,
                context.base_path,
                spec.image.cached_format.value,
                spec.disk_bytes,
            )
        )
        if domain is not None:
            notes.append(f"disk {paths.disk} was missing: a new, empty one is created")
    else:
        overlay = actual.overlay
        if overlay.backing_file != str(context.base_path) or (
            overlay.backing_format != spec.image.cached_format.value
        ):
            problem = (
                f"disk {paths.disk} is built on {overlay.backing_file} "
                f"({overlay.backing_format}), the manifest asks for {context.base_path.name}: "
                "changing the base image would discard the guest's data"
            )
            return _refuse_replacement(spec.name, problem, choice)
        if overlay.virtual_size > spec.disk_bytes:
            problem = (
                f"disk.size {format_size(spec.disk_bytes)} is smaller than the disk's current "
                f"{format_size(overlay.virtual_size)}: disks never shrink"
            )
            return _refuse_replacement(spec.name, problem, choice)
        if overlay.virtual_size < spec.disk_bytes:
            grow_from = overlay.virtual_size

    active = domain is not None and domain.state.active
    stopping = spec.state is DesiredState.STOPPED and active
    if domain is not None and domain.state is PowerState.PAUSED and not stopping:
        if domain.state_reason != "user":
            return InstancePlan(
                spec.name,
                refusal=(
                    f"domain is paused after an error (reason: {domain.state_reason}); it is not "
                    "running. Set state: stopped to stop it, then running to start it again"
                ),
                accelerator=choice,
            )
        notes.append("domain was paused by hand; it is left paused")
    if stopping:
        steps.append(StopDomain(spec.name, spec.shutdown_timeout_seconds))
    if grow_from is not None:
        online = active and not stopping
        steps.append(ResizeDisk(spec.name, paths.disk, grow_from, spec.disk_bytes, online))

    layout = DomainLayout(str(paths.disk), str(paths.console_log), choice.accelerator)
    digest = spec_digest(spec, layout)
    starting = spec.state is DesiredState.RUNNING and not active
    if domain is None or domain.marker is None or domain.marker.spec_digest != digest:
        changes = _changes(spec, layout, domain)
        if domain is None:
            effect = "new"
        elif active and not stopping:
            effect = "takes effect at the next restart of the running domain"
        elif starting:
            effect = "takes effect now: the domain starts next"
        else:
            effect = "takes effect at the next start"
        xml = build_domain_xml(spec, layout, domain.uuid if domain else None)
        steps.append(DefineDomain(spec.name, xml, changes, effect))
        if active and not stopping:
            notes.append("restart the domain (state: stopped, then running) to apply the change")
    elif active and not stopping and domain.live_definition is not None:
        live = domain.live_definition.marker
        if live is None or live.spec_digest != digest:
            notes.append(
                "running with an older definition: the current one takes effect at the next "
                "restart (state: stopped, then running)"
            )
    if starting:
        risky = choice.accelerator is Accelerator.KVM and not context.kvm.usable
        if risky:
            notes.append(f"KVM was requested, but {context.kvm.reason}: the guest may fail")
        steps.append(StartDomain(spec.name, choice, START_WATCH_SECONDS if risky else 0.0))
    return InstancePlan(spec.name, tuple(steps), None, tuple(notes), choice)


def _refuse_replacement(name: str, problem: str, choice: AcceleratorChoice) -> InstancePlan:
    return InstancePlan(
        name,
        refusal=f"{problem}; the disk would have to be replaced, so nothing was changed",
        accelerator=choice,
    )


def _changes(
    spec: InstanceSpec, layout: DomainLayout, domain: DomainFacts | None
) -> tuple[str, ...]:
    """What a redefinition changes, in words (empty for a new domain)."""
    if domain is None:
        return ()
    current = domain.definition
    changes = []
    if current.vcpus != spec.vcpus:
        changes.append(f"vcpus {current.vcpus} -> {spec.vcpus}")
    if current.memory_kib * 1024 != spec.memory_bytes:
        changes.append(
            f"memory {format_size(current.memory_kib * 1024)} -> {format_size(spec.memory_bytes)}"
        )
    domain_type = "kvm" if layout.accelerator is Accelerator.KVM else "qemu"
    if current.domain_type != domain_type:
        changes.append(
            f"accelerator {_accel_name(current.domain_type)} -> {layout.accelerator.value}"
        )
    disks = dict(current.disk_paths)
    if disks.get("vda") != layout.disk_path:
        changes.append(f"disk {disks.get('vda')} -> {layout.disk_path}")
    return tuple(changes) or ("definition updated",)


def _accel_name(domain_type: str) -> str:
    return "tcg" if domain_type == "qemu" else domain_type
