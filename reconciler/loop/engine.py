"""One reconcile pass: observe afresh, plan each instance, apply the steps (instances in
parallel, steps of one instance in order), then check that what should run does run.

Errors become an InstanceResult here, at one boundary: one instance failing never stops
the others.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.clock import Clock
from reconciler.drivers.base import Driver
from reconciler.errors import InstanceError, ReconcilerError
from reconciler.fileops import remove_dead_leftovers
from reconciler.images.cache import EntryRecords, ImageCache, PermanentFailures, SourceDigests
from reconciler.images.diskheaders import HeaderError, image_virtual_size
from reconciler.images.download import DownloadLimits, Transport, probe_size
from reconciler.images.progress import TransferReporter
from reconciler.images.qemuimg import QemuImg
from reconciler.images.sources import SourcePolicy, check_url
from reconciler.loop.observe import BaseFacts, observe_base, observe_domains, observe_instance
from reconciler.manifests.loader import LoadResult
from reconciler.model.accel import AcceleratorChoice
from reconciler.model.actual import InstanceActual, PowerState
from reconciler.model.desired import Accelerator, DesiredState, ImageSource, InstanceSpec
from reconciler.planning.plan import InstancePlan, PlanContext, plan_instance
from reconciler.statedir import StateDir
from reconciler.steps.apply import StepContext, apply_step

LOG = logging.getLogger(__name__)
MAX_PARALLEL_INSTANCES = 16

ProgressCallback = Callable[[str, str], None]


class Outcome(enum.StrEnum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class InstanceResult:
    """How one instance's pass ended."""

    name: str
    outcome: Outcome
    actions: tuple[str, ...] = ()
    message: str | None = None
    notes: tuple[str, ...] = ()
    accelerator: AcceleratorChoice | None = None
    state: DesiredState | None = None  # the state reached (when the outcome is not FAILED)


@dataclass(frozen=True, slots=True)
class Settings:
    """Run-wide settings from the command line."""

    default_accelerator: Accelerator = Accelerator.AUTO
    max_parallel: int = MAX_PARALLEL_INSTANCES
    sources: SourcePolicy = field(default_factory=SourcePolicy)
    download_limits: DownloadLimits = field(default_factory=DownloadLimits)
    transport: Transport = field(default_factory=Transport)


def with_source_digest(
    spec: InstanceSpec, digests: SourceDigests, *, persist: bool
) -> InstanceSpec:
    """`spec` with its image's sha256 filled in from the file when the manifest left it out."""
    if spec.image.sha256 is not None or spec.image.is_remote:
        return spec
    digest = digests.digest(spec.image.path, persist=persist)
    return dataclasses.replace(spec, image=dataclasses.replace(spec.image, sha256=digest))


def plan_all(
    load: LoadResult,
    driver: Driver,
    state: StateDir,
    settings: Settings,
    *,
    persist_digests: bool = False,
) -> list[InstancePlan]:
    """Observe everything once and plan every valid instance (no changes made, except that
    `persist_digests` records the digests of local sources it had to compute)."""
    started = time.monotonic()
    domains = observe_domains(driver)
    kvm = driver.kvm_support()
    host_memory = driver.host_memory()
    state_dir_id = state.read_id()
    LOG.debug("observed %d domains in %.3fs", len(domains), time.monotonic() - started)
    plans = []
    digests = SourceDigests(state, settings.sources)
    failures = PermanentFailures(state)
    records = EntryRecords(state)
    sizes: dict[Path | str, int | None] = {}
    base_sizes: dict[Path, int | None] = {}
    bases: dict[Path, BaseFacts] = {}
    for desired in load.instances:
        try:
            spec = with_source_digest(desired, digests, persist=persist_digests)
            base_path = state.cached_base(spec.image)
            if base_path not in bases:
                bases[base_path] = observe_base(base_path, records)
            actual = observe_instance(spec.name, bases[base_path], domains, state)
            if not actual.base_cached:
                _check_source(spec.image, settings.sources, failures)
        except InstanceError as err:
            plans.append(InstancePlan(desired.name, refusal=str(err)))
            continue
        size = None
        if not actual.base_cached and actual.overlay is None:
            if spec.image.location not in sizes:
                sizes[spec.image.location] = _source_size(spec.image, settings.transport)
            size = sizes[spec.image.location]
        base_size = None
        if actual.overlay is None:
            if base_path not in base_sizes:
                base_sizes[base_path] = _base_virtual_size(spec.image, base_path, actual)
            base_size = base_sizes[base_path]
        context = PlanContext(
            paths=state.instance(spec.name),
            base_path=base_path,
            kvm=kvm,
            default_accelerator=settings.default_accelerator,
            source_size=size,
            state_dir_id=state_dir_id,
            host_memory=host_memory,
            base_virtual_size=base_size,
        )
        plans.append(plan_instance(spec, actual, context))
    LOG.debug("planned %d instances in %.3fs", len(plans), time.monotonic() - started)
    return plans


