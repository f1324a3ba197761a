"""The QMP driver end to end (`--driver qmp`): QEMU started by the reconciler itself, driven
over QMP, with the test guest. No libvirt is involved; each test has a state directory of
its own and ends every QEMU it made (by the pid its pid file names, checked to be that QEMU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.drivers.host import emulator_process
from reconciler.images.diskheaders import parse_qcow2_header, read_head
from reconciler.layout import StateLayout
from tests.guest import IMAGES, guest_image, wait_for_marker
from tests.helpers import free_port, run_bounded, unique_name, write_manifest

MIB = 1024**2


@pytest.fixture
def state() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="rcq-", dir="/tmp"))
    try:
        yield root
    finally:
        for pidfile in root.glob("instances/*/qemu.pid"):
            pid = qemu_pid(root, pidfile.parent.name)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def qemu_pid(root: Path, name: str) -> int | None:
    """The instance's QEMU, when its pid file names a live QEMU of that instance."""
    paths = StateLayout(root).instance(name)
    try:
        pid = int(paths.qemu_pid.read_text())
    except (OSError, ValueError):
        return None
    return pid if emulator_process(pid, name, uuid_of(root, name)) else None


def uuid_of(root: Path, name: str) -> str:
    """The instance's UUID, from the QMP driver's definition file."""
    definition = StateLayout(root).instance(name).definition
    return str(json.loads(definition.read_text())["machine"]["uuid"])


def reconcile(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "reconciler", *args, "--driver", "qmp",
        "--state-dir", str(root), "--image-dir", str(IMAGES),
    ]  # fmt: skip
    return run_bounded(command, timeout, root)


def write_guest(directory: Path, name: str, **spec: object) -> None:
    spec.setdefault("memory", "128MiB")
    spec.setdefault("shutdownTimeoutSeconds", 60)
    write_manifest(directory, name, guest_image("qcow2"), None, "qcow2", **spec)


