"""What the planner's table tests hand it: the observed state and the base's cache facts in
one value (`Observed`, in InstanceActual's old order: domain, overlay, its problem, then
whether the base is cached and changed), split by `plan` into the resolved instance and the
actual state, as the resolve and observe phases give them to the planner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler.model.actual import DiskFacts, DomainFacts, InstanceActual
from reconciler.model.desired import InstanceSpec
from reconciler.model.resolved import ResolvedInstance
from reconciler.planning.context import InstancePlan, PlanContext
from reconciler.planning.plan import plan_instance
from reconciler.statedir import StateDir
from tests.helpers import make_spec

STATE = StateDir(Path("/state"))
BASE = STATE.cached_base(make_spec().image)


@dataclass(frozen=True)
class Observed:
    domain: DomainFacts | None
    overlay: DiskFacts | None
    overlay_problem: str | None
    base_cached: bool = True
    base_changed: bool = False
    config_drives: frozenset[str] = frozenset()
    data_disks: tuple[DiskFacts, ...] = ()
    data_disk_problem: str | None = None
    host_shutdown: bool = False
    base_virtual_size: int | None = None

    @property
    def actual(self) -> InstanceActual:
        return InstanceActual(
            self.domain,
            self.overlay,
            self.overlay_problem,
            config_drives=self.config_drives,
            data_disks=self.data_disks,
            data_disk_problem=self.data_disk_problem,
            host_shutdown=self.host_shutdown,
        )

    def resolved(self, spec: InstanceSpec) -> ResolvedInstance:
        return ResolvedInstance(
            spec,
            BASE,
            self.base_cached,
            self.base_changed,
            base_virtual_size=self.base_virtual_size,
        )


def planned(spec: InstanceSpec, observed: Observed, context: PlanContext) -> InstancePlan:
    return plan_instance(observed.resolved(spec), observed.actual, context)
