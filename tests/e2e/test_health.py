"""Health on real QEMU, under both drivers, on one booted test guest whose services come up
late (`services-after`): each probe kind fails before its service is up and succeeds after;
the guest agent answers (ping, addresses, exec, cloud-init's result file); `--once --wait`
times out with its own exit code naming the guest, then returns when it is ready; `status`
without a daemon shows the Ready condition; `wait --for stopped` waits for a stop."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.cli.options import Exit
from reconciler.health.addresses import observe_addresses
from reconciler.health.checks import ConsoleFollower, Target, check
from reconciler.model.actual import DomainFacts
from reconciler.model.desired import ProbeKind, ProbeSpec
from tests.e2e.conftest import E2E, CliRun, separate_driver
from tests.guest import guest_image, wait_for_marker
from tests.helpers import free_port, poll, unique_name, write_manifest

pytestmark = pytest.mark.both_drivers
Reconcile = Callable[..., CliRun]
# tools/guest: the services (httpd, /run/alive, cloud-init's final message) come up 20 s
# after `ready`, and cloud-init reports a failed module
LATE = (
    "#cloud-config\nreconciler_test: 'reconciler-guest: services-after 20'\n"
    "reconciler_note: 'reconciler-guest: cloud-init-error'\n"
)
PROBES = {
    "tcp": ProbeSpec(ProbeKind.TCP, port=80, timeout_seconds=2),
    "http": ProbeSpec(ProbeKind.HTTP, port=80, path="/", expect_status=200, timeout_seconds=3),
    "exec": ProbeSpec(ProbeKind.EXEC, command=("test", "-e", "/run/alive"), timeout_seconds=10),
    "agent": ProbeSpec(ProbeKind.GUEST_AGENT, timeout_seconds=5),
    "cloudInit": ProbeSpec(ProbeKind.CLOUD_INIT, timeout_seconds=5),
}


def test_probes_wait_and_status_follow_a_guest_whose_services_come_up_late(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rch")
    port = free_port()
    spec = {
        "memory": "128MiB", "guestAgent": True,
        "networks": [{"type": "user", "ports": [{"host": port, "guest": 80}]}],
        "cloudInit": {"userData": LATE},
        "readiness": {"http": {"port": 80}, "periodSeconds": 1, "timeoutSeconds": 3},
    }  # fmt: skip
    write_manifest(tmp_path, name, guest_image("qcow2"), None, "qcow2", **spec)

    # the pass starts it; its services are not up within 5 s: exit 4, naming it and why
    timed_out = reconcile("--once", "--wait=5s", str(tmp_path))
    assert timed_out.code == Exit.NOT_READY, timed_out.err
    assert f"{name}: not ready after" in timed_out.err and "http GET :80/" in timed_out.err

    console = e2e.state.instance(name).console_log
    wait_for_marker(console, "guest-agent=", timeout=240)
    with separate_driver(e2e) as driver:
        record = driver.lookup(name)
        assert isinstance(record, DomainFacts)
        machine = record.live_definition or record.definition
        target = Target(name, machine, driver, ConsoleFollower(console))

        def ok(kind: str, on: Target = target) -> bool:
            return check(PROBES[kind], on).ok

        # before the services: every probe of them fails; the agent answers
        assert "reconciler-guest: http=80" not in console.read_text(errors="replace")
        failing = {kind: check(PROBES[kind], target) for kind in ("tcp", "http", "exec")}
        assert not any(result.ok for result in failing.values()), failing
        assert failing["exec"].message.startswith("exited 1")
        assert not check(PROBES["cloudInit"], target).ok
        poll(lambda: ok("agent"), 60, "the guest agent's ping")
        (address,) = observe_addresses(driver, name, machine)
        assert (address.address, address.source) == ("10.0.2.15", "guest agent")
        assert address.forwards == (f"127.0.0.1:{port} -> 80/tcp",)

        # after: each succeeds (cloud-init reports its failed module: not ready, with its line)
        wait_for_marker(console, "http=80", timeout=120)
        for kind in ("tcp", "http", "exec"):
            poll(lambda kind=kind: ok(kind), 60, f"the {kind} probe to succeed")  # type: ignore[misc]
        through_agent = check(PROBES["cloudInit"], target)
        on_console = check(
            PROBES["cloudInit"], replace(target, machine=replace(machine, guest_agent=False))
        )
        for verdict in (through_agent, on_console):
            assert not verdict.ok and verdict.reason == "CloudInitFailed", verdict
            assert "scripts-user" in verdict.message

    # --once --wait: ready now
    waited = reconcile("--once", "--wait=2m", str(tmp_path))
    assert waited.code == Exit.OK, waited.err
    assert f"ready: {name}" in waited.out

    # status without a daemon: READY and the conditions, checked now
    table = reconcile("status", name)
    assert table.code == 0, table.err
    (row,) = [line for line in table.out.splitlines() if line.strip().startswith(name)]
    assert row.split()[3] == "True" and f"127.0.0.1:{port} -> 80/tcp" in row
    shown = json.loads(reconcile("status", name, "-o", "json").out)["instances"][0]
    ready = next(c for c in shown["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ProbeSucceeded")
    assert shown["addresses"][0]["source"] == "guest agent"

    # a name no instance has is said at once, not waited for
    unknown = reconcile("wait", "rch-no-such-instance", "--timeout", "5m")
    assert unknown.code == Exit.INVALID and "no instance named rch-no-such-instance" in unknown.err
    # wait --for stopped: not while it runs; then after a stop
    still = reconcile("wait", name, "--for", "stopped", "--timeout", "2s")
    assert still.code == Exit.NOT_READY and "it is running" in still.err
    write_manifest(tmp_path, name, guest_image("qcow2"), None, "qcow2", state="stopped", **spec)
    assert reconcile("--once", str(tmp_path)).code == 0
    stopped = reconcile("wait", name, "--for", "stopped", "--timeout", "30s")
    assert stopped.code == Exit.OK, stopped.err
