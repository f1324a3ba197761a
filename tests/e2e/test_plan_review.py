"""The plan for review on real libvirt: `plan -o json` for a tree with one change of each
disruption class, checked against the documented shape, and `--fail-on` exit codes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.options import Exit
from tests.e2e.conftest import E2E, CliRun
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers

Reconcile = Callable[..., CliRun]

INSTANCE_KEYS = {"name", "converged", "disruption", "steps", "refusal", "notes", "rollout"}
STEP_KEYS = {"kind", "description", "disruption", "changes"}
CHANGE_KEYS = {"field", "before", "after", "drift"}


def check_shape(document: dict[str, Any]) -> None:
    """The shape the README documents, key by key."""
    assert set(document) == {"version", "disruption", "instances", "rollouts", "manifestErrors"}
    assert document["version"] == 1
    for instance in document["instances"]:
        assert set(instance) == INSTANCE_KEYS
        for step in instance["steps"]:
            assert set(step) == STEP_KEYS
            assert step["disruption"] in ("none", "live", "restart", "replace", "delete")
            for change in step["changes"]:
                assert set(change) == CHANGE_KEYS


def test_plan_json_has_each_disruption_class_and_fail_on_holds_them(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    import json

    names = {kind: unique_name("rcv") for kind in ("live", "restart", "replace", "delete")}
    for kind, name in names.items():
        extra: dict[str, Any] = {"maxMemory": "128MiB"} if kind == "live" else {}
        write_manifest(tmp_path, name, e2e.base, e2e.sha256, **extra)
    assert reconcile("--once", str(tmp_path)).code == 0
    other = tmp_path / "other.raw"
    other.write_bytes(e2e.base.read_bytes()[:-1] + b"\1")
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()

    new = unique_name("rcv")
    write_manifest(tmp_path, new, e2e.base, e2e.sha256)  # none: a new instance
    write_manifest(tmp_path, names["live"], e2e.base, e2e.sha256, memory="96MiB",
                   maxMemory="128MiB")  # fmt: skip
    write_manifest(tmp_path, names["restart"], e2e.base, e2e.sha256, vcpus=2)
    write_manifest(tmp_path, names["replace"], other, other_sha, allowReplace=True)
    write_manifest(tmp_path, names["delete"], e2e.base, e2e.sha256, state="absent")

    planned = reconcile("plan", "-o", "json", str(tmp_path))
    assert planned.code == 0, planned.out + planned.err
    document = json.loads(planned.out)
    check_shape(document)
    by_name = {i["name"]: i for i in document["instances"]}
    assert document["disruption"] == "delete"
    assert by_name[new]["disruption"] == "none"
    for kind, name in names.items():
        assert by_name[name]["disruption"] == kind, by_name[name]
    (define,) = [s for s in by_name[names["live"]]["steps"] if s["kind"] == "define"]
    assert define["disruption"] == "live"
    assert {"field": "memory", "before": "64MiB", "after": "96MiB", "drift": False} in (
        define["changes"]
    )
    (define,) = [s for s in by_name[names["restart"]]["steps"] if s["kind"] == "define"]
    assert {"field": "vcpus", "before": "1", "after": "2", "drift": False} in define["changes"]
    kinds = [s["kind"] for s in by_name[names["delete"]]["steps"]]
    assert kinds[-1] == "undefine" or "undefine" in kinds

    # the text form reads like a diff, one mark per step
    text = reconcile("plan", str(tmp_path)).out
    assert f"{names['delete']}: " in text and "  - undefine domain" in text
    assert "  ! REPLACE THE BOOT DISK" in text
    assert "  + define domain" in text

    for threshold in ("restart", "replace", "delete"):
        held = reconcile("plan", "--fail-on", threshold, str(tmp_path))
        assert held.code == Exit.DISRUPTIVE, (threshold, held.out, held.err)
        assert f"--fail-on {threshold}" in held.err
    # without the deletion, --fail-on delete lets the plan through (exit 0, or 2 pending)
    write_manifest(tmp_path, names["delete"], e2e.base, e2e.sha256)
    assert reconcile("plan", "--fail-on", "delete", str(tmp_path)).code == 0
    detailed = reconcile("plan", "--fail-on", "delete", "--detailed-exitcode", str(tmp_path))
    assert detailed.code == 2
    assert reconcile("plan", "--fail-on", "replace", str(tmp_path)).code == Exit.DISRUPTIVE
