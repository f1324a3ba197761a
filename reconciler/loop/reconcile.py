"""One reconcile of one instance: resolve its source, observe its domain and files afresh,
plan, apply the steps in order, check that what should run does run, and say how it ended.

Data flows one way: manifest spec -> resolved source (images.resolve) -> observed actual
(loop.observe) -> pure plan (planning.plan) -> steps (steps.apply). Errors become an
InstanceResult here, at one boundary; the class of the error (not its message) says whether a
failure is transient (retry with backoff) or permanent (wait until the manifest or the source
changes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from reconciler.clock import Clock
from reconciler.drivers.base import Driver
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.fileops import is_out_of_space, no_space_left, remove_dead_leftovers
from reconciler.images.download import DownloadLimits, Transport
from reconciler.images.progress import TransferReporter
from reconciler.images.resolve import SourceResolver
from reconciler.images.sources import SourcePolicy
from reconciler.loop.crashloop import CrashLoopGuard
from reconciler.loop.observe import directory_names, observe_domain, observe_instance
from reconciler.loop.results import Failure, InstanceResult, Outcome
from reconciler.model.accel import KvmSupport
from reconciler.model.actual import (
    DomainFacts,
    InstanceActual,
    ObservedDomain,
    PowerState,
    StateReason,
)
from reconciler.model.desired import Accelerator, DesiredState, InstanceSpec
from reconciler.model.resolved import ResolvedInstance
from reconciler.planning.network import needs_free_macs
from reconciler.planning.plan import (
    InstancePlan,
    PlanContext,
    foreign_reason,
    plan_instance,
    plan_removal,
)
from reconciler.planning.steps import (
    AttachNic,
    CreateOverlay,
    DefineDomain,
    FetchBase,
    StartDomain,
)
from reconciler.statedir import StateDir

if TYPE_CHECKING:  # imported when a step first runs (Reconciler.steps)
    from reconciler.steps.apply import StepContext

LOG = logging.getLogger(__name__)
MAX_PARALLEL_INSTANCES = 16

ProgressCallback = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Settings:
    """Run-wide settings from the command line."""

    default_accelerator: Accelerator = Accelerator.AUTO
    max_parallel: int = MAX_PARALLEL_INSTANCES
    sources: SourcePolicy = field(default_factory=SourcePolicy)
    download_limits: DownloadLimits = field(default_factory=DownloadLimits)
    transport: Transport = field(default_factory=Transport)
    prune: bool = False  # delete managed domains whose manifest is gone (within the guards)
    allow_empty: bool = False  # prune even when no instance is defined at all


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What does not change between reconciles: refreshed by a full resync, not per name."""

    kvm: KvmSupport
    host_memory: int | None
    state_dir_id: str | None


# how long a prune waits for the guest of an orphan whose marker does not say
PRUNE_SHUTDOWN_SECONDS = 60

# a domain seen in a transition no step of ours is waiting for (the guest shutting itself
# down) is looked at again after this long, in case no event says when it ends
TRANSITION_RECHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Paced:
    """What a rollout lets one reconcile do (see loop.rollouts): carry `plan` out (maybe
    emptied, its change held), or nothing more (`result`: the rollout acted itself); look
    again after `wait` seconds."""

    plan: InstancePlan
    result: InstanceResult | None = None
    wait: float | None = None
    held: bool = False  # the change waits: the domain keeps its older definition


class Pacer(Protocol):
    """Paces the changes of the instances that have a rollout policy (loop.rollouts)."""

    def pace(self, spec: InstanceSpec, plan: InstancePlan) -> Paced: ...

    def applied(self, spec: InstanceSpec, result: InstanceResult) -> None: ...

    def busy(self, spec: InstanceSpec) -> bool: ...


