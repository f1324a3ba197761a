"""Rolling changes on real QEMU, under both drivers, through the daemon.

A restart-class change to a set of three with maxUnavailable 1 goes one member at a time
(never more than one unavailable, as the daemon's status shows while it rolls), and a
daemon killed with SIGKILL in the middle resumes where it was without touching a member
twice. A change whose new definition never becomes ready (the test guest told to start its
services never) stops after the first member of a set of two: with onFailure pause the other
keeps its old definition; with onFailure revert that member is back on its snapshot before
the change and its old definition (ready again, on its old config drive), and the other was
never touched. Without a daemon, `plan` shows the waves and `--once` rolls them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.model.actual import DomainFacts
from tests.e2e.conftest import E2E, CliRun
from tests.e2e.test_daemon import Daemon, daemon_of_its_own, start_daemon, wait_until
from tests.guest import guest_image
from tests.helpers import free_port, unique_name

pytestmark = [pytest.mark.both_drivers, pytest.mark.first]  # the slowest module: started first


def write_set(
    daemon: Daemon, name: str, template: dict[str, Any], replicas: int = 3, **spec: Any
) -> None:
    document = {
        "apiVersion": "reconciler/v1alpha1",
        "kind": "InstanceSet",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "template": template, **spec},
    }
    target = daemon.manifests / f"{name}.yaml"
    temporary = daemon.manifests / f".{name}.yaml.swp"
    temporary.write_text(yaml.safe_dump(document))
    os.replace(temporary, target)


def set_row(daemon: Daemon, name: str) -> dict[str, Any]:
    return next((s for s in daemon.status().get("sets") or [] if s["name"] == name), {})


def members(status: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    pattern = re.compile(rf"{re.escape(name)}-\d+")
    return {i["name"]: i for i in status["instances"] if pattern.fullmatch(i["name"])}


def not_ready(status: dict[str, Any], name: str) -> set[str]:
    """The members the daemon's status shows unavailable: not running, not ready, or in the
    middle of their change (a daemon just started, that has not looked at a member yet, says
    nothing of it)."""
    down = set()
    for member, entry in members(status, name).items():
        if entry.get("observed") is None:
            continue
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in entry.get("conditions") or []
        )
        if entry.get("observed") != "running" or not ready:
            down.add(member)
    row: dict[str, Any] = next((s for s in status.get("sets") or [] if s["name"] == name), {})
    down |= set((row.get("rollout") or {}).get("inFlight") or [])
    return down


def restart_after_sigkill(daemon: Daemon) -> None:
    """SIGKILL the daemon and start another on its directories; wait until it has the state
    directory (no `status` meanwhile: without a daemon, it would take the directory's lock)."""
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(timeout=30)
    started = daemon.log_text().count("INFO reconciler: watching")
    daemon.process = start_daemon(
        daemon.state.root.parent, daemon.manifests, daemon.base, driver=daemon.driver_name
    )
    wait_until(
        lambda: daemon.log_text().count("INFO reconciler: watching") > started,
        "the new daemon to start",
        daemon,
    )


def test_a_restart_class_change_rolls_one_at_a_time_and_resumes_after_sigkill(
    driver_name: str,
) -> None:
    with daemon_of_its_own("rro-", driver_name) as daemon:
        name = unique_name("rro")
        template: dict[str, Any] = {
            "vcpus": 1, "memory": "64MiB", "networks": [], "updatePolicy": "restart",
            "image": {"source": str(daemon.base), "sha256": daemon.sha256, "format": "raw"},
            "disk": {"size": "64MiB"}, "shutdownTimeoutSeconds": 1,
        }  # fmt: skip
        rollout = {"maxUnavailable": 1, "minReadySeconds": 3, "progressDeadlineSeconds": 120}
        write_set(daemon, name, template, rollout=rollout)

        def counts(*wanted: int) -> Callable[[], bool]:
            keys = ("desired", "updated", "ready", "available")
            return lambda: tuple(set_row(daemon, name).get(k) for k in keys) == wanted

        wait_until(counts(3, 3, 3, 3), "three members, available", daemon, timeout=180)
        before = daemon.log_text()

        # more memory, restart class: one member at a time
        write_set(daemon, name, {**template, "memory": "80MiB"}, rollout=rollout)
        seen: list[set[str]] = []
        killed = began = False
        while True:
            status = daemon.status()
            down = not_ready(status, name)
            seen.append(down)
            assert len(down) <= 1, f"more than one member unavailable: {down}: {status}"
            row = next((s for s in status.get("sets") or [] if s["name"] == name), None)
            if row is None:  # the new daemon does not answer yet: the status of no daemon
                time.sleep(0.2)
                continue
            in_flight = (row.get("rollout") or {}).get("inFlight")
            began = began or bool(in_flight) or row["updated"] < 3  # the daemon saw the change
            if not killed and in_flight and "started domain" in daemon.log_text()[len(before) :]:
                # the first member is in the middle of its change: SIGKILL, and another daemon
                restart_after_sigkill(daemon)
                killed = True
                continue
            complete = (row.get("rollout") or {}).get("state") == "complete"
            if began and row["updated"] == 3 and complete:
                break
            assert len(seen) < 2000, "the rollout did not complete"
        assert killed, (
            "the rollout ended before the test could kill the daemon: "
            + (daemon.log_text()[len(before) :][-5000:])
        )
        assert any(seen), "no member was ever seen unavailable: nothing rolled"
        wait_until(counts(3, 3, 3, 3), "every member available", daemon, timeout=60)

        # each member was stopped, redefined and started for the change once, across both
        # daemons
        log = daemon.log_text()[len(before) :]
        for ordinal in range(3):
            for action in ("(forced off|shut down)", "redefined domain", "started domain"):
                done = re.findall(rf"{name}-{ordinal}: {action}", log)
                assert len(done) == 1, (ordinal, action, log[-5000:])
        assert "rollout set/" in log and "waiting" in log


def _guest_template(port: int, user_data: str, memory: str = "128MiB") -> dict[str, Any]:
    return {
        "vcpus": 1, "memory": memory, "updatePolicy": "restart",
        "image": {"source": str(guest_image("qcow2")), "format": "qcow2"},
        "disk": {"size": "256MiB"}, "shutdownTimeoutSeconds": 10,
        "networks": [{"type": "user", "ports": [{"host": f"{{{{ordinal+{port}}}}}",
                                                  "guest": 80}]}],
        "cloudInit": {"userData": user_data},
        "readiness": {"http": {"port": 80}, "periodSeconds": 1, "timeoutSeconds": 3},
    }  # fmt: skip


GOOD = "#cloud-config\nreconciler_test: 'first'\n"
# tools/guest: services that never start (nothing answers the readiness probe)
NEVER = "#cloud-config\nreconciler_test: 'reconciler-guest: services-after 100000'\n"


@pytest.mark.parametrize("on_failure", ["pause", "revert"])
def test_a_change_that_never_becomes_ready_stops_after_the_first_member(
    driver_name: str, on_failure: str, tmp_path: Path
) -> None:
    images = str(guest_image("qcow2").parent)
    with daemon_of_its_own("rrf-", driver_name, "--image-dir", images) as daemon:
        name = unique_name("rrf")
        port = free_port(span=2)
        rollout = {"maxUnavailable": 1, "progressDeadlineSeconds": 30, "onFailure": on_failure}
        write_set(daemon, name, _guest_template(port, GOOD), 2, rollout=rollout)
        keys = ("desired", "updated", "ready", "available")
        wait_until(
            lambda: tuple(set_row(daemon, name).get(k) for k in keys) == (2, 2, 2, 2),
            "two ready members",
            daemon,
            timeout=300,
        )
        names = sorted(members(daemon.status(), name))

        # more memory (a restart) and services that never start
        write_set(daemon, name, _guest_template(port, NEVER, "144MiB"), 2, rollout=rollout)
        wanted = "reverted" if on_failure == "revert" else "paused"
        row = wait_until(
            lambda: (
                (r := set_row(daemon, name)).get("rollout", {}).get("state") == wanted
                and (on_failure == "pause" or r["rollout"]["reverted"])
                and r
            ),
            f"the rollout {wanted}",
            daemon,
            timeout=240,
        )
        progress = row["rollout"]
        assert "not ready within progressDeadlineSeconds (30s)" in progress["reason"]
        (changed,) = [m for m in names if m in progress["reason"]]
        untouched = [m for m in names if m != changed]
        assert untouched
        log = daemon.log_text()
        for member in untouched:  # never stopped for the change
            assert f"{member}: redefined" not in log, log[-4000:]
        if on_failure == "revert":
            assert progress["reverted"] == [changed]
            assert f"{changed}: rollout failed: reverted to snapshot before-restart-" in log
            wait_until(
                lambda: set_row(daemon, name).get("ready") == 2,
                "the reverted member ready again on its old definition",
                daemon,
                timeout=180,
            )
        else:
            assert f"{changed}: redefined" in log
        shown = daemon.cli("status").stdout
        assert wanted in shown, shown


def test_plan_shows_the_waves_and_a_one_off_pass_rolls_them(
    e2e: E2E, reconcile: Callable[..., CliRun], tmp_path: Path
) -> None:
    """Without a daemon: `plan` (text and JSON) shows which members change in which wave,
    and `--once` makes the change wave by wave, probing the members itself, then exits."""
    name = unique_name("rrp")
    template: dict[str, Any] = {
        "vcpus": 1, "memory": "64MiB", "networks": [], "updatePolicy": "restart",
        "image": {"source": str(e2e.base), "sha256": e2e.sha256, "format": "raw"},
        "disk": {"size": "64MiB"}, "shutdownTimeoutSeconds": 1,
    }  # fmt: skip
    rollout = {"maxUnavailable": 2, "minReadySeconds": 1, "progressDeadlineSeconds": 120,
               "onFailure": "revert"}  # fmt: skip

    def write(memory: str) -> None:
        document = {
            "apiVersion": "reconciler/v1alpha1", "kind": "InstanceSet",
            "metadata": {"name": name},
            "spec": {"replicas": 3, "rollout": rollout,
                     "template": {**template, "memory": memory}},
        }  # fmt: skip
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(document))

    write("64MiB")
    created = reconcile("--once", str(tmp_path))
    assert created.code == 0, created.out + created.err

    write("80MiB")
    shown = reconcile("plan", str(tmp_path))
    assert f"Rollout set/{name}: wave 1: {name}-0, {name}-1; wave 2: {name}-2" in shown.out
    assert f"  rollout set/{name}: wave 2 of 2" in shown.out
    plan = json.loads(reconcile("plan", "-o", "json", str(tmp_path)).out)
    assert plan["rollouts"] == [
        {"group": f"set/{name}", "waves": [[f"{name}-0", f"{name}-1"], [f"{name}-2"]]}
    ]
    wave = {i["name"]: i["rollout"] for i in plan["instances"]}[f"{name}-2"]
    assert wave == {"group": f"set/{name}", "wave": 2, "waves": 2}

    rolled = reconcile("--once", str(tmp_path))
    assert rolled.code == 0, rolled.out + rolled.err
    assert "waiting: 2 of 3 unavailable" in rolled.out + rolled.err
    again = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert again.code == 0, again.out  # every member on the new definition
    for ordinal in range(3):
        record = e2e.driver.lookup(f"{name}-{ordinal}")
        assert record is not None and record.state.value == "running"

    # undo: each member back on its snapshot before the change, held there; resume: the
    # change is pending again, in its waves
    undone = reconcile("rollout", "undo", name, str(tmp_path))
    assert undone.code == 0, undone.out + undone.err
    assert f"rollout set/{name} stopped; reverting {name}-0, {name}-1, {name}-2" in undone.out
    for ordinal in range(3):
        assert f"{name}-{ordinal}: rollout undone: reverted to snapshot before-restart-" in (
            undone.out
        )
        record = e2e.driver.lookup(f"{name}-{ordinal}")
        assert isinstance(record, DomainFacts) and record.definition.memory_kib == 64 * 1024
    held = reconcile("plan", str(tmp_path))
    assert held.out.count("held: reverted to snapshot") == 3, held.out
    resumed = reconcile("rollout", "resume", name, str(tmp_path))
    assert resumed.code == 0 and f"rollout set/{name} resumed" in resumed.out
    pending = reconcile("plan", str(tmp_path))
    assert f"Rollout set/{name}: wave 1: {name}-0, {name}-1; wave 2: {name}-2" in pending.out
