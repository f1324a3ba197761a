"""What a state directory holds now, observed afresh (for `reconcile status` when no daemon
runs): each domain this state directory manages, its power state, the state its manifest last
asked for, its accelerator, its boot disk, its addresses, and its Ready and Live conditions
from one check of each probe recorded for it. Read-only, but for each instance's health
record (health.json), which keeps the conditions' transition times."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from reconciler.health.conditions import Condition, ConditionType
from reconciler.loop.observe import read_overlay
from reconciler.loop.reconcile import Reconciler
from reconciler.loop.snapshots import snapshot_summary
from reconciler.loop.waiting import Health, HealthWatch
from reconciler.model.actual import DomainFacts
from reconciler.planning.addresses import InterfaceAddress, machine_addresses
from reconciler.sizes import format_size


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    name: str
    manifest: str
    desired: str  # what the manifest last asked for, as recorded on the domain
    observed: str  # the power state now
    reason: str
    accelerator: str
    disk: str
    disk_bytes: int | None  # the boot disk's virtual size (None: unreadable or missing)
    ports: tuple[str, ...]  # host address:port/protocol -> guest port
    addresses: tuple[InterfaceAddress, ...] = ()
    conditions: tuple[Condition, ...] = ()  # Ready, Live (checked once now)
    snapshots: dict[str, Any] | None = None  # loop.snapshots.snapshot_summary

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type is kind), None)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "manifest": self.manifest,
            "desired": self.desired,
            "observed": self.observed,
            "stateReason": self.reason,
            "accelerator": self.accelerator,
            "disk": {"path": self.disk, "bytes": self.disk_bytes},
            "ports": list(self.ports),
            "addresses": [address.as_json() for address in self.addresses],
            "conditions": [condition.as_json() for condition in self.conditions],
            "snapshots": self.snapshots,
        }

    @property
    def disk_text(self) -> str:
        return "missing" if self.disk_bytes is None else format_size(self.disk_bytes)


def inventory(reconciler: Reconciler) -> list[InventoryEntry]:
    """Every domain the state directory manages, by name, with its Ready and Live conditions
    from one check of each probe now, and the addresses observed meanwhile."""
    records = reconciler.managed_domains()
    entries = sorted((_entry(reconciler, record) for record in records), key=lambda e: e.name)
    watch = HealthWatch(reconciler.driver, reconciler.state, reconciler.clock)
    try:
        checked = watch.check_once(list(records))
    finally:
        watch.close()
    return [_with_health(entry, checked.get(entry.name)) for entry in entries]


def _with_health(entry: InventoryEntry, health: Health | None) -> InventoryEntry:
    if health is None:
        return entry
    addresses = health.addresses or entry.addresses
    return replace(entry, conditions=(health.ready, health.live), addresses=addresses)


def _entry(reconciler: Reconciler, record: DomainFacts) -> InventoryEntry:
    definition = record.definition
    disk = str(reconciler.state.instance(record.name).disk)
    overlay, _problem = read_overlay(disk)
    asked = definition.asked_running
    ports = tuple(
        f"{port.address}:{port.host}/{port.protocol.value}->{port.guest}"
        for nic in definition.nics
        for port in nic.ports
    )
    return InventoryEntry(
        name=record.name,
        manifest=definition.marker.manifest if definition.marker else "",
        desired="-" if asked is None else "running" if asked else "stopped",
        observed=record.state.value,
        reason=record.state_reason,
        accelerator=definition.accelerator.value if definition.accelerator else "-",
        disk=disk,
        disk_bytes=None if overlay is None else overlay.virtual_size,
        ports=ports,
        addresses=machine_addresses(definition),
        snapshots=snapshot_summary(reconciler.state.instance(record.name)),
    )
