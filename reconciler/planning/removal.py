"""Deleting an instance: for `state: absent` and for a prune; and which files a definition
may have removed at all. Pure."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from reconciler.layout import REMOVABLE_FILE, SNAPSHOT_RECORD, is_config_drive
from reconciler.model.actual import DomainFacts
from reconciler.planning.context import InstancePlan, PlanContext
from reconciler.planning.steps import (
    RecoverDomain,
    RemoveFiles,
    Step,
    StopDomain,
    UndefineDomain,
)

# the only files of an instance directory the reconciler ever removes: those it makes there
# (the boot disk, data disks, config drives, UEFI variables)
_MADE_HERE = REMOVABLE_FILE


def removable_files(
    candidates: Iterable[str | Path], directory: Path
) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """Of the files a definition (or a plan) names for removal, those the reconciler made: a
    file of its own kinds, directly in this instance's `directory` (the path absolute and
    already normal: no `..`, no `.`, no doubled slash); and a note for each other one, which
    is left alone. A definition is editable by whoever can define domains, so what it names
    is checked here, not trusted (the step checks again, symlinks resolved)."""
    kept: list[Path] = []
    refused: list[str] = []
    for candidate in candidates:
        text = str(candidate)
        path = Path(text)
        if (
            os.path.isabs(text)
            and os.path.normpath(text) == text
            and path.parent == directory
            and _MADE_HERE.fullmatch(path.name)
        ):
            kept.append(path)
        else:
            refused.append(
                f"the definition names {text!r} for removal, which is not a file this "
                f"instance's directory {directory} holds: left in place"
            )
    return tuple(kept), tuple(refused)


def plan_removal(
    name: str,
    domain: DomainFacts | None,
    context: PlanContext,
    files: frozenset[str],
    timeout_seconds: int,
    reason: str,
) -> InstancePlan:
    """Delete an instance's domain (for `state: absent`, or a prune): stop it gracefully,
    undefine it (its NVRAM and managed save image with it), remove its config drives and, as
    its recorded deletionPolicy says, its disks (and the records of the snapshots they hold).
    `files`: the names in the instance directory. A protected domain is refused."""
    if domain is None:
        return InstancePlan(name)
    definition = domain.definition
    if definition.protected:
        return InstancePlan(
            name,
            refusal=(
                f"the domain is protected (protect: true is recorded on it), so {reason} does "
                "not delete it; set protect: false with the instance kept, apply, then remove it"
            ),
        )
    steps: list[Step] = []
    if domain.interrupted:
        steps.append(RecoverDomain(name, domain.state_reason))
    elif domain.state.active:
        steps.append(StopDomain(name, timeout_seconds))
    steps.append(UndefineDomain(name, context.paths.directory, not definition.delete_disks))
    directory = context.paths.directory
    named = [directory / name for name in sorted(files) if is_config_drive(name)]
    if definition.delete_disks:  # the snapshots go with the disks: their records too
        named += [directory / name for name in sorted(files) if SNAPSHOT_RECORD.fullmatch(name)]
    if definition.nvram is not None:  # the driver keeps it: removed here, if it is ours
        named.append(Path(definition.nvram))
    doomed, notes = removable_files(named, directory)
    # a disk kept by its policy is not named at all: a path elsewhere is no one's business
    deleted_disks = [
        disk.path
        for disk in definition.disks
        if disk.device == "disk" and (definition.delete_disks or disk.delete_when_removed)
    ]
    disks, disk_notes = removable_files(deleted_disks, directory)
    if doomed or disks:
        steps.append(
            RemoveFiles(name, (*doomed, *disks), directory, "files of the deleted instance")
        )
    return InstancePlan(name, tuple(steps), notes=notes + disk_notes)