def test_a_guest_boots_grows_online_stops_and_is_reattached_without_a_restart(
    state: Path, tmp_path: Path
) -> None:
    name = unique_name("rcq")
    port = free_port()
    spec = {
        "hostname": "qmp-guest",
        "networks": [{"type": "user", "ports": [{"host": port, "guest": 80}]}],
    }
    write_guest(tmp_path, name, **spec)
    started = reconcile(state, "--once", str(tmp_path))
    assert started.returncode == 0, started.stdout + started.stderr
    assert "reconcile: QMP driver (QEMU run directly, no libvirt), state directory" in (
        started.stdout
    )
    console = state / "instances" / name / "console.log"
    report = wait_for_marker(console, "ready")
    assert report.config_drive == "cidata" and report.hostname == "qmp-guest"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
        assert answer.read().decode().strip() == "reconciler-guest qmp-guest"
    pid = qemu_pid(state, name)
    assert pid is not None

    # a second reconciler run re-attaches to the running QEMU: nothing restarts
    again = reconcile(state, "plan", "--detailed-exitcode", str(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert qemu_pid(state, name) == pid

    # its pid file lost, then naming an unrelated process: the running QEMU, proven by its
    # command line, UUID and monitor, is adopted (pid file rewritten), never killed
    pidfile = state / "instances" / name / "qemu.pid"
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        for forge in (pidfile.unlink, lambda: pidfile.write_text(f"{bystander.pid}\n")):
            forge()
            plan = reconcile(state, "plan", "--detailed-exitcode", str(tmp_path))
            assert plan.returncode == 0, plan.stdout + plan.stderr
            assert "start" not in plan.stdout
            began = time.monotonic()
            kept = reconcile(state, "--once", str(tmp_path))
            assert kept.returncode == 0, kept.stdout + kept.stderr
            assert time.monotonic() - began < 30
            assert "started domain" not in kept.stdout
            assert "adopted" in plan.stderr + kept.stderr  # the first to look adopts it
            assert emulator_process(pid, name, uuid_of(state, name))
            assert qemu_pid(state, name) == pid  # the pid file names it again
            assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()

    # online growth through block_resize
    write_guest(tmp_path, name, disk={"size": "96MiB"}, **spec)
    grown = reconcile(state, "--once", str(tmp_path))
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert "online" in grown.stdout
    disk = state / "instances" / name / "disk.qcow2"
    assert parse_qcow2_header(read_head(str(disk))).virtual_size == 96 * MIB
    assert qemu_pid(state, name) == pid

    # a graceful stop: the ACPI power button, the guest powers off, QEMU ends
    write_guest(tmp_path, name, disk={"size": "96MiB"}, state="stopped", **spec)
    stopped = reconcile(state, "--once", str(tmp_path))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert wait_for_marker(console, "shutdown").shutdown
    assert qemu_pid(state, name) is None
    settled = reconcile(state, "plan", "--detailed-exitcode", str(tmp_path))
    assert settled.returncode == 0, settled.stdout


def test_a_stale_pid_file_is_never_signalled_and_a_silent_socket_times_out(
    state: Path, tmp_path: Path
) -> None:
    name = unique_name("rcq")
    write_guest(tmp_path, name, state="stopped")
    assert reconcile(state, "--once", str(tmp_path)).returncode == 0  # defined, not started
    directory = state / "instances" / name
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        (directory / "qemu.pid").write_text(f"{bystander.pid}\n")
        write_guest(tmp_path, name)
        started = reconcile(state, "--once", str(tmp_path))
        assert started.returncode == 0, started.stdout + started.stderr
        assert bystander.poll() is None  # an unrelated process named by the pid file lives on
        pid = qemu_pid(state, name)
        assert pid is not None and pid != bystander.pid
    finally:
        bystander.kill()
        bystander.wait()

    # QEMU stopped (SIGSTOP): its socket accepts and never answers; the pass times out
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        hung = reconcile(state, "--once", str(tmp_path), timeout=120)
        assert time.monotonic() - began < 60
        assert hung.returncode == 1
        assert "no answer from QEMU" in hung.stdout + hung.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    assert reconcile(state, "plan", "--detailed-exitcode", str(tmp_path)).returncode == 0


def test_the_daemon_brings_back_a_qemu_killed_with_sigkill(state: Path, tmp_path: Path) -> None:
    name = unique_name("rcq")
    manifests = tmp_path / "m"
    manifests.mkdir()
    write_guest(manifests, name)
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [
            sys.executable, "-m", "reconciler", str(manifests), "--driver", "qmp",
            "--state-dir", str(state), "--image-dir", str(IMAGES), "--resync", "10m",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait(lambda: observed(state, name) == "running", "the instance to run", daemon, tmp_path)
        first = qemu_pid(state, name)
        assert first is not None
        events = triggers(state, name).get("event", 0)
        os.kill(first, signal.SIGKILL)
        second = wait(
            lambda: (pid := qemu_pid(state, name)) is not None and pid != first and pid,
            "a new QEMU after the kill",
            daemon,
            tmp_path,
        )
        assert second != first

        wait(  # the status is written when the reconcile is over (the new pid file comes first)
            lambda: (
                triggers(state, name).get("event", 0) > events
                and observed(state, name) == "running"
            ),
            "the event's reconcile to finish",
            daemon,
            tmp_path,
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=90)


def entry_of(state: Path, name: str) -> dict[str, Any]:
    try:
        status = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return next((i for i in status["instances"] if i["name"] == name), {})


def observed(state: Path, name: str) -> str | None:
    return entry_of(state, name).get("observed")


def triggers(state: Path, name: str) -> dict[str, int]:
    return dict(entry_of(state, name).get("triggers", {}))


def wait(condition: object, what: str, daemon: subprocess.Popen[bytes], logs: Path) -> int:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        value = condition()  # type: ignore[operator]
        if value:
            return int(value)
        assert daemon.poll() is None, (logs / "daemon.log").read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(
        f"timed out waiting for {what}\n{(logs / 'daemon.log').read_text()[-3000:]}"
    )
