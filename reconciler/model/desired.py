"""Desired state: frozen dataclasses built from validated manifests. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from reconciler.model.imagelock import ImageName


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

    `location` is a resolved local path, or an http(s) URL string (for an image by name, the
    one the lock file pins). `sha256` is None when the
    manifest leaves it out (allowed for local files only): the content's digest is then
    computed from the file (see reconciler.images.records.SourceDigests). `convert_to` asks for
    the cached copy in another format (a qcow2 source stored as raw).
    """

    location: Path | str
    sha256: str | None
    format: ImageFormat
    convert_to: ImageFormat | None = None
    name: ImageName | None = None  # the catalogue's name it was pinned for (by the lock)

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


class MachineType(enum.StrEnum):
    PC = "pc"  # i440fx
    Q35 = "q35"


class Firmware(enum.StrEnum):
    BIOS = "bios"
    UEFI = "uefi"  # OVMF, with a per-instance NVRAM file


class BootDevice(enum.StrEnum):
    HD = "hd"
    CDROM = "cdrom"
    NETWORK = "network"


class Graphics(enum.StrEnum):
    NONE = "none"
    VNC = "vnc"  # listening on 127.0.0.1 only


class WatchdogAction(enum.StrEnum):
    """What a watchdog device does when the guest stops feeding it."""

    RESET = "reset"
    POWEROFF = "poweroff"
    PAUSE = "pause"


@dataclass(frozen=True, slots=True)
class WatchdogSpec:
    """A watchdog device (the only model: i6300esb) and its action."""

    action: WatchdogAction
    model: str = "i6300esb"


class ProbeKind(enum.StrEnum):
    """How a probe checks the guest (the manifest's key for it)."""

    TCP = "tcp"  # a TCP connection opens
    HTTP = "http"  # an HTTP GET answers with the expected status
    GUEST_AGENT = "guestAgent"  # the QEMU guest agent answers a ping
    EXEC = "exec"  # a command run through the guest agent exits 0
    CLOUD_INIT = "cloudInit"  # cloud-init reports it finished this boot, without errors


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """A readiness or liveness probe: what it checks, and when (Kubernetes' fields, names and
    defaults). `port` for tcp and http; `path` and `expect_status` (None: any 2xx or 3xx)
    for http; `command` for exec."""

    kind: ProbeKind
    port: int | None = None
    path: str = "/"
    expect_status: int | None = None
    command: tuple[str, ...] = ()
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    def describe(self) -> str:
        """What it checks, in words: `tcp port 22`, `http GET :80/healthz`, ..."""
        if self.kind is ProbeKind.TCP:
            return f"tcp port {self.port}"
        if self.kind is ProbeKind.HTTP:
            expect = f" (expect {self.expect_status})" if self.expect_status else ""
            return f"http GET :{self.port}{self.path}{expect}"
        if self.kind is ProbeKind.EXEC:
            return "exec " + " ".join(self.command)[:80]
        if self.kind is ProbeKind.GUEST_AGENT:
            return "guest agent ping"
        return "cloud-init done"


class UpdatePolicy(enum.StrEnum):
    """What a pass may do to a running instance for a change that takes a restart."""

    NEXT_BOOT = "next-boot"  # define only: the change waits for the next start
    RESTART = "restart"  # graceful shutdown, define, start


class RunPolicy(enum.StrEnum):
    """What happens when the domain stops without the manifest asking (KubeVirt's run
    strategies)."""

    ALWAYS = "Always"  # start it again
    RERUN_ON_FAILURE = "RerunOnFailure"  # again after a crash or a dead QEMU, not a shutdown
    MANUAL = "Manual"  # never again after the first start
    HALTED = "Halted"  # keep it off


class DiskBus(enum.StrEnum):
    VIRTIO = "virtio"
    SCSI = "scsi"
    SATA = "sata"


class DeletionPolicy(enum.StrEnum):
    RETAIN = "retain"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class DataDiskSpec:
    """An empty disk of the instance beside its boot disk."""

    name: str
    size_bytes: int
    bus: DiskBus = DiskBus.VIRTIO
    format: ImageFormat = ImageFormat.QCOW2
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN

    @property
    def file_name(self) -> str:
        return f"data-{self.name}.{self.format.value}"


class NicType(enum.StrEnum):
    """How a network interface reaches the outside."""

    USER = "user"  # QEMU's user-mode networking: no bridge, no daemon, no privileges
    NETWORK = "network"  # a libvirt network, by name
    BRIDGE = "bridge"  # an existing host bridge
    DIRECT = "direct"  # macvtap on a host device


class NicModel(enum.StrEnum):
    VIRTIO = "virtio"
    E1000 = "e1000"
    RTL8139 = "rtl8139"


class PortProtocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class PortForward:
    """A host port forwarded to a guest port (user-mode networking only)."""

    host: int
    guest: int
    protocol: PortProtocol = PortProtocol.TCP
    address: str = "127.0.0.1"  # the host address the port listens on
    guest_address: str | None = None  # None: the guest's first DHCP address (10.0.2.15)

    def describe(self) -> str:
        guest = f"{self.guest_address}:{self.guest}" if self.guest_address else str(self.guest)
        return f"{self.address}:{self.host} -> guest {guest}/{self.protocol.value}"


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """One network interface as the manifest asks for it. `source` names the libvirt network,
    the bridge or the host device (None for user-mode); `mac` is None when derived."""

    type: NicType = NicType.USER
    source: str | None = None
    model: NicModel = NicModel.VIRTIO
    mac: str | None = None
    ports: tuple[PortForward, ...] = ()


