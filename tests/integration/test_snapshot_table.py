"""The qcow2 snapshot table read in Python (the ground for issue 24's snapshots, which keep
the disks as the only record of them), against what real qemu-img writes and reports, and
against a table that lies."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from reconciler.images.diskheaders import (
    HeaderError,
    SnapshotSpace,
    read_qcow2_snapshots,
    snapshot_space,
)
from reconciler.images.qemuimg import QemuImg


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


def qemu_io(disk: str, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, disk], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def test_the_space_snapshots_hold_is_what_was_overwritten_since(tmp_path: Path) -> None:
    """10 MiB written, snapshot s1, 4 MiB of it overwritten, snapshot s2, 1 MiB of that
    overwritten: s1 alone holds the first 4 MiB's old clusters, s2 alone the 1 MiB (each also
    its own tables), and deleting both frees what `total` says."""
    disk = str(tmp_path / "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", disk, "100M")
    assert snapshot_space(disk) == SnapshotSpace(0, {})
    qemu_io(disk, "write -P 1 0 10M")
    qemu_img("snapshot", "-c", "s1", disk)
    qemu_io(disk, "write -P 2 0 4M")
    qemu_img("snapshot", "-c", "s2", disk)
    qemu_io(disk, "write -P 3 0 1M")
    space = snapshot_space(disk)
    mib, tables = 1024**2, 64 * 1024
    assert 4 * mib <= space.exclusive["s1"] <= 4 * mib + 3 * tables
    assert 1 * mib <= space.exclusive["s2"] <= 1 * mib + 3 * tables
    assert space.total == pytest.approx(space.exclusive["s1"] + space.exclusive["s2"], abs=tables)


def test_tables_that_point_outside_the_file_are_refused(tmp_path: Path) -> None:
    disk = str(tmp_path / "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", disk, "64M")
    qemu_io(disk, "write -P 1 0 1M")
    qemu_img("snapshot", "-c", "s1", disk)
    table = struct.unpack_from(">Q", Path(disk).read_bytes(), 64)[0]
    with open(disk, "r+b") as stream:  # s1's L1 table far past the end of the file
        stream.seek(table)
        stream.write(struct.pack(">QI", 1 << 40, 1))
    with pytest.raises(HeaderError, match="past the end"):
        snapshot_space(disk)
    with open(disk, "r+b") as stream:  # an L1 table of more entries than QEMU allows
        stream.seek(table)
        stream.write(struct.pack(">QI", 0x50000, 0xFFFFFFFF))
    with pytest.raises(HeaderError):
        snapshot_space(disk)


def test_qemu_img_snapshots_a_file_whose_path_has_a_comma(tmp_path: Path) -> None:
    """The image options name the file: a comma in the state directory's path is escaped."""
    directory = tmp_path / "a,b"
    directory.mkdir()
    disk = directory / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(disk), "16M")
    for action in ("create", "apply", "delete"):
        QemuImg().snapshot(action, disk, "x1")
    QemuImg().snapshot("create", disk, "x2")
    assert [s.name for s in read_qcow2_snapshots(str(disk))] == ["x2"]
