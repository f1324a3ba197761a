"""An instance's probes and conditions in its state directory (`instances/NAME/health.json`),
so that a process other than the one probing (`status` without a daemon, `wait`) knows what
to check and since when a condition holds. Written atomically; read defensively (an old or
damaged file reads as nothing)."""

from __future__ import annotations

import json
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
) -> bool:
    """Keep the instance's probes, conditions and login user (None: as last recorded): the
    file is rewritten only when that changes it (a pass over converged instances, or a
    prober told again what it knew, writes nothing). False when there is no such instance
    (any more): nothing is kept."""
    if not paths.directory.is_dir():
        return False
    text, recorded = _read(paths)
    login = login if login is not None else _login_of(recorded)
    data = {
        "login": login,
        "probes": {
            kind.value: None if spec is None else probe_to_json(spec)
            for kind, spec in probes.items()
        },
        "conditions": [condition.as_json() for condition in conditions],
    }
    wanted = (json.dumps(data, indent=1) + "\n").encode()
    if wanted != text:
        write_atomically(paths.health, wanted)
    return True


def read_health(
    paths: InstancePaths,
) -> tuple[dict[ConditionType, ProbeSpec | None], dict[ConditionType, Condition]]:
    """The probes and the conditions recorded for the instance (empty when none are)."""
    return _health_of(_read(paths)[1])


def record_probes(
    paths: InstancePaths, probes: dict[ConditionType, ProbeSpec | None], login: str | None
) -> None:
    """Keep the instance's probes and login user as its manifest now says (its conditions are
    kept): written only when they changed, and not at all for an instance that never had
    either."""
    wanted = {kind: probes.get(kind) for kind in ConditionType}
    text, data = _read(paths)
    if not any(wanted.values()) and login is None and text is None:
        return
    if isinstance(data, dict) and _probes_of(data) == wanted and _login_of(data) == login:
        return  # (a damaged file is written again)
    write_health(paths, wanted, list(_conditions_of(data).values()), login or "")


def read_login(paths: InstancePaths) -> str | None:
    """The user its cloud-config names (planning.cloudinit.login_user), as last recorded."""
    return _login_of(_read(paths)[1])


def _read(paths: InstancePaths) -> tuple[bytes | None, object]:
    """The health file's bytes (None: there is none, or it cannot be read) and what they say
    (None when they are not JSON)."""
    try:
        with open(paths.health, "rb") as stream:
            text = stream.read(MAX_BYTES)
    except OSError:
        return None, None
    try:
        return text, json.loads(text)
    except (ValueError, RecursionError):
        return text, None


def _health_of(
    data: object,
) -> tuple[dict[ConditionType, ProbeSpec | None], dict[ConditionType, Condition]]:
    if not isinstance(data, dict):
        return {}, {}
    return _probes_of(data), _conditions_of(data)


def _probes_of(data: object) -> dict[ConditionType, ProbeSpec | None]:
    recorded = data.get("probes") if isinstance(data, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    return {kind: probe_from_json(recorded.get(kind.value)) for kind in ConditionType}


def _conditions_of(data: object) -> dict[ConditionType, Condition]:
    """The recorded conditions (their times parsed: read only when they are needed)."""
    listed = data.get("conditions") if isinstance(data, dict) else None
    conditions = {}
    for item in listed if isinstance(listed, list) else []:
        condition = Condition.from_json(item)
        if condition is not None:
            conditions[condition.type] = condition
    return conditions


def _login_of(data: object) -> str | None:
    login = data.get("login") if isinstance(data, dict) else None
    return login if isinstance(login, str) and login else None


def probes_of(spec: InstanceSpec) -> dict[ConditionType, ProbeSpec | None]:
    return {ConditionType.READY: spec.readiness, ConditionType.LIVE: spec.liveness}
