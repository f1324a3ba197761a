"""Drift on real libvirt: a managed domain edited behind the reconciler's back (its marker
left as it was) is found field by field by the next plan and brought back by the next pass."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from reconciler.model.actual import PowerState
from tests.e2e.conftest import E2E, CliRun
from tests.helpers import unique_name, write_manifest

Reconcile = Callable[..., CliRun]


def test_memory_edited_and_config_drive_removed_by_hand_are_reported_and_restored(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcd")
    write_manifest(tmp_path, name, e2e.base, e2e.sha256, hostname="drifting")
    assert reconcile("--once", str(tmp_path)).code == 0
    record = e2e.driver.lookup(name)
    assert record is not None and record.definition is not None
    drive = record.definition.config_drive_path
    assert drive is not None

    # libvirt directly: 96MiB instead of 64MiB, and the CD-ROM gone from the definition
    xml = e2e.driver.xml(name)
    root = ET.fromstring(xml)
    for element in ("memory", "currentMemory"):
        found = root.find(element)
        assert found is not None
        found.text, found.attrib = "98304", {"unit": "KiB"}
    devices = root.find("devices")
    assert devices is not None
    for disk in devices.findall("disk"):
        if disk.get("device") == "cdrom":
            devices.remove(disk)
    e2e.driver.define_xml(ET.tostring(root, encoding="unicode"))

    plan = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert plan.code == 2, plan.out
    assert "drift: memory 96MiB (manifest 64MiB)" in plan.out
    assert re.search(r"drift: config drive none -> config-[0-9a-f]+\.iso", plan.out), plan.out
    restored = reconcile("--once", str(tmp_path))
    assert restored.code == 0, restored.out + restored.err
    record = e2e.driver.lookup(name)
    assert record is not None and record.definition is not None
    assert record.definition.memory_kib == 64 * 1024
    assert record.definition.config_drive_path == drive
    assert record.state is PowerState.RUNNING  # the running domain never took the edit
    assert reconcile("plan", "--detailed-exitcode", str(tmp_path)).code == 0


def test_a_domain_undefined_by_hand_is_recreated_on_its_existing_disk(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcd")
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)
    assert reconcile("--once", str(tmp_path)).code == 0
    record = e2e.driver.lookup(name)
    assert record is not None
    disk = e2e.state.instance(name).disk
    inode = disk.stat().st_ino
    e2e.driver.force_stop(name)
    e2e.driver.undefine(name)
    assert e2e.state_of(name) is None

    plan = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert plan.code == 2, plan.out
    assert "a domain undefined by hand" in plan.out
    restored = reconcile("--once", str(tmp_path))
    assert restored.code == 0, restored.out + restored.err
    assert "created disk" not in restored.out
    assert disk.stat().st_ino == inode  # the same disk, not a new one
    again = e2e.driver.lookup(name)
    assert again is not None and again.state is PowerState.RUNNING
    assert again.uuid == record.uuid  # derived from the state directory and the name
