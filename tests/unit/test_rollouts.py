"""The rollout rules (planning.rollouts), pure: who may change now, when a member is done,
when a rollout stops and what lifts the stop; and the record read back from damaged files."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from reconciler.cli.report import render_status
from reconciler.errors import ConfigError
from reconciler.loop.rollouts import group_of
from reconciler.manifests.loader import load_manifests
from reconciler.model.desired import OnFailure, RolloutPolicy, SnapshotTrigger
from reconciler.planning.rollouts import (
    GroupFacts,
    RolloutRecord,
    Verdict,
    admit,
    decide,
    settle,
    waves,
)

POLICY = RolloutPolicy("set/web", max_unavailable=1, min_ready_seconds=10,
                       progress_deadline_seconds=60)  # fmt: skip
NAMES = ("web-0", "web-1", "web-2")


def facts(ready: dict[str, float | None] | None = None, revision: str = "new") -> GroupFacts:
    since: dict[str, float | None] = {n: 0.0 for n in NAMES}
    since.update(ready or {})
    return GroupFacts({n: revision for n in NAMES}, frozenset(NAMES), since)


def test_one_member_at_a_time_each_ready_for_min_ready_seconds() -> None:
    record = RolloutRecord("set/web")
    now = 100.0
    assert decide(record, POLICY, facts(), "web-0", True, now).verdict is Verdict.ADMIT
    admit(record, "web-0", "new", "before-restart-x", now)
    held = decide(record, POLICY, facts(), "web-1", True, now + 1)
    assert held.verdict is Verdict.HOLD and "web-0" in held.note and held.wait is not None
    # changed, ready again at 105: not available before 115
    record.members["web-0"].finished = 104.0
    assert decide(record, POLICY, facts({"web-0": 105.0}), "web-1", True, 110).verdict is (
        Verdict.HOLD
    )
    assert decide(record, POLICY, facts({"web-0": 105.0}), "web-1", True, 116).verdict is (
        Verdict.ADMIT
    )
    assert record.members["web-0"].available == 116
    # a readiness kept from the boot before the change does not count
    record2 = RolloutRecord("set/web")
    admit(record2, "web-0", "new", None, 100.0)
    record2.members["web-0"].finished = 104.0
    settle(record2, POLICY, facts({"web-0": 50.0}), 150.0)
    assert record2.in_flight() == ["web-0"]


def test_a_member_already_down_is_admitted_and_a_percentage_rounds_down() -> None:
    record = RolloutRecord("set/web")
    admit(record, "web-0", "new", None, 100.0)
    # web-2 is down already: changing it takes nothing more down
    decision = decide(record, POLICY, facts({"web-2": None}), "web-2", True, 101)
    assert decision.verdict is Verdict.ADMIT
    assert RolloutPolicy("g", max_unavailable_percent=25).allowed(3) == 1
    assert RolloutPolicy("g", max_unavailable_percent=25).allowed(8) == 2
    assert waves(["web-10", "web-2", "web-1"], 2) == [["web-1", "web-2"], ["web-10"]]


def test_a_member_not_ready_by_its_deadline_stops_the_rollout_until_the_manifest_changes() -> None:
    policy = RolloutPolicy("set/web", progress_deadline_seconds=60, on_failure=OnFailure.REVERT)
    record = RolloutRecord("set/web")
    admit(record, "web-0", "new", "before-restart-abc", 100.0)
    record.members["web-0"].finished = 110.0
    late = facts({"web-0": None})
    held = decide(record, policy, late, "web-1", True, 161)
    assert held.verdict is Verdict.HOLD and "not ready within" in held.note
    assert record.stopped is not None and record.stopped.to_revert == ("web-0",)
    revert = decide(record, policy, late, "web-0", False, 162)
    assert (revert.verdict, revert.snapshot) == (Verdict.REVERT, "before-restart-abc")
    # the manifest changes again: a new rollout
    assert decide(record, policy, facts(revision="newer"), "web-1", True, 170).verdict is (
        Verdict.ADMIT
    )
    assert record.stopped is None


def test_an_admitted_member_resumes_without_counting_twice_and_a_pause_holds() -> None:
    record = RolloutRecord("set/web")
    admit(record, "web-1", "new", None, 100.0)
    # the daemon was killed: web-1 was admitted, its change half done (it is down)
    decision = decide(record, POLICY, facts({"web-1": None}), "web-1", True, 130)
    assert decision.verdict is Verdict.ADMIT and "resuming" in decision.note
    admit(record, "web-1", "new", "snap", 130)
    assert record.members["web-1"].admitted == 100.0  # the first admission stands
    record.paused = "by hand"
    assert decide(record, POLICY, facts(), "web-2", True, 131).verdict is Verdict.HOLD
    assert decide(record, POLICY, facts(), "web-2", False, 131).verdict is Verdict.GO


def test_members_whose_readiness_is_unknown_are_never_taken_for_down() -> None:
    """A daemon just started has probed nobody: every member waits (counted unavailable),
    none is admitted as "down already", and the one admitted before the restart resumes."""
    record = RolloutRecord("set/web")
    admit(record, "web-0", "new", None, 100.0)
    fresh = GroupFacts(
        {n: "new" for n in NAMES}, frozenset(NAMES), dict.fromkeys(NAMES), frozenset(NAMES)
    )
    assert decide(record, POLICY, fresh, "web-1", True, 101).verdict is Verdict.HOLD
    assert decide(record, POLICY, fresh, "web-2", True, 101).verdict is Verdict.HOLD
    assert decide(record, POLICY, fresh, "web-0", True, 101).verdict is Verdict.ADMIT
    # just probed: ready, but not for minReadySeconds yet: not "down already" either
    probed = GroupFacts({n: "new" for n in NAMES}, frozenset(NAMES), dict.fromkeys(NAMES, 101.0))
    assert decide(record, POLICY, probed, "web-1", True, 102).verdict is Verdict.HOLD


def test_the_record_reads_back_and_damage_reads_as_empty() -> None:
    record = RolloutRecord("set/web")
    admit(record, "web-0", "r1", "snap", 1.0)
    record.paused = "why"
    again = RolloutRecord.from_json("set/web", json.loads(json.dumps(record.as_json())))
    assert again.as_json() == record.as_json()
    damages: list[object] = [None, [], {"version": 1, "members": {"x": {"revision": 1}}}]
    for damaged in [*damages, {"version": 9}]:
        assert RolloutRecord.from_json("set/web", damaged).as_json() == (
            RolloutRecord("set/web").as_json()
        )


def test_the_policy_is_read_from_a_set_a_profile_or_an_instance(tmp_path: Path) -> None:
    """A set's rollout is its members' (over its template's), a profile's is shared by the
    instances of that profile, an instance's is its own; onFailure revert takes a snapshot
    before every restart; a bad value is said at its line."""
    machine = (
        "vcpus: 1\nmemory: 64MiB\ndisk: {size: 1GiB}\n"
        f'image: {{source: /i/b.raw, sha256: "{"0" * 64}", format: raw}}\n'
    )
    indented = textwrap.indent(machine, "    ")
    (tmp_path / "all.yaml").write_text(
        "apiVersion: reconciler/v1alpha1\nkind: InstanceSet\nmetadata: {name: web}\n"
        "spec:\n  replicas: 2\n"
        "  rollout: {maxUnavailable: 50%, onFailure: revert, minReadySeconds: 5}\n"
        f"  template:\n    rollout: {{maxUnavailable: 9}}\n{indented}"
        "---\napiVersion: reconciler/v1alpha1\nkind: Profile\nmetadata: {name: base}\n"
        "spec:\n  rollout: {maxUnavailable: 2}\n"
        "---\napiVersion: reconciler/v1alpha1\nkind: Instance\nmetadata: {name: db}\n"
        f"spec:\n  profiles: [base]\n{textwrap.indent(machine, '  ')}"
        "---\napiVersion: reconciler/v1alpha1\nkind: Instance\nmetadata: {name: solo}\n"
        f"spec:\n  rollout: {{progressDeadlineSeconds: 30}}\n{textwrap.indent(machine, '  ')}"
    )
    load = load_manifests(tmp_path)
    assert not load.errors, load.errors
    policies = {spec.name: spec.rollout for spec in load.instances}
    web = policies["web-1"]
    assert web is not None and (web.group, web.max_unavailable_percent) == ("set/web", 50)
    assert web.on_failure is OnFailure.REVERT and web.allowed(2) == 1
    spec = next(s for s in load.instances if s.name == "web-0")
    assert SnapshotTrigger.RESTART in spec.snapshots.before_change
    db, solo = policies["db"], policies["solo"]
    assert db is not None and (db.group, db.max_unavailable) == ("profile/base", 2)
    assert solo is not None and (solo.group, solo.progress_deadline_seconds) == (
        "instance/solo", 30,
    )  # fmt: skip

    (tmp_path / "all.yaml").write_text(
        "apiVersion: reconciler/v1alpha1\nkind: Instance\nmetadata: {name: bad}\n"
        f"spec:\n  rollout: {{maxUnavailable: '0%', onFailure: retry}}\n"
        f"{textwrap.indent(machine, '  ')}"
    )
    errors = [str(e) for e in load_manifests(tmp_path).errors]
    assert any(":5:" in e and "/spec/rollout/maxUnavailable" in e and "25%" in e for e in errors)
    assert any("/spec/rollout/onFailure" in e and "pause or revert" in e for e in errors)


def test_status_shows_the_rollout_of_each_set() -> None:
    snapshot = {
        "daemon": {"running": True},
        "instances": [],
        "sets": [{"name": "web", "desired": 3, "current": 3, "updated": 1, "ready": 2,
                  "available": 1}],
        "rollouts": [{"group": "set/web", "state": "paused", "reason": "web-0 not ready",
                      "reverted": ["web-0"], "inFlight": [], "waiting": ["web-1"]}],
    }  # fmt: skip
    lines = render_status(snapshot)
    assert "  web  3        3        1        2        1" in lines
    assert "  rollout set/web: paused: web-0 not ready; reverted web-0" in lines


def test_a_rollout_command_names_a_group_and_nothing_else() -> None:
    """The SET a command names (or a request on the control socket) becomes a file name in
    the state directory: only the names the schema allows."""
    assert group_of("web") == "set/web"
    assert group_of("profile/base") == "profile/base"
    for hostile in ("../../etc", "set/..", "set/a/b", "profile/", "x/web", "Web", "web\n", ""):
        with pytest.raises(ConfigError):
            group_of(hostile)


def test_a_deadline_counts_only_the_time_readiness_was_watched() -> None:
    """A member admitted an hour before the daemon (re)started is not late at once: its
    deadline counts from when this daemon began to watch."""
    record = RolloutRecord("set/web")
    admit(record, "web-0", "new", None, 100.0)
    restarted = GroupFacts(
        {n: "new" for n in NAMES},
        frozenset(NAMES),
        {"web-0": None, "web-1": 0.0, "web-2": 0.0},
        watched_since=3700.0,
    )
    settle(record, POLICY, restarted, 3710.0)
    assert record.stopped is None and record.in_flight() == ["web-0"]
    settle(record, POLICY, restarted, 3761.0)
    assert record.stopped is not None and record.stopped.failed == ("web-0",)
