"""libvirt domain XML: a Machine rendered with ElementTree, and parsed back into a Machine.

Only the libvirt driver uses this; the rest of the code sees the typed Machine.

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

import functools
import itertools
import xml.etree.ElementTree as ET

from reconciler.model.desired import (
    Accelerator,
    BootDevice,
    CpuMode,
    CpuSpec,
    Firmware,
    Graphics,
    NicModel,
    NicType,
    PortForward,
    PortProtocol,
    WatchdogAction,
    WatchdogSpec,
)
from reconciler.model.machine import MARKER_NAMESPACE, Disk, Machine, Nic, OwnershipMarker

MARKER_PREFIX = "rc"
MARKER_ELEMENT = "instance"
ET.register_namespace(MARKER_PREFIX, MARKER_NAMESPACE)
# libvirt's namespace for QEMU arguments it does not model (port forwards, see _add_nics)
QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NAMESPACE)
# NIC i sits in PCI slot NIC_SLOT_BASE + i, so the guest enumerates them in the manifest's
# order whichever way each is rendered; libvirt gives other devices the low slots
NIC_SLOT_BASE = 0x10
_SOURCE_ATTRIBUTES = {NicType.NETWORK: "network", NicType.BRIDGE: "bridge", NicType.DIRECT: "dev"}
QEMU_NIC_DEVICES = {
    NicModel.VIRTIO: "virtio-net-pci",
    NicModel.E1000: "e1000",
    NicModel.RTL8139: "rtl8139",
}
_NETDEV_PREFIX = "rcnet"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def render_domain_xml(machine: Machine) -> str:
    """The definition to hand to defineXML: the machine, its uuid (when redefining: libvirt
    refuses a new one) and its ownership marker."""
    domain_type = "kvm" if machine.accelerator is Accelerator.KVM else "qemu"
    domain = ET.Element("domain", type=domain_type)
    _sub(domain, "name", machine.name)
    if machine.uuid is not None:
        _sub(domain, "uuid", machine.uuid)
    if machine.marker is not None:
        metadata = _sub(domain, "metadata")
        metadata.append(_marker_element(machine, machine.marker))
    if machine.description is not None:
        _sub(domain, "description", machine.description)
    _sub(domain, "memory", str(machine.max_memory_kib or machine.memory_kib), unit="KiB")
    _sub(domain, "currentMemory", str(machine.memory_kib), unit="KiB")
    vcpu = _sub(domain, "vcpu", str(machine.max_vcpus or machine.vcpus))
    if machine.max_vcpus is not None:
        vcpu.set("current", str(machine.vcpus))
    _add_os(domain, machine)
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _add_cpu(domain, machine.cpu)
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    for disk in machine.disks:
        _add_disk(devices, disk)
    if any(disk.bus == "scsi" for disk in machine.disks):
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    arguments = _add_nics(devices, machine)
    if machine.console_log is not None:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=machine.console_log)
        _sub(serial, "target", port="0")
    if machine.guest_agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    if machine.graphics is Graphics.VNC:
        graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes")
        _sub(graphics, "listen", type="address", address="127.0.0.1")
        video = _sub(devices, "video")
        _sub(video, "model", type="vga")
    # a balloon only where memory may change while the domain runs
    _sub(devices, "memballoon", model="virtio" if machine.max_memory_kib else "none")
    if machine.rng:
        # QEMU's own getrandom(), not a device node: libvirt's private /dev may lack one
        # (in a container or a chroot, /dev/urandom may not be there to copy)
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", model="builtin")
    if machine.watchdog is not None:
        _sub(
            devices,
            "watchdog",
            model=machine.watchdog.model,
            action=machine.watchdog.action.value,
        )
    # pvpanic: a guest kernel panic reaches libvirt, which destroys the domain (on_crash) and
    # reports it shut off as "crashed", a failure for the run policy
    _sub(devices, "panic", model="isa")
    if arguments:
        commandline = _sub(domain, f"{{{QEMU_NAMESPACE}}}commandline")
        for argument in arguments:
            _sub(commandline, f"{{{QEMU_NAMESPACE}}}arg", value=argument)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def render_marker_xml(machine: Machine) -> str:
    """The ownership marker alone, for libvirt's setMetadata (adoption: a definition left as
    it is gets the marker), which takes it without its namespace and adds that itself."""
    assert machine.marker is not None
    element = _marker_element(machine, machine.marker)
    for node in element.iter():
        node.tag = node.tag.rpartition("}")[2]
    return ET.tostring(element, encoding="unicode")


def _marker_element(machine: Machine, owner: OwnershipMarker) -> ET.Element:
    marker = ET.Element(f"{{{MARKER_NAMESPACE}}}{MARKER_ELEMENT}")
    _sub(marker, f"{{{MARKER_NAMESPACE}}}manifest", owner.manifest)
    _sub(marker, f"{{{MARKER_NAMESPACE}}}spec-digest", owner.spec_digest)
    _sub(marker, f"{{{MARKER_NAMESPACE}}}state-dir", owner.state_dir_id or "")
    if owner.instance_id is not None:
        _sub(marker, f"{{{MARKER_NAMESPACE}}}instance-id", owner.instance_id)
    for key, value in owner.labels:
        _sub(marker, f"{{{MARKER_NAMESPACE}}}label", value, key=key)
    for disk in machine.disks:
        if disk.delete_when_removed:  # the manifest's deletionPolicy: delete
            _sub(marker, f"{{{MARKER_NAMESPACE}}}delete-when-removed", disk.path)
    if machine.protected:
        _sub(marker, f"{{{MARKER_NAMESPACE}}}protect", "true")
    if machine.delete_disks:
        _sub(marker, f"{{{MARKER_NAMESPACE}}}deletion-policy", "delete")
    if machine.asked_running is not None:
        asked = "running" if machine.asked_running else "stopped"
        _sub(marker, f"{{{MARKER_NAMESPACE}}}desired-state", asked)
    if machine.shutdown_timeout_seconds is not None:
        timeout = str(machine.shutdown_timeout_seconds)
        _sub(marker, f"{{{MARKER_NAMESPACE}}}shutdown-timeout", timeout)
    return marker


def render_disk_xml(disk: Disk) -> str:
    """One disk device on its own (for a live medium change)."""
    holder = ET.Element("devices")
    _add_disk(holder, disk)
    return ET.tostring(holder[0], encoding="unicode")


def disk_with_source(domain_xml: str, target: str, path: str) -> str:
    """The <disk> element of `domain_xml` with target `target`, its file source replaced by
    `path` and everything else as it was (for updating that one device of a definition);
    DomainXmlError when there is no such file-backed disk."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as err:
        raise DomainXmlError(f"unparsable domain XML: {err}") from err
    for disk in root.iterfind("devices/disk"):
        found = disk.find("target")
        source = disk.find("source")
        if found is not None and found.get("dev") == target:
            if disk.get("type") != "file" or source is None or source.get("file") is None:
                raise DomainXmlError(f"disk {target} is not a file")
            source.set("file", path)
            return ET.tostring(disk, encoding="unicode")
    raise DomainXmlError(f"the domain has no disk {target}")


