"""From an instance spec to the machine that runs it, and the differences between two
machines, each in words with its class: live, restart or replace. Pure."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from reconciler.model.desired import (
    Accelerator,
    CpuSpec,
    DeletionPolicy,
    DesiredState,
    Firmware,
    InstanceSpec,
)
from reconciler.model.machine import (
    BOOT_DISK_TARGET,
    CONFIG_DRIVE_TARGET,
    LIBVIRT_DEFAULT_CPU,
    Disk,
    Machine,
    Nic,
    config_drive_disk,
)
from reconciler.sizes import format_size


class ChangeClass(enum.StrEnum):
    """How a change reaches a domain."""

    LIVE = "live"  # applied to the running domain and its definition at once
    RESTART = "restart"  # the new definition takes effect at the next start
    REPLACE = "replace"  # a new boot disk: the guest's disk contents are lost


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: `what` in words ("memory 1GiB -> 2GiB"); `field`, `found` and `wanted`
    when it is one field's value (so that drift can say "drift: memory 2GiB (manifest 1GiB)")."""

    what: str
    kind: ChangeClass
    field: str = ""
    found: str = ""
    wanted: str = ""
    drift: bool = False  # made by hand, behind the reconciler's back

    @classmethod
    def of(cls, field: str, found: object, wanted: object, kind: ChangeClass) -> Change:
        return cls(f"{field} {found} -> {wanted}", kind, field, str(found), str(wanted))

    def as_drift(self) -> Change:
        return replace(self, drift=True)

    def describe(self) -> str:
        if self.drift and self.field:
            return f"[{self.kind.value}] drift: {self.field} {self.found} (manifest {self.wanted})"
        if self.drift:
            return f"[{self.kind.value}] drift: {self.what}"
        return f"[{self.kind.value}] {self.what}"


@dataclass(frozen=True, slots=True)
class DomainLayout:
    """Where an instance's files are and how it runs: the inputs to its machine beside the
    spec."""

    disk_path: str
    console_log_path: str
    accelerator: Accelerator  # resolved: KVM or TCG
    config_drive_path: str | None = None  # the config drive's ISO, when the instance has one
    nics: tuple[Nic, ...] = ()  # with their MACs chosen
    data_disks: tuple[Disk, ...] = ()  # with their targets chosen
    nvram_path: str | None = None  # where UEFI variables live (used with firmware: uefi)


def build_machine(spec: InstanceSpec, layout: DomainLayout) -> Machine:
    """The machine `spec` asks for, without uuid and marker (its shape: what the digest
    covers)."""
    disks = [Disk(BOOT_DISK_TARGET, layout.disk_path, "qcow2"), *layout.data_disks]
    if layout.config_drive_path is not None:
        disks.append(config_drive_disk(layout.config_drive_path))
    memory_kib = spec.memory_bytes // 1024
    max_memory = None if spec.max_memory_bytes is None else spec.max_memory_bytes // 1024
    uefi = spec.firmware is Firmware.UEFI
    return Machine(
        name=spec.name,
        accelerator=layout.accelerator,
        vcpus=spec.vcpus,
        memory_kib=memory_kib,
        cpu=spec.cpu,
        machine_type=spec.machine.value,
        disks=tuple(disks),
        nics=layout.nics,
        console_log=layout.console_log_path,
        max_vcpus=spec.max_vcpus if spec.max_vcpus not in (None, spec.vcpus) else None,
        max_memory_kib=max_memory if max_memory not in (None, memory_kib) else None,
        firmware=spec.firmware,
        nvram=layout.nvram_path if uefi else None,
        boot=spec.boot,
        description=spec.description,
        graphics=spec.graphics,
        rng=spec.rng,
        guest_agent=spec.guest_agent,
        watchdog=spec.watchdog,
        protected=spec.protect,
        delete_disks=spec.deletion_policy is DeletionPolicy.DELETE,
        shutdown_timeout_seconds=spec.shutdown_timeout_seconds,
        asked_running=spec.state is DesiredState.RUNNING,
    )


