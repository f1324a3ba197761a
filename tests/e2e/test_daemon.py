"""The daemon end to end, under each driver: `reconcile DIR` as a subprocess on its own state
directory (its own embedded libvirt root, which admits one process, or its own QEMUs), real
QEMU, real qemu-img. Conditions are awaited with deadlines, never fixed sleeps; one daemon
per driver is shared by the tests of this module.

The test process never opens the daemon's hypervisor: it asks the daemon (`reconcile status
-o json` over the control socket) and reads the files it makes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.images.diskheaders import parse_qcow2_header, read_head
from reconciler.statedir import StateDir
from tests.e2e.conftest import destroy_domains
from tests.helpers import manifest_document, poll, unique_name, write_base_image
from tests.httpserver import Behaviour, image_server

MIB = 1024**2
DEADLINE = 60.0

pytestmark = pytest.mark.both_drivers


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    state: StateDir
    manifests: Path
    base: Path
    sha256: str
    log: Path
    driver_name: str = "libvirt"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args, "--state-dir", str(self.state.root)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "-o", "json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def instance(self, name: str) -> dict[str, Any] | None:
        return next((i for i in self.status()["instances"] if i["name"] == name), None)

    def write(self, name: str, **spec: Any) -> Path:
        """Write a manifest the way an editor saves: a temporary file renamed over it."""
        document = manifest_document(name, self.base, self.sha256, **spec)
        target = self.manifests / f"{name}.yaml"
        temporary = self.manifests / f".{name}.yaml.swp"
        temporary.write_text(yaml.safe_dump(document))
        os.replace(temporary, target)
        return target

    def new_running(self) -> str:
        """A new instance, written and awaited until the daemon reports it running."""
        name = unique_name()
        self.write(name)
        wait_until(lambda: observed(self, name, "running"), f"{name} to run", self)
        return name

    def qemu_pid(self, name: str) -> int | None:
        """The domain's QEMU pid (None between a death and the next start)."""
        if self.driver_name == "qmp":
            path = self.state.instance(name).qemu_pid
        else:
            path = self.state.libvirt_pid_file(name)
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(
    condition: Callable[[], Any], what: str, daemon: Daemon, timeout: float = DEADLINE
) -> Any:
    return poll(
        condition,
        timeout,
        what,
        broken=lambda: "daemon exited" if daemon.process.poll() is not None else None,
        context=lambda: daemon.log_text()[-3000:],
    )


def observed(daemon: Daemon, name: str, state: str) -> bool:
    entry = daemon.instance(name)
    return entry is not None and entry["observed"] == state


