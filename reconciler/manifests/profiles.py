"""Profiles: `kind: Profile` documents holding any part of an instance's `spec`, which an
instance lists (`spec.profiles: [base, web]`). Pure.

The merged spec is the profiles in the order listed (each after the profiles it lists
itself), then the instance's own spec: mappings merge key by key, a list replaces the list
before it whole, and `null` removes what came before. Each field of the result keeps where
it was written (its file and document), so that an error in the merged spec is reported at
the line that wrote the field, in whichever file that is.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.manifests.yamlsource import Mark, YamlDocument, escape_pointer_token

PROFILE_KIND = "Profile"
MAX_PROFILE_DEPTH = 8  # profiles listing profiles, this deep at most


@dataclass(frozen=True, slots=True)
class Profile:
    """One valid profile document."""

    name: str
    path: Path
    document: YamlDocument

    @property
    def digest(self) -> str:
        """Of the profile's content (what an instance's spec records of it)."""
        content = json.dumps(self.document.data, sort_keys=True, default=str)
        return hashlib.sha256(content.encode()).hexdigest()[:16]

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.document.data.get("spec") or {}
        return spec


# where a field of a merged document was written: the file, the document, and the pointer
# there of what is `/spec` here (`/spec` in a profile, `/spec/template` in an instance set)
Origin = tuple[Path, YamlDocument, str]


@dataclass(slots=True)
class MergedDocument(YamlDocument):
    """An instance document made of others (profiles merged in, an instance set's template):
    each pointer answers with the position in the document (and the file) that wrote it."""

    origins: dict[str, Origin] = field(default_factory=dict)
    own_path: Path = Path()

    def source_of(self, pointer: str) -> tuple[Path, YamlDocument, str]:
        """The file and document that wrote `pointer` (or its nearest parent), and the
        pointer there."""
        probe = pointer
        while True:
            found = self.origins.get(probe)
            if found is not None:
                path, document, spec = found
                return path, document, spec + pointer.removeprefix("/spec")
            if not probe:
                return self.own_path, self, pointer
            probe = probe.rsplit("/", 1)[0]

    def mark_of(self, pointer: str, *, key: bool = False) -> Mark:
        _path, document, there = self.source_of(pointer)
        if document is self:
            return YamlDocument.mark_of(self, pointer, key=key)
        return document.mark_of(there, key=key)


def profile_document_schema(instance_schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of a Profile document: an Instance's, with `kind: Profile` and no field of
    the spec, or of a mapping in it, required (a profile holds any part of a spec; the merged
    spec is checked whole). Conditions (if/then, not) stay as they are."""
    schema = copy.deepcopy(instance_schema)
    schema["properties"]["kind"] = {"const": PROFILE_KIND, "x-expected": "kind: Profile"}
    _drop_required(schema["properties"]["spec"])
    return schema


def _drop_required(node: Any) -> None:
    """Drop `required` from an object schema and from those of its properties and items."""
    if not isinstance(node, dict):
        return
    node.pop("required", None)
    for child in (node.get("properties") or {}).values():
        _drop_required(child)
    _drop_required(node.get("items"))


def merge_profiles(
    path: Path, document: YamlDocument, index: dict[str, Profile | None]
) -> tuple[MergedDocument | None, list[tuple[str, str]], tuple[Profile, ...]]:
    """The instance `document` with its profiles merged in (None when it lists none), the
    problems found (pointer in the document, message: a missing profile, a cycle), and the
    profiles used, in the order merged."""
    data = document.data
    spec = data.get("spec") if isinstance(data, dict) else None
    listed = spec.get("profiles") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(listed, list) or not listed:
        return None, [], ()
    problems: list[tuple[str, str]] = []
    layers: list[tuple[Path, YamlDocument, dict[str, Any]]] = []
    used: list[Profile] = []
    for position, name in enumerate(listed):
        pointer = f"/spec/profiles/{position}"
        _expand(str(name), pointer, index, (), layers, used, problems)
    if problems:
        return None, problems, tuple(used)
    merged_spec: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    for layer_path, layer_document, layer_spec in layers:
        origin = (layer_path, layer_document, "/spec")
        _merge_into(merged_spec, layer_spec, "/spec", origins, origin)
    _merge_into(merged_spec, spec, "/spec", origins, (path, document, "/spec"))
    merged = MergedDocument(
        data={**data, "spec": merged_spec},
        start=document.start,
        value_marks=document.value_marks,
        key_marks=document.key_marks,
        problems=document.problems,
        origins=origins,
        own_path=path,
    )
    return merged, [], tuple(used)


def _expand(
    name: str,
    pointer: str,
    index: dict[str, Profile | None],
    stack: tuple[str, ...],
    layers: list[tuple[Path, YamlDocument, dict[str, Any]]],
    used: list[Profile],
    problems: list[tuple[str, str]],
) -> None:
    """Add profile `name`'s layers (the profiles it lists first, then its own spec)."""
    if name in stack:
        cycle = " -> ".join((*stack, name))
        problems.append((pointer, f"profile {name!r} lists itself through {cycle}"))
        return
    if name not in index:
        known = ", ".join(sorted(index)) or "none are defined"
        problems.append((pointer, f"no profile named {name!r} (profiles: {known})"))
        return
    profile = index[name]
    if profile is None:
        problems.append(
            (pointer, f"profile {name!r} has errors (reported at its file): fix them first")
        )
        return
    if len(stack) >= MAX_PROFILE_DEPTH:
        problems.append((pointer, f"profiles nest more than {MAX_PROFILE_DEPTH} deep"))
        return
    own = profile.spec.get("profiles")
    for inner in own if isinstance(own, list) else []:
        _expand(str(inner), pointer, index, (*stack, name), layers, used, problems)
    used.append(profile)
    layer = {key: value for key, value in profile.spec.items() if key != "profiles"}
    layers.append((profile.path, profile.document, layer))


def without_nulls(value: Any) -> Any:
    """`value` with every mapping key whose value is null left out (a profile's `null`
    removes a field: the schema checks what is left)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def _merge_into(
    target: dict[str, Any],
    layer: dict[str, Any],
    pointer: str,
    origins: dict[str, Origin],
    origin: Origin,
) -> None:
    """Merge `layer` into `target`: mappings key by key, anything else replaces; null
    removes. Every pointer the layer writes is recorded as its origin."""
    for key, value in layer.items():
        child = f"{pointer}/{escape_pointer_token(key)}"
        if value is None:
            target.pop(key, None)
            for written in [p for p in origins if p == child or p.startswith(child + "/")]:
                del origins[written]
            continue
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            origins.setdefault(child, origin)  # the mapping: where it was first written
            _merge_into(target[key], value, child, origins, origin)
            continue
        for written in [p for p in origins if p.startswith(child + "/")]:
            del origins[written]
        target[key] = copy.deepcopy(value)
        origins[child] = origin
