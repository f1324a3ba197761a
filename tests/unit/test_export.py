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