def apply_all(
    load: LoadResult,
    driver: Driver,
    state: StateDir,
    settings: Settings,
    progress: ProgressCallback,
    clock: Clock | None = None,
    transfers: TransferReporter | None = None,
) -> list[InstanceResult]:
    """Plan and apply every valid instance; return one result per instance, in manifest order."""
    state.create()
    for spec in load.instances:  # valid instances only: an invalid one is never touched
        for leftover in remove_dead_leftovers(state.instance(spec.name).directory):
            progress(spec.name, f"removed {leftover.name}, left by an interrupted run")
    plans = plan_all(load, driver, state, settings, persist_digests=True)
    clock = clock or Clock()
    qemu_img = QemuImg()
    cache = ImageCache(
        state,
        qemu_img,
        settings.sources,
        settings.download_limits,
        transfers,
        clock,
        settings.transport,
    )
    context = StepContext(driver, cache, qemu_img, clock)
    workers = max(1, min(settings.max_parallel, len(plans)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="instance") as pool:
        results = list(pool.map(lambda plan: _converge(plan, context, progress), plans))
    specs = {spec.name: spec for spec in load.instances}
    checked = [
        _reached(_check_outcome(result, specs[result.name], driver), specs[result.name])
        for result in results
    ]
    LOG.debug("applied and checked %d instances", len(checked))
    return checked


def _check_source(image: ImageSource, sources: SourcePolicy, failures: PermanentFailures) -> None:
    """Refuse, already in the plan, a source that fetching would refuse."""
    if isinstance(image.location, str):
        check_url(image.location)
        failures.raise_if_recorded(image)
    else:
        sources.resolve_local(image.location)


def _base_virtual_size(image: ImageSource, base_path: Path, actual: InstanceActual) -> int | None:
    """The disk size the base holds, from the cached entry or a local source's header (None
    for a remote source not fetched yet: the step checks it then)."""
    if actual.base_cached:
        where, image_format = base_path, image.cached_format
    elif isinstance(image.location, Path):
        where, image_format = image.location, image.format
    else:
        return None
    try:
        return image_virtual_size(str(where), image_format.value)
    except (HeaderError, OSError):
        return None  # an unreadable base is refused when it is fetched or used


def _source_size(image: ImageSource, transport: Transport) -> int | None:
    """The size of a source that is not cached yet, for the plan (None when unknown)."""
    if isinstance(image.location, str):
        return probe_size(image.location, transport)
    try:
        return image.location.stat().st_size
    except OSError:
        return None


def _converge(
    plan: InstancePlan, context: StepContext, progress: ProgressCallback
) -> InstanceResult:
    if plan.refusal is not None:
        return InstanceResult(plan.name, Outcome.FAILED, message=plan.refusal, notes=plan.notes)
    if not plan.steps:
        return InstanceResult(
            plan.name, Outcome.UNCHANGED, notes=plan.notes, accelerator=plan.accelerator
        )
    actions: list[str] = []
    for step in plan.steps:
        started = time.monotonic()
        try:
            done = apply_step(step, context)
        except ReconcilerError as err:
            return InstanceResult(
                plan.name, Outcome.FAILED, tuple(actions), f"{step.kind.value}: {err}", plan.notes
            )
        except Exception as err:  # a bug must not take the other instances down with it
            LOG.exception("%s: unexpected error in %s", plan.name, step.kind.value)
            message = f"{step.kind.value}: internal error: {type(err).__name__}: {err}"
            return InstanceResult(plan.name, Outcome.FAILED, tuple(actions), message, plan.notes)
        LOG.debug("%s: %s took %.3fs", plan.name, step.kind.value, time.monotonic() - started)
        actions.append(done)
        progress(plan.name, done)
    return InstanceResult(
        plan.name, Outcome.CHANGED, tuple(actions), notes=plan.notes, accelerator=plan.accelerator
    )


def _check_outcome(result: InstanceResult, spec: InstanceSpec, driver: Driver) -> InstanceResult:
    """A domain that should run but is paused on an error (or stopped) is a failure.

    Only instances this pass changed are looked up again: an unchanged one was observed
    running moments ago (otherwise its plan would have had steps or a refusal).
    """
    if result.outcome is not Outcome.CHANGED or spec.state is not DesiredState.RUNNING:
        return result
    try:
        record = driver.lookup(spec.name)
    except ReconcilerError as err:
        return _failed(result, f"cannot confirm the domain runs: {err}")
    if record is None:
        return _failed(result, "domain vanished after the pass")
    if record.state is PowerState.RUNNING:
        return result
    if record.state is PowerState.PAUSED and record.state_reason == "user":
        return result
    return _failed(
        result,
        f"domain is {record.state.value} (reason: {record.state_reason}), not running; "
        "see the QEMU log of the domain",
    )


def _reached(result: InstanceResult, spec: InstanceSpec) -> InstanceResult:
    if result.outcome is Outcome.FAILED:
        return result
    return dataclasses.replace(result, state=spec.state)


def _failed(result: InstanceResult, message: str) -> InstanceResult:
    return InstanceResult(
        result.name, Outcome.FAILED, result.actions, message, result.notes, result.accelerator
    )