def with_config_drive(machine: Machine, path: str) -> Machine:
    """`machine` with its config drive's medium at `path` (what a live medium change makes)."""
    disks = tuple(
        config_drive_disk(path) if disk.target == CONFIG_DRIVE_TARGET else disk
        for disk in machine.disks
    )
    return replace(machine, disks=disks)


def shape_of(machine: Machine) -> Machine:
    """`machine` without its identity (uuid, marker), with the defaults a hypervisor fills in
    read as defaults: what two definitions compare on."""
    cpu = CpuSpec() if machine.cpu == LIBVIRT_DEFAULT_CPU else machine.cpu
    # libvirt keeps disks sorted by bus and target, whatever the order they were given in
    disks = tuple(sorted(machine.disks, key=lambda disk: disk.target))
    return replace(machine, uuid=None, marker=None, cpu=cpu, disks=disks)


def with_recorded_fields(machine: Machine, source: Machine) -> Machine:
    """`machine` with what the ownership marker records (not the hypervisor) taken from
    `source`: protection, deletion policies, shutdown timeout, the state last asked for."""
    policies = {disk.path: disk.delete_when_removed for disk in source.disks}
    disks = tuple(
        replace(disk, delete_when_removed=policies.get(disk.path, disk.delete_when_removed))
        for disk in machine.disks
    )
    return replace(
        machine,
        disks=disks,
        protected=source.protected,
        delete_disks=source.delete_disks,
        shutdown_timeout_seconds=source.shutdown_timeout_seconds,
        asked_running=source.asked_running,
    )


def running_shape(machine: Machine) -> Machine:
    """What a running domain is, for the question "does it need a restart": its shape without
    what the guest does not run on (the description, which deletion policy a disk has)."""
    shape = shape_of(machine)
    disks = tuple(replace(disk, delete_when_removed=False) for disk in shape.disks)
    return replace(
        shape,
        description=None,
        disks=disks,
        protected=False,
        delete_disks=False,
        shutdown_timeout_seconds=None,
        asked_running=None,
    )


def live_memory_change(current: Machine, wanted: Machine) -> bool:
    """Whether the memory can change on the running domain (through the balloon)."""
    return _within_maximum(
        current.memory_kib, wanted.memory_kib, current.max_memory_kib, wanted.max_memory_kib
    )


def live_vcpu_change(current: Machine, wanted: Machine) -> bool:
    """Whether the vCPUs can change on the running domain."""
    return _within_maximum(current.vcpus, wanted.vcpus, current.max_vcpus, wanted.max_vcpus)


def _within_maximum(value: int, wanted: int, maximum: int | None, wanted_max: int | None) -> bool:
    """A value that changes while its maximum (set, and kept) still holds the new one."""
    return value != wanted and maximum is not None and wanted_max == maximum and wanted <= maximum


def live_nic_change(current: Machine, wanted: Machine) -> bool:
    """Whether the NICs can change on the running domain: some added at the end or some
    removed from the end (each NIC's PCI slot is its position), all of them hot-pluggable."""
    if current.nics == wanted.nics:
        return False
    shorter, longer = sorted((current.nics, wanted.nics), key=len)
    return longer[: len(shorter)] == shorter and all(
        nic.hotpluggable for nic in longer[len(shorter) :]
    )