def _add_os(domain: ET.Element, machine: Machine) -> None:
    """<os>: machine type, firmware (UEFI chosen by libvirt among the firmware descriptors,
    without secure boot) and the boot order."""
    os_element = _sub(domain, "os")
    if machine.firmware is Firmware.UEFI:
        os_element.set("firmware", "efi")
    _sub(os_element, "type", "hvm", arch="x86_64", machine=machine.machine_type)
    if machine.firmware is Firmware.UEFI:
        firmware = _sub(os_element, "firmware")
        _sub(firmware, "feature", enabled="no", name="secure-boot")
        _sub(firmware, "feature", enabled="no", name="enrolled-keys")
        if machine.nvram is not None:
            _sub(os_element, "nvram", machine.nvram)
    for device in machine.boot:
        _sub(os_element, "boot", dev=device.value)


def _add_disk(devices: ET.Element, disk: Disk) -> None:
    element = _sub(devices, "disk", type="file", device=disk.device)
    driver = {"name": "qemu", "type": disk.format}
    if disk.device == "disk":
        driver["discard"] = "unmap"
    _sub(element, "driver", **driver)
    _sub(element, "source", file=disk.path)
    _sub(element, "target", dev=disk.target, bus=disk.bus)
    if disk.read_only:
        _sub(element, "readonly")


