"""Desired state: frozen dataclasses built from validated manifests. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class DesiredState(enum.StrEnum):
    """What the manifest asks of the instance's domain."""

    RUNNING = "running"
    STOPPED = "stopped"
    ABSENT = "absent"


class Accelerator(enum.StrEnum):
    """How QEMU runs guest code. AUTO resolves to KVM only where KVM can run a guest."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class ImageFormat(enum.StrEnum):
    """Formats a base image may be declared as."""

    RAW = "raw"
    QCOW2 = "qcow2"


class CpuMode(enum.StrEnum):
    """The guest CPU. DEFAULT lets QEMU pick its default model, which starts everywhere."""

    DEFAULT = "default"
    HOST_PASSTHROUGH = "host-passthrough"
    HOST_MODEL = "host-model"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class ImageSource:
    """A base image: where it comes from, its checksum and format.

    `location` is a resolved local path, or an http(s) URL string. `sha256` is None when the
    manifest leaves it out (allowed for local files only): the content's digest is then
    computed from the file (see reconciler.images.cache.SourceDigests). `convert_to` asks for
    the cached copy in another format (a qcow2 source stored as raw).
    """

    location: Path | str
    sha256: str | None
    format: ImageFormat
    convert_to: ImageFormat | None = None

    @property
    def is_remote(self) -> bool:
        return isinstance(self.location, str)

    @property
    def path(self) -> Path:
        """The local file (only for local sources)."""
        if isinstance(self.location, str):
            raise ValueError(f"{self.location} is not a local file")
        return self.location

    @property
    def cached_format(self) -> ImageFormat:
        """The format of the cached copy (what overlays are built on)."""
        return self.convert_to or self.format


@dataclass(frozen=True, slots=True)
class CpuSpec:
    """The guest CPU mode, and the model name when the mode is CUSTOM."""

    mode: CpuMode = CpuMode.DEFAULT
    model: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One instance as its manifest describes it, units resolved."""

    name: str
    manifest: Path
    state: DesiredState
    vcpus: int
    memory_bytes: int
    image: ImageSource
    disk_bytes: int
    accelerator: Accelerator | None  # None: use the run's default
    cpu: CpuSpec
    shutdown_timeout_seconds: int
    labels: tuple[tuple[str, str], ...] = ()
    allow_replace: bool = False  # the manifest allows a new, empty boot disk where one is lost
