"""The test guest image itself (tools/guest), run directly under QEMU with devices that the
reconciler does not attach yet: a cidata config drive and a NIC."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guest import guest_image, wait_for_marker
from tests.helpers import PROJECT

pytestmark = pytest.mark.both_drivers


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_reproducible_and_small(tmp_path: Path) -> None:
    image = guest_image("raw")
    qcow2 = guest_image("qcow2")
    assert image.stat().st_size <= 32 * 1024**2
    assert qcow2.stat().st_size < image.stat().st_size
    # a second build from the same packages (shared download cache) gives the same bytes
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(PROJECT / "tools/guest/build-guest-image.py"), str(out),
         str(PROJECT / "build/guest")],
        check=True, capture_output=True,
    )  # fmt: skip
    assert sha256_of(out / "reconciler-guest.raw") == sha256_of(image)
    assert sha256_of(out / "reconciler-guest.qcow2") == sha256_of(qcow2)


def test_guest_reports_config_drive_and_nics(tmp_path: Path) -> None:
    meta = b"instance-id: iid-rct-1\nlocal-hostname: rct-host\n"
    user = b"#cloud-config\n"
    (tmp_path / "meta-data").write_bytes(meta)
    (tmp_path / "user-data").write_bytes(user)
    cidata = tmp_path / "cidata.img"
    subprocess.run(
        ["mformat", "-C", "-i", str(cidata), "-v", "CIDATA", "-T", "2880", "-h", "2", "-s",
         "18", "::"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["mcopy", "-i", str(cidata), str(tmp_path / "meta-data"), str(tmp_path / "user-data"),
         "::/"],
        check=True, capture_output=True,
    )  # fmt: skip
    disk = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(guest_image("raw")), "-F", "raw",
         str(disk), "300M"],
        check=True,
    )  # fmt: skip
    console = tmp_path / "console.log"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "128",
         "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
         "-drive", f"file={disk},if=virtio,format=qcow2",
         "-drive", f"file={cidata},if=virtio,format=raw,readonly=on",
         "-netdev", "user,id=n0,restrict=on",
         "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        report = wait_for_marker(console, "ready")
    finally:
        qemu.kill()
        qemu.wait()
    assert report.disk_bytes == 300 * 1024**2
    assert report.config_drive is not None and report.config_drive.lower() == "cidata"
    assert report.config_files == {
        "meta-data": hashlib.sha256(meta).hexdigest(),
        "user-data": hashlib.sha256(user).hexdigest(),
    }
    assert report.instance_id == "iid-rct-1"
    assert report.local_hostname == "rct-host"
    assert report.nics == {"eth0": "52:54:00:12:34:56"}
