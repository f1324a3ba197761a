"""`reconcile validate PATH...`: the schema and the cross-file checks, nothing else: no
libvirt, no state directory, no root. For pre-commit hooks and CI jobs.

Output: compiler-style text (`file:line:col: pointer: message`), a JSON document (`-o json`,
shape in the README) or GitHub Actions annotations (`--format github`). Exit status 0 when
every manifest is valid, 2 otherwise (as for invalid input everywhere else)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from reconciler.cli.options import Exit, Options
from reconciler.errors import ConfigError, ManifestError
from reconciler.manifests.loader import LoadResult, load_paths

VALIDATE_JSON_VERSION = 1


def add_validate_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    """`validate` takes the common options (so that scripts can pass them everywhere) and
    uses none of them."""
    validate = commands.add_parser(
        "validate",
        parents=[common],
        help="check manifests against the schema and each other; nothing else is touched",
    )
    validate.add_argument(
        "paths", metavar="PATH", type=Path, nargs="+", help="manifest files or directories"
    )
    validate.add_argument(
        "-o",
        "--output",
        "--format",
        dest="output",
        choices=("text", "json", "github"),
        default="text",
        help="text (file:line:col: message), json, or github (Actions annotations)",
    )


def run_validate(options: Options, out: TextIO) -> int:
    missing = [str(path) for path in options.paths if not path.exists()]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: no such file or directory")
    load = load_paths(options.paths, catalogue=options.catalogue())
    render = {"text": _text, "json": _json, "github": _github}[options.output]
    for line in render(load):
        print(line, file=out)
    if options.output == "text":
        for line in _unused_lock_entries(options.paths, load):
            print(line, file=out)
    return Exit.INVALID if load.errors else Exit.OK


def _unused_lock_entries(paths: tuple[Path, ...], load: LoadResult) -> list[str]:
    """A note for each entry of a lock file that no instance uses (not an error: `images
    lock` drops them)."""
    from reconciler.images.byname import lock_path, read_lock
    from reconciler.model.imagelock import lock_key

    used = {name.key for name in load.unlocked}
    for spec in load.instances:
        if spec.image.name is not None:
            name = spec.image.name
            used.update((name.key, lock_key(name.name, name.arch)))
    notes: list[str] = []
    for path in dict.fromkeys(lock_path(p) for p in paths):
        try:
            entries = read_lock(path)
        except ConfigError:
            continue  # said as an error of each instance that names an image
        notes.extend(
            f"note: {path}: {key} is used by no manifest (`reconcile images lock` drops it)"
            for key in sorted(set(entries) - used)
        )
    return notes


def _summary(load: LoadResult) -> str:
    head = f"{len(load.files)} file(s), {len(load.instances)} valid instance(s)"
    if not load.errors:
        return f"valid: {head}"
    return f"invalid: {head}, {len(load.errors)} error(s)"


def _text(load: LoadResult) -> list[str]:
    return [*(f"error: {error}" for error in load.errors), _summary(load)]


def error_json(error: ManifestError) -> dict[str, object]:
    return {
        "file": str(error.location.path),
        "line": error.location.line,
        "column": error.location.column,
        "pointer": error.pointer,
        "message": error.message,
        "hint": error.hint or None,
        "text": str(error),
    }


def _json(load: LoadResult) -> list[str]:
    document = {
        "version": VALIDATE_JSON_VERSION,
        "valid": not load.errors,
        "files": len(load.files),
        "instances": sorted(spec.name for spec in load.instances),
        "errors": [error_json(error) for error in load.errors],
    }
    return [json.dumps(document, indent=2)]


def _github(load: LoadResult) -> list[str]:
    """One `::error` workflow command per error (GitHub shows it on the file's line)."""
    lines = []
    for error in load.errors:
        where = error.location
        text = f"{error.pointer or '/'}: {error.message}"
        if error.hint:
            text += f" ({error.hint})"
        lines.append(
            f"::error file={_property(str(where.path))},line={where.line},col={where.column},"
            f"title=reconcile validate::{_data(text)}"
        )
    return [*lines, _summary(load)]


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