def start_daemon(
    root: Path, manifests: Path | None, base: Path, *extra: str, driver: str = "libvirt"
) -> subprocess.Popen[bytes]:
    """The daemon on ROOT/s over MANIFESTS (None: the manifests come from `extra`, --git)."""
    log = (root / "daemon.log").open("ab")
    directory = [] if manifests is None else [str(manifests)]
    return subprocess.Popen(
        [
            sys.executable, "-m", "reconciler", *directory, "--state-dir", str(root / "s"),
            "--image-dir", str(base.parent), "--download-attempts", "1", "--resync", "10m",
            "--driver", driver, *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def launch(
    root: Path, manifests: Path | None, base: Path, sha: str, *extra: str, driver: str = "libvirt"
) -> Daemon:
    """Start a daemon on ROOT/s and wait until it answers on its control socket."""
    process = start_daemon(root, manifests, base, *extra, driver=driver)
    watched = manifests or root / "s" / "git" / "current"
    state, log = StateDir(root / "s"), root / "daemon.log"
    handle = Daemon(process, state, watched, base, sha, log, driver)
    wait_until(
        lambda: handle.state.control_socket.exists() and handle.cli("status").returncode == 0,
        "the daemon to listen",
        handle,
    )
    return handle


def stop_daemon(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=90)


@contextlib.contextmanager
def daemon_of_its_own(prefix: str, driver_name: str, *extra: str) -> Iterator[Daemon]:
    """A daemon on a state directory and a manifest directory of its own (ROOT/s, ROOT/m, a
    base image in ROOT/src), stopped and its domains destroyed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: libvirt's sockets
    manifests = root / "m"
    manifests.mkdir()
    images = root / "src"
    images.mkdir()
    base, sha = write_base_image(images)
    handle = launch(root, manifests, base, sha, *extra, driver=driver_name)
    try:
        yield handle
    finally:
        stop_daemon(handle.process)
        destroy_domains(root / "s")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(driver_name: str) -> Iterator[Daemon]:
    with daemon_of_its_own("rcw-", driver_name) as handle:
        yield handle


def test_a_new_manifest_runs_and_edits_are_applied(daemon: Daemon) -> None:
    name = unique_name()
    daemon.write(name)
    wait_until(lambda: observed(daemon, name, "running"), "the new instance to run", daemon)
    disk = daemon.state.instance(name).disk

    daemon.write(name, disk={"size": "96MiB"})
    wait_until(
        lambda: parse_qcow2_header(read_head(str(disk))).virtual_size == 96 * MIB,
        "the disk to grow",
        daemon,
    )
    daemon.write(name, disk={"size": "96MiB"}, state="stopped")
    wait_until(lambda: observed(daemon, name, "shutoff"), "the instance to stop", daemon)
    entry = daemon.instance(name)
    assert entry is not None and (entry["desired"], entry["observed"]) == ("stopped", "shutoff")
    assert parse_qcow2_header(read_head(str(disk))).virtual_size == 96 * MIB  # the edit held


def test_an_editor_save_causes_exactly_one_reconcile(daemon: Daemon) -> None:
    name = daemon.new_running()
    before = daemon.instance(name)
    assert before is not None
    manifest_reconciles = before["triggers"].get("manifest", 0)
    # vim's way: a swap file, a backup, the new text written aside and renamed over
    (daemon.manifests / f".{name}.yaml.swx").write_text("swap")
    shutil.copy(daemon.manifests / f"{name}.yaml", daemon.manifests / f"{name}.yaml~")
    daemon.write(name, memory="80MiB")
    (daemon.manifests / f".{name}.yaml.swx").unlink()
    wait_until(
        lambda: (daemon.instance(name) or {})["triggers"].get("manifest", 0) > manifest_reconciles,
        "the edit to be reconciled",
        daemon,
    )
    time.sleep(1.5)  # a quiet period longer than the debounce: nothing more may come
    after = daemon.instance(name)
    assert after is not None
    assert after["triggers"]["manifest"] == manifest_reconciles + 1
    assert after["pendingRestart"]  # memory of a running domain: at its next restart


def test_a_killed_qemu_is_running_again_without_any_file_event(daemon: Daemon) -> None:
    name = daemon.new_running()
    old = daemon.qemu_pid(name)
    assert old is not None
    events_before = (daemon.instance(name) or {})["triggers"].get("event", 0)
    os.kill(old, signal.SIGKILL)

    def restarted_by_the_event() -> bool:
        # the status is written when the reconcile is over (a new pid file appears before)
        entry = daemon.instance(name) or {}
        return (
            entry.get("triggers", {}).get("event", 0) > events_before
            and entry.get("observed") == "running"
            and daemon.qemu_pid(name) not in (None, old)
        )

    wait_until(restarted_by_the_event, "a new QEMU started on the event", daemon)
    entry = daemon.instance(name)
    assert entry is not None and entry["lastEvent"]["kind"] == "lifecycle"


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_a_failing_source_backs_off_while_others_converge(daemon: Daemon) -> None:
    failing, healthy = unique_name(), unique_name()
    body = daemon.base.read_bytes() + b"\0" * 4096  # not in the cache yet
    with image_server() as server:
        behaviour = server.serve("/flaky.raw", Behaviour(body=body, fail_first=3, fail_status=503))
        document = manifest_document(failing, daemon.base, hashlib.sha256(body).hexdigest())
        document["spec"]["image"]["source"] = server.url("/flaky.raw")
        (daemon.manifests / f"{failing}.yaml").write_text(yaml.safe_dump(document))
        daemon.write(healthy)
        # failures in a row -> delay from the end of the failed reconcile to the next attempt
        # (from its start, a first reconcile slowed by a loaded host looked like a longer
        # backoff than the second's)
        delays: dict[int, float] = {}

        def note_delay() -> bool:
            entry = daemon.instance(failing)
            if entry and entry["failures"] and entry["nextRetry"]:
                last = entry["lastReconcile"]
                ended = _seconds(last["started"]) + last["seconds"]
                delays[entry["failures"]] = _seconds(entry["nextRetry"]) - ended
            return entry is not None and entry["observed"] == "running"

        wait_until(note_delay, "the failing instance to recover", daemon)
        assert observed(daemon, healthy, "running")
        assert behaviour.gets >= 4
    assert len(delays) >= 2, delays
    counts = sorted(delays)
    assert all(delays[a] < delays[b] for a, b in itertools.pairwise(counts)), delays
    entry = daemon.instance(failing)
    assert entry is not None and entry["failures"] == 0 and entry["lastError"] is None


def test_status_plan_and_once_ask_the_running_daemon(daemon: Daemon) -> None:
    name = daemon.new_running()
    plan = daemon.cli("plan", "--detailed-exitcode", str(daemon.manifests))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"{name}: up to date" in plan.stdout
    once = daemon.cli("--once", str(daemon.manifests))
    assert once.returncode == 0, once.stdout + once.stderr
    assert "asking the daemon" in once.stdout and f"{name}  unchanged" in once.stdout
    text = daemon.cli("status", name)
    assert text.returncode == 0 and name in text.stdout and "running" in text.stdout
    elsewhere = daemon.cli("--once", str(daemon.manifests.parent))
    assert elsewhere.returncode == 2 and "watches" in elsewhere.stderr
    # a plan of another checkout (a pull request's) is the daemon's to make, and changes nothing
    review = daemon.manifests.parent / "review"
    review.mkdir(exist_ok=True)
    document = manifest_document(name, daemon.base, daemon.sha256, vcpus=2)
    (review / f"{name}.yaml").write_text(yaml.safe_dump(document))
    proposed = daemon.cli("plan", "--detailed-exitcode", "--fail-on", "restart", str(review))
    assert proposed.returncode == 3, proposed.stdout + proposed.stderr
    assert "vcpus 1 -> 2" in proposed.stdout
    assert daemon.cli("plan", "--detailed-exitcode", str(daemon.manifests)).returncode == 0

    # its manifest moved away: the forwarded pass reports the orphan (kept: prune is off)
    manifest = daemon.manifests / f"{name}.yaml"
    aside = daemon.manifests.parent / f"{name}.yaml"
    manifest.rename(aside)
    try:
        orphaned = daemon.cli("--once", str(daemon.manifests))
        assert orphaned.returncode == 0, orphaned.stdout + orphaned.stderr
        assert f"{name}  unchanged" in orphaned.stdout
        assert "note: orphan: its manifest is gone; kept (prune is off" in orphaned.stdout
    finally:
        aside.rename(manifest)
    assert observed(daemon, name, "running")


def test_a_fifo_in_the_manifest_directory_never_hangs_the_daemon(daemon: Daemon) -> None:
    """A FIFO as a manifest and as a file a manifest names: the resync and a requested pass
    go on, the valid instance beside them converges, and both are reported where they are."""
    sub = daemon.manifests / "fifo-test"
    sub.mkdir()
    os.mkfifo(sub / "pipe.yaml")
    os.mkfifo(sub / "fifo")
    name = unique_name()
    document = manifest_document(name, daemon.base, daemon.sha256)
    document["spec"]["files"] = [{"path": "/etc/x", "source": "fifo"}]
    (sub / "named.yaml").write_text(yaml.safe_dump(document))
    try:
        fine = daemon.new_running()
        began = time.monotonic()
        once = subprocess.run(
            [sys.executable, "-m", "reconciler", "--once", str(daemon.manifests),
             "--state-dir", str(daemon.state.root)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert time.monotonic() - began < 60
        assert once.returncode == 2, once.stdout + once.stderr  # manifest errors
        assert f"{sub}/pipe.yaml is a FIFO, not a regular file" in once.stderr
        assert "/spec/files/0/source: fifo is a FIFO, not a regular file" in once.stderr
        assert f"{fine}  unchanged" in once.stdout
        assert daemon.cli("status").returncode == 0
    finally:
        shutil.rmtree(sub)


def test_export_adopt_and_gc_ask_the_running_daemon(daemon: Daemon) -> None:
    """The daemon holds the state directory (and the embedded root): the commands that read
    it, and gc, are its to answer, not refused as "in use"."""
    name = daemon.new_running()
    exported = daemon.cli("export", name)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    document = yaml.safe_load(exported.stdout)
    assert document["metadata"]["name"] == name and document["spec"]["state"] == "running"
    assert document["spec"]["image"]["sha256"] == daemon.sha256  # the cache entry's digest
    assert "/images/sha256-" not in document["spec"]["image"]["source"]  # never the cache
    adopted = daemon.cli("adopt", name, str(daemon.manifests), "--dry-run")
    assert adopted.returncode == 1, adopted.stdout + adopted.stderr
    assert "already managed by this state directory" in adopted.stdout
    collected = daemon.cli("gc", "--dry-run")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert "in use" in collected.stdout and "in use by another" not in collected.stderr
    missing = daemon.cli("export", "rct-nosuch")
    assert missing.returncode == 2 and "no such domain" in missing.stderr


def test_garbage_on_the_control_socket_gets_an_error_and_the_daemon_carries_on(
    daemon: Daemon,
) -> None:
    path = daemon.state.control_socket
    assert path.stat().st_mode & 0o777 == 0o600
    for garbage in (
        b"\x00\xff not json\n",
        b'["op"]\n',
        b'{"op": "reboot"}\n',
        b"x" * 70000 + b"\n",
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(garbage)
            answer = json.loads(sock.makefile("rb").readline())
            assert answer["done"] and answer["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # a client that hangs up
        sock.connect(str(path))
        sock.sendall(b'{"op": "sta')
    assert daemon.cli("status").returncode == 0
    assert daemon.process.poll() is None


def test_sigterm_during_a_step_exits_0_and_a_restart_leaves_running_domains_alone(
    tmp_path: Path, driver_name: str
) -> None:
    root = Path(tempfile.mkdtemp(prefix="rcs-", dir="/tmp"))
    try:
        manifests = root / "m"
        manifests.mkdir()
        base, sha = write_base_image(root)
        slow_name, name = unique_name(), unique_name()
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump(manifest_document(name, base, sha)))
        handle = launch(root, manifests, base, sha, driver=driver_name)
        process, state = handle.process, handle.state
        wait_until(lambda: observed(handle, name, "running"), "the instance to run", handle)
        with image_server() as server:
            # a slow download: the step is in flight when SIGTERM comes
            slow = base.read_bytes() * 16
            server.serve("/slow.raw", Behaviour(body=slow, chunk_delay=0.5))
            document = manifest_document(slow_name, base, hashlib.sha256(slow).hexdigest())
            document["spec"]["image"]["source"] = server.url("/slow.raw")
            (manifests / f"{slow_name}.yaml").write_text(yaml.safe_dump(document))
            wait_until(lambda: any((state.images).glob(".*.tmp")), "the download to start", handle)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=90) == 0
        assert not list(state.root.rglob(".*.tmp")), "a temporary file was left behind"
        pid = handle.qemu_pid(name)
        handle = launch(root, manifests, base, sha, driver=driver_name)
        try:
            wait_until(
                lambda: (handle.instance(name) or {}).get("lastReconcile"), "a reconcile", handle
            )
            entry = handle.instance(name)
            assert entry is not None
            assert entry["lastReconcile"]["outcome"] == "unchanged"
            assert handle.qemu_pid(name) == pid  # the same QEMU: not restarted
        finally:
            assert stop_daemon(handle.process) == 0
    finally:
        destroy_domains(root / "s")
        shutil.rmtree(root, ignore_errors=True)


def test_the_daemon_tells_systemd_it_is_ready_after_one_reconcile_of_each_name(
    driver_name: str,
) -> None:
    """READY=1 through $NOTIFY_SOCKET once every name has been reconciled once since start,
    whatever the outcome: a permanent failure among them does not hold it back, and it comes
    long before the next resync (10 minutes)."""
    root = Path(tempfile.mkdtemp(prefix="rcy-", dir="/tmp"))
    manifests = root / "m"
    manifests.mkdir()
    images = root / "src"
    images.mkdir()
    base, sha = write_base_image(images)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    outside, outside_sha = write_base_image(elsewhere)  # not an allowed image directory
    names = [unique_name(), unique_name()]
    (manifests / "good.yaml").write_text(
        yaml.safe_dump(manifest_document(names[0], base, sha, state="stopped"))
    )
    (manifests / "refused.yaml").write_text(
        yaml.safe_dump(manifest_document(names[1], outside, outside_sha))
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(root / "notify.sock"))
    notify.settimeout(90)
    os.environ["NOTIFY_SOCKET"] = str(root / "notify.sock")
    try:
        process = start_daemon(root, manifests, base, driver=driver_name)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        began = time.monotonic()
        message = notify.recv(4096).decode()
        assert message == "READY=1", message
        assert time.monotonic() - began < 90
        log = (root / "daemon.log").read_text()
        assert f"{names[1]}: failed (permanent)" in log
        assert "first pass done: 2 instance(s)" in log
        assert stop_daemon(process) == 0
        assert notify.recv(4096).decode() == "STOPPING=1"
    finally:
        stop_daemon(process)
        notify.close()
        destroy_domains(root / "s")
        shutil.rmtree(root, ignore_errors=True)
