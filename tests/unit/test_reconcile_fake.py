"""One reconcile, and the steps, against the in-memory driver with a fake clock: control flow
and outcomes in milliseconds (real qemu-img makes the disk; the e2e tests run real QEMU)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from reconciler.clock import Clock
from reconciler.errors import DriverError
from reconciler.images.sources import SourcePolicy
from reconciler.loop.once import apply_all
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.loop.results import CrashLoop, Failure, Outcome
from reconciler.manifests.loader import LoadResult
from reconciler.model.actual import (
    DomainFacts,
    ObservedDomain,
    PowerState,
    StateReason,
    UnreadableDomain,
)
from reconciler.model.desired import (
    DEFAULT_NETWORKS,
    DesiredState,
    ImageFormat,
    ImageSource,
    InstanceSpec,
)
from reconciler.model.machine import Machine
from reconciler.planning.network import derived_mac
from reconciler.statedir import StateDir
from reconciler.testing.fake import FakeDriver
from tests.helpers import make_spec, write_base_image


@dataclass
class FakeTime:
    now: float = 0.0
    slept: float = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds

    def clock(self) -> Clock:
        return Clock(monotonic=lambda: self.now, sleep=self.sleep)


@dataclass
class World:
    driver: FakeDriver
    reconciler: Reconciler
    spec: InstanceSpec
    time: FakeTime


@pytest.fixture
def world(tmp_path: Path) -> World:
    images = tmp_path / "images"
    images.mkdir()
    base, sha = write_base_image(images)
    state = StateDir(tmp_path / "state")
    state.create()
    driver = FakeDriver()
    time = FakeTime()
    settings = Settings(sources=SourcePolicy((images,)))
    reconciler = Reconciler(driver, state, settings, clock=time.clock())
    spec = make_spec(name="rct-fake", image=ImageSource(base, sha, ImageFormat.RAW))
    return World(driver, reconciler, spec, time)


def test_a_new_instance_is_built_and_started_then_left_alone(world: World) -> None:
    first = world.reconciler.reconcile(world.spec)
    assert first.outcome is Outcome.CHANGED, first.message
    assert [call for call, _ in world.driver.calls] == ["define", "start"]
    record = world.driver.lookup("rct-fake")
    assert isinstance(record, DomainFacts) and record.state is PowerState.RUNNING
    assert record.definition.marker is not None
    world.driver.calls.clear()
    again = world.reconciler.reconcile(world.spec)
    assert again.outcome is Outcome.UNCHANGED
    assert world.driver.calls == []


def test_a_crashed_domain_is_started_again(world: World) -> None:
    world.reconciler.reconcile(world.spec)
    world.driver.crash("rct-fake")
    result = world.reconciler.reconcile(world.spec)
    assert result.outcome is Outcome.CHANGED
    assert world.driver.domains["rct-fake"].state is PowerState.RUNNING


def test_a_guest_that_ignores_acpi_is_forced_off_after_its_timeout(world: World) -> None:
    world.reconciler.reconcile(world.spec)
    world.driver.ignore_acpi("rct-fake")
    stopped = replace(world.spec, state=DesiredState.STOPPED, shutdown_timeout_seconds=30)
    result = world.reconciler.reconcile(stopped)
    assert result.outcome is Outcome.CHANGED
    assert any("forced off" in action for action in result.actions)
    assert world.time.slept >= 30  # waited on the fake clock, not the real one
    assert world.driver.domains["rct-fake"].state is PowerState.SHUTOFF


def test_a_lost_connection_is_a_transient_failure_that_changes_nothing(world: World) -> None:
    world.reconciler.reconcile(world.spec)
    world.driver.crash("rct-fake")
    world.driver.calls.clear()
    world.driver.lose_connection()
    result = world.reconciler.reconcile(world.spec)
    assert result.outcome is Outcome.FAILED
    assert result.failure is Failure.TRANSIENT
    assert world.driver.calls == []  # nothing defined or started on a guess
    world.driver.restore_connection()
    assert world.reconciler.reconcile(world.spec).outcome is Outcome.CHANGED


def test_a_failing_hypervisor_call_is_transient_and_a_refusal_is_permanent(
    world: World,
) -> None:
    world.driver.failures["start"] = DriverError("start rct-fake", "out of luck")
    failed = world.reconciler.reconcile(world.spec)
    assert failed.outcome is Outcome.FAILED and failed.failure is Failure.TRANSIENT
    assert "out of luck" in (failed.message or "")
    assert world.reconciler.reconcile(world.spec).outcome is Outcome.CHANGED
    smaller = replace(world.spec, disk_bytes=world.spec.disk_bytes // 2)
    refused = world.reconciler.reconcile(smaller)
    assert refused.outcome is Outcome.FAILED and refused.failure is Failure.PERMANENT
    assert "never shrink" in (refused.message or "")


def test_a_domain_someone_else_defined_is_refused_and_untouched(world: World) -> None:
    world.driver.define(Machine("rct-fake", None, vcpus=1, memory_kib=1024))
    world.driver.calls.clear()
    result = world.reconciler.reconcile(world.spec)
    assert result.outcome is Outcome.FAILED and result.failure is Failure.PERMANENT
    assert "not created by reconciler" in (result.message or "")
    assert world.driver.calls == []


def test_the_domain_must_really_run_after_the_pass(world: World) -> None:
    """A start that 'succeeds' but leaves the domain stopped is a failure, not a success."""
    world.reconciler.reconcile(world.spec)
    world.driver.crash("rct-fake")
    original_start = world.driver.start

    def start_then_die(name: str) -> None:
        original_start(name)
        world.driver.crash(name)

    world.driver.start = start_then_die  # type: ignore[method-assign]
    result = world.reconciler.reconcile(world.spec)
    assert result.outcome is Outcome.FAILED and result.failure is Failure.TRANSIENT
    assert "not running" in (result.message or "")


def test_a_domain_whose_definition_cannot_be_read_is_refused_in_the_plan(world: World) -> None:
    unreadable = UnreadableDomain(
        "rct-fake", "u", PowerState.SHUTOFF, StateReason.UNKNOWN, problem="unreadable XML"
    )
    world.driver.lookup = lambda _name: unreadable  # type: ignore[method-assign,assignment]
    plan = world.reconciler.plan(world.spec, world.reconciler.resolver(persist_digests=False))
    assert plan.refusal is not None and "unreadable XML" in plan.refusal
    assert "left untouched" in plan.refusal
    result = world.reconciler.reconcile(world.spec)
    assert result.outcome is Outcome.FAILED and result.failure is Failure.PERMANENT
    assert world.driver.calls == []


def test_attachments_are_checked_only_for_a_domain_about_to_start(world: World) -> None:
    world.driver.unavailable = ("interface 0: host port 127.0.0.1:2222/tcp is in use",)
    refused = world.reconciler.reconcile(world.spec)
    assert refused.outcome is Outcome.FAILED and refused.failure is Failure.PERMANENT
    assert refused.message == "interface 0: host port 127.0.0.1:2222/tcp is in use"
    assert world.driver.calls == []  # nothing was made
    world.driver.unavailable = ()
    assert world.reconciler.reconcile(world.spec).outcome is Outcome.CHANGED
    world.driver.unavailable = ("interface 0: host port 127.0.0.1:2222/tcp is in use",)
    # the running domain holds its own port: that is no reason to fail it
    assert world.reconciler.reconcile(world.spec).outcome is Outcome.UNCHANGED


def test_a_rebuilt_config_drive_is_swapped_into_the_running_domain(world: World) -> None:
    from reconciler.model.desired import GuestConfig

    spec = replace(world.spec, guest=GuestConfig(hostname="one"))
    assert world.reconciler.reconcile(spec).outcome is Outcome.CHANGED
    directory = world.reconciler.state.instance(spec.name).directory
    (first,) = directory.glob("config-*.iso")
    assert first.stat().st_mode & 0o777 == 0o600
    world.driver.calls.clear()
    edited = world.reconciler.reconcile(replace(spec, guest=GuestConfig(hostname="two")))
    assert edited.outcome is Outcome.CHANGED, edited.message
    assert [call for call, _ in world.driver.calls] == ["define", "change medium of"]
    (second,) = directory.glob("config-*.iso")
    assert second != first and not edited.pending_restart
    record = world.driver.lookup(spec.name)
    assert isinstance(record, DomainFacts) and record.live_definition is not None
    assert record.live_definition.config_drive_path == str(second)


def test_a_creation_cut_short_at_the_define_is_completed_by_the_next_pass(world: World) -> None:
    from reconciler.model.desired import GuestConfig

    spec = replace(world.spec, guest=GuestConfig(hostname="half"))
    world.driver.failures["define"] = DriverError("define rct-fake", "refused by the hypervisor")
    failed = world.reconciler.reconcile(spec)
    assert failed.outcome is Outcome.FAILED
    assert any(a.startswith("created disk") for a in failed.actions)  # disk and drive made
    directory = world.reconciler.state.instance(spec.name).directory
    assert len(list(directory.glob("config-*.iso"))) == 1
    assert world.driver.lookup(spec.name) is None

    plan = world.reconciler.plan(spec, world.reconciler.resolver(persist_digests=False))
    assert [step.kind.value for step in plan.steps] == ["define", "start"]
    assert any(note.startswith("completing the instance") for note in plan.notes)
    completed = world.reconciler.reconcile(spec)
    assert completed.outcome is Outcome.CHANGED, completed.message
    assert len(list(directory.glob("config-*.iso"))) == 1  # one drive, one disk, one domain
    assert [record.name for record in world.driver.list_domains()] == [spec.name]


def test_run_policies_after_a_stop_nobody_asked_for(world: World) -> None:
    from reconciler.model.desired import RunPolicy

    for policy, after_crash, after_shutdown in (
        (RunPolicy.ALWAYS, True, True),
        (RunPolicy.RERUN_ON_FAILURE, True, False),
        (RunPolicy.MANUAL, False, False),
    ):
        spec = replace(world.spec, name=f"rct-{policy.value.lower()}", run_policy=policy)
        assert world.reconciler.reconcile(spec).outcome is Outcome.CHANGED
        for stop, expected in (("crash", after_crash), ("shutdown", after_shutdown)):
            if stop == "crash":
                world.driver.crash(spec.name)
            else:
                assert world.driver.request_shutdown(spec.name)  # the guest powers off
            world.time.now += 1000  # long enough for no crash loop to count
            world.reconciler.reconcile(spec)
            record = world.driver.lookup(spec.name)
            assert record is not None
            started = record.state is PowerState.RUNNING
            assert started is expected, (policy, stop)
            if not started:  # the next stop starts from a running domain
                world.driver.start(spec.name)
    halted = replace(world.spec, name="rct-halted", run_policy=RunPolicy.HALTED)
    assert world.reconciler.reconcile(halted).outcome is Outcome.CHANGED
    record = world.driver.lookup("rct-halted")
    assert record is not None and record.state is PowerState.SHUTOFF  # defined, kept off


def test_a_stop_the_manifest_asked_for_is_started_again_whatever_the_policy(world: World) -> None:
    from reconciler.model.desired import RunPolicy

    spec = replace(world.spec, run_policy=RunPolicy.MANUAL)
    world.reconciler.reconcile(spec)
    world.reconciler.reconcile(replace(spec, state=DesiredState.STOPPED))
    assert world.reconciler.reconcile(spec).outcome is Outcome.CHANGED
    record = world.driver.lookup(spec.name)
    assert record is not None and record.state is PowerState.RUNNING


def test_a_crash_loop_backs_off_with_growing_delays_and_resets_after_a_while(world: World) -> None:
    assert world.reconciler.reconcile(world.spec).outcome is Outcome.CHANGED
    waits = []
    for _ in range(4):
        world.driver.crash("rct-fake")
        result = world.reconciler.reconcile(world.spec)
        if result.requeue_after is not None:  # held back: wait as long as it says, then start
            assert result.notes[0].startswith("crash loop: the domain stopped again (crashed)")
            waits.append(round(result.requeue_after))
            assert result.crash_loop == CrashLoop(len(waits), result.requeue_after, waits[-1])
            world.time.now += result.requeue_after
            result = world.reconciler.reconcile(world.spec)
        assert result.outcome is Outcome.CHANGED, result.message
        assert result.crash_loop == CrashLoop(len(waits) + 1)  # restarts in a row so far
    assert waits == [1, 2, 4]  # the first restart is at once
    world.time.now += 3600  # it ran for a while: the next crash restarts at once
    world.driver.crash("rct-fake")
    assert world.reconciler.reconcile(world.spec).requeue_after is None


def test_a_guest_that_missed_the_first_acpi_press_gets_another(world: World) -> None:
    """A guest not yet listening (early in its boot) misses a press; the stop presses again
    every 10 s rather than waiting out the whole timeout and forcing it off."""
    world.reconciler.reconcile(world.spec)
    world.driver.miss_acpi("rct-fake", presses=2)
    stopped = replace(world.spec, state=DesiredState.STOPPED, shutdown_timeout_seconds=60)
    result = world.reconciler.reconcile(stopped)
    assert result.outcome is Outcome.CHANGED, result.message
    assert any("shut down gracefully (pressed 3 times)" in a for a in result.actions), result
    assert [call for call, _ in world.driver.calls].count("shut down") == 3
    assert 20 <= world.time.slept < 21
    assert world.driver.domains["rct-fake"].state is PowerState.SHUTOFF


def test_a_pass_settles_converged_instances_from_one_listing_and_observes_the_rest(
    world: World,
) -> None:
    """`--once` lists every domain once; converged instances are settled from that listing
    (no lookup of their own), and only an instance with something to do is reconciled,
    observed afresh."""
    specs = tuple(replace(world.spec, name=f"rct-fake-{index}") for index in range(3))
    load = LoadResult(instances=specs, errors=(), files=(), invalid_names=frozenset())
    first = apply_all(load, world.reconciler)
    assert [r.outcome for r in first] == [Outcome.CHANGED] * 3, [r.message for r in first]

    looked_up: list[str] = []
    lookup = world.driver.lookup

    def counting_lookup(name: str) -> ObservedDomain | None:
        looked_up.append(name)
        return lookup(name)

    world.driver.lookup = counting_lookup  # type: ignore[method-assign]
    world.driver.calls.clear()
    again = apply_all(load, world.reconciler)
    assert [(r.outcome, r.state) for r in again] == [(Outcome.UNCHANGED, DesiredState.RUNNING)] * 3
    assert looked_up == [] and world.driver.calls == []

    world.driver.crash("rct-fake-1")
    after_crash = apply_all(load, world.reconciler)
    assert [r.outcome for r in after_crash] == [
        Outcome.UNCHANGED,
        Outcome.CHANGED,
        Outcome.UNCHANGED,
    ]
    assert set(looked_up) == {"rct-fake-1"}
    assert [call for call, _ in world.driver.calls] == ["start"]


def test_a_pass_chooses_new_instances_macs_from_its_one_listing_and_from_each_other(
    world: World,
) -> None:
    """New instances with derived MACs: the pass lists the domains once (each plan listed
    them all again), and two new instances whose first candidates collide get two MACs,
    whichever plans first (two plans at once did not see each other's choice)."""
    assert derived_mac("rct-mac-572", 0) == derived_mac("rct-mac-4500", 0)
    names = ("rct-mac-572", "rct-mac-4500", "rct-mac-1", "rct-mac-2")
    specs = tuple(replace(world.spec, name=n, networks=DEFAULT_NETWORKS) for n in names)
    load = LoadResult(instances=specs, errors=(), files=(), invalid_names=frozenset())
    listings = 0
    list_domains = world.driver.list_domains

    def counting_list() -> list[ObservedDomain]:
        nonlocal listings
        listings += 1
        return list_domains()

    world.driver.list_domains = counting_list  # type: ignore[method-assign]
    results = apply_all(load, world.reconciler)
    assert [r.outcome for r in results] == [Outcome.CHANGED] * 4, [r.message for r in results]
    assert listings == 1
    macs = [world.driver.domains[n].machine.nics[0].mac for n in names]
    assert len(set(macs)) == 4 and derived_mac("rct-mac-572", 0) in macs[:2]


def test_a_guest_shut_down_with_the_host_is_started_again_whatever_its_policy(
    world: World,
) -> None:
    from reconciler.loop.hostshutdown import shut_down_guests
    from reconciler.model.desired import RunPolicy

    spec = replace(world.spec, run_policy=RunPolicy.MANUAL)
    other = replace(world.spec, name="rct-other", run_policy=RunPolicy.ALWAYS)
    stopped = replace(world.spec, name="rct-stopped", state=DesiredState.STOPPED)
    for each in (spec, other, stopped):
        assert world.reconciler.reconcile(each).outcome is Outcome.CHANGED
    results = shut_down_guests(world.reconciler)
    assert [(r.name, r.outcome, r.actions) for r in results] == [
        ("rct-fake", Outcome.CHANGED, ("shut down gracefully",)),
        ("rct-other", Outcome.CHANGED, ("shut down gracefully",)),
    ]  # the stopped one was not running: nothing to do, nothing recorded
    record_file = world.reconciler.state.instance(spec.name).host_shutdown
    assert record_file.exists()
    assert not world.reconciler.state.instance("rct-stopped").host_shutdown.exists()

    started = world.reconciler.reconcile(spec)  # runPolicy Manual would leave it off
    assert started.outcome is Outcome.CHANGED, started.message
    assert "started domain again after the host shut it down (accelerator tcg)" in (started.actions)
    assert started.crash_loop is None  # not a restart after a failure
    assert not record_file.exists()

    assert world.driver.request_shutdown(spec.name)  # now the guest powers off by itself
    world.reconciler.reconcile(spec)
    record = world.driver.lookup(spec.name)
    assert record is not None and record.state is PowerState.SHUTOFF  # Manual again


def test_adopt_tells_a_domain_of_another_state_directory_from_one_already_managed(
    world: World,
) -> None:
    from reconciler.loop.adopt import adopt
    from reconciler.model.machine import OwnershipMarker

    assert world.reconciler.reconcile(world.spec).outcome is Outcome.CHANGED
    own = adopt(world.reconciler, world.spec, dry_run=True)
    assert own.refusal is not None and "already managed by this state directory" in own.refusal
    record = world.driver.lookup(world.spec.name)
    assert isinstance(record, DomainFacts)
    other = OwnershipMarker("/elsewhere.yaml", "sha256:x", "f" * 32)
    world.driver.define(replace(record.definition, marker=other))
    foreign = adopt(world.reconciler, world.spec, dry_run=True)
    assert foreign.refusal is not None
    assert f"carries the marker of another state directory ({'f' * 32})" in foreign.refusal
    assert "virsh metadata rct-fake --uri urn:x-reconciler:instance:1 --remove" in (foreign.refusal)
    plan = world.reconciler.plan(world.spec, world.reconciler.resolver(persist_digests=False))
    assert plan.refusal is not None and "reconcile adopt" not in plan.refusal  # it has a marker
    world.driver.define(replace(record.definition, marker=None))
    plan = world.reconciler.plan(world.spec, world.reconciler.resolver(persist_digests=False))
    assert plan.refusal is not None and "reconcile adopt rct-fake DIR" in plan.refusal
