"""What a plan is made from beside desired and actual (PlanContext), and what it makes
(InstancePlan, and its PlanView for review). Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.layout import InstancePaths
from reconciler.model.accel import AcceleratorChoice, KvmSupport
from reconciler.model.desired import Accelerator
from reconciler.model.machine import Machine
from reconciler.planning.review import PlanView, step_view
from reconciler.planning.steps import Step


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Facts beside the resolved instance and what exists that the plan needs: paths, KVM,
    defaults, the host's memory, the other domains' MACs, the driver's capabilities."""

    paths: InstancePaths
    kvm: KvmSupport
    default_accelerator: Accelerator = Accelerator.AUTO
    state_dir_id: str | None = None  # None before the state directory exists: nothing is ours
    host_memory: int | None = None  # bytes of memory where the domain runs, when known
    macs_in_use: frozenset[str] = frozenset()  # by other domains (derived MACs avoid them)
    unavailable: tuple[str, ...] = ()  # why the interfaces cannot attach (a missing bridge...)
    # the driver's capabilities: what in a machine it cannot run, each "field: why" (a pure
    # function of the machine; see Driver.cannot_express): the plan refuses such a machine
    cannot_express: Callable[[Machine], tuple[str, ...]] = lambda _machine: ()
    now: float | None = None  # the wall clock (None: no scheduled snapshot is planned)


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
    # what the steps that use the base image will find out (a cached base changed): shown in
    # the plan, and left out of a pass's result once such a step has run and found out
    base_forecasts: tuple[str, ...] = ()
    held: bool = False  # a revert holds it (the note says why): nothing is done
    snapshot_due_in: float | None = None  # seconds until its next scheduled snapshot is due
    wave: tuple[str, int, int] | None = None  # its rollout's group, its wave, of how many

    @property
    def converged(self) -> bool:
        return not self.steps and self.refusal is None

    def view(self) -> PlanView:
        """What is printed of the plan (and what the daemon sends for it)."""
        steps = tuple(step_view(step) for step in self.steps)
        notes = self.notes + self.base_forecasts
        return PlanView(self.name, steps, self.refusal, notes, self.wave)
