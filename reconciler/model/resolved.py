"""What the resolve phase hands the planner: an instance's spec with its base image resolved
(the digest known), and the facts about the base's cache entry. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler.model.desired import InstanceSpec


@dataclass(frozen=True, slots=True)
class ResolvedInstance:
    """One instance, resolved: the planner's view of its spec and of its base image."""

    spec: InstanceSpec  # image.sha256 always known
    base_path: Path  # the cache entry
    base_cached: bool
    base_changed: bool = False  # the entry's file changed since it was last verified
    source_size: int | None = None  # bytes to download when not cached (None: unknown, cached)
    base_virtual_size: int | None = None  # the disk size the base holds (None: not known yet)
