"""An instance's probes and conditions in its state directory (`instances/NAME/health.json`),
so that a process other than the one probing (`status` without a daemon, `wait`) knows what
to check and since when a condition holds. Written atomically; read defensively (an old or
damaged file reads as nothing)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from typing import Any

from reconciler.fileops import write_atomically
from reconciler.health.conditions import Condition, ConditionType
from reconciler.layout import InstancePaths
from reconciler.model.desired import InstanceSpec, ProbeKind, ProbeSpec

MAX_BYTES = 256 * 1024
_FIELDS = {field.name for field in fields(ProbeSpec)}


def probe_to_json(spec: ProbeSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["kind"] = spec.kind.value
    data["command"] = list(spec.command)
    return data


def probe_from_json(data: object) -> ProbeSpec | None:
    if not isinstance(data, dict) or set(data) - _FIELDS:
        return None
    try:
        values = dict(data)
        values["kind"] = ProbeKind(values["kind"])
        values["command"] = tuple(str(word) for word in values.get("command", ()))
        return ProbeSpec(**values)
    except (KeyError, ValueError, TypeError):
        return None


def write_health(
    paths: InstancePaths,
    probes: dict[ConditionType, ProbeSpec | None],
    conditions: list[Condition],
    login: str | None = None,
) -> None:
    if not paths.directory.is_dir():
        return  # no such instance (any more)
    login = login if login is not None else read_login(paths)
    data = {
        "login": login,
        "probes": {
            kind.value: None if spec is None else probe_to_json(spec)
            for kind, spec in probes.items()
        },
        "conditions": [condition.as_json() for condition in conditions],
    }
    write_atomically(paths.health, (json.dumps(data, indent=1) + "\n").encode())


def read_health(
    paths: InstancePaths,
) -> tuple[dict[ConditionType, ProbeSpec | None], dict[ConditionType, Condition]]:
    """The probes and the conditions recorded for the instance (empty when none are)."""
    try:
        with open(paths.health, "rb") as stream:
            data = json.loads(stream.read(MAX_BYTES))
    except (OSError, ValueError):
        return {}, {}
    if not isinstance(data, dict):
        return {}, {}
    recorded = data.get("probes")
    recorded = recorded if isinstance(recorded, dict) else {}
    probes = {kind: probe_from_json(recorded.get(kind.value)) for kind in ConditionType}
    listed = data.get("conditions")
    conditions = {}
    for item in listed if isinstance(listed, list) else []:
        condition = Condition.from_json(item)
        if condition is not None:
            conditions[condition.type] = condition
    return probes, conditions


def record_probes(
    paths: InstancePaths, probes: dict[ConditionType, ProbeSpec | None], login: str | None
) -> None:
    """Keep the instance's probes and login user as its manifest now says (its conditions are
    kept): written only when they changed, and not at all for an instance that never had
    either."""
    wanted = {kind: probes.get(kind) for kind in ConditionType}
    if not any(wanted.values()) and login is None and not os.path.exists(paths.health):
        return
    recorded, conditions = read_health(paths)
    if recorded == wanted and read_login(paths) == login:
        return
    write_health(paths, wanted, list(conditions.values()), login or "")


def read_login(paths: InstancePaths) -> str | None:
    """The user its cloud-config names (planning.cloudinit.login_user), as last recorded."""
    try:
        with open(paths.health, "rb") as stream:
            data = json.loads(stream.read(MAX_BYTES))
    except (OSError, ValueError):
        return None
    login = data.get("login") if isinstance(data, dict) else None
    return login if isinstance(login, str) and login else None


def probes_of(spec: InstanceSpec) -> dict[ConditionType, ProbeSpec | None]:
    return {ConditionType.READY: spec.readiness, ConditionType.LIVE: spec.liveness}
