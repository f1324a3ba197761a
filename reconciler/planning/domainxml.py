"""Domain XML: built from an InstanceSpec with ElementTree, and parsed back into facts. Pure.

The ownership marker lives in <metadata> in the project's own namespace:

    <metadata>
      <rc:instance xmlns:rc="urn:x-reconciler:instance:1">
        <rc:manifest>manifests/web.yaml</rc:manifest>
        <rc:spec-digest>sha256:...</rc:spec-digest>
        <rc:state-dir>9f86d081884c7d659a2feaa0c55ad015</rc:state-dir>
      </rc:instance>
    </metadata>
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from reconciler.model.actual import DomainDefinition, OwnershipMarker
from reconciler.model.desired import Accelerator, CpuMode, InstanceSpec

MARKER_NAMESPACE = "urn:x-reconciler:instance:1"
MARKER_PREFIX = "rc"
MARKER_ELEMENT = "instance"
BOOT_DISK_TARGET = "vda"
ET.register_namespace(MARKER_PREFIX, MARKER_NAMESPACE)


@dataclass(frozen=True, slots=True)
class DomainLayout:
    """Where an instance's files are and how it runs: the inputs to its XML beside the spec."""

    disk_path: str
    console_log_path: str
    accelerator: Accelerator  # resolved: KVM or TCG


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def build_domain_element(spec: InstanceSpec, layout: DomainLayout) -> ET.Element:
    """The domain definition without uuid and marker: what the spec digest covers."""
    domain_type = "kvm" if layout.accelerator is Accelerator.KVM else "qemu"
    domain = ET.Element("domain", type=domain_type)
    _sub(domain, "name", spec.name)
    _sub(domain, "memory", str(spec.memory_bytes // 1024), unit="KiB")
    _sub(domain, "vcpu", str(spec.vcpus))
    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_element, "boot", dev="hd")
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _add_cpu(domain, spec)
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    _sub(disk, "source", file=layout.disk_path)
    _sub(disk, "target", dev=BOOT_DISK_TARGET, bus="virtio")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=layout.console_log_path)
    _sub(serial, "target", port="0")
    _sub(devices, "memballoon", model="none")
    return domain


def _add_cpu(domain: ET.Element, spec: InstanceSpec) -> None:
    """DEFAULT adds nothing: QEMU's default model starts under both TCG and KVM."""
    if spec.cpu.mode is CpuMode.DEFAULT:
        return
    if spec.cpu.mode is CpuMode.CUSTOM:
        cpu = _sub(domain, "cpu", mode="custom", match="exact", check="none")
        _sub(cpu, "model", spec.cpu.model or "qemu64", fallback="forbid")
        return
    _sub(domain, "cpu", mode=spec.cpu.mode.value)


def spec_digest(spec: InstanceSpec, layout: DomainLayout) -> str:
    """A digest of everything the domain definition is built from."""
    canonical = ET.tostring(build_domain_element(spec, layout), encoding="unicode")
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def build_domain_xml(
    spec: InstanceSpec, layout: DomainLayout, uuid: str | None, state_dir_id: str
) -> str:
    """The complete definition to hand to defineXML, with ownership marker and digest.

    `uuid` is the existing domain's when redefining (libvirt refuses a new one);
    `state_dir_id` is the id of the state directory that owns the domain.
    """
    digest = spec_digest(spec, layout)
    domain = build_domain_element(spec, layout)
    position = 1
    if uuid is not None:
        uuid_element = ET.Element("uuid")
        uuid_element.text = uuid
        domain.insert(position, uuid_element)
        position += 1
    metadata = ET.Element("metadata")
    marker = _sub(metadata, f"{{{MARKER_NAMESPACE}}}{MARKER_ELEMENT}")
    _sub(marker, f"{{{MARKER_NAMESPACE}}}manifest", str(spec.manifest))
    _sub(marker, f"{{{MARKER_NAMESPACE}}}spec-digest", digest)
    _sub(marker, f"{{{MARKER_NAMESPACE}}}state-dir", state_dir_id)
    domain.insert(position, metadata)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


class DomainXmlError(Exception):
    """The XML libvirt returned is not a domain definition we can read."""


def parse_domain_xml(xml: str) -> DomainDefinition:
    """Facts from a domain's XML: identity, size, disks and our marker (if any)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise DomainXmlError(f"unreadable domain XML: {err}") from err
    if root.tag != "domain":
        raise DomainXmlError(f"expected <domain>, got <{root.tag}>")
    memory = root.find("memory")
    memory_kib = (
        _to_kib(int(memory.text or 0), memory.get("unit", "KiB")) if memory is not None else 0
    )
    disks = []
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        if target is None:
            continue
        path = "" if source is None else source.get("file") or source.get("dev") or ""
        disks.append((target.get("dev", ""), path))
    return DomainDefinition(
        name=root.findtext("name", ""),
        uuid=root.findtext("uuid", ""),
        domain_type=root.get("type", ""),
        vcpus=int(root.findtext("vcpu", "0") or 0),
        memory_kib=memory_kib,
        disk_paths=tuple(disks),
        marker=_parse_marker(root),
    )


def _parse_marker(root: ET.Element) -> OwnershipMarker | None:
    element = root.find(f"metadata/{{{MARKER_NAMESPACE}}}{MARKER_ELEMENT}")
    if element is None:
        return None
    digest = element.findtext(f"{{{MARKER_NAMESPACE}}}spec-digest")
    manifest = element.findtext(f"{{{MARKER_NAMESPACE}}}manifest")
    if not digest or manifest is None:
        return None
    state_dir_id = element.findtext(f"{{{MARKER_NAMESPACE}}}state-dir") or None
    return OwnershipMarker(manifest=manifest, spec_digest=digest, state_dir_id=state_dir_id)


_KIB_PER_UNIT = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "k": 1,
    "kib": 1,
    "kb": 1000 / 1024,
    "m": 1024,
    "mib": 1024,
    "mb": 1000**2 / 1024,
    "g": 1024**2,
    "gib": 1024**2,
    "gb": 1000**3 / 1024,
}


def _to_kib(value: int, unit: str) -> int:
    return int(value * _KIB_PER_UNIT.get(unit.lower(), 1))