Classifier = Callable[[Machine, Machine], ChangeClass]


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How a change of one Machine field reaches a domain: its class (or, when that depends
    on the change, the function that says), and the change in words."""

    kind: ChangeClass | Classifier
    words: Callable[[Machine, Machine], str]
    applies: Callable[[Machine, Machine], bool] = lambda _current, _wanted: True

    def changes(self, current: Machine, wanted: Machine) -> list[Change]:
        if not self.applies(current, wanted):
            return []
        kind = self.kind if isinstance(self.kind, ChangeClass) else self.kind(current, wanted)
        return [Change(self.words(current, wanted), kind)]


@dataclass(frozen=True, slots=True)
class SettingRule:
    """A setting shown as `label old -> new` (and so as drift: `label old (manifest new)`)."""

    label: str
    kind: ChangeClass | Classifier
    show: Callable[[Machine], object]

    def changes(self, current: Machine, wanted: Machine) -> list[Change]:
        kind = self.kind if isinstance(self.kind, ChangeClass) else self.kind(current, wanted)
        return [Change.of(self.label, self.show(current), self.show(wanted), kind)]


@dataclass(frozen=True, slots=True)
class ManyRule:
    """A field that holds several devices: each difference a change of its own class."""

    changes: Callable[[Machine, Machine], list[Change]]


Rule = FieldRule | SettingRule | ManyRule
LIVE, RESTART = ChangeClass.LIVE, ChangeClass.RESTART

# Every field of Machine, and how a change of it reaches the domain, in the order changes are
# told. A field that is not shape (identity) is in NOT_SHAPE; a new Machine field without a
# rule here fails tests/unit/test_change_rules.py, which also checks that each renders and
# reads back under both drivers.
NOT_SHAPE = ("name", "uuid", "marker")
CHANGE_RULES: dict[str, Rule] = {
    "vcpus": SettingRule(
        "vcpus", lambda c, w: LIVE if live_vcpu_change(c, w) else RESTART, lambda m: m.vcpus
    ),
    "max_vcpus": FieldRule(
        RESTART, lambda c, w: f"maxVcpus {c.max_vcpus or '-'} -> {w.max_vcpus or '-'}"
    ),
    "memory_kib": SettingRule(
        "memory",
        lambda c, w: LIVE if live_memory_change(c, w) else RESTART,
        lambda m: _kib(m.memory_kib),
    ),
    "max_memory_kib": FieldRule(
        RESTART, lambda c, w: f"maxMemory {_kib(c.max_memory_kib)} -> {_kib(w.max_memory_kib)}"
    ),
    "accelerator": FieldRule(
        RESTART, lambda c, w: f"accelerator {_accelerator(c)} -> {_accelerator(w)}"
    ),
    "cpu": FieldRule(RESTART, lambda c, w: f"cpu {_cpu(c)} -> {_cpu(w)}"),
    "machine_type": SettingRule("machine", RESTART, lambda m: m.machine_type),
    "firmware": SettingRule("firmware", RESTART, lambda m: m.firmware.value),
    "boot": SettingRule("boot", RESTART, lambda m: ",".join(m.boot)),
    "graphics": SettingRule("graphics", RESTART, lambda m: m.graphics.value),
    "rng": SettingRule("rng", RESTART, lambda m: m.rng),
    "guest_agent": SettingRule("guestAgent", RESTART, lambda m: m.guest_agent),
    "watchdog": SettingRule("watchdog", RESTART, lambda m: _watchdog(m)),
    "description": FieldRule(LIVE, lambda _c, _w: "description"),
    "protected": FieldRule(LIVE, lambda c, w: f"protect {c.protected} -> {w.protected}"),
    "shutdown_timeout_seconds": FieldRule(
        LIVE,
        lambda c, w: (
            f"shutdownTimeoutSeconds {c.shutdown_timeout_seconds} -> {w.shutdown_timeout_seconds}"
        ),
    ),
    "asked_running": FieldRule(
        LIVE,
        lambda _c, w: f"recorded state -> {'running' if w.asked_running else 'stopped'}",
        applies=lambda _c, w: w.asked_running is not None,
    ),
    "delete_disks": FieldRule(
        LIVE, lambda _c, w: f"deletionPolicy -> {'delete' if w.delete_disks else 'retain'}"
    ),
    "disks": ManyRule(lambda c, w: _disk_changes(c, w)),
    "nics": FieldRule(
        lambda c, w: LIVE if live_nic_change(c, w) else RESTART,
        lambda c, w: f"network {_nics(c)} -> {_nics(w)}",
    ),
    "console_log": FieldRule(
        RESTART,
        lambda c, w: f"serial console {c.console_log or 'none'} -> {w.console_log or 'none'}",
    ),
    "nvram": FieldRule(RESTART, lambda c, w: f"nvram {c.nvram or '-'} -> {w.nvram or '-'}"),
}


def describe_changes(current: Machine, wanted: Machine) -> tuple[Change, ...]:
    """What redefining `current` as `wanted` changes, each with its class: the rule of each
    field that differs (CHANGE_RULES)."""
    current, wanted = shape_of(current), shape_of(wanted)
    changes: list[Change] = []
    for field, rule in CHANGE_RULES.items():
        if getattr(current, field) != getattr(wanted, field):
            changes += rule.changes(current, wanted)
    return tuple(changes) or tuple(_other_changes(current, wanted))


def _disk_changes(current: Machine, wanted: Machine) -> list[Change]:
    """The boot disk's file, the data disks, the config drive, the boot disk's format."""
    changes = []
    if current.boot_disk_path != wanted.boot_disk_path:
        what = f"disk {current.boot_disk_path} -> {wanted.boot_disk_path}"
        changes.append(Change(what, RESTART))
    changes += _data_disk_changes(current, wanted)
    if current.config_drive_path != wanted.config_drive_path:
        previous = _file_name(current.config_drive_path)
        kind = LIVE if current.config_drive_path and wanted.config_drive_path else RESTART
        changes.append(
            Change(f"config drive {previous} -> {_file_name(wanted.config_drive_path)}", kind)
        )
    before, after = current.disk(BOOT_DISK_TARGET), wanted.disk(BOOT_DISK_TARGET)
    if before is not None and after is not None and before != after and before.path == after.path:
        changes.append(Change(f"boot disk {_disk(before)} -> {_disk(after)}", RESTART))
    return changes


def _watchdog(machine: Machine) -> str:
    watchdog = machine.watchdog
    return "none" if watchdog is None else f"{watchdog.model} {watchdog.action.value}"


def _accelerator(machine: Machine) -> str:
    return machine.accelerator.value if machine.accelerator else "other"


def _disk(disk: Disk) -> str:
    return f"{disk.format} on {disk.bus}{' (read-only)' if disk.read_only else ''}"


def _other_changes(current: Machine, wanted: Machine) -> list[Change]:
    """Every other field that differs, by name (a definition never differs without a word)."""
    changes = []
    for field in dataclasses.fields(Machine):
        before, after = getattr(current, field.name), getattr(wanted, field.name)
        if before != after:
            what = f"{field.name} {before!r} -> {after!r}"
            changes.append(Change(what[:200], ChangeClass.RESTART))
    return changes or [Change("definition updated", ChangeClass.LIVE)]


def _data_disk_changes(current: Machine, wanted: Machine) -> list[Change]:
    before = {disk.path: disk for disk in current.data_disks}
    after = {disk.path: disk for disk in wanted.data_disks}
    changes = []
    for path, disk in after.items():
        old = before.get(path)
        kind = ChangeClass.LIVE if disk.hotpluggable else ChangeClass.RESTART
        if old is None:
            changes.append(Change(f"attach disk {disk.target} ({_file_name(path)})", kind))
        elif old.delete_when_removed != disk.delete_when_removed:
            policy = "delete" if disk.delete_when_removed else "retain"
            changes.append(Change(f"disk {disk.target} deletionPolicy {policy}", ChangeClass.LIVE))
        elif replace(old, delete_when_removed=False) != replace(disk, delete_when_removed=False):
            changes.append(
                Change(f"disk {old.target} -> {disk.target} ({disk.bus})", ChangeClass.RESTART)
            )
    for path, disk in before.items():
        if path not in after:
            kind = ChangeClass.LIVE if disk.hotpluggable else ChangeClass.RESTART
            changes.append(Change(f"detach disk {disk.target} ({_file_name(path)})", kind))
    return changes


def _kib(kib: int | None) -> str:
    return "-" if kib is None else format_size(kib * 1024)


def _cpu(machine: Machine) -> str:
    return machine.cpu.model or machine.cpu.mode.value


def _file_name(path: str | None) -> str:
    return "none" if path is None else path.rsplit("/", 1)[-1]


def _nics(machine: Machine) -> str:
    if not machine.nics:
        return "none"
    return "; ".join(
        f"{nic.type.value}{' ' + nic.source if nic.source else ''} {nic.model.value} {nic.mac}"
        + "".join(f" {port.describe()}" for port in nic.ports)
        for nic in machine.nics
    )
