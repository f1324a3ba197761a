"""Export and adopt on domains the test defines through libvirt directly."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.e2e.conftest import E2E, CliRun
from tests.helpers import unique_name, write_manifest

Reconcile = Callable[..., CliRun]

HAND_MADE = """\
<domain type='qemu'>
  <name>{name}</name>
  <title>made by hand</title>
  <memory unit='KiB'>131072</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{data}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>
  </devices>
</domain>
"""


def test_export_writes_what_the_schema_can_express_and_comments_the_rest(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcx")
    disk, data = tmp_path / "boot.qcow2", tmp_path / "data.raw"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(e2e.base), "-F", "raw",
         str(disk), "96M"],
        check=True,
    )  # fmt: skip
    data.write_bytes(b"\0" * 1024 * 1024)
    e2e.driver.define_xml(HAND_MADE.format(name=name, disk=disk, data=data))
    try:
        exported = reconcile("export", name)
        assert exported.code == 0, exported.out + exported.err
        text = exported.out
        assert text.startswith("# yaml-language-server: $schema=")
        document = yaml.safe_load(text)
        spec = document["spec"]
        assert document["metadata"] == {"name": name}
        assert (spec["state"], spec["vcpus"], spec["memory"]) == ("stopped", 2, "128MiB")
        assert spec["machine"] == "q35"
        assert spec["image"] == {"source": str(e2e.base), "format": "raw"}
        assert spec["disk"] == {"size": "96MiB"}
        assert spec["networks"] == [{"type": "user", "model": "virtio", "mac": "52:54:00:12:34:56"}]
        assert re.search(rf"#   - disk vdb \(virtio\) at {data}: data disks are made", text)
        assert f"#   - the boot disk is {disk}; the reconciler keeps" in text
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / f"{name}.yaml").write_text(text)
        valid = reconcile("validate", str(tmp_path / "m"))
        assert valid.code == 0, valid.out  # what export writes, validate accepts
        assert reconcile("export", "rcx-no-such-domain").code == 2
    finally:
        e2e.driver.undefine(name)


def strip_marker(e2e: E2E, name: str) -> None:
    """Redefine the domain through libvirt directly, without the reconciler's marker and
    with a title the reconciler does not manage."""
    root = ET.fromstring(e2e.driver.xml(name))
    metadata = root.find("metadata")
    assert metadata is not None
    root.remove(metadata)
    ET.SubElement(root, "title").text = "kept by adoption"
    e2e.driver.define_xml(ET.tostring(root, encoding="unicode"))


def test_adopt_marks_a_matching_domain_and_refuses_one_that_differs(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcy")
    write_manifest(tmp_path, name, e2e.base, e2e.sha256, state="stopped")
    assert reconcile("--once", str(tmp_path)).code == 0
    strip_marker(e2e, name)
    refused = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert refused.code == 1 and "no ownership marker" in refused.out  # not ours any more

    # the manifest asks for other memory: not adopted, and it says what differs
    write_manifest(tmp_path, name, e2e.base, e2e.sha256, state="stopped", memory="96MiB")
    differs = reconcile("adopt", name, str(tmp_path))
    assert differs.code == 1
    assert "differs from its manifest, not adopted" in differs.out
    assert "memory 64MiB -> 96MiB" in differs.out
    record = e2e.driver.lookup(name)
    assert record is not None and record.definition is not None
    assert record.definition.marker is None

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, state="stopped")
    checked = reconcile("adopt", name, str(tmp_path), "--dry-run")
    assert checked.code == 0 and "matches its manifest" in checked.out
    assert e2e.driver.lookup(name).definition.marker is None
    adopted = reconcile("adopt", name, str(tmp_path))
    assert adopted.code == 0, adopted.out + adopted.err
    assert f"{name}: adopted" in adopted.out
    assert "<title>kept by adoption</title>" in e2e.driver.xml(name)  # the rest left as it was
    settled = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert settled.code == 0, settled.out  # managed, and nothing to change

    again = reconcile("adopt", name, str(tmp_path))
    assert again.code == 1 and "already managed by this state directory" in again.out
    missing = reconcile("adopt", "rcy-no-manifest", str(tmp_path))
    assert missing.code == 2 and "no valid manifest" in missing.err
