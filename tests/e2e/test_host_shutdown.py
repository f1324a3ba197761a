"""Host shutdown on real QEMU, under both drivers: `reconcile shutdown-guests` (what
reconciler-guests.service runs at host shutdown) shuts every managed running guest down
through ACPI, in parallel; a daemon asked to do it starts nothing again; the first pass after
"boot" (a new daemon, or --once) starts each guest again, whatever its run policy."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.model.actual import PowerState
from tests.e2e.conftest import destroy_domains, domain_states
from tests.e2e.test_daemon import launch, observed, stop_daemon, wait_until
from tests.guest import IMAGES, MARKER, boots, guest_image, wait_for_marker
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rch-", dir="/tmp"))  # short: libvirt's sockets
    try:
        yield path
    finally:
        destroy_domains(path / "s")
        shutil.rmtree(path, ignore_errors=True)


def booted_again(console_log: Path) -> bool:
    """Whether the console's last boot is up and not shut down (libvirt truncates the log at
    each start, the QMP driver appends to it)."""
    last = boots(console_log.read_text(errors="replace"))[-1] if console_log.exists() else ""
    return f"{MARKER}ready" in last and f"{MARKER}shutdown" not in last


def test_guests_are_shut_down_gracefully_at_host_shutdown_and_started_after_boot(
    driver_name: str, root: Path
) -> None:
    manifests = root / "m"
    manifests.mkdir()
    image = guest_image("qcow2")
    names = {policy: unique_name("rch") for policy in ("Always", "Manual")}
    for policy, name in names.items():
        write_manifest(
            manifests, name, image, None, "qcow2", memory="128MiB", networks=[],
            runPolicy=policy, shutdownTimeoutSeconds=120,
        )  # fmt: skip
    daemon = launch(root, manifests, image, "", driver=driver_name)
    state = daemon.state
    for name in names.values():
        wait_until(functools.partial(observed, daemon, name, "running"), f"{name} to run", daemon)
        wait_for_marker(state.instance(name).console_log, "ready")

    # what the unit runs at host shutdown: the daemon does it, and starts nothing again
    began = time.monotonic()
    done = daemon.cli("shutdown-guests")
    took = time.monotonic() - began
    assert done.returncode == 0, done.stdout + done.stderr
    assert "asking the daemon" in done.stdout
    assert "shutdown-guests: 2 shut down, 0 failed" in done.stdout
    for name in names.values():
        assert f"{name}: shut down gracefully" in done.stdout
        assert wait_for_marker(state.instance(name).console_log, "shutdown").shutdown
        assert state.instance(name).host_shutdown.exists()
    assert took < 110  # in parallel: both within one guest's timeout
    watched_until = time.monotonic() + 5  # the run policy (Always) must not start it
    while time.monotonic() < watched_until:
        for name in names.values():
            text = state.instance(name).console_log.read_text(errors="replace")
            assert f"{MARKER}shutdown" in boots(text)[-1], f"{name} was started again"
        time.sleep(0.5)
    assert "the host is shutting down" in daemon.log_text()
    assert stop_daemon(daemon.process) == 0
    assert set(domain_states(state.root, driver_name).values()) == {PowerState.SHUTOFF}

    # the host is back: the daemon's first pass starts both, runPolicy Manual included
    daemon = launch(root, manifests, image, "", driver=driver_name)
    try:
        for name in names.values():
            log = state.instance(name).console_log
            wait_until(functools.partial(booted_again, log), f"{name} to boot again", daemon)
            record = state.instance(name).host_shutdown
            gone = functools.partial(lambda path: not path.exists(), record)
            wait_until(gone, f"{record} to go", daemon)
        assert "started domain again after the host shut it down" in daemon.log_text()
    finally:
        assert stop_daemon(daemon.process) == 0

    # without a daemon: the command does it itself, and --once starts them again
    state_options = ["--state-dir", str(state.root), "--driver", driver_name]
    alone = subprocess.run(
        [sys.executable, "-m", "reconciler", "shutdown-guests", *state_options],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "shutdown-guests: 2 shut down, 0 failed" in alone.stdout
    assert set(domain_states(state.root, driver_name).values()) == {PowerState.SHUTOFF}
    again = subprocess.run(
        [sys.executable, "-m", "reconciler", "--once", str(manifests), *state_options,
         "--image-dir", str(IMAGES)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    for name in names.values():
        assert f"{name}: started domain again after the host shut it down" in again.stdout
        assert not state.instance(name).host_shutdown.exists()