# what an instance gets when its manifest says nothing about networks
DEFAULT_NETWORKS = (NetworkSpec(),)


@dataclass(frozen=True, slots=True)
class InjectedFile:
    """A file written into the guest by cloud-init (write_files)."""

    path: str  # absolute, in the guest
    content: bytes
    permissions: str | None = None  # octal, e.g. "0644"
    owner: str | None = None  # user:group


@dataclass(frozen=True, slots=True)
class GuestConfig:
    """What the config drive tells the guest; contents already read from their files.
    `configured` is False when the manifest asks for no guest configuration at all (then the
    instance gets no config drive)."""

    hostname: str | None = None  # None: the instance's name
    user_data: bytes | None = None
    network_config: bytes | None = None
    authorized_keys: tuple[str, ...] = ()
    files: tuple[InjectedFile, ...] = ()
    instance_id: str | None = None  # None: the domain's UUID

    @property
    def configured(self) -> bool:
        return self != GuestConfig()


class SnapshotTrigger(enum.StrEnum):
    """The classes of change that a restore point is taken before (the plan's disruptions)."""

    RESTART = "restart"  # the guest is shut down for it (a machine type, memory past maximum)
    REPLACE = "replace"  # a new boot disk (a new base, allowReplace)


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When the reconciler snapshots an instance's disks by itself, and how many it keeps.
    `keep` bounds each kind of automatic snapshot (before a change, on the schedule) apart;
    snapshots taken on request are never removed by it."""

    before_change: frozenset[SnapshotTrigger] = frozenset({SnapshotTrigger.REPLACE})
    keep: int = 3
    schedule_seconds: int | None = None  # None: no scheduled snapshots
    expiry_seconds: int | None = None  # scheduled snapshots older than this go (None: never)


class OnFailure(enum.StrEnum):
    """What a rollout does when a changed instance does not become ready in time."""

    PAUSE = "pause"  # the others keep their old definition; status says why
    REVERT = "revert"  # the failed instances go back to their snapshot before the change


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """How a change that restarts or replaces running instances goes through a group of them
    (an instance set, the instances sharing a profile, or one instance): at most
    `max_unavailable` (or `max_unavailable_percent` of the group) not available at a time,
    each ready for `min_ready_seconds` before the next, within `progress_deadline_seconds`."""

    group: str  # "set/NAME", "profile/NAME" or "instance/NAME"
    max_unavailable: int = 1
    max_unavailable_percent: int | None = None  # instead of max_unavailable, rounded down
    min_ready_seconds: int = 0
    progress_deadline_seconds: int = 600
    on_failure: OnFailure = OnFailure.PAUSE

    def allowed(self, members: int) -> int:
        """How many of `members` may be unavailable at once (at least 1)."""
        if self.max_unavailable_percent is None:
            return max(1, self.max_unavailable)
        return max(1, members * self.max_unavailable_percent // 100)

    def describe(self) -> str:
        limit = (
            f"{self.max_unavailable_percent}%"
            if self.max_unavailable_percent is not None
            else str(self.max_unavailable)
        )
        return (
            f"maxUnavailable {limit}, minReadySeconds {self.min_ready_seconds}, "
            f"progressDeadlineSeconds {self.progress_deadline_seconds}, "
            f"onFailure {self.on_failure.value}"
        )


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
    host: str | None = None  # the host whose reconciler manages it (--host); None: no host's
    allow_replace: bool = False  # the manifest allows a new, empty boot disk where one is lost
    guest: GuestConfig = GuestConfig()
    networks: tuple[NetworkSpec, ...] = DEFAULT_NETWORKS
    disks: tuple[DataDiskSpec, ...] = ()
    machine: MachineType = MachineType.PC
    firmware: Firmware = Firmware.BIOS
    boot: tuple[BootDevice, ...] = (BootDevice.HD,)
    description: str | None = None
    graphics: Graphics = Graphics.NONE
    rng: bool = False
    guest_agent: bool = False
    watchdog: WatchdogSpec | None = None
    autostart: bool = False
    update_policy: UpdatePolicy = UpdatePolicy.NEXT_BOOT
    max_memory_bytes: int | None = None  # None: memory is the maximum
    max_vcpus: int | None = None  # None: vcpus is the maximum
    protect: bool = False  # nothing deletes the domain while its recorded protection is on
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN  # the disks, on absent and prune
    run_policy: RunPolicy = RunPolicy.ALWAYS
    readiness: ProbeSpec | None = None  # None: a running domain is ready
    liveness: ProbeSpec | None = None  # None: a running domain is live
    snapshots: SnapshotPolicy = SnapshotPolicy()
    # the profiles merged into it, each with a digest of its content: a changed profile
    # changes the spec of every instance that lists it (and the daemon reconciles those)
    profiles: tuple[tuple[str, str], ...] = ()
    rollout: RolloutPolicy | None = None  # None: a change goes through at once
