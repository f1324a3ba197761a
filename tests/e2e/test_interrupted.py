"""A reconciler killed (SIGKILL) in the middle of a start or a shutdown: the next pass
converges, under each driver.

The reconciler runs here as a process of its own, on a state directory of its own (the test
process holds the session's embedded libvirt root, and a root admits one process).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.drivers.host import process_alive
from tests.e2e.conftest import Host, private_host
from tests.guest import IMAGES, guest_image, wait_for_marker
from tests.helpers import run_bounded, unique_name, write_manifest

pytestmark = pytest.mark.both_drivers


@pytest.fixture(scope="module")
def host(driver_name: str) -> Iterator[Host]:
    with private_host("rci", driver_name) as made:
        yield made


def command(host: Host, *args: str) -> list[str]:
    return host.command(*args, "--image-dir", str(IMAGES))


def environment() -> dict[str, str]:
    """This environment without the libvirt log routing the test process set for itself, so
    the reconciler's own routing is what is tested."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LIBVIRT_LOG")}


def reconcile(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return run_bounded(command(host, *args), 300, host.root, environment())


def start_pass(host: Host, manifests: Path) -> subprocess.Popen[str]:
    """`reconcile --once` started in the background, to be killed."""
    return subprocess.Popen(
        command(host, "--once", str(manifests)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment(),
    )


def qemu_of(name: str) -> int | None:
    """The pid of the QEMU process running domain `name`, if there is one."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and f"guest={name},".encode() in cmdline:
            return int(pid)
    return None


def kill_when(process: subprocess.Popen[str], condition: str, check: object, delay: float) -> None:
    """SIGKILL `process` `delay` seconds after `check()` first holds (polled every ms)."""
    assert callable(check)
    deadline = time.monotonic() + 120
    while not check():
        assert process.poll() is None, f"the reconciler ended before {condition}"
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.001)
    time.sleep(delay)
    process.kill()
    process.wait()


def write_guest(directory: Path, name: str, **spec: object) -> None:
    spec.setdefault("memory", "128MiB")
    spec.setdefault("shutdownTimeoutSeconds", 120)
    write_manifest(directory, name, guest_image("qcow2"), None, "qcow2", **spec)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15], ids=["at-launch", "50ms", "150ms"])
def test_a_start_interrupted_by_sigkill_converges_on_the_next_pass(
    host: Host, tmp_path: Path, delay: float
) -> None:
    name = unique_name("rci")
    write_guest(tmp_path, name)
    process = start_pass(host, tmp_path)
    kill_when(process, "QEMU to be launched", lambda: qemu_of(name) is not None, delay)
    orphan = qemu_of(name)

    after = reconcile(host, "--once", str(tmp_path))
    assert after.returncode == 0, after.stdout + after.stderr
    if delay == 0.0 and f"{name}: recovered an interrupted start" not in after.stdout:
        # killed before libvirt recorded the start: the domain reads as shut off, and
        # libvirt's next start clears the stale QEMU through its pid file (the QMP driver's
        # QEMU writes its pid file itself: it reads as running)
        assert f"{name}: started domain" in after.stdout or f"{name}  unchanged" in after.stdout, (
            after.stdout
        )
    # whichever way, one QEMU runs the domain, and not the one left behind at launch
    assert qemu_of(name) is not None
    assert orphan is None or orphan == qemu_of(name) or not process_alive(orphan)
    # libvirt's own lines (its reconnect warnings among them) go to its log, not the terminal
    assert after.stderr == ""
    if host.driver_name == "libvirt":
        assert "libvirt version" in (host.root / "libvirt.log").read_text()
    report = wait_for_marker(host.root / "instances" / name / "console.log", "ready")
    assert report.disk_bytes == 64 * 1024**2
    settled = reconcile(host, "plan", "--detailed-exitcode", str(tmp_path))
    assert settled.returncode == 0, settled.stdout + settled.stderr


def test_a_shutdown_interrupted_by_sigkill_converges_on_the_next_pass(
    host: Host, tmp_path: Path
) -> None:
    name = unique_name("rci")
    console = host.root / "instances" / name / "console.log"
    write_guest(tmp_path, name)
    assert reconcile(host, "--once", str(tmp_path)).returncode == 0
    wait_for_marker(console, "ready")

    write_guest(tmp_path, name, state="stopped")
    process = start_pass(host, tmp_path)
    kill_when(process, "the guest's shutdown", lambda: "reconciler-guest: shutdown" in (
        console.read_text(errors="replace")), 0.0)  # fmt: skip

    after = reconcile(host, "--once", str(tmp_path))
    assert after.returncode == 0, after.stdout + after.stderr
    settled = reconcile(host, "plan", "--detailed-exitcode", str(tmp_path))
    assert settled.returncode == 0, settled.stdout + settled.stderr
    assert f"{name}: up to date" in settled.stdout
    assert qemu_of(name) is None


@pytest.mark.parametrize("moment", ["disk", "config-drive", "definition"])
def test_a_creation_killed_between_its_steps_converges_to_one_of_each(
    host: Host, tmp_path: Path, moment: str
) -> None:
    """SIGKILL right after the disk, the config drive or the definition appears: the next
    pass completes the instance, with one disk, one config drive and one domain."""
    name = unique_name("rci")
    directory = host.root / "instances" / name
    write_guest(tmp_path, name, hostname="half-made")
    appeared = {
        "disk": lambda: (directory / "disk.qcow2").exists(),
        "config-drive": lambda: any(directory.glob("config-*.iso")),
        "definition": lambda: host.definition_file(name).exists(),
    }[moment]
    process = start_pass(host, tmp_path)
    kill_when(process, f"the {moment} to appear", appeared, 0.0)

    after = reconcile(host, "--once", str(tmp_path))
    assert after.returncode == 0, after.stdout + after.stderr
    assert len(list(directory.glob("disk*.qcow2"))) == 1
    assert len(list(directory.glob("config-*.iso"))) == 1
    assert not list(directory.glob(".*.tmp"))  # leftovers of the killed pass are gone
    assert name in host.domains()
    settled = reconcile(host, "plan", "--detailed-exitcode", str(tmp_path))
    assert settled.returncode == 0, settled.stdout + settled.stderr