class Reconciler:
    """Plans and converges one instance at a time; safe to call from several threads for
    different names (the work queue never hands one name to two threads)."""

    def __init__(
        self,
        driver: Driver,
        state: StateDir,
        settings: Settings,
        progress: ProgressCallback | None = None,
        clock: Clock | None = None,
        transfers: TransferReporter | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.driver = driver
        self.state = state
        self.settings = settings
        self._progress = progress or (lambda _name, _message: None)
        self.clock = clock or Clock()
        self._transfers = transfers
        self._cancel = cancel
        self._steps: StepContext | None = None  # made when a step first runs
        self._steps_lock = threading.Lock()
        self._host: HostFacts | None = None  # observed at the first plan
        # restarts after a stop nobody asked for, in a row, by name
        self._crash_loops = CrashLoopGuard(self.clock)
        # why an instance's liveness probe fails past its threshold (None: it does not, or
        # nothing probes it: only the daemon does)
        self.liveness_failure: Callable[[str], str | None] = lambda _name: None
        # paces the changes of instances with a rollout policy (None: every change at once)
        self.pacer: Pacer | None = None
        # during a pass (pass_listing): the MACs of every domain by name, from the pass's
        # listing and from what its plans chose since; None: each plan that needs them lists
        self._pass_macs: dict[str, frozenset[str]] | None = None
        self._macs_lock = threading.Lock()  # a derived MAC is chosen by one plan at a time

    def report(self, name: str, message: str) -> None:
        """Say `message` about `name` as a step's progress is said (printed by a pass, logged
        and sent to clients by the daemon)."""
        self._progress(name, message)

    @property
    def steps(self) -> StepContext:
        """What the steps work with: the image cache and qemu-img. Made (and their modules
        imported: downloads, inspection, subprocesses) when a step first runs, since a
        no-op pass needs none of it."""
        from reconciler.images.cache import ImageCache
        from reconciler.images.qemuimg import QemuImg
        from reconciler.steps.apply import StepContext

        with self._steps_lock:
            if self._steps is None:
                qemu_img = QemuImg()
                cache = ImageCache(
                    self.state,
                    qemu_img,
                    self.settings.sources,
                    self.settings.download_limits,
                    self._transfers,
                    self.clock,
                    self.settings.transport,
                    self._cancel,
                )
                self._steps = StepContext(self.driver, cache, qemu_img, self.clock)
            return self._steps

    @property
    def host(self) -> HostFacts:
        if self._host is None:
            self._host = HostFacts(
                self.driver.kvm_support(), self.driver.host_memory(), self.state.read_id()
            )
        return self._host

    def refresh_host(self) -> None:
        """Observe the host facts again at the next plan (a resync, a reconnection, a new
        state directory id)."""
        self._host = None

    def resolver(self, *, persist_digests: bool) -> SourceResolver:
        """A resolver for one pass (bases and sources shared by instances looked at once)."""
        return SourceResolver(
            self.state,
            self.settings.sources,
            self.settings.transport,
            persist_digests=persist_digests,
        )

    def plan(
        self,
        spec: InstanceSpec,
        resolver: SourceResolver,
        *,
        listed: Mapping[str, ObservedDomain] | None = None,
    ) -> InstancePlan:
        """Resolve, observe and plan `spec` (no change made, except that a resolver made to
        persist digests records those of local sources it had to compute). `listed`: every
        domain by name, from one listing of the pass, instead of a lookup."""
        try:
            resolved, actual = self.observe(spec, resolver, listed)
        except PermanentError as err:  # a refused source, an unreadable domain definition
            return InstancePlan(spec.name, refusal=str(err))
        return self.plan_observed(resolved, actual)

    def observe(
        self,
        spec: InstanceSpec,
        resolver: SourceResolver,
        listed: Mapping[str, ObservedDomain] | None = None,
    ) -> tuple[ResolvedInstance, InstanceActual]:
        """`spec` with its source resolved, and what exists for it now (PermanentError: a
        refused source, an unreadable domain definition)."""
        resolved = resolver.resolve(spec)
        paths = self.state.instance(spec.name)
        actual = observe_instance(self.driver, spec.name, paths, resolved, listed)
        failure = self.liveness_failure(spec.name)
        if failure is not None:
            actual = dataclasses.replace(actual, liveness_failed=failure)
        return resolved, actual

    def plan_observed(self, resolved: ResolvedInstance, actual: InstanceActual) -> InstancePlan:
        """The plan from `actual` to the resolved spec (see `plan`)."""
        spec = resolved.spec
        context = PlanContext(
            paths=self.state.instance(spec.name),
            kvm=self.host.kvm,
            default_accelerator=self.settings.default_accelerator,
            state_dir_id=self.host.state_dir_id,
            host_memory=self.host.host_memory,
            unavailable=self._unavailable(spec, actual),
            cannot_express=self.driver.cannot_express,
            now=self.clock.wall(),
        )
        current = actual.domain.definition if actual.domain is not None else None
        if spec.state is DesiredState.ABSENT or not needs_free_macs(
            spec.name, spec.networks, current
        ):
            return plan_instance(resolved, actual, context)
        with self._macs_lock:  # the MACs it chooses are in use for the next plan of the pass
            in_use = self._macs_in_use(spec.name)
            plan = plan_instance(resolved, actual, dataclasses.replace(context, macs_in_use=in_use))
            if self._pass_macs is not None:  # in use from now on, beside what it had
                had = self._pass_macs.get(spec.name, frozenset())
                self._pass_macs[spec.name] = had | _macs_chosen(plan)
        return plan

    def _macs_in_use(self, name: str) -> frozenset[str]:
        """The MACs of the domains other than `name`: as the pass knows them, or listed now
        (listing every domain is kept for the reconciles that choose a derived MAC)."""
        known: Iterable[tuple[str, frozenset[str]]]
        if self._pass_macs is not None:
            known = self._pass_macs.items()
        else:
            known = ((r.name, _macs_of(r)) for r in self.driver.list_domains())
        return frozenset(mac for other, macs in known if other != name for mac in macs)

    @contextlib.contextmanager
    def pass_listing(self, listed: Mapping[str, ObservedDomain]) -> Iterator[None]:
        """For the length of a pass over many instances: the MACs of the other domains come
        from its one listing of them, and from what its own plans choose (a plan of each new
        instance listed every domain again, and two plans at once did not see each other's
        choice)."""
        with self._macs_lock:
            self._pass_macs = {name: _macs_of(record) for name, record in listed.items()}
        try:
            yield
        finally:
            with self._macs_lock:
                self._pass_macs = None

    def _unavailable(self, spec: InstanceSpec, actual: InstanceActual) -> tuple[str, ...]:
        """Why the interfaces could not attach, for a domain about to start (a running one
        holds its own ports)."""
        running = actual.domain is not None and actual.domain.state.active
        if spec.state is not DesiredState.RUNNING or running:
            return ()
        return self.driver.check_attachments(spec.networks)

    def list_domains(self) -> dict[str, ObservedDomain]:
        """Every domain by name, in one listing (for a pass to plan from)."""
        return {record.name: record for record in self.driver.list_domains()}

    def orphans(
        self, known: Collection[str], listed: Mapping[str, ObservedDomain] | None = None
    ) -> list[str]:
        """Managed domains (this state directory's marker, this instance's disk) whose name no
        valid or invalid manifest claims, sorted (from `listed`, a listing of the pass, when
        given)."""
        records = self.managed_domains(listed)
        return sorted(record.name for record in records if record.name not in known)

    def managed_domains(
        self, listed: Mapping[str, ObservedDomain] | None = None
    ) -> list[DomainFacts]:
        """Every domain this state directory manages (its marker carries this directory's id,
        its boot disk is this instance's disk), from `listed` when given."""
        state_dir_id = self.host.state_dir_id
        if state_dir_id is None:
            return []
        found = []
        records = self.driver.list_domains() if listed is None else listed.values()
        for record in records:
            if not isinstance(record, DomainFacts) or record.definition.marker is None:
                continue
            definition = record.definition
            assert definition.marker is not None
            disk = str(self.state.instance(record.name).disk)
            if definition.marker.state_dir_id == state_dir_id and definition.boot_disk_path == disk:
                found.append(record)
        return found

    def plan_orphan(self, name: str, refusal: str | None) -> InstancePlan:
        """What becomes of a managed domain whose manifest is gone: pruned, or (`refusal`
        says why not) listed as an orphan."""
        paths = self.state.instance(name)
        try:
            domain = observe_domain(self.driver, name)
        except PermanentError as err:
            return InstancePlan(name, refusal=str(err))
        context = PlanContext(paths, self.host.kvm, state_dir_id=self.host.state_dir_id)
        if domain is None or foreign_reason(domain, context) is not None:
            return InstancePlan(name)  # gone, or not ours: nothing to prune
        if refusal is not None:
            return InstancePlan(name, notes=(f"orphan: its manifest is gone; kept ({refusal})",))
        timeout = domain.definition.shutdown_timeout_seconds
        if timeout is None:  # a domain defined before the marker recorded it
            timeout = PRUNE_SHUTDOWN_SECONDS
        return plan_removal(name, domain, context, directory_names(paths), timeout, "prune")

    def prune(self, name: str, refusal: str | None) -> InstanceResult:
        """Prune the orphan `name` (or report it, when `refusal` says pruning may not happen)."""
        started = time.monotonic()
        try:
            plan = self.plan_orphan(name, refusal)
        except ReconcilerError as err:
            return InstanceResult(name, Outcome.FAILED, message=str(err), failure=_failure(err))
        result = self._converge(plan)
        if result.outcome is not Outcome.FAILED and plan.steps:
            result = dataclasses.replace(result, state=DesiredState.ABSENT)
        return dataclasses.replace(result, seconds=time.monotonic() - started)

    def settled(
        self, spec: InstanceSpec, resolver: SourceResolver, listed: Mapping[str, ObservedDomain]
    ) -> InstanceResult | None:
        """The result of reconciling `spec` when it is converged already, planned from
        `listed` (a listing of every domain taken in this pass) without a lookup of its own.
        None when a reconcile would do anything (a step, a refusal, a restart held back, a
        leftover to remove): `reconcile` it then, which observes afresh."""
        started = time.monotonic()
        try:
            plan = self.plan(spec, resolver, listed=listed)
        except ReconcilerError:
            return None
        if plan.steps or plan.refusal is not None or plan.restart_after is not None:
            return None
        if self.pacer is not None and self.pacer.busy(spec):
            return None  # its rollout has work to do: a reconcile asks it
        if remove_dead_leftovers(self.state.instance(spec.name).directory, dry_run=True):
            return None
        result = dataclasses.replace(
            self._converge(plan),
            pending_restart=plan.pending_restart,
            seconds=time.monotonic() - started,
        )
        if plan.kept_off:
            return _reached(result, dataclasses.replace(spec, state=DesiredState.STOPPED))
        return _reached(result, spec)

    def reconcile(
        self, spec: InstanceSpec, resolver: SourceResolver | None = None
    ) -> InstanceResult:
        """Converge `spec` as far as it can go now; never raises."""
        started = time.monotonic()
        result = self._reconcile(spec, resolver or self.resolver(persist_digests=True))
        return dataclasses.replace(result, seconds=time.monotonic() - started)

    def _reconcile(self, spec: InstanceSpec, resolver: SourceResolver) -> InstanceResult:
        name = spec.name
        try:
            for leftover in remove_dead_leftovers(self.state.instance(name).directory):
                self._progress(name, f"removed {leftover.name}, left by an interrupted run")
            plan = self.plan(spec, resolver)
        except ReconcilerError as err:
            return InstanceResult(name, Outcome.FAILED, message=str(err), failure=_failure(err))
        except Exception as err:  # a bug must not take the other instances down with it
            LOG.exception("%s: unexpected error while planning", name)
            message = f"internal error: {type(err).__name__}: {err}"
            return InstanceResult(name, Outcome.FAILED, message=message, failure=Failure.TRANSIENT)
        if plan.restart_after is not None and plan.refusal is None:
            wait = self._crash_loops.wait(name, plan.restart_after)
            if wait is not None:
                return wait
        paced = Paced(plan)
        if spec.rollout is not None and self.pacer is not None and plan.refusal is None:
            paced = self.pacer.pace(spec, plan)
            if paced.result is not None:
                return paced.result
            plan = paced.plan
        result = dataclasses.replace(
            self._converge(plan), pending_restart=plan.pending_restart or paced.held
        )
        if spec.rollout is not None and self.pacer is not None:
            self.pacer.applied(spec, result)
        if paced.wait is not None and result.outcome is not Outcome.FAILED:
            result = dataclasses.replace(result, requeue_after=paced.wait)
        if plan.restart_after is not None and result.outcome is Outcome.CHANGED:
            result = dataclasses.replace(result, crash_loop=self._crash_loops.restarted(name))
        if plan.kept_off:  # by its run policy: off is where it should be
            return _reached(result, dataclasses.replace(spec, state=DesiredState.STOPPED))
        return _reached(self._check_outcome(result, spec), spec)

    def _converge(self, plan: InstancePlan) -> InstanceResult:
        notes = plan.notes + plan.base_forecasts
        if plan.refusal is not None:
            return InstanceResult(
                plan.name,
                Outcome.FAILED,
                message=plan.refusal,
                notes=notes,
                failure=Failure.PERMANENT,
            )
        if not plan.steps:
            return InstanceResult(
                plan.name,
                Outcome.UNCHANGED,
                notes=notes,
                accelerator=plan.accelerator,
                snapshot_due_in=plan.snapshot_due_in,
            )
        from reconciler.steps.apply import apply_step  # see Reconciler.steps

        actions: list[str] = []
        for step in plan.steps:
            started = time.monotonic()
            try:
                done = apply_step(step, self.steps)
            except ReconcilerError as err:
                return InstanceResult(
                    plan.name,
                    Outcome.FAILED,
                    tuple(actions),
                    f"{step.kind.value}: {err}",
                    notes,
                    failure=_failure(err),
                )
            except Exception as err:  # a bug must not take the other instances down with it
                if is_out_of_space(err):  # a full disk is no bug: said where, and retried
                    assert isinstance(err, OSError)
                    full = no_space_left(err, self.state.instance(plan.name).directory)
                    message = f"{step.kind.value}: {full}"
                else:
                    LOG.exception("%s: unexpected error in %s", plan.name, step.kind.value)
                    message = f"{step.kind.value}: internal error: {type(err).__name__}: {err}"
                return InstanceResult(
                    plan.name,
                    Outcome.FAILED,
                    tuple(actions),
                    message,
                    notes,
                    failure=Failure.TRANSIENT,
                )
            LOG.debug("%s: %s took %.3fs", plan.name, step.kind.value, time.monotonic() - started)
            actions.append(done)
            self._progress(plan.name, done)
        # a step that used the base checked it (and fetched it again when spoiled): its
        # own action says what it found, and the plan's forecast is out of date
        checked = any(isinstance(s, StartDomain | CreateOverlay | FetchBase) for s in plan.steps)
        return InstanceResult(
            plan.name,
            Outcome.CHANGED,
            tuple(actions),
            notes=plan.notes if checked else notes,
            accelerator=plan.accelerator,
            started=any(isinstance(s, StartDomain) for s in plan.steps),
            snapshot_due_in=plan.snapshot_due_in,
        )

    def _check_outcome(self, result: InstanceResult, spec: InstanceSpec) -> InstanceResult:
        """A domain that should run but is paused on an error (or stopped) is a failure.

        Only instances this reconcile changed are looked up again: an unchanged one was
        observed running moments ago (otherwise its plan would have had steps or a refusal).
        """
        if result.outcome is not Outcome.CHANGED or spec.state is not DesiredState.RUNNING:
            return result
        try:
            record = self.driver.lookup(spec.name)
        except ReconcilerError as err:
            return _failed(result, f"cannot confirm the domain runs: {err}")
        if record is None:
            return _failed(result, "domain vanished after the pass")
        if record.state is PowerState.RUNNING:
            return result
        if record.state is PowerState.PAUSED and record.state_reason is StateReason.USER:
            return result
        if record.state is PowerState.SHUTDOWN:  # the guest is powering itself off
            return dataclasses.replace(result, requeue_after=TRANSITION_RECHECK_SECONDS)
        return _failed(
            result,
            f"domain is {record.state.value} (reason: {record.state_reason}), not running; "
            "see the QEMU log of the domain",
        )


def _failure(err: ReconcilerError) -> Failure:
    return Failure.PERMANENT if isinstance(err, PermanentError) else Failure.TRANSIENT


def _reached(result: InstanceResult, spec: InstanceSpec) -> InstanceResult:
    if result.outcome is Outcome.FAILED:
        return result
    return dataclasses.replace(result, state=spec.state)


def _failed(result: InstanceResult, message: str) -> InstanceResult:
    return dataclasses.replace(
        result, outcome=Outcome.FAILED, message=message, failure=Failure.TRANSIENT
    )


def _macs_of(record: ObservedDomain) -> frozenset[str]:
    if not isinstance(record, DomainFacts):
        return frozenset()
    return frozenset(nic.mac for nic in record.definition.nics)


def _macs_chosen(plan: InstancePlan) -> frozenset[str]:
    """The MACs of the machine `plan` defines and of the NICs it attaches."""
    macs: set[str] = set()
    for step in plan.steps:
        if isinstance(step, DefineDomain):
            macs.update(nic.mac for nic in step.machine.nics)
        elif isinstance(step, AttachNic):
            macs.add(step.nic.mac)
    return frozenset(macs)