def _add_nics(devices: ET.Element, machine: Machine) -> list[str]:
    """Each NIC as an <interface>, except user-mode ones with port forwards: those are QEMU
    arguments (returned), a -netdev user with hostfwd rules and its -device.

    libvirt models port forwards only for its passt backend, which the libvirt 9.0 of
    Debian 12 refuses for user-mode interfaces; QEMU's own hostfwd works with every libvirt
    and QEMU, so forwards are given to QEMU directly (libvirt marks such a domain "tainted:
    custom-argv", which changes nothing else)."""
    arguments: list[str] = []
    bus = "pcie.0" if machine.machine_type == "q35" else "pci.0"
    for index, nic in enumerate(machine.nics):
        slot = NIC_SLOT_BASE + index
        if nic.type is NicType.USER and nic.ports:
            netdev = f"{_NETDEV_PREFIX}{index}"
            rules = "".join(f",hostfwd={hostfwd_rule(port)}" for port in nic.ports)
            device = QEMU_NIC_DEVICES[nic.model]
            arguments += ["-netdev", f"user,id={netdev}{rules}"]
            arguments += [
                "-device",
                f"{device},netdev={netdev},mac={nic.mac},bus={bus},addr={slot:#x}",
            ]
            continue
        _add_interface(devices, nic, slot)
    return arguments


def _add_interface(devices: ET.Element, nic: Nic, slot: int) -> None:
    element = _sub(devices, "interface", type=nic.type.value)
    _sub(element, "mac", address=nic.mac)
    if nic.source is not None and nic.type in _SOURCE_ATTRIBUTES:
        source = {_SOURCE_ATTRIBUTES[nic.type]: nic.source}
        if nic.type is NicType.DIRECT:
            source["mode"] = "bridge"
        _sub(element, "source", **source)
    _sub(element, "model", type=nic.model.value)
    slot_text = f"{slot:#04x}"
    _sub(
        element, "address", type="pci", domain="0x0000", bus="0x00", slot=slot_text, function="0x0"
    )


def render_interface_xml(nic: Nic, index: int) -> str:
    """NIC `index` on its own, as an <interface> (for a live attach or detach)."""
    holder = ET.Element("devices")
    _add_interface(holder, nic, NIC_SLOT_BASE + index)
    return ET.tostring(holder[0], encoding="unicode")


def hostfwd_rule(port: PortForward) -> str:
    """QEMU's hostfwd= rule for one port forward (both drivers pass it to -netdev user)."""
    guest = port.guest_address or ""
    return f"{port.protocol.value}:{port.address}:{port.host}-{guest}:{port.guest}"


def _add_cpu(domain: ET.Element, cpu: CpuSpec) -> None:
    """DEFAULT adds nothing: QEMU's default model starts under both TCG and KVM."""
    if cpu.mode is CpuMode.DEFAULT:
        return
    if cpu.mode is CpuMode.CUSTOM:
        element = _sub(domain, "cpu", mode="custom", match="exact", check="none")
        _sub(element, "model", cpu.model or "qemu64", fallback="forbid")
        return
    _sub(domain, "cpu", mode=cpu.mode.value)


PARSED_XML_CACHE = 8192  # texts: more than the domains of one host, two texts each


class DomainXmlError(Exception):
    """The XML libvirt returned is not a domain definition we can read."""


class _Children:
    """An element's children by tag, in document order: one walk, then dictionary lookups (a
    find with a path or a namespace goes through ElementPath's machinery every time, and a
    domain's XML is read at every pass)."""

    __slots__ = ("_by_tag",)

    def __init__(self, element: ET.Element | None) -> None:
        by_tag: dict[str, list[ET.Element]] = {}
        if element is not None:
            for child in element:
                by_tag.setdefault(child.tag, []).append(child)
        self._by_tag = by_tag

    def first(self, tag: str) -> ET.Element | None:
        found = self._by_tag.get(tag)
        return found[0] if found else None

    def all(self, tag: str) -> list[ET.Element]:
        return self._by_tag.get(tag, [])

    def text(self, tag: str) -> str | None:
        """As findtext: None when there is no such child, "" when it has no text."""
        element = self.first(tag)
        return None if element is None else element.text or ""


def _ns(tag: str) -> str:
    return f"{{{MARKER_NAMESPACE}}}{tag}"


