"""What an instance's manifest comes to once its profiles are merged in, each field with the
file and line that wrote it (`reconcile export --resolved NAME DIR`). Pure apart from reading
the manifest files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError
from reconciler.manifests.loader import find_manifest_files, parse_manifest_file, profile_index
from reconciler.manifests.profiles import PROFILE_KIND, MergedDocument, merge_profiles
from reconciler.manifests.yamlsource import YamlDocument, escape_pointer_token


def resolved_lines(root: Path, name: str) -> list[str]:
    """The instance `name` of the manifests under `root` as YAML, its profiles merged in,
    each value followed by `# FILE:LINE` of what wrote it (relative to `root`)."""
    confine = Path(os.path.realpath(root if root.is_dir() else root.parent))
    parsed = [
        (path, confine, parse_manifest_file(path, confine)) for path in find_manifest_files(root)
    ]
    index, _errors = profile_index(parsed)
    for path, _confine, (documents, _failure, _stamp) in parsed:
        for document in documents:
            data = document.data
            if not isinstance(data, dict) or data.get("kind") == PROFILE_KIND:
                continue
            if (data.get("metadata") or {}).get("name") != name:
                continue
            merged, problems, used = merge_profiles(path, document, index)
            if problems:
                raise ConfigError("; ".join(f"{path}: {p}: {m}" for p, m in problems))
            shown: YamlDocument = merged if merged is not None else document
            base = root if root.is_dir() else root.parent
            head = [f"# {name}: {path.relative_to(base) if path.is_relative_to(base) else path}"]
            if used:
                head.append("# profiles merged, in order: " + ", ".join(p.name for p in used))
            return head + _render(shown.data, "", 0, shown, path, base)
    raise ConfigError(f"no instance named {name!r} in the manifests under {root}")


def _origin(document: YamlDocument, path: Path, pointer: str, base: Path) -> str:
    source = document.source_of(pointer)[0] if isinstance(document, MergedDocument) else path
    shown = source.relative_to(base) if source.is_relative_to(base) else source
    return f"{shown}:{document.mark_of(pointer).line}"


def _render(
    value: Any, pointer: str, depth: int, document: YamlDocument, path: Path, base: Path
) -> list[str]:
    lines = []
    indent = "  " * depth
    for key, item in value.items():
        child = f"{pointer}/{escape_pointer_token(str(key))}"
        if isinstance(item, dict) and item:
            lines.append(f"{indent}{key}:")
            lines += _render(item, child, depth + 1, document, path, base)
        else:
            text = json.dumps(item, default=str)
            lines.append(f"{indent}{key}: {text}  # {_origin(document, path, child, base)}")
    return lines
