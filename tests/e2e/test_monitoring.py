"""Monitoring, end to end: a daemon with --metrics-address managing the test guest. /metrics
is parsed with prometheus_client's own parser, and its counters move as the test creates,
breaks and fixes an instance; /readyz is not ready before the first pass and ready after;
/healthz fails while the loop is wedged (the test hook); `reconcile events --follow` shows a
crash and the restart that followed; a listener address in use is said clearly and the
daemon reconciles all the same."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import destroy_domains
from tests.e2e.test_daemon import Daemon, launch, observed, stop_daemon, wait_until
from tests.guest import IMAGES, guest_image
from tests.helpers import free_port, unique_name
from tests.httpserver import Behaviour, image_server


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and labels (parsed as Prometheus parses it)."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(port: int, metric: str, **labels: str) -> float:
    return samples(port).get((metric, tuple(sorted(labels.items()))), 0.0)


def guest_manifest(directory: Path, name: str, source: str, sha256: str, **spec: Any) -> None:
    document = {
        "apiVersion": "reconciler/v1alpha1", "kind": "Instance", "metadata": {"name": name},
        "spec": {"vcpus": 1, "memory": "128MiB", "disk": {"size": "256MiB"},
                 "image": {"source": source, "sha256": sha256, "format": "qcow2"},
                 "shutdownTimeoutSeconds": 30, **spec},
    }  # fmt: skip
    target = directory / f"{name}.yaml"
    temporary = directory / f".{name}.yaml.tmp"
    temporary.write_text(yaml.safe_dump(document))
    os.replace(temporary, target)


@pytest.fixture(scope="module")
def monitored() -> Iterator[tuple[Daemon, int, Path, str]]:
    """A daemon with metrics on, whose first pass waits on a slow download of the test
    guest (so that /readyz can be seen not ready), and the wedge file of its test hook."""
    image = guest_image("qcow2")
    data = image.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    root = Path(tempfile.mkdtemp(prefix="rcm-", dir="/tmp"))
    manifests = root / "m"
    manifests.mkdir()
    port = free_port()
    wedge = root / "wedge"
    with image_server() as server:
        server.serve("/guest.qcow2", Behaviour(body=data, chunk_delay=0.03))
        name = unique_name("rcm")
        guest_manifest(manifests, name, server.url("/guest.qcow2"), sha)
        os.environ["RECONCILER_TEST_WEDGE_FILE"] = str(wedge)
        os.environ["RECONCILER_HEALTHZ_STALE_SECONDS"] = "3"
        try:
            daemon = launch(root, manifests, image, sha, "--image-dir", str(IMAGES),
                            "--metrics-address", f"127.0.0.1:{port}")  # fmt: skip
        finally:
            del os.environ["RECONCILER_TEST_WEDGE_FILE"]
            del os.environ["RECONCILER_HEALTHZ_STALE_SECONDS"]
        try:
            yield daemon, port, wedge, name
        finally:
            wedge.unlink(missing_ok=True)
            stop_daemon(daemon.process)
            destroy_domains(root / "s")


def test_readyz_waits_for_the_first_pass_and_metrics_follow_the_instances(
    monitored: tuple[Daemon, int, Path, str],
) -> None:
    daemon, port, _wedge, name = monitored
    status, why = get(port, "/readyz")  # the download of the first pass takes seconds
    assert (status, why) == (503, "the first pass over every instance is not done\n")
    assert get(port, "/healthz") == (200, "ok\n")
    wait_until(lambda: get(port, "/readyz")[0] == 200, "/readyz ready", daemon)
    wait_until(lambda: observed(daemon, name, "running"), "the guest to run", daemon)
    assert value(port, "reconciler_reconcile_total", outcome="changed", trigger="start") == 1
    assert value(port, "reconciler_instances", desired="running", observed="running") == 1
    assert value(port, "reconciler_first_pass_done") == 1
    assert value(port, "reconciler_connected") == 1
    assert value(port, "reconciler_image_cache_entries") == 1
    assert value(port, "reconciler_download_bytes_total") >= guest_image("qcow2").stat().st_size
    assert value(port, "reconciler_reconcile_duration_seconds_count") >= 1
    assert value(port, "reconciler_process_resident_memory_bytes") > 0

    # broken: a second instance whose image does not have the checksum its manifest says
    broken = unique_name("rcm")
    source = str(guest_image("qcow2"))
    guest_manifest(daemon.manifests, broken, source, "0" * 64, state="stopped")
    wait_until(lambda: value(port, "reconciler_instance_failing", name=broken) == 1,
               "the broken instance to fail", daemon)  # fmt: skip
    assert value(port, "reconciler_reconcile_total", outcome="failed", trigger="manifest") >= 1
    assert value(port, "reconciler_reconcile_errors_total", failure="permanent") >= 1
    # fixed
    sha = hashlib.sha256(guest_image("qcow2").read_bytes()).hexdigest()
    guest_manifest(daemon.manifests, broken, source, sha, state="stopped")
    wait_until(lambda: value(port, "reconciler_instance_failing", name=broken) == 0,
               "the fixed instance to converge", daemon)  # fmt: skip
    assert value(port, "reconciler_instances", desired="stopped", observed="shutoff") == 1
    assert value(port, "reconciler_reconcile_total", outcome="changed", trigger="manifest") >= 1


def test_events_follow_shows_a_crash_and_the_restart_that_followed(
    monitored: tuple[Daemon, int, Path, str],
) -> None:
    daemon, port, _wedge, name = monitored
    wait_until(lambda: observed(daemon, name, "running"), "the guest to run", daemon)
    follow = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "events", name, "--follow", "--state-dir",
         str(daemon.state.root)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follow.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("reconcile  changed (start)" in line for line in lines),
                   "the history so far", daemon)  # fmt: skip
        old = daemon.qemu_pid(name)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        restarts = value(port, "reconciler_reconcile_total", outcome="changed", trigger="event")

        def crash_then_restart() -> bool:
            text = "".join(lines)
            crash = text.find("domain  lifecycle stopped: ")  # failed (libvirt), crashed (qmp)
            return crash >= 0 and "reconcile  changed (event): started domain" in text[crash:]

        wait_until(crash_then_restart, "the crash and the restart in the events", daemon)
        assert value(port, "reconciler_reconcile_total", outcome="changed",
                     trigger="event") == restarts + 1  # fmt: skip
    finally:
        follow.terminate()  # by the pid this test started
        follow.wait(timeout=30)


def test_healthz_fails_while_the_loop_is_wedged(monitored: tuple[Daemon, int, Path, str]) -> None:
    daemon, port, wedge, _name = monitored
    assert get(port, "/healthz") == (200, "ok\n")
    wedge.touch()
    try:
        wait_until(lambda: get(port, "/healthz")[0] == 503, "/healthz to fail", daemon)
        status, why = get(port, "/healthz")
        assert status == 503 and why.startswith("the loop has not gone round for")
        assert get(port, "/metrics")[0] == 200  # scrapes never wait on the loop
    finally:
        wedge.unlink()
    wait_until(lambda: get(port, "/healthz")[0] == 200, "/healthz alive again", daemon)


def test_an_address_in_use_is_said_and_the_daemon_reconciles_all_the_same(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        root = Path(tempfile.mkdtemp(prefix="rcx-", dir="/tmp"))
        manifests = root / "m"
        manifests.mkdir()
        image = guest_image("qcow2")
        sha = hashlib.sha256(image.read_bytes()).hexdigest()
        name = unique_name("rcx")
        guest_manifest(manifests, name, str(image), sha, state="stopped")
        daemon = launch(root, manifests, image, sha, "--image-dir", str(IMAGES),
                        "--metrics-address", f"127.0.0.1:{port}", driver="qmp")  # fmt: skip
        try:
            wait_until(lambda: observed(daemon, name, "shutoff"), "the instance defined", daemon)
            log = daemon.log_text()
            assert f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use" in log
            assert "the daemon goes on reconciling" in log
            assert daemon.process.poll() is None
        finally:
            stop_daemon(daemon.process)
            destroy_domains(root / "s")