@functools.lru_cache(maxsize=PARSED_XML_CACHE)
def parse_domain_xml(xml: str) -> Machine:
    """The machine a domain's XML describes: identity, shape, disks and our marker (if any).
    What the Machine type does not model is ignored. Kept per text (a Machine is immutable):
    a pass, a resync and every poll of a start read the same XML again, and parsing it is
    most of what observing a domain costs."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise DomainXmlError(f"unreadable domain XML: {err}") from err
    if root.tag != "domain":
        raise DomainXmlError(f"expected <domain>, got <{root.tag}>")
    top = _Children(root)
    devices = _Children(top.first("devices"))
    marker = _Children(_Children(top.first("metadata")).first(_ns(MARKER_ELEMENT)))
    maximum_kib = _memory_kib(top.first("memory"))
    memory_kib = _memory_kib(top.first("currentMemory")) or maximum_kib
    vcpu = top.first("vcpu")
    maximum_vcpus = int(vcpu.text or 0) if vcpu is not None else 0
    vcpus = int(vcpu.get("current", maximum_vcpus)) if vcpu is not None else 0
    deletable = {element.text for element in marker.all(_ns("delete-when-removed"))}
    disks = []
    for disk in devices.all("disk"):
        target = disk.find("target")
        source = disk.find("source")
        driver = disk.find("driver")
        if target is None:
            continue
        path = "" if source is None else source.get("file") or source.get("dev") or ""
        disks.append(
            Disk(
                target=target.get("dev", ""),
                path=path,
                format="" if driver is None else driver.get("type", ""),
                bus=target.get("bus", ""),
                device=disk.get("device", "disk"),
                read_only=disk.find("readonly") is not None,
                delete_when_removed=path in deletable,
            )
        )
    serial_source = next(
        (
            source
            for serial in devices.all("serial")
            if serial.get("type") == "file" and (source := serial.find("source")) is not None
        ),
        None,
    )
    os_element = top.first("os")
    os_children = _Children(os_element)
    os_type = os_children.first("type")
    uefi = os_element is not None and (
        os_element.get("firmware") == "efi" or os_children.first("loader") is not None
    )
    boot = tuple(
        BootDevice(b.get("dev", "")) for b in os_children.all("boot") if b.get("dev") in _BOOT
    )
    graphics = devices.first("graphics")
    return Machine(
        name=top.text("name") or "",
        accelerator=_ACCELERATORS.get(root.get("type", "")),
        vcpus=vcpus,
        memory_kib=memory_kib,
        max_vcpus=maximum_vcpus if maximum_vcpus != vcpus else None,
        max_memory_kib=maximum_kib if maximum_kib != memory_kib else None,
        firmware=Firmware.UEFI if uefi else Firmware.BIOS,
        nvram=(os_children.text("nvram") or None) if uefi else None,
        boot=boot or (BootDevice.HD,),
        description=top.text("description"),
        graphics=Graphics.VNC
        if graphics is not None and graphics.get("type") == "vnc"
        else (Graphics.NONE),
        rng=devices.first("rng") is not None,
        watchdog=_parse_watchdog(devices.first("watchdog")),
        guest_agent=any(
            target.get("name") == GUEST_AGENT_CHANNEL
            for channel in devices.all("channel")
            for target in channel.findall("target")
        ),
        cpu=_parse_cpu(top.first("cpu")),
        machine_type=_machine_type(os_type.get("machine", "") if os_type is not None else ""),
        disks=tuple(disks),
        nics=_parse_nics(devices, top),
        console_log=None if serial_source is None else serial_source.get("path"),
        uuid=top.text("uuid") or None,
        marker=_parse_marker(marker),
        protected=marker.text(_ns("protect")) == "true",
        delete_disks=marker.text(_ns("deletion-policy")) == "delete",
        asked_running=_asked_running(marker.text(_ns("desired-state"))),
        shutdown_timeout_seconds=_int_or_none(marker.text(_ns("shutdown-timeout"))),
    )


_ACCELERATORS = {"kvm": Accelerator.KVM, "qemu": Accelerator.TCG}
_BOOT = {device.value for device in BootDevice}


def _parse_watchdog(element: ET.Element | None) -> WatchdogSpec | None:
    """A watchdog device of a model and action the schema knows (any other: none)."""
    if element is None:
        return None
    try:
        action = WatchdogAction(element.get("action", "reset"))
    except ValueError:
        return None
    return WatchdogSpec(action, element.get("model", "i6300esb"))


def _memory_kib(element: ET.Element | None) -> int:
    return 0 if element is None else _to_kib(int(element.text or 0), element.get("unit", "KiB"))


def _parse_nics(devices: _Children, top: _Children) -> tuple[Nic, ...]:
    """The NICs of a definition: its <interface> elements and the user-mode ones given to QEMU
    as arguments, in PCI slot order (document order where there is no slot)."""
    found: list[tuple[int, Nic]] = []
    for position, element in enumerate(devices.all("interface")):
        nic = _parse_interface(element)
        if nic is not None:
            found.append((_slot(element.find("address"), 1000 + position), nic))
    arguments = [
        arg.get("value", "")
        for commandline in top.all(f"{{{QEMU_NAMESPACE}}}commandline")
        for arg in commandline
        if arg.tag == f"{{{QEMU_NAMESPACE}}}arg"
    ]
    netdevs: dict[str, tuple[PortForward, ...]] = {}
    qemu_devices: list[dict[str, str]] = []
    for option, value in itertools.pairwise(arguments):
        if option == "-netdev" and value.startswith("user,"):
            fields = value.split(",")
            ident = next((f[3:] for f in fields if f.startswith("id=")), "")
            netdevs[ident] = tuple(
                port for f in fields if f.startswith("hostfwd=") and (port := _parse_hostfwd(f[8:]))
            )
        elif option == "-device":
            head, *rest = value.split(",")
            qemu_devices.append({"driver": head, **dict(f.split("=", 1) for f in rest if "=" in f)})
    models = {device: model for model, device in QEMU_NIC_DEVICES.items()}
    for device in qemu_devices:
        netdev = device.get("netdev")
        if netdev not in netdevs or device["driver"] not in models:
            continue
        nic = Nic(
            NicType.USER, device.get("mac", ""), models[device["driver"]], None, netdevs[netdev]
        )
        found.append((_int(device.get("addr", ""), 2000), nic))
    return tuple(nic for _, nic in sorted(found, key=lambda pair: pair[0]))


def _parse_interface(element: ET.Element) -> Nic | None:
    try:
        kind = NicType(element.get("type", ""))
    except ValueError:
        return None  # an interface type the Machine does not model
    source = element.find("source")
    attribute = _SOURCE_ATTRIBUTES.get(kind)
    mac = element.find("mac")
    model = element.find("model")
    try:
        nic_model = NicModel(model.get("type", "") if model is not None else "")
    except ValueError:
        nic_model = NicModel.RTL8139 if model is None else NicModel.VIRTIO
    return Nic(
        type=kind,
        mac="" if mac is None else mac.get("address", "").lower(),
        model=nic_model,
        source=None if source is None or attribute is None else source.get(attribute),
    )


def _parse_hostfwd(rule: str) -> PortForward | None:
    """tcp:127.0.0.1:2222-:22 (or -10.0.2.50:22) as a PortForward (None when it is not in
    that form)."""
    host_part, _, guest_part = rule.partition("-")
    protocol, _, rest = host_part.partition(":")
    address, _, host_port = rest.rpartition(":")
    guest_address, _, guest_port = guest_part.rpartition(":")
    try:
        return PortForward(
            int(host_port), int(guest_port), PortProtocol(protocol), address, guest_address or None
        )
    except ValueError:
        return None


def _slot(address: ET.Element | None, default: int) -> int:
    if address is None or address.get("type") != "pci":
        return default
    return _int(address.get("slot", ""), default)


def _asked_running(text: str | None) -> bool | None:
    return {"running": True, "stopped": False}.get(text or "")


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _int(text: str, default: int) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return default


def _machine_type(reported: str) -> str:
    """libvirt expands an alias (pc -> pc-i440fx-7.2); the family is what a manifest names."""
    for family, prefix in (("pc", "pc-i440fx-"), ("q35", "pc-q35-")):
        if reported == family or reported.startswith(prefix):
            return family
    return reported


def _parse_cpu(element: ET.Element | None) -> CpuSpec:
    if element is None:
        return CpuSpec()
    mode = element.get("mode", "custom")
    if mode == "custom":
        return CpuSpec(CpuMode.CUSTOM, element.findtext("model") or None)
    try:
        return CpuSpec(CpuMode(mode))
    except ValueError:
        return CpuSpec(CpuMode.CUSTOM, mode)


def _parse_marker(marker: _Children) -> OwnershipMarker | None:
    digest = marker.text(_ns("spec-digest"))
    manifest = marker.text(_ns("manifest"))
    if not digest or manifest is None:
        return None
    state_dir_id = marker.text(_ns("state-dir")) or None
    instance_id = marker.text(_ns("instance-id")) or None
    labels = tuple(
        (element.get("key") or "", element.text or "") for element in marker.all(_ns("label"))
    )
    return OwnershipMarker(manifest, digest, state_dir_id, instance_id, labels)


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
