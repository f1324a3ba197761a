"""Planner table tests: desired x actual -> steps (or refusal). Pure, no libvirt."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from reconciler.model.accel import KvmSupport
from reconciler.model.actual import DiskFacts, DomainFacts, PowerState, StateReason
from reconciler.model.desired import Accelerator, DesiredState, InstanceSpec, RunPolicy
from reconciler.model.machine import Disk, OwnershipMarker
from reconciler.planning.machine import DomainLayout, build_machine
from reconciler.planning.network import build_nics, choose_macs
from reconciler.planning.plan import PlanContext, StepKind, plan_instance
from reconciler.planning.steps import DefineDomain
from tests.helpers import make_spec
from tests.planning import BASE, STATE, Observed, planned

NO_KVM = KvmSupport(False, "no kvm here")
GIB = 1024**3
TCG = Accelerator.TCG
STATE_ID = "5eed" * 8


def context(spec: InstanceSpec, kvm: KvmSupport = NO_KVM, **facts: Any) -> PlanContext:
    return replace(PlanContext(STATE.instance(spec.name), kvm, state_dir_id=STATE_ID), **facts)


def layout_of(spec: InstanceSpec, accelerator: Accelerator = Accelerator.TCG) -> DomainLayout:
    """The layout the plan gives `spec` (its interfaces with their derived MACs)."""
    paths = STATE.instance(spec.name)
    macs = choose_macs(spec.name, spec.networks, None, ())
    nics = build_nics(spec.networks, macs)
    return DomainLayout(str(paths.disk), str(paths.console_log), accelerator, None, nics)


def digest_of(spec: InstanceSpec, accelerator: Accelerator = Accelerator.TCG) -> str:
    return build_machine(spec, layout_of(spec, accelerator)).spec_digest()


def domain(
    spec: InstanceSpec,
    state: PowerState = PowerState.RUNNING,
    *,
    digest: str | None = None,
    owned: bool = True,
    reason: str = "booted",
    live_memory_kib: int | None = None,
    memory_kib: int | None = None,
) -> DomainFacts:
    """A domain as the plan would have defined it for `spec` (then changed as asked)."""
    marker = OwnershipMarker("m.yaml", digest or digest_of(spec), STATE_ID) if owned else None
    shape = build_machine(spec, layout_of(spec))
    definition = replace(
        shape,
        uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        memory_kib=memory_kib or shape.memory_kib,
        marker=marker,
    )
    live = None
    if state.active:
        live = definition
        if live_memory_kib is not None and marker is not None:  # started from an older one
            older = replace(marker, spec_digest="sha256:older")
            live = replace(definition, memory_kib=live_memory_kib, marker=older)
    uuid = definition.uuid or ""
    return DomainFacts(spec.name, uuid, state, StateReason(reason), True, definition, live)


def overlay(spec: InstanceSpec, size: int | None = None, backing: str | None = None) -> DiskFacts:
    return DiskFacts(
        path=str(STATE.instance(spec.name).disk),
        format="qcow2",
        virtual_size=spec.disk_bytes if size is None else size,
        backing_file=str(BASE) if backing is None else backing,
        backing_format="raw",
    )


def kinds(spec: InstanceSpec, actual: Observed) -> list[StepKind] | str:
    plan = planned(spec, actual, context(spec))
    return plan.refusal if plan.refusal is not None else [step.kind for step in plan.steps]


FETCH, CREATE, RESIZE, DEFINE, START, STOP, UNDEFINE = (
    StepKind.FETCH_BASE,
    StepKind.CREATE_OVERLAY,
    StepKind.RESIZE_DISK,
    StepKind.DEFINE,
    StepKind.START,
    StepKind.STOP,
    StepKind.UNDEFINE,
)
RUNNING = make_spec()
STOPPED = make_spec(state=DesiredState.STOPPED)
ABSENT = make_spec(state=DesiredState.ABSENT)
BIGGER = make_spec(disk_bytes=4 * GIB)
MORE_MEMORY = make_spec(memory_bytes=256 * 1024**2)


@pytest.mark.parametrize(
    ("spec", "actual", "expected"),
    [
        # nothing exists: the whole pipeline
        (RUNNING, Observed(None, None, None, False), [FETCH, CREATE, DEFINE, START]),
        # base already cached: no fetch
        (RUNNING, Observed(None, None, None, True), [CREATE, DEFINE, START]),
        # stopped instance: everything but start
        (STOPPED, Observed(None, None, None, False), [FETCH, CREATE, DEFINE]),
        # converged running instance: nothing
        (RUNNING, Observed(domain(RUNNING), overlay(RUNNING), None, True), []),
        # defined but shut off: start only
        (
            RUNNING,
            Observed(domain(RUNNING, PowerState.SHUTOFF), overlay(RUNNING), None, True),
            [START],
        ),
        # domain undefined by hand, disk still there: define and start, disk kept
        (RUNNING, Observed(None, overlay(RUNNING), None, True), [DEFINE, START]),
        # running, should be stopped
        (STOPPED, Observed(domain(STOPPED), overlay(STOPPED), None, True), [STOP]),
        # bigger disk on a running domain: online resize
        (BIGGER, Observed(domain(BIGGER), overlay(BIGGER, 2 * GIB), None, True), [RESIZE]),
        # bigger disk and stop: stop first, then an offline resize
        (
            replace(BIGGER, state=DesiredState.STOPPED),
            Observed(
                domain(replace(BIGGER, state=DesiredState.STOPPED)),
                overlay(BIGGER, 2 * GIB),
                None,
                True,
            ),
            [STOP, RESIZE],
        ),
        # more memory on a running domain: redefine only (applies at next restart)
        (
            MORE_MEMORY,
            Observed(
                domain(MORE_MEMORY, digest=digest_of(RUNNING)), overlay(MORE_MEMORY), None, True
            ),
            [DEFINE],
        ),
        # absent: stop and undefine; nothing when already gone
        (ABSENT, Observed(domain(ABSENT), overlay(ABSENT), None, True), [STOP, UNDEFINE]),
        (
            ABSENT,
            Observed(domain(ABSENT, PowerState.SHUTOFF), overlay(ABSENT), None, True),
            [UNDEFINE],
        ),
        (ABSENT, Observed(None, overlay(ABSENT), None, True), []),
    ],
)
def test_plan_table(spec: InstanceSpec, actual: Observed, expected: list[StepKind]) -> None:
    assert kinds(spec, actual) == expected


def test_foreign_domain_is_refused_whatever_the_state() -> None:
    for spec in (RUNNING, STOPPED, ABSENT):
        actual = Observed(domain(spec, owned=False), None, None, False)
        refusal = kinds(spec, actual)
        assert isinstance(refusal, str)
        assert "not created by reconciler" in refusal


def test_shrink_is_refused_and_nothing_planned() -> None:
    actual = Observed(domain(RUNNING), overlay(RUNNING, 4 * GIB), None, True)
    refusal = kinds(RUNNING, actual)
    assert refusal == (
        "disk.size 2GiB is smaller than the disk's current 4GiB: disks never shrink; "
        "the disk would have to be replaced, so nothing was changed"
    )


def test_other_base_is_refused() -> None:
    actual = Observed(domain(RUNNING), overlay(RUNNING, backing="/old.raw"), None, True)
    refusal = kinds(RUNNING, actual)
    assert isinstance(refusal, str) and "changing the base image" in refusal


def test_unreadable_overlay_is_refused() -> None:
    actual = Observed(domain(RUNNING), None, "disk.qcow2: not a qcow2 file", True)
    refusal = kinds(RUNNING, actual)
    assert isinstance(refusal, str) and "not a qcow2 file" in refusal


def test_paused_on_error_is_a_failure_not_running() -> None:
    actual = Observed(
        domain(RUNNING, PowerState.PAUSED, reason="crashed"), overlay(RUNNING), None, True
    )
    refusal = kinds(RUNNING, actual)
    assert isinstance(refusal, str) and "paused after an error (reason: crashed)" in refusal
    paused_by_hand = Observed(
        domain(RUNNING, PowerState.PAUSED, reason="user"), overlay(RUNNING), None, True
    )
    assert kinds(RUNNING, paused_by_hand) == []


def test_paused_on_an_io_error_is_resumed_and_stopped_when_asked() -> None:
    """A full file system pauses the guest (werror=stop): it is resumed (the step waits for
    room), not refused for good as other errors are; a stop asked for stops it."""
    actual = Observed(
        domain(RUNNING, PowerState.PAUSED, reason="ioerror"), overlay(RUNNING), None, True
    )
    assert kinds(RUNNING, actual) == [StepKind.RESUME]
    assert StepKind.STOP in kinds(STOPPED, actual)


def test_redefine_says_when_it_takes_effect() -> None:
    old = domain(MORE_MEMORY, digest=digest_of(RUNNING), memory_kib=128 * 1024)
    plan = planned(MORE_MEMORY, Observed(old, overlay(RUNNING), None, True), context(RUNNING))
    (step,) = plan.steps
    assert step.describe() == (
        "redefine domain: [restart] memory 128MiB -> 256MiB "
        "(takes effect at the next restart of the running domain)"
    )
    stopped = replace(old, state=PowerState.SHUTOFF, live_definition=None)
    plan = planned(MORE_MEMORY, Observed(stopped, overlay(RUNNING), None, True), context(RUNNING))
    define = plan.steps[0]
    assert define.describe().endswith("(takes effect now: the domain starts next)")


def test_running_with_older_live_definition_notes_pending_restart() -> None:
    older = domain(RUNNING, live_memory_kib=64 * 1024)
    plan = planned(RUNNING, Observed(older, overlay(RUNNING), None, True), context(RUNNING))
    assert plan.steps == ()
    assert plan.pending_restart
    assert any("next restart" in note for note in plan.notes)


def test_a_marker_from_an_older_version_is_updated_without_a_restart() -> None:
    stale = domain(RUNNING, digest="sha256:made-by-an-older-version")
    plan = planned(RUNNING, Observed(stale, overlay(RUNNING), None, True), context(RUNNING))
    (define,) = plan.steps
    assert isinstance(define, DefineDomain)
    assert [change.what for change in define.changes] == ["ownership marker updated"]
    assert define.machine.marker is not None
    assert define.machine.marker.spec_digest == digest_of(RUNNING)
    assert not plan.pending_restart
    assert not any("restart" in note for note in plan.notes)


def test_auto_accelerator_follows_kvm_support() -> None:
    actual = Observed(None, None, None, True)
    with_kvm = planned(RUNNING, actual, context(RUNNING, KvmSupport(True, "kvm_intel")))
    without = planned(RUNNING, actual, context(RUNNING, NO_KVM))
    assert with_kvm.accelerator is not None and without.accelerator is not None
    assert with_kvm.accelerator.accelerator is Accelerator.KVM
    assert without.accelerator.accelerator is Accelerator.TCG
    define = next(s for s in with_kvm.steps if isinstance(s, DefineDomain))
    assert define.machine.accelerator is Accelerator.KVM
    forced = replace(RUNNING, accelerator=Accelerator.KVM)
    forced_plan = planned(forced, actual, context(forced, NO_KVM))
    assert forced_plan.accelerator is not None
    assert forced_plan.accelerator.accelerator is Accelerator.KVM


RECOVER = StepKind.RECOVER


@pytest.mark.parametrize(
    ("spec", "reason", "expected"),
    [
        # a start whose process died: cleared, then started again
        (RUNNING, "starting-up", [RECOVER, START]),
        (RUNNING, "shutting-down", [RECOVER, START]),
        # it never ran: clearing it leaves it stopped
        (STOPPED, "starting-up", [RECOVER]),
        (ABSENT, "starting-up", [RECOVER, UNDEFINE]),
    ],
)
def test_an_interrupted_transition_is_recovered_not_reported_as_a_guest_error(
    spec: InstanceSpec, reason: str, expected: list[StepKind]
) -> None:
    actual = Observed(domain(spec, PowerState.PAUSED, reason=reason), overlay(spec), None, True)
    assert kinds(spec, actual) == expected


def test_recover_step_says_what_it_does() -> None:
    actual = Observed(
        domain(RUNNING, PowerState.PAUSED, reason="starting-up"), overlay(RUNNING), None, True
    )
    recover = planned(RUNNING, actual, context(RUNNING)).steps[0]
    assert recover.describe().startswith(
        "recover an interrupted start (domain paused in starting-up"
    )


@pytest.mark.parametrize(
    ("marker", "disk", "expected"),
    [
        (None, None, "was not created by reconciler (no ownership marker)"),
        # a marker written by someone else: no state directory id, or another one
        (OwnershipMarker("m.yaml", "sha256:x"), None, "marker: no state directory id"),
        (OwnershipMarker("m.yaml", "sha256:x", "f" * 32), None, f"marker: {'f' * 32}"),
        # this state directory's id, but not this instance's disk
        (
            OwnershipMarker("m.yaml", "sha256:x", STATE_ID),
            "/etc/shadow",
            "boot disk is /etc/shadow",
        ),
    ],
)
def test_ownership_is_proven_by_state_directory_id_and_disk(
    marker: OwnershipMarker | None, disk: str | None, expected: str
) -> None:
    claimed = domain(RUNNING)
    definition = replace(
        claimed.definition,
        marker=marker,
        disks=(Disk("vda", disk, "qcow2"),) if disk else claimed.definition.disks,
    )
    forged = replace(claimed, definition=definition)
    for spec in (RUNNING, STOPPED, ABSENT):
        refusal = kinds(spec, Observed(forged, overlay(spec), None, True))
        assert isinstance(refusal, str) and expected in refusal, refusal
        assert "left untouched" in refusal
    # before the state directory exists (plan on a new one), nothing can be ours
    plan = planned(RUNNING, Observed(domain(RUNNING), None, None, True),
                         context(RUNNING, state_dir_id=None))  # fmt: skip
    assert plan.refusal is not None and "does not name this state directory" in plan.refusal


def test_a_disk_deleted_under_a_defined_domain_is_refused_unless_replacement_is_allowed() -> None:
    for state in (PowerState.RUNNING, PowerState.SHUTOFF):
        actual = Observed(domain(RUNNING, state), None, None, True)
        refusal = kinds(RUNNING, actual)
        assert isinstance(refusal, str)
        assert refusal.startswith(f"disk {STATE.instance('web').disk} is missing although")
        assert "allowReplace: true" in refusal
    allowed = replace(RUNNING, allow_replace=True)
    actual = Observed(domain(allowed, PowerState.SHUTOFF), None, None, True)
    plan = planned(allowed, actual, context(allowed))
    assert [step.kind for step in plan.steps] == [CREATE, START]
    assert any("a new, empty one is made (allowReplace)" in note for note in plan.notes)


def test_a_disk_smaller_than_its_base_is_refused_with_both_sizes() -> None:
    small = make_spec(disk_bytes=16 * 1024**2)
    base_size = 32 * 1024**2
    plan = planned(
        small, Observed(None, None, None, True, base_virtual_size=base_size), context(small)
    )
    assert plan.refusal == (
        "disk.size 16MiB is smaller than the base image's virtual size 32MiB; "
        "ask for at least 32MiB"
    )
    same = make_spec(disk_bytes=32 * 1024**2)
    plan = planned(
        same, Observed(None, None, None, True, base_virtual_size=base_size), context(same)
    )
    assert plan.refusal is None


def test_memory_beyond_the_host_is_refused() -> None:
    plan = planned(
        RUNNING, Observed(None, None, None, True), context(RUNNING, host_memory=64 * 1024**2)
    )
    assert plan.refusal == "memory 128MiB is more than this host has (64MiB)"


def test_a_missing_base_under_an_existing_disk_is_fetched_before_a_start() -> None:
    actual = Observed(domain(RUNNING, PowerState.SHUTOFF), overlay(RUNNING), None, False)
    assert kinds(RUNNING, actual) == [FETCH, START]


def test_a_changed_cached_base_is_noted_and_checked_at_start() -> None:
    actual = Observed(domain(RUNNING, PowerState.SHUTOFF), overlay(RUNNING), None, True, True)
    plan = planned(RUNNING, actual, context(RUNNING))
    (start,) = plan.steps
    assert start.kind is START and start.image == RUNNING.image  # type: ignore[union-attr]
    assert any("changed since it was verified" in note for note in plan.view().notes)


def test_what_the_driver_cannot_run_is_refused_by_the_planner_itself() -> None:
    """The driver's capabilities are in the plan context: a machine it cannot run is refused
    before any step, by the planner (not vetoed afterwards)."""
    spec = make_spec()
    refusing = context(spec, cannot_express=lambda machine: (f"{machine.name}: not here",))
    nothing = Observed(None, None, None, False)
    plan = planned(spec, nothing, refusing)
    assert plan.refusal == f"{spec.name}: not here" and plan.steps == ()
    assert planned(spec, nothing, context(spec)).refusal is None


# run, exists, active, change needs a restart, stopped unasked, host shutdown, held ->
# stop, start, restart, held, after an unasked stop, after a host shutdown
POWER_TABLE = [
    # nothing yet: start it (or not, when it should not run)
    ((True, False, False, False, False, False, None), (False, True, False, None, False, False)),
    ((False, False, False, False, False, False, None), (False, False, False, None, False, False)),
    # running as it should: nothing; a change it must take now: restart
    ((True, True, True, False, False, False, None), (False, False, False, None, False, False)),
    ((True, True, True, True, False, False, None), (True, True, True, None, False, False)),
    # running but asked to stop: stop (a pending change does not restart it)
    ((False, True, True, True, False, False, None), (True, False, False, None, False, False)),
    # off because someone stopped it with the manifest's consent (state recorded stopped)
    ((True, True, False, False, False, False, "held"), (False, True, False, None, False, False)),
    # off although the manifest asked it to run: the run policy decides
    ((True, True, False, False, True, False, None), (False, True, False, None, True, False)),
    ((True, True, False, False, True, False, "held"), (False, False, False, "held", False, False)),
    # the host shut it down: started again whatever the policy, no crash-loop guard
    ((True, True, False, False, True, True, "held"), (False, True, False, None, False, True)),
    # a host-shutdown record means nothing for a domain that should stay off
    ((False, True, False, False, True, True, None), (False, False, False, None, False, False)),
]


@pytest.mark.parametrize(("facts", "decision"), POWER_TABLE)
def test_the_power_decision_table(
    facts: tuple[bool, bool, bool, bool, bool, bool, str | None],
    decision: tuple[bool, bool, bool, str | None, bool, bool],
) -> None:
    from reconciler.planning.runpolicy import PowerDecision, PowerFacts, decide_power

    assert decide_power(PowerFacts(*facts)) == PowerDecision(*decision)


@pytest.mark.parametrize(
    ("policy", "restarts"),
    [
        (RunPolicy.ALWAYS, True),
        (RunPolicy.RERUN_ON_FAILURE, True),
        (RunPolicy.MANUAL, False),
    ],
)
def test_a_failed_liveness_probe_restarts_only_under_the_policies_that_restart(
    policy: RunPolicy, restarts: bool
) -> None:
    spec = replace(RUNNING, run_policy=policy)
    observed = Observed(domain(spec), overlay(spec), None)
    failing = replace(observed.actual, liveness_failed="tcp port 22: refused (3 in a row)")
    plan = plan_instance(observed.resolved(spec), failing, context(spec))
    if restarts:
        assert [step.kind for step in plan.steps] == [STOP, START]
        assert plan.restart_after == "liveness failed: tcp port 22: refused (3 in a row)"
    else:
        assert plan.steps == () and plan.restart_after is None
        assert any("only reports it" in note for note in plan.notes)
    # a domain that does not run has no liveness to fail
    stopped = Observed(domain(spec, PowerState.SHUTOFF, reason="shutdown"), overlay(spec), None)
    off = replace(stopped.actual, liveness_failed="stale")
    assert (
        plan_instance(stopped.resolved(spec), off, context(spec)).restart_after
        != "liveness failed: stale"
    )
