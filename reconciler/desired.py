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
    """A base image: where it comes from (resolved local path), its checksum and format.

    `sha256` is None when the manifest leaves it out (allowed for local files): the content's
    digest is then computed from the file (see imagecache.SourceDigests).
    """

    path: Path
    sha256: str | None
    format: ImageFormat


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
