"""The machine settings of a manifest (data disks, machine type, firmware, boot order, the
devices, the maximums, the update policy), read from a schema-valid `spec` as keyword
arguments of InstanceSpec. Pure. Problems are reported through `fail(pointer, message)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from reconciler.model.desired import (
    BootDevice,
    DataDiskSpec,
    DeletionPolicy,
    DiskBus,
    Firmware,
    Graphics,
    ImageFormat,
    MachineType,
    NetworkSpec,
    NicType,
    OnFailure,
    ProbeKind,
    ProbeSpec,
    RolloutPolicy,
    RunPolicy,
    SnapshotPolicy,
    SnapshotTrigger,
    UpdatePolicy,
    WatchdogAction,
    WatchdogSpec,
)
from reconciler.sizes import round_up

DISK_ALIGNMENT = 512

Fail = Callable[[str, str], None]
SizeAt = Callable[[str, str], int | None]  # parse the size text at a pointer, or report it


def machine_settings(
    spec: dict[str, Any], memory: int | None, fail: Fail, size_at: SizeAt, disk_limit: int
) -> dict[str, Any]:
    """InstanceSpec's machine-setting fields from `spec` (`memory`: the parsed memory)."""
    max_memory = None
    if "maxMemory" in spec:
        max_memory = size_at(spec["maxMemory"], "/spec/maxMemory")
        if max_memory is not None and memory is not None and max_memory < memory:
            fail("/spec/maxMemory", f"{spec['maxMemory']!r} is less than memory {spec['memory']!r}")
    if spec.get("maxVcpus", spec["vcpus"]) < spec["vcpus"]:
        fail("/spec/maxVcpus", f"{spec['maxVcpus']} is less than vcpus {spec['vcpus']}")
    return {
        "disks": data_disks(spec, fail, size_at, disk_limit),
        "machine": MachineType(spec.get("machine", MachineType.PC)),
        "firmware": Firmware(spec.get("firmware", Firmware.BIOS)),
        "boot": tuple(BootDevice(device) for device in spec.get("boot", ["hd"])),
        "description": spec.get("description"),
        "graphics": Graphics(spec.get("graphics", Graphics.NONE)),
        "rng": spec.get("rng", False),
        "guest_agent": spec.get("guestAgent", False),
        "watchdog": (
            None
            if "watchdog" not in spec
            else WatchdogSpec(
                WatchdogAction(spec["watchdog"]["action"]),
                spec["watchdog"].get("model", "i6300esb"),
            )
        ),
        "autostart": spec.get("autostart", False),
        "update_policy": UpdatePolicy(spec.get("updatePolicy", UpdatePolicy.NEXT_BOOT)),
        "max_memory_bytes": None if max_memory is None else round_up(max_memory, 1024),
        "max_vcpus": spec.get("maxVcpus"),
        "protect": spec.get("protect", False),
        "deletion_policy": DeletionPolicy(spec.get("deletionPolicy", DeletionPolicy.RETAIN)),
        "run_policy": RunPolicy(spec.get("runPolicy", RunPolicy.ALWAYS)),
    }


_PROBE_KINDS = tuple(kind.value for kind in ProbeKind)


def probes(
    spec: dict[str, Any], interfaces: tuple[NetworkSpec, ...], fail: Fail
) -> dict[str, ProbeSpec | None]:
    """InstanceSpec's `readiness` and `liveness` from `spec`. A probe names exactly one kind;
    one through the guest agent needs the agent's channel; a port must be reachable: through
    a user-mode port forward to it, or on an interface that is not user-mode."""
    found: dict[str, ProbeSpec | None] = {}
    for key in ("readiness", "liveness"):
        found[key] = None
        if key not in spec:
            continue
        pointer = f"/spec/{key}"
        item = spec[key]
        kinds = [kind for kind in _PROBE_KINDS if kind in item]
        if len(kinds) != 1:
            named = ", ".join(kinds) if kinds else "none"
            fail(pointer, f"a probe names exactly one of {', '.join(_PROBE_KINDS)} (this: {named})")
            continue
        kind = ProbeKind(kinds[0])
        body = item[kind.value]
        if kind in (ProbeKind.GUEST_AGENT, ProbeKind.EXEC) and not spec.get("guestAgent", False):
            fail(f"{pointer}/{kind.value}", f"a {kind.value} probe needs guestAgent: true")
            continue
        port = body["port"] if kind in (ProbeKind.TCP, ProbeKind.HTTP) else None
        if port is not None and not _reachable(port, interfaces):
            fail(
                f"{pointer}/{kind.value}/port",
                f"guest port {port} cannot be reached from the host: forward a host port to it "
                "(networks[].ports) or give the instance an interface on a libvirt network or "
                "bridge",
            )
            continue
        found[key] = ProbeSpec(
            kind=kind,
            port=port,
            path=body.get("path", "/") if kind is ProbeKind.HTTP else "/",
            expect_status=body.get("expectStatus") if kind is ProbeKind.HTTP else None,
            command=tuple(body["command"]) if kind is ProbeKind.EXEC else (),
            initial_delay_seconds=item.get("initialDelaySeconds", 0),
            period_seconds=item.get("periodSeconds", 10),
            timeout_seconds=item.get("timeoutSeconds", 1),
            success_threshold=item.get("successThreshold", 1),
            failure_threshold=item.get("failureThreshold", 3),
        )
    return found


