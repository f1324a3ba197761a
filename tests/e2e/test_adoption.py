"""Export and adopt on domains the test defines through libvirt directly."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
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


# a domain as virt-install makes one: pty serial console, VNC, video, balloon, RNG, a title
VIRT_INSTALL_LIKE = """\
<domain type='qemu'>
  <name>{name}</name>
  <title>made by hand</title>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><mac address='{mac}'/><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>
    <video><model type='virtio'/></video>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""


def hand_made_disk(e2e: E2E, base: Path) -> Path:
    """An overlay of `base` outside the state directory, on its file system (adoption moves
    a disk by renaming it), holding 64 KiB of the guest's data at 1 MiB."""
    directory = Path(tempfile.mkdtemp(prefix="rca-disks-", dir=e2e.state.root.parent))
    disk = directory / "boot.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk), "96M"],
        check=True,
    )
    qemu_io(disk, "write -P 0xab 1M 64k")
    return disk


def qemu_io(disk: Path, command: str) -> str:
    done = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(disk)], capture_output=True, text=True
    )
    assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, done
    return done.stdout


def test_export_then_adopt_takes_over_a_hand_made_domain_and_its_disk(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    """The round trip: export, adopt --dry-run (nothing changes), adopt (the disk moves into
    the instance directory onto the cached base, its data kept), then an ordinary pass."""
    name = unique_name("rcr")
    # the manifest's image: bytes of its own, so that the cache has no copy yet whatever ran
    # before (adopting fetches it first: the plan of a shut-off domain fetches nothing)
    data = bytearray(e2e.base.read_bytes())
    data[-16:] = os.urandom(16)
    image = e2e.base.parent / f"{name}.raw"
    image.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    # the base as the user keeps it: the same bytes as the manifest's image, another path
    own_base = tmp_path / "debian.raw"
    own_base.write_bytes(data)
    disk = hand_made_disk(e2e, own_base)
    e2e.driver.define_xml(VIRT_INSTALL_LIKE.format(name=name, disk=disk, mac="52:54:00:a1:b2:c3"))
    manifests = tmp_path / "m"
    manifests.mkdir()
    try:
        exported = reconcile("export", name)
        assert exported.code == 0, exported.err
        document = yaml.safe_load(exported.out)
        assert "cpu" not in document["spec"]  # libvirt's default CPU is not asked for
        # the user names the image as the allowed directories have it (export said the path
        # it found; the note says what adopting does with the disk)
        assert document["spec"]["image"] == {"source": str(own_base), "format": "raw"}
        assert f"the boot disk is {disk}" in exported.out
        document["spec"]["image"] = {"source": str(image), "format": "raw"}
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump(document))
        assert reconcile("validate", str(manifests)).code == 0

        checked = reconcile("adopt", name, str(manifests), "--dry-run")
        assert checked.code == 0, checked.out + checked.err
        target = e2e.state.instance(name).disk
        assert f"{name}: matches its manifest" in checked.out
        assert f"to do: move boot disk {disk} to {target}" in checked.out
        assert "to do: fetch the base image into the cache" in checked.out
        assert f"to do: point it at the cached copy {e2e.state.images}" in checked.out
        assert f"of its base {own_base}" in checked.out
        assert "next pass: redefine the domain: [restart] serial console none ->" in checked.out
        assert disk.exists() and not target.exists()  # a dry run changes nothing
        assert e2e.driver.lookup(name).definition.marker is None

        adopted = reconcile("adopt", name, str(manifests))
        assert adopted.code == 0, adopted.out + adopted.err
        assert f"{name}: adopted: managed by this state directory" in adopted.out
        assert f"done: move boot disk {disk} to {target}" in adopted.out
        cached = e2e.state.images / f"sha256-{sha256}.raw"
        assert "done: fetch the base image into the cache" in adopted.out and cached.is_file()
        assert not disk.exists() and target.is_file()
        definition = e2e.driver.lookup(name).definition
        assert definition.boot_disk_path == str(target) and definition.marker is not None
        assert "<title>made by hand</title>" in e2e.driver.xml(name)  # the rest as it was
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", "-f", "qcow2", str(target)],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        assert info["backing-filename"] == str(cached)
        qemu_io(target, "read -P 0xab 1M 64k")  # the guest's data is still there

        # an ordinary pass takes it from there: the console log, then nothing to do
        pending = reconcile("plan", "--detailed-exitcode", str(manifests))
        assert pending.code == 2 and "serial console none ->" in pending.out, pending.out
        assert reconcile("--once", str(manifests)).code == 0
        settled = reconcile("plan", "--detailed-exitcode", str(manifests))
        assert settled.code == 0, settled.out
    finally:
        e2e.driver.undefine(name)


def test_adopt_leaves_a_disk_it_cannot_take_over_as_it_is_and_says_why(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rcr")
    other_base = tmp_path / "other.raw"
    other_base.write_bytes(b"\x01" * len(e2e.base.read_bytes()))
    disk = hand_made_disk(e2e, other_base)
    e2e.driver.define_xml(VIRT_INSTALL_LIKE.format(name=name, disk=disk, mac="52:54:00:a1:b2:c4"))
    (tmp_path / "m").mkdir()
    write_manifest(tmp_path / "m", name, e2e.base, e2e.sha256, state="stopped", memory="128MiB")
    target = e2e.state.instance(name).disk
    try:
        # another base under it: taking it over would change what the guest reads
        refused = reconcile("adopt", name, str(tmp_path / "m"))
        assert refused.code == 1
        assert f"its boot disk {disk} is based on {other_base}" in refused.out
        assert "not on the manifest's image" in refused.out
        assert disk.exists() and not target.exists()

        # a running domain's disk is never moved
        subprocess.run(
            ["qemu-img", "rebase", "-u", "-F", "raw", "-b", str(e2e.base), str(disk)], check=True
        )
        e2e.driver.start(name)
        running = reconcile("adopt", name, str(tmp_path / "m"), "--dry-run")
        assert running.code == 1 and "shut the domain down first" in running.out
        e2e.driver.force_stop(name)

        # a definition edited to name a symlink: only a disk file itself is ever moved
        link = disk.with_name("link.qcow2")
        link.symlink_to(disk)
        e2e.driver.repoint_boot_disk(name, str(link))
        linked = reconcile("adopt", name, str(tmp_path / "m"))
        assert linked.code == 1 and f"its boot disk {link} is not a regular file" in linked.out
        assert link.is_symlink() and disk.exists() and not target.exists()
        e2e.driver.repoint_boot_disk(name, str(disk))

        # a disk of the state directory (another instance's) is never taken over
        inside = e2e.state.instance(f"{name}-other").directory
        inside.mkdir(parents=True)
        os.rename(disk, inside / "disk.qcow2")
        e2e.driver.repoint_boot_disk(name, str(inside / "disk.qcow2"))
        stolen = reconcile("adopt", name, str(tmp_path / "m"))
        assert stolen.code == 1 and "is a file of the state directory" in stolen.out
        assert (inside / "disk.qcow2").exists() and not target.exists()
        assert e2e.driver.lookup(name).definition.marker is None
    finally:
        e2e.driver.undefine(name)
        shutil.rmtree(e2e.state.instance(f"{name}-other").directory, ignore_errors=True)
