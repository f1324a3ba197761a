"""The qcow2 snapshot table read in Python (the ground for issue 24's snapshots, which keep
the disks as the only record of them), against what real qemu-img writes and reports, and
against a table that lies."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from reconciler.images.diskheaders import HeaderError, read_qcow2_snapshots


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True).stdout


def test_the_table_says_what_qemu_img_says(tmp_path: Path) -> None:
    disk = str(tmp_path / "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", disk, "64M")
    assert read_qcow2_snapshots(disk) == ()
    for label in ("before-restart-sha256:0123", "ünïcode"):
        qemu_img("snapshot", "-c", label, disk)
    qemu_img("resize", "-q", disk, "128M")
    qemu_img("snapshot", "-c", "after-resize", disk)
    reported = json.loads(qemu_img("info", "--output=json", disk))["snapshots"]
    found = read_qcow2_snapshots(disk)
    assert [(s.id, s.name, int(s.date), s.vm_state_size) for s in found] == [
        (r["id"], r["name"], r["date-sec"], r["vm-state-size"]) for r in reported
    ]
    assert [s.virtual_size for s in found] == [64 * 1024**2, 64 * 1024**2, 128 * 1024**2]
    qemu_img("snapshot", "-d", "ünïcode", disk)
    assert [s.name for s in read_qcow2_snapshots(disk)] == [
        "before-restart-sha256:0123",
        "after-resize",
    ]


def test_a_table_that_lies_is_refused(tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "64M")
    qemu_img("snapshot", "-c", "one", str(disk))
    data = bytearray(disk.read_bytes())
    struct.pack_into(">I", data, 60, 70000)  # more than QEMU allows
    disk.write_bytes(data)
    with pytest.raises(HeaderError, match="claims 70000 snapshots"):
        read_qcow2_snapshots(str(disk))
    struct.pack_into(">IQ", data, 60, 1, len(data) + 4096)  # past the end of the file
    disk.write_bytes(data)
    with pytest.raises(HeaderError, match="past the end of the file"):
        read_qcow2_snapshots(str(disk))
    (tmp_path / "raw").write_bytes(b"\0" * 4096)
    with pytest.raises(HeaderError, match="not a qcow2 image"):
        read_qcow2_snapshots(str(tmp_path / "raw"))
