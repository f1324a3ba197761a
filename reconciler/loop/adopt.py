"""Adoption: an existing domain that no reconciler made becomes managed, when its manifest
matches it, only when asked (`reconcile adopt NAME DIR`), never implicitly.

The domain is planned as if it were this state directory's (Reconciler.plan, adopting): the
definition step then lists every managed field where the domain and the manifest differ.
With no difference, the marker alone is recorded on the domain's definition, which is left as
it is otherwise (libvirt's domain metadata), so nothing the manifest does not manage is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import ReconcilerError
from reconciler.loop.reconcile import Reconciler
from reconciler.model.desired import InstanceSpec
from reconciler.planning.machine import describe_changes, shape_of, with_recorded_fields
from reconciler.planning.steps import DefineDomain


@dataclass(frozen=True, slots=True)
class Adoption:
    name: str
    adopted: bool
    differences: tuple[str, ...] = ()  # managed fields where the domain and manifest differ
    refusal: str | None = None  # why it cannot be adopted at all
    next_steps: tuple[str, ...] = ()  # what the next pass will do once it is adopted


def adopt(reconciler: Reconciler, spec: InstanceSpec, *, dry_run: bool = False) -> Adoption:
    try:
        plan = reconciler.plan(spec, reconciler.resolver(persist_digests=False), adopting=True)
    except ReconcilerError as err:
        return Adoption(spec.name, False, refusal=str(err))
    if plan.refusal is not None:
        return Adoption(spec.name, False, refusal=plan.refusal)
    defines = [step for step in plan.steps if isinstance(step, DefineDomain)]
    others = tuple(step.describe() for step in plan.steps if not isinstance(step, DefineDomain))
    if not defines:  # a marker with the adoption digest is always redefined
        return Adoption(spec.name, False, refusal="internal error: no definition step planned")
    (define,) = defines
    record = reconciler.driver.lookup(spec.name)
    if record is None or record.definition is None:
        return Adoption(spec.name, False, refusal="the domain went away meanwhile")
    # what the marker records is written with it: only what the hypervisor holds may differ
    found = with_recorded_fields(record.definition, define.machine)
    if shape_of(found) != shape_of(define.machine):
        differences = tuple(c.describe() for c in describe_changes(found, define.machine))
        return Adoption(spec.name, False, differences=differences)
    if not dry_run:
        reconciler.driver.set_marker(spec.name, define.machine)
    return Adoption(spec.name, not dry_run, next_steps=others)
