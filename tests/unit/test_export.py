"""`reconcile export`: the manifest written from a domain's definition. Pure."""

from __future__ import annotations

import yaml

from reconciler.manifests.export import ExportFacts, export_manifest
from reconciler.model.desired import Accelerator, CpuMode, CpuSpec
from reconciler.model.machine import LIBVIRT_DEFAULT_CPU, Disk, Machine

FACTS = ExportFacts(
    running=True,
    autostart=None,
    image_source="/srv/images/base.qcow2",
    image_format="qcow2",
    disk_bytes=1024**3,
    instance_disk="/var/lib/reconciler/instances/web/disk.qcow2",
)


def spec_of(machine: Machine) -> dict[str, object]:
    document = yaml.safe_load(export_manifest(machine, FACTS))
    spec: dict[str, object] = document["spec"]
    return spec


def test_the_cpu_libvirt_writes_for_a_definition_that_named_none_is_not_exported() -> None:
    disk = (Disk("vda", "/var/lib/reconciler/instances/web/disk.qcow2", "qcow2"),)
    machine = Machine("web", Accelerator.TCG, 1, 65536, cpu=LIBVIRT_DEFAULT_CPU, disks=disk)
    assert "cpu" not in spec_of(machine)  # the domain never asked for one
    named = Machine("web", Accelerator.TCG, 1, 65536, cpu=CpuSpec(CpuMode.CUSTOM, "Skylake-Client"))
    assert spec_of(named)["cpu"] == {"mode": "custom", "model": "Skylake-Client"}


def test_a_base_from_the_image_cache_is_exported_by_its_digest_not_its_cache_path() -> None:
    digest = "ab" * 32
    entry = f"/var/lib/reconciler/images/sha256-{digest}.raw"
    disk = (Disk("vda", "/var/lib/reconciler/instances/web/disk.qcow2", "qcow2"),)
    machine = Machine("web", Accelerator.TCG, 1, 65536, disks=disk)
    facts = ExportFacts(
        running=False, autostart=None, image_source=entry, image_format="raw",
        disk_bytes=1024**3, instance_disk=disk[0].path, image_sha256=digest, cached=True,
    )  # fmt: skip
    text = export_manifest(machine, facts)
    image = yaml.safe_load(text)["spec"]["image"]
    assert image["sha256"] == digest and image["format"] == "raw"
    assert image["source"].startswith("FILL-IN: where the image comes from")
    assert f"the base is the image cache's entry sha256-{digest}.raw" in text
    assert "no sha256 for the base image" not in text
    remembered = ExportFacts(
        running=False, autostart=None, image_source="/srv/images/base.raw", image_format="raw",
        disk_bytes=1024**3, instance_disk=disk[0].path, image_sha256=digest,
    )  # fmt: skip
    image = yaml.safe_load(export_manifest(machine, remembered))["spec"]["image"]
    assert image == {"source": "/srv/images/base.raw", "format": "raw", "sha256": digest}
