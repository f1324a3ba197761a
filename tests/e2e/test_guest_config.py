"""Guest configuration on real QEMU: the config drive (cloud-init NoCloud), injected files,
SSH keys, the hostname, two NICs and a port forward, as the test guest reports them.

One guest is booted and looked at from every side (boots are the slow part): what it
received, what the host reaches through the forward, a second instance refused the same port,
a no-op pass, an edited file swapped into the running guest, and the derived MAC across an
undefine and a redefine.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from reconciler.manifests.loader import load_manifests
from reconciler.model.actual import PowerState
from reconciler.planning.cloudinit import drive_content
from reconciler.planning.network import derived_mac
from reconciler.steps.configdrive import render_iso
from tests.e2e.conftest import E2E, CliRun
from tests.guest import guest_image, wait_for_marker
from tests.helpers import free_port, unique_name, write_manifest

pytestmark = pytest.mark.both_drivers

Reconcile = Callable[..., CliRun]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKz3q0vZ8d2hm1rj3b3x2Y0T7mD0f8m5aXoVn0d3p1c8 t@host"
USER_DATA = "#cloud-config\nruncmd:\n  - [echo, ']]> inside user-data']\n"


def guest_spec(port: int, motd: str = "hello from the manifest\n") -> dict[str, object]:
    return {
        "memory": "128MiB",
        "shutdownTimeoutSeconds": 120,
        "hostname": "configured-host",
        "cloudInit": {"userData": USER_DATA},
        "ssh": {"authorizedKeys": [KEY]},
        "files": [
            {"path": "/etc/motd", "content": motd, "permissions": "0644"},
            {"path": "/etc/app/app.conf", "source": "app.conf", "owner": "root:root"},
        ],
        "networks": [
            {"type": "user", "ports": [{"host": port, "guest": 80}]},
            {"type": "user", "mac": "52:54:00:0c:0f:01", "model": "e1000"},
        ],
    }


def write_guest(directory: Path, name: str, **spec: object) -> Path:
    return write_manifest(directory, name, guest_image("qcow2"), None, "qcow2", **spec)


def expected_drive(directory: Path, name: str, uuid: str) -> dict[str, bytes]:
    """The config drive's files, computed from the manifest's inputs as loaded."""
    (spec,) = [s for s in load_manifests(directory).instances if s.name == name]
    return dict(drive_content(spec.guest, name, uuid).files)


def test_a_configured_guest_receives_its_drive_nics_and_port_forward(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name = unique_name("rcg")
    paths = e2e.state.instance(name)
    port = free_port()
    (manifests / "app.conf").write_text("setting = 1\n")
    write_guest(manifests, name, **guest_spec(port))
    started = reconcile("--once", str(manifests))
    assert started.code == 0, started.out + started.err
    report = wait_for_marker(paths.console_log, "ready")

    # the drive: label, exact names, the bytes of each file
    record = e2e.driver.lookup(name)
    assert record is not None
    expected = expected_drive(manifests, name, record.uuid)
    assert report.config_drive == "cidata"
    assert report.config_files == {n: hashlib.sha256(d).hexdigest() for n, d in expected.items()}
    assert set(report.config_files) == {"meta-data", "user-data"}
    assert report.instance_id == record.uuid
    assert report.local_hostname == report.hostname == "configured-host"
    user_data = yaml.safe_load(expected["user-data"])
    assert user_data["ssh_authorized_keys"] == [KEY]
    assert [f["path"] for f in user_data["write_files"]] == ["/etc/motd", "/etc/app/app.conf"]
    assert user_data["runcmd"] == [["echo", "]]> inside user-data"]]
    (drive,) = paths.directory.glob("config-*.iso")
    assert drive.stat().st_mode & 0o777 == 0o600
    (spec,) = load_manifests(manifests).instances
    content = drive_content(spec.guest, name, record.uuid)
    assert render_iso(content) == render_iso(content) == drive.read_bytes()

    # two NICs in the manifest's order: the explicit MAC and the derived one
    assert list(report.nics.values()) == [derived_mac(name, 0), "52:54:00:0c:0f:01"]

    # the forward reaches the guest's reply server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
        assert answer.read().decode().strip() == "reconciler-guest configured-host"

    # a second instance asking for the same host port fails, naming it; the first runs on
    other = unique_name("rcg")
    elsewhere = tmp_path / "other"  # a manifest directory of its own
    elsewhere.mkdir()
    write_guest(
        elsewhere, other, networks=[{"type": "user", "ports": [{"host": port, "guest": 22}]}]
    )
    refused = reconcile("--once", str(elsewhere))
    assert refused.code == 1
    assert f"host port 127.0.0.1:{port}/tcp is in use" in refused.out
    assert e2e.driver.lookup(other) is None  # nothing was made for it
    assert e2e.state_of(name) is PowerState.RUNNING

    # a no-op pass rebuilds nothing
    built = drive.stat()
    settled = reconcile("plan", "--detailed-exitcode", str(manifests))
    assert settled.code == 0, settled.out
    assert reconcile("--once", str(manifests)).code == 0
    assert drive.stat().st_mtime_ns == built.st_mtime_ns

    # an edited injected file: the drive is rebuilt and swapped into the running guest, which
    # reads it after a reboot, with the same instance-id
    (manifests / "app.conf").write_text("setting = 2\n")
    changed = reconcile("--once", str(manifests))
    assert changed.code == 0, changed.out + changed.err
    assert f"{name}: swapped the config drive medium" in changed.out
    assert "setting = 2" not in changed.out + changed.err  # digests are shown, never contents
    assert not drive.exists()
    (rebuilt,) = paths.directory.glob("config-*.iso")
    e2e.driver.reset(name)
    again = wait_for_marker(paths.console_log, "ready", boot=2)
    fresh = expected_drive(manifests, name, record.uuid)
    assert fresh["user-data"] != expected["user-data"]
    assert again.config_files["user-data"] == hashlib.sha256(fresh["user-data"]).hexdigest()
    assert again.instance_id == record.uuid
    assert rebuilt.read_bytes() == render_iso(drive_content(
        load_manifests(manifests).instances[0].guest, name, record.uuid))  # fmt: skip

    # the derived MAC is the same after an undefine and a redefine
    write_guest(manifests, name, state="absent", **guest_spec(port))
    assert reconcile("--once", str(manifests)).code == 0
    assert e2e.driver.lookup(name) is None
    write_guest(manifests, name, state="stopped", **guest_spec(port))
    assert reconcile("--once", str(manifests)).code == 0
    redefined = e2e.driver.lookup(name)
    assert redefined is not None and redefined.definition is not None
    assert [nic.mac for nic in redefined.definition.nics] == [
        derived_mac(name, 0),
        "52:54:00:0c:0f:01",
    ]
    assert redefined.uuid == record.uuid  # so the instance-id too


def test_console_prints_the_serial_log(e2e: E2E, reconcile: Reconcile, tmp_path: Path) -> None:
    name = unique_name("rcg")
    write_guest(tmp_path, name, memory="128MiB", networks=[])
    assert reconcile("--once", str(tmp_path)).code == 0
    wait_for_marker(e2e.state.instance(name).console_log, "ready")
    shown = reconcile("console", name)
    assert shown.code == 0
    assert "reconciler-guest: ready" in shown.out
    assert "reconciler-guest: nic" not in shown.out  # networks: [] gives the guest no NIC
    assert reconcile("console", "no-such-instance").code == 2


@pytest.mark.libvirt_only  # the QMP driver refuses bridges and networks at plan time
def test_a_missing_bridge_or_network_fails_the_instance_before_anything_is_made(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    bridged, networked = unique_name("rcg"), unique_name("rcg")
    write_guest(tmp_path, bridged, networks=[{"type": "bridge", "source": "rcnobridge0"}])
    write_guest(tmp_path, networked, networks=[{"type": "network", "source": "default"}])
    failed = reconcile("--once", str(tmp_path))
    assert failed.code == 1
    assert "interface 0: host bridge 'rcnobridge0' does not exist" in failed.out
    assert "libvirt network 'default' cannot be used" in failed.out  # no network driver
    for name in (bridged, networked):
        assert e2e.driver.lookup(name) is None
        assert not e2e.state.instance(name).disk.exists()