SCHEDULES = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
_INTERVAL_UNITS = {"m": 60, "h": 3600, "d": 86400}
SHORTEST_SCHEDULE_SECONDS = 300


def interval_seconds(text: str) -> int:
    """Seconds in a schema-valid interval: hourly, daily, weekly, or N followed by m, h or d."""
    if text in SCHEDULES:
        return SCHEDULES[text]
    return int(text[:-1]) * _INTERVAL_UNITS[text[-1]]


def snapshot_policy(spec: dict[str, Any], fail: Fail) -> dict[str, SnapshotPolicy]:
    """InstanceSpec's `snapshots` from `spec` (the defaults where it says nothing)."""
    item = spec.get("snapshots")
    if item is None:
        return {}
    default = SnapshotPolicy()
    schedule = expiry = None
    if "schedule" in item:
        schedule = interval_seconds(item["schedule"])
        if schedule < SHORTEST_SCHEDULE_SECONDS:
            fail("/spec/snapshots/schedule", f"{item['schedule']!r} is more often than every 5m")
    if "expiry" in item:
        expiry = interval_seconds(item["expiry"])
        if expiry == 0:
            fail("/spec/snapshots/expiry", "an expiry of 0 would remove each snapshot at once")
    if expiry is not None and schedule is None:
        fail("/spec/snapshots/expiry", "expiry applies to scheduled snapshots: give a schedule")
    before = item.get("beforeChange")
    return {
        "snapshots": SnapshotPolicy(
            before_change=default.before_change
            if before is None
            else frozenset(SnapshotTrigger(word) for word in before),
            keep=item.get("keep", default.keep),
            schedule_seconds=schedule,
            expiry_seconds=expiry,
        )
    }


def rollout_policy(spec: dict[str, Any], group: str) -> dict[str, RolloutPolicy]:
    """InstanceSpec's `rollout` from `spec`, for the instances of `group` (nothing when it has
    none)."""
    item = spec.get("rollout")
    if item is None:
        return {}
    limit = item.get("maxUnavailable", 1)
    percent = int(limit[:-1]) if isinstance(limit, str) else None
    return {
        "rollout": RolloutPolicy(
            group=group,
            max_unavailable=1 if percent is not None else int(limit),
            max_unavailable_percent=percent,
            min_ready_seconds=item.get("minReadySeconds", 0),
            progress_deadline_seconds=item.get("progressDeadlineSeconds", 600),
            on_failure=OnFailure(item.get("onFailure", OnFailure.PAUSE)),
        )
    }


def restore_points_for(settings: dict[str, Any]) -> None:
    """A rollout that reverts on failure needs a restore point before each restart and
    replace: added to the snapshot policy in `settings` (InstanceSpec's keywords)."""
    rollout = settings.get("rollout")
    if rollout is None or rollout.on_failure is not OnFailure.REVERT:
        return
    policy = settings.get("snapshots", SnapshotPolicy())
    wanted = policy.before_change | {SnapshotTrigger.RESTART, SnapshotTrigger.REPLACE}
    settings["snapshots"] = dataclasses.replace(policy, before_change=wanted)


def _reachable(port: int, interfaces: tuple[NetworkSpec, ...]) -> bool:
    return any(
        interface.type is not NicType.USER
        or any(
            forward.guest == port and forward.protocol.value == "tcp" for forward in interface.ports
        )
        for interface in interfaces
    )


def data_disks(
    spec: dict[str, Any], fail: Fail, size_at: SizeAt, limit: int
) -> tuple[DataDiskSpec, ...]:
    disks = []
    names: set[str] = set()
    for index, item in enumerate(spec.get("disks", [])):
        pointer = f"/spec/disks/{index}"
        if item["name"] in names:
            fail(f"{pointer}/name", f"disk name {item['name']!r} is given twice")
        names.add(item["name"])
        size = size_at(item["size"], f"{pointer}/size")
        if size is not None and not 0 < size <= limit:
            fail(f"{pointer}/size", f"{item['size']!r} is not a disk size (expected 1B to 1024TiB)")
            size = None
        if size is None:
            continue
        disks.append(
            DataDiskSpec(
                name=item["name"],
                size_bytes=round_up(size, DISK_ALIGNMENT),
                bus=DiskBus(item.get("bus", DiskBus.VIRTIO)),
                format=ImageFormat(item.get("format", ImageFormat.QCOW2)),
                deletion_policy=DeletionPolicy(item.get("deletionPolicy", DeletionPolicy.RETAIN)),
            )
        )
    return tuple(disks)
