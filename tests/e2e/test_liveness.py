"""Liveness on real QEMU, under both drivers, in the daemon: two test guests whose service
dies a few seconds after it came up (`services-stop-after`), probed through the guest agent
(`test -e /run/alive`). Under runPolicy Always the daemon restarts the guest (gracefully, then
a new QEMU); under Manual it only reports the failure (Live False in its status, one boot).
A restarted guest's service dies again: the crash-loop guard spaces the restarts out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_daemon import Daemon, daemon_of_its_own, wait_until
from tests.guest import IMAGES, boots, guest_image
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers
DIES = "#cloud-config\nreconciler_test: 'reconciler-guest: services-stop-after 6'\n"
LIVENESS = {
    "exec": {"command": ["test", "-e", "/run/alive"]},
    "periodSeconds": 2, "timeoutSeconds": 10, "failureThreshold": 2,
}  # fmt: skip


@pytest.fixture
def daemon(driver_name: str) -> Iterator[Daemon]:
    with daemon_of_its_own("rcl-", driver_name, "--image-dir", str(IMAGES)) as handle:
        yield handle


def condition(daemon: Daemon, name: str, kind: str) -> dict[str, Any]:
    entry = daemon.instance(name) or {}
    return next((c for c in entry.get("conditions") or [] if c["type"] == kind), {})


def test_a_dead_service_restarts_the_guest_under_always_and_is_reported_under_manual(
    daemon: Daemon,
) -> None:
    always, manual = unique_name("rla"), unique_name("rlm")
    for name, policy in ((always, "Always"), (manual, "Manual")):
        write_manifest(
            daemon.manifests, name, guest_image("qcow2"), None, "qcow2", memory="128MiB",
            networks=[], guestAgent=True, runPolicy=policy, shutdownTimeoutSeconds=30,
            cloudInit={"userData": DIES}, liveness=LIVENESS,
        )  # fmt: skip
    consoles = {name: daemon.state.instance(name).console_log for name in (always, manual)}

    def boots_of(name: str) -> int:
        path = consoles[name]
        return len(boots(path.read_text(errors="replace"))) - 1 if path.exists() else 0

    # Manual: the failure is reported, the guest left as it is
    wait_until(
        lambda: (
            condition(daemon, manual, "Live").get("reason") == "ProbeFailed"
            and condition(daemon, manual, "Live").get("status") == "False"
        ),
        f"{manual}'s Live condition to fail",
        daemon,
        timeout=300,
    )
    entry = daemon.instance(manual) or {}
    assert entry["observed"] == "running" and boots_of(manual) == 1
    assert "exec test -e /run/alive: exited 1" in condition(daemon, manual, "Live")["message"]
    assert any("only reports it" in note for note in entry["lastReconcile"]["notes"])
    # `wait` asks the daemon: not live (with why, exit 4); ready (no readiness probe: running)
    waited = daemon.cli("wait", manual, "--for", "live", "--timeout", "2s")
    assert waited.returncode == 4 and "ProbeFailed: exec test -e /run/alive" in waited.stderr
    assert daemon.cli("wait", manual, "--timeout", "30s").returncode == 0
    unknown = daemon.cli("wait", "rlx-no-such-instance", "--timeout", "5m")
    assert unknown.returncode == 2 and "no instance named rlx-no-such-instance" in unknown.stderr

    # Always: restarted by the daemon (the probe's trigger), behind the crash-loop guard (the
    # restarted guest's service dies again: the next restart waits longer)
    def restarted() -> bool:
        loop = (daemon.instance(always) or {}).get("crashLoop") or {}
        return int(loop.get("restarts", 0)) >= 1

    wait_until(restarted, f"{always} to be restarted", daemon, timeout=300)
    entry = daemon.instance(always) or {}
    assert entry["triggers"].get("probe", 0) >= 1
    assert f"{always}: liveness failed: exec test -e /run/alive" in daemon.log_text()
    assert f"{always}: shut down gracefully" in daemon.log_text()
    wait_until(lambda: boots_of(always) == 1, f"{always} to boot again", daemon, timeout=240)
