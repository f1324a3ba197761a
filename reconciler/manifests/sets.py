"""Instance sets: `kind: InstanceSet` documents that stand for `replicas` instances named
SET-0, SET-1, ... made from one `template` (an instance's spec; profiles allowed). Pure.

Each member is an instance document of its own, made here: its spec is the template with
`{{ordinal}}` (or `{{ordinal+N}}`, and `{{ordinal:x}}` / `{{ordinal:02x}}` for hexadecimal)
put in, in a few fields only (ORDINAL_FIELDS: what must differ between the members of a
fleet: a host port, a MAC, a hostname); its labels are the set's, with `reconciler/set`
naming the set; with `hosts`, member N runs on hosts[N % len(hosts)], so that each host's
reconciler (--host) manages its own members only. An error in a member is reported at the
template's line.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from reconciler.manifests.profiles import MergedDocument, Origin
from reconciler.manifests.yamlsource import YamlDocument

SET_KIND = "InstanceSet"
SET_LABEL = "reconciler/set"
MAX_REPLICAS = 1000
# the fields whose strings may hold an ordinal (pointers under the template; * is any index)
ORDINAL_FIELDS = (
    "/hostname",
    "/description",
    "/cloudInit/instanceId",
    "/cloudInit/userData",
    "/networks/*/mac",
    "/networks/*/ports/*/host",
)
_ORDINAL = re.compile(r"\{\{\s*ordinal\s*(?:\+\s*(\d{1,6})\s*)?(?::\s*(0?[1-9]?[dx])\s*)?\}\}")
_ANY_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")


def set_document_schema(instance_schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of an InstanceSet document (its template is checked as each member's spec,
    once the ordinal is put in)."""
    metadata = copy.deepcopy(instance_schema["properties"]["metadata"])
    metadata["properties"]["name"] = {
        "type": "string",
        "pattern": "^[a-z0-9]([a-z0-9-]{0,56}[a-z0-9])?$(?!\\n)",
        "x-expected": "1 to 58 lowercase letters, digits and '-' (room for -ORDINAL), starting "
        "and ending with a letter or digit",
    }
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": instance_schema["properties"]["apiVersion"],
            "kind": {"const": SET_KIND, "x-expected": "kind: InstanceSet"},
            "metadata": metadata,
            "spec": {
                "type": "object",
                "required": ["replicas", "template"],
                "additionalProperties": False,
                "x-expected": "a mapping with replicas and template",
                "properties": {
                    "replicas": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_REPLICAS,
                        "x-expected": f"a number of instances from 0 to {MAX_REPLICAS}",
                    },
                    "template": {
                        "type": "object",
                        "x-expected": "an instance's spec (profiles allowed)",
                    },
                    "rollout": instance_schema["properties"]["spec"]["properties"]["rollout"],
                    "hosts": {
                        "description": "The hosts the members are spread over, in turn: "
                        "member N runs on hosts[N % len(hosts)] (its spec.host).",
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 64,
                        "uniqueItems": True,
                        "items": instance_schema["properties"]["spec"]["properties"]["host"],
                        "x-expected": "a list of host names",
                    },
                },
            },
        },
    }


def member_name(set_name: str, ordinal: int) -> str:
    return f"{set_name}-{ordinal}"


def members(
    path: Path, document: YamlDocument
) -> tuple[list[MergedDocument], list[tuple[str, str]]]:
    """The member documents of a schema-valid set document, and the problems found (pointer
    in the set's document, message): a placeholder in a field that takes none, or one that is
    not an ordinal."""
    data = document.data
    name = data["metadata"]["name"]
    template = data["spec"]["template"]
    hosts = data["spec"].get("hosts") or []
    problems: list[tuple[str, str]] = []
    _check_placeholders(template, "", problems)
    if hosts and "host" in template:
        problems.append(("/spec/template/host", "give the hosts in spec.hosts or here, not both"))
    if problems:
        return [], problems
    labels = {**(data["metadata"].get("labels") or {}), SET_LABEL: name}
    rollout = data["spec"].get("rollout")
    origins: dict[str, Origin] = {"/spec": (path, document, "/spec/template")}
    if rollout is not None:  # the set's, over any the template or its profiles give
        origins["/spec/rollout"] = (path, document, "/spec")
    found = []
    for ordinal in range(data["spec"]["replicas"]):
        spec = _put_in(copy.deepcopy(template), "", ordinal)
        if rollout is not None:
            spec["rollout"] = copy.deepcopy(rollout)
        if hosts:  # spread in turn: a host's reconciler manages its own ordinals only
            spec["host"] = hosts[ordinal % len(hosts)]
        member = MergedDocument(
            data={
                "apiVersion": data["apiVersion"],
                "kind": "Instance",
                "metadata": {"name": member_name(name, ordinal), "labels": labels},
                "spec": spec,
            },
            start=document.start,
            value_marks=document.value_marks,
            key_marks=document.key_marks,
            problems=document.problems,
            origins=dict(origins),
            own_path=path,
        )
        found.append(member)
    return found, problems


def _matches(pointer: str) -> bool:
    parts = pointer.split("/")
    for field in ORDINAL_FIELDS:
        pattern = field.split("/")
        if len(pattern) == len(parts) and all(
            want in ("*", got) for want, got in zip(pattern, parts, strict=True)
        ):
            return True
    return False


def _check_placeholders(value: Any, pointer: str, problems: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_placeholders(item, f"{pointer}/{key}", problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_placeholders(item, f"{pointer}/{index}", problems)
    elif isinstance(value, str) and "{{" in value:
        where = f"/spec/template{pointer}"
        if not _matches(pointer):
            fields = ", ".join(f.lstrip("/").replace("/*/", "[].") for f in ORDINAL_FIELDS)
            problems.append((where, f"{{{{ordinal}}}} is put in only in: {fields}"))
            return
        for placeholder in _ANY_PLACEHOLDER.findall(value):
            if not _ORDINAL.fullmatch(placeholder):
                problems.append(
                    (
                        where,
                        f"{placeholder} is not an ordinal (expected {{{{ordinal}}}}, "
                        "{{ordinal+N}}, {{ordinal:x}} or {{ordinal:02x}})",
                    )
                )


def _put_in(value: Any, pointer: str, ordinal: int) -> Any:
    if isinstance(value, dict):
        return {key: _put_in(item, f"{pointer}/{key}", ordinal) for key, item in value.items()}
    if isinstance(value, list):
        return [_put_in(item, f"{pointer}/{index}", ordinal) for index, item in enumerate(value)]
    if not isinstance(value, str) or "{{" not in value:
        return value

    def text(match: re.Match[str]) -> str:
        number = ordinal + int(match.group(1) or 0)
        return format(number, match.group(2) or "d")

    result = _ORDINAL.sub(text, value)
    whole = _ORDINAL.fullmatch(value) is not None
    if whole and pointer.endswith("/host") and result.isdigit():
        return int(result)  # a host port: a number
    return result
