"""A soak under chaos: a live daemon managing instances of the test guest while faults are
thrown at it from a seeded generator, with invariants checked all the time.

The daemon runs on a libvirtd this tool starts itself (`--driver libvirtd`, in a private
mount namespace: tests/libvirtd.py) or on the QMP driver (`--driver qmp`). Each guest writes
an increasing counter to its data disk (the test guest's `reconciler-guest: counter`).

Faults, at random times (exponential gaps, mean --fault-every seconds) from --seed:
  kill-guest     SIGKILL of a running guest's QEMU
  kill-daemon    SIGKILL of the reconciler daemon, restarted after 0 to 5 s
  kill-libvirtd  SIGKILL of libvirtd, restarted after 0 to 5 s (libvirtd only)
  edit-memory    memory 128MiB <-> 160MiB (a restart-class change, taken at the next boot)
  edit-disk      the data disk grows by 4 MiB (live)
  toggle-state   running <-> stopped
  delete         state: absent (the domain goes, the disks stay), running again later
  add            a new instance; remove: its manifest file removed (an orphan, kept)
  invalid        a manifest broken (memory: lots), fixed 10 to 30 s later
  tamper-cache   bytes appended to the cached base (quarantined and fetched again)
  fill-disk      the state directory's file system filled for 10 to 30 s (a tmpfs the
                 tool mounts; skipped where mounting is not allowed)
  edit-profile   the profile every instance and member lists: vcpus 1 <-> 2 (updatePolicy
                 restart there: a rolling restart of its group, at most 3 at a time)
  invalid-profile  the profile broken (vcpus: many), fixed 10 to 30 s later
  edit-set       the instance set's template: memory 128MiB <-> 160MiB (a rolling restart,
                 one member at a time, onFailure: revert)
  scale-set      the set's replicas, 2 to 4 (a member scaled down keeps its disks)
  snapshot       `reconcile snapshot NAME --name soak-N`
  revert         `reconcile revert NAME soak-N` (in a thread of its own, so that other faults
                 land while it runs; run again if it was cut short), then `reconcile resume
                 NAME` 10 to 40 s later

Every instance and member lists one profile (the image, vcpus, the cloud-init that makes the
test guest count, updatePolicy restart and a rollout); the instance set has 3 members to
start with and a rollout of its own.

Invariants, checked every --check-every seconds and once more at the end:
  one-qemu-per-disk   no disk of the state directory open in two QEMU processes
  counter             a guest's counter never goes backwards (its disk never replaced,
                      truncated or rolled back), except across an asked-for revert: the
                      soak's own (the first boot after it reads a value the guest had
                      printed around the snapshot), or a failed rollout's (the daemon's log
                      says so)
  disks-kept          no disk file of an instance is deleted or replaced (its inode), and
                      none shrinks (its virtual size) but across an asked-for revert
  foreign-untouched   the planted foreign files (and, on libvirtd, a foreign domain) are as
                      they were
  bounded             the daemon's resident memory and open descriptors stay under bounds
  status-well-formed  every status answer has the documented shape
After the last fault, every instance must converge (and a running one be ready, its guest
counting on; a restart-class edit waits for the next boot, as updatePolicy next-boot asks)
within --converge-seconds.

Writes a JSON report (--report) and prints a summary; exit 1 on any violation or no
convergence. A violation prints the events that came before it; the same --seed replays the
same faults in the same order.

    .venv/bin/python bench/soak.py [--minutes 30] [--seed N] [--driver libvirtd|qmp]
        [--instances 12] [--fault-every 8] [--report soak.json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from reconciler.errors import DaemonUnavailable  # noqa: E402
from reconciler.loop.control import request  # noqa: E402
from tests.guest import IMAGES, guest_image  # noqa: E402
from tests.libvirtd import Libvirtd  # noqa: E402

MAX_RSS_MIB = 400
MAX_FDS = 512
MEMORY = ("128MiB", "160MiB")
VCPUS = (1, 2)
MAX_REPLICAS = 4
RESUME_ATTEMPTS = 5
HEAD_BYTES = 256  # a console log's first bytes: its boot's (a boot's time is in them)
USER_DATA = "#cloud-config\n# reconciler-guest: counter\n"
CHILD_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
CHILD_ENV["RECONCILER_CONFIG"] = ""


@dataclass
class Instance:
    name: str
    memory: str = MEMORY[0]
    data_mib: int = 16
    state: str = "running"
    present: bool = True  # its manifest file exists (a member: its ordinal is below replicas)
    broken: bool = False  # its manifest is invalid until fixed
    member: bool = False  # a member of the instance set (not a manifest of its own)


@dataclass
class Snapshot:
    """A snapshot the soak took, and the counter values its data disk may hold."""

    label: str
    low: int
    high: int


@dataclass
class RevertWindow:
    """A revert asked for: until the first boot after it, a boot may read any value of its
    snapshot's range, lower than the counter printed last. A boot is after it when its QEMU
    started after the revert was asked for (a boot that began before, whose value happens
    to lie in the range, does not close the window)."""

    label: str
    low: int
    high: int
    asked: float = 0.0  # when, in seconds since the host booted (as /proc says of processes)
    done: bool = False  # the command succeeded
    seen_boot: bool = False  # a boot after it read a value of the range
    attempts: int = 1


@dataclass(order=True)
class Pending:
    """What a fault left to do later: a fix, a revival, a restore, a free, a resume."""

    when: float
    action: str
    name: str = ""
    label: str = ""
    attempt: int = 0


@dataclass
class Report:
    seed: int
    driver: str
    minutes: float
    faults: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    violations: list[dict[str, Any]] = field(default_factory=list)
    converge_seconds: float | None = None
    converged: bool = False
    peak_rss_mib: float = 0.0
    peak_fds: int = 0
    daemon_restarts: int = 0
    commands_failed: Counter[str] = field(default_factory=Counter)
    reverts_accepted: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "driver": self.driver, "minutes": self.minutes,
            "faults": dict(sorted(self.faults.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "checks": dict(sorted(self.checks.items())),
            "violations": self.violations,
            "converged": self.converged, "convergeSeconds": self.converge_seconds,
            "peakRssMiB": round(self.peak_rss_mib, 1), "peakFds": self.peak_fds,
            "daemonRestarts": self.daemon_restarts,
            "commandsFailed": dict(sorted(self.commands_failed.items())),
            "revertsAccepted": dict(sorted(self.reverts_accepted.items())),
        }  # fmt: skip


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.report = Report(args.seed, args.driver, args.minutes)
        self.root = Path(tempfile.mkdtemp(prefix="rcsoak-", dir="/tmp"))
        self.manifests = self.root / "m"
        self.state = self.root / "s"
        self.manifests.mkdir()
        self.state.mkdir()
        self.events: deque[str] = deque(maxlen=40)
        self.lock = threading.Lock()
        self.counting = threading.RLock()  # the console logs are read by one thread at a time
        self.prefix = f"rcs{args.seed % 1000:03d}{self.rng.randrange(16**3):03x}"
        self.profile = f"{self.prefix}-base"
        self.profile_vcpus = VCPUS[0]
        self.profile_broken = False
        self.set_name = f"{self.prefix}-w"
        self.set_memory = MEMORY[0]
        self.replicas = 3
        self.instances: dict[str, Instance] = {}
        self.counters: dict[str, int] = {}  # the last value each guest printed
        self.snapshots: dict[str, list[Snapshot]] = {}
        self.snapshots_taken = 0
        self.reverts: dict[str, RevertWindow] = {}  # open windows, by instance
        self.reverts_closed: dict[str, float] = {}  # when each last window closed
        self.rollout_reverts: Counter[str] = Counter()  # the daemon's log says, by member
        self.log_offset = 0
        self.disks: dict[Path, tuple[int, int]] = {}  # inode, virtual size
        self.workers: list[threading.Thread] = []
        self.printed: Counter[str] = Counter()  # counter lines each guest printed
        self.calm_printed: Counter[str] = Counter()
        self.offsets: dict[str, int] = {}  # how far each console log was read
        self.heads: dict[str, bytes] = {}  # and how it starts (which boot's it is)
        self.foreign: dict[Path, str] = {}
        self.libvirtd: Libvirtd | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.tmpfs = False
        self.stop_checking = threading.Event()
        self.pending: list[Pending] = []  # guarded by self.lock: a revert's thread adds too

    # -- set-up -------------------------------------------------------------------------

    def setup(self) -> None:
        guest_image("qcow2")
        if self.args.tmpfs_mib:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.args.tmpfs_mib}m", "soak",
                 str(self.state)], capture_output=True, check=False,
            )  # fmt: skip
            self.tmpfs = done.returncode == 0
        if self.args.driver == "libvirtd":
            self.libvirtd = Libvirtd(self.root / "libvirtd")
            self.libvirtd.prepare()
            self.libvirtd.start()
        self.plant_foreign()
        self.write_profile()
        for _ in range(self.args.instances):
            self.write(self.new_instance())
        for ordinal in range(MAX_REPLICAS):
            member = Instance(f"{self.set_name}-{ordinal}", member=True)
            member.present = ordinal < self.replicas
            self.instances[member.name] = member
        self.write_set()
        self.start_daemon()

    def plant_foreign(self) -> None:
        """Files and a domain that are not the reconciler's: they must stay as they are."""
        notes = self.manifests / "NOTES.txt"
        notes.write_text("not a manifest\n")
        planted = self.state / "foreign-file"
        planted.write_text("a file of someone else's\n")
        self.foreign = {path: _digest(path) for path in (notes, planted)}
        if self.libvirtd is not None:
            xml = (
                f"<domain type='qemu'><name>{self.prefix}-foreign</name><memory>65536</memory>"
                "<os><type>hvm</type></os></domain>"
            )
            definition = self.root / "foreign.xml"
            definition.write_text(xml)
            self.libvirtd.virsh("define", str(definition))

    def new_instance(self) -> Instance:
        instance = Instance(f"{self.prefix}-{sum(not i.member for i in self.instances.values())}")
        self.instances[instance.name] = instance
        return instance

    def write(self, instance: Instance) -> None:
        spec: dict[str, Any] = {
            "profiles": [self.profile], "memory": instance.memory,
            "disks": [{"name": "data", "size": f"{instance.data_mib}MiB"}],
            "state": instance.state,
        }  # fmt: skip
        if instance.broken:
            spec["memory"] = "lots"
        self.write_document("Instance", instance.name, spec)

    def write_profile(self) -> None:
        """What every instance and member shares; its group rolls a restart 3 at a time."""
        spec: dict[str, Any] = {
            "vcpus": "many" if self.profile_broken else self.profile_vcpus,
            "accelerator": "tcg",
            "image": {"source": str(guest_image("qcow2")), "format": "qcow2"},
            "disk": {"size": "256MiB"}, "shutdownTimeoutSeconds": 20,
            "cloudInit": {"userData": USER_DATA}, "updatePolicy": "restart",
            "rollout": {"maxUnavailable": 3, "minReadySeconds": 5, "onFailure": "pause"},
        }  # fmt: skip
        self.write_document("Profile", self.profile, spec)

    def write_set(self) -> None:
        template = {"profiles": [self.profile], "memory": self.set_memory,
                    "disks": [{"name": "data", "size": "16MiB"}]}  # fmt: skip
        rollout = {"maxUnavailable": 1, "minReadySeconds": 5, "progressDeadlineSeconds": 300,
                   "onFailure": "revert"}  # fmt: skip
        spec = {"replicas": self.replicas, "template": template, "rollout": rollout}
        self.write_document("InstanceSet", self.set_name, spec)

    def write_document(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        document = {"apiVersion": "reconciler/v1alpha1", "kind": kind,
                    "metadata": {"name": name}, "spec": spec}  # fmt: skip
        target = self.manifests / f"{name}.yaml"
        temporary = self.manifests / f".{name}.yaml.tmp"
        temporary.write_text(yaml.safe_dump(document))
        os.replace(temporary, target)

    def connection(self) -> list[str]:
        if self.libvirtd is not None:
            return ["--connect", self.libvirtd.uri]
        return ["--driver", "qmp"]

    def command(self, *words: str) -> subprocess.CompletedProcess[str]:
        """A reconcile command on the state directory (asked of the daemon while it runs)."""
        argv = [sys.executable, "-m", "reconciler", *words, "--state-dir", str(self.state),
                *self.connection()]  # fmt: skip
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                  env=CHILD_ENV, cwd=PROJECT, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as err:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out: {err}")

    def start_daemon(self) -> None:
        command = [sys.executable, "-m", "reconciler", str(self.manifests), "--state-dir",
                   str(self.state), "--image-dir", str(IMAGES), "--resync", "1m",
                   "--download-attempts", "2", *self.connection()]  # fmt: skip
        log = (self.root / "daemon.log").open("ab")
        self.daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       env=CHILD_ENV, cwd=PROJECT)  # fmt: skip

    # -- faults -------------------------------------------------------------------------

    def run(self) -> int:
        checker = threading.Thread(target=self.check_loop, name="checker", daemon=True)
        try:
            self.setup()
            checker.start()
            end = time.monotonic() + self.args.minutes * 60
            while time.monotonic() < end:
                gap = self.rng.expovariate(1 / self.args.fault_every)
                self.sleep_until(min(end, time.monotonic() + gap))
                if time.monotonic() >= end:
                    break
                self.fault(self.rng.choice(self.kinds()))
            self.calm()
            self.converge()
            self.stop_checking.set()
            checker.join(timeout=30)
            self.check_all()
        finally:
            self.stop_checking.set()
            self.teardown()
        return self.finish()

    def kinds(self) -> list[str]:
        kinds = ["kill-guest", "kill-guest", "kill-daemon", "edit-memory", "edit-disk",
                 "toggle-state", "delete", "add", "remove", "invalid", "tamper-cache",
                 "edit-profile", "invalid-profile", "edit-set", "scale-set", "snapshot",
                 "snapshot", "revert"]  # fmt: skip
        if self.libvirtd is not None:
            kinds.append("kill-libvirtd")
        if self.tmpfs:
            kinds.append("fill-disk")
        return kinds

    def sleep_until(self, when: float) -> None:
        while time.monotonic() < when:
            self.run_pending()
            time.sleep(min(0.5, max(0.0, when - time.monotonic())))
        self.run_pending()

    def run_pending(self, everything: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            due = sorted(item for item in self.pending if everything or item.when <= now)
            self.pending = [item for item in self.pending if item not in due]
        for item in due:
            self.later(item)

    def schedule(self, delay: float, action: str, name: str = "", label: str = "",
                 attempt: int = 0) -> None:  # fmt: skip
        with self.lock:
            self.pending.append(Pending(time.monotonic() + delay, action, name, label, attempt))

    def note(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        with self.lock:
            self.events.append(line)
        if self.args.verbose:
            print(line, flush=True)

    def pick(self, **wanted: Any) -> Instance | None:
        wanted.setdefault("member", False)  # the set's members are edited through the set
        if wanted["member"] is None:
            del wanted["member"]
        chosen = [i for i in self.instances.values()
                  if all(getattr(i, key) == value for key, value in wanted.items())]  # fmt: skip
        return self.rng.choice(chosen) if chosen else None

    def fault(self, kind: str) -> None:
        done = getattr(self, "fault_" + kind.replace("-", "_"))()
        if done is False:
            self.report.skipped[kind] += 1
            return
        self.report.faults[kind] += 1

    def fault_kill_guest(self) -> bool:
        instance = self.pick(state="running", present=True, member=None)
        pid = None if instance is None else self.qemu_pid(instance.name)
        if instance is None or pid is None:
            return False
        self.note(f"kill-guest {instance.name} pid {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return True

    def fault_kill_daemon(self) -> bool:
        assert self.daemon is not None
        self.note(f"kill-daemon pid {self.daemon.pid}")
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait(timeout=30)
        self.sleep_until(time.monotonic() + self.rng.uniform(0, 5))
        self.start_daemon()
        self.report.daemon_restarts += 1
        return True

    def fault_kill_libvirtd(self) -> bool:
        assert self.libvirtd is not None
        self.note("kill-libvirtd")
        self.libvirtd.kill()
        self.sleep_until(time.monotonic() + self.rng.uniform(0, 5))
        self.libvirtd.start()
        return True

    def fault_edit_memory(self) -> bool:
        instance = self.pick(present=True, broken=False)
        if instance is None:
            return False
        instance.memory = MEMORY[1] if instance.memory == MEMORY[0] else MEMORY[0]
        self.note(f"edit-memory {instance.name} {instance.memory}")
        self.write(instance)
        return True

    def fault_edit_disk(self) -> bool:
        instance = self.pick(present=True, broken=False)
        if instance is None or instance.data_mib >= 64:
            return False
        instance.data_mib += 4
        self.note(f"edit-disk {instance.name} data {instance.data_mib}MiB")
        self.write(instance)
        return True

    def fault_toggle_state(self) -> bool:
        instance = self.pick(present=True, broken=False)
        if instance is None or instance.state == "absent":
            return False
        instance.state = "stopped" if instance.state == "running" else "running"
        self.note(f"toggle-state {instance.name} {instance.state}")
        self.write(instance)
        return True

    def fault_delete(self) -> bool:
        instance = self.pick(present=True, broken=False, state="running")
        if instance is None:
            return False
        instance.state = "absent"
        self.note(f"delete {instance.name} (state: absent)")
        self.write(instance)
        self.schedule(self.rng.uniform(10, 40), "revive", instance.name)
        return True

    def fault_add(self) -> bool:
        if sum(not i.member for i in self.instances.values()) >= self.args.instances + 4:
            return False  # (the set's members are not counted: they are the set's to add)
        instance = self.new_instance()
        self.note(f"add {instance.name}")
        self.write(instance)
        return True

    def fault_remove(self) -> bool:
        instance = self.pick(present=True, broken=False)
        if instance is None:
            return False
        self.note(f"remove {instance.name} (manifest file removed: an orphan, kept)")
        (self.manifests / f"{instance.name}.yaml").unlink()
        instance.present = False
        self.schedule(self.rng.uniform(10, 40), "restore", instance.name)
        return True

    def fault_invalid(self) -> bool:
        instance = self.pick(present=True, broken=False)
        if instance is None:
            return False
        instance.broken = True
        self.note(f"invalid {instance.name} (memory: lots)")
        self.write(instance)
        self.schedule(self.rng.uniform(10, 30), "fix", instance.name)
        return True

    def fault_tamper_cache(self) -> bool:
        bases = sorted(self.state.glob("images/sha256-*.qcow2"))
        if not bases:
            return False
        base = self.rng.choice(bases)
        self.note(f"tamper-cache {base.name} (bytes appended)")
        os.chmod(base, 0o600)
        with base.open("ab") as out:
            out.write(b"tampered by the soak\n")
        return True

    def fault_fill_disk(self) -> bool:
        filler = self.state / "soak-filler"
        if filler.exists():
            return False
        self.note("fill-disk (the state directory's file system full)")
        with contextlib.suppress(OSError), filler.open("wb") as out:
            chunk = b"\0" * (1 << 20)
            while True:
                out.write(chunk)
                out.flush()
        self.schedule(self.rng.uniform(10, 30), "free")
        return True

    def fault_edit_profile(self) -> bool:
        if self.profile_broken:
            return False
        self.profile_vcpus = VCPUS[1] if self.profile_vcpus == VCPUS[0] else VCPUS[0]
        self.note(f"edit-profile vcpus {self.profile_vcpus} (a rolling restart of its group)")
        self.write_profile()
        return True

    def fault_invalid_profile(self) -> bool:
        if self.profile_broken:
            return False
        self.profile_broken = True
        self.note("invalid-profile (vcpus: many): every instance that lists it has an error")
        self.write_profile()
        self.schedule(self.rng.uniform(10, 30), "fix-profile")
        return True

    def fault_edit_set(self) -> bool:
        self.set_memory = MEMORY[1] if self.set_memory == MEMORY[0] else MEMORY[0]
        self.note(f"edit-set memory {self.set_memory} (a rolling restart, one at a time)")
        self.write_set()
        return True

    def fault_scale_set(self) -> bool:
        self.replicas = self.rng.choice([n for n in range(2, MAX_REPLICAS + 1)
                                         if n != self.replicas])  # fmt: skip
        for ordinal in range(MAX_REPLICAS):
            self.instances[f"{self.set_name}-{ordinal}"].present = ordinal < self.replicas
        self.note(f"scale-set replicas {self.replicas}")
        self.write_set()
        return True

    def fault_snapshot(self) -> bool:
        instance = self.pick(present=True)
        if instance is None or instance.state == "absent":
            return False
        self.snapshots_taken += 1
        label = f"soak-{self.snapshots_taken}"
        low = self.floor(instance.name)
        self.note(f"snapshot {instance.name} {label}")
        done = self.command("snapshot", instance.name, "--name", label)
        high = self.ceiling(instance.name)
        if done.returncode != 0:
            self.command_failed("snapshot", instance.name, done)
            return True
        self.snapshots.setdefault(instance.name, []).append(Snapshot(label, low, high))
        return True

    def fault_revert(self) -> bool:
        chosen = [i for i in self.instances.values()
                  if i.present and not i.member and i.state != "absent"
                  and i.name in self.snapshots and i.name not in self.reverts]  # fmt: skip
        if not chosen:
            return False
        instance = self.rng.choice(chosen)
        snapshot = self.rng.choice(self.snapshots[instance.name])
        resume_after = self.rng.uniform(10, 40)
        with self.counting:
            self.reverts[instance.name] = RevertWindow(
                snapshot.label, snapshot.low, snapshot.high, _since_boot()
            )
        self.note(f"revert {instance.name} {snapshot.label} (counter {snapshot.low} to "
                  f"{snapshot.high} then)")  # fmt: skip
        worker = threading.Thread(target=self.revert, args=(instance.name, resume_after),
                                  name=f"revert-{instance.name}", daemon=True)  # fmt: skip
        self.workers.append(worker)
        worker.start()
        return True

    def revert(self, name: str, resume_after: float) -> None:
        """`reconcile revert`, then a resume later; cut short (a daemon killed under it),
        it is run again, which finishes it."""
        window = self.reverts[name]
        done = self.command("revert", name, window.label)
        if done.returncode != 0:
            self.command_failed("revert", name, done)
            if window.attempts < 10:
                self.schedule(5, "revert-again", name, window.label)
            return
        self.note(f"reverted {name} to {window.label}")
        with self.counting:
            window.done = True
            if window.seen_boot:
                self.close_window(name)
        self.schedule(resume_after, "resume", name)

    def command_failed(self, what: str, name: str, done: subprocess.CompletedProcess[str]) -> None:
        self.report.commands_failed[what] += 1
        said = (done.stderr or done.stdout).strip().splitlines()
        self.note(f"{what} {name} failed ({done.returncode}): {said[-1] if said else ''}")

    def floor(self, name: str) -> int:
        """The lowest counter value the guest's data disk may hold now."""
        with self.counting:
            self.check_counters(count=False)
            last = self.counters.get(name, 0)
            window = self.reverts.get(name)
            return last if window is None else min(last, window.low)

    def ceiling(self, name: str) -> int:
        """The highest value the disk held a moment ago: the guest writes a value (fsync),
        prints it, sleeps a second, writes the next; a value it prints two prints from now
        was written after now, so what it held is lower. A guest that prints nothing for
        15 s (stopped, killed, starved) may hold one more than it printed."""
        deadline = time.monotonic() + 15
        with self.counting:
            self.check_counters(count=False)
            first = self.counters.get(name, 0)
        new: set[int] = set()
        while time.monotonic() < deadline and len(new) < 2:
            time.sleep(0.5)
            with self.counting:
                self.check_counters(count=False)
                if self.counters.get(name, 0) != first:
                    new.add(self.counters.get(name, 0))
        with self.counting:
            last = max([first, *new])
            window = self.reverts.get(name)
            return 1 + (last if window is None else max(last, window.high))

    def close_window(self, name: str) -> None:
        del self.reverts[name]
        self.reverts_closed[name] = time.monotonic()

    def later(self, item: Pending) -> None:
        """What a fault scheduled for later: a fix, a revival, a restore, a free, a revert
        run again, a resume."""
        action, name = item.action, item.name
        if action == "free":
            self.note("free-disk")
            (self.state / "soak-filler").unlink(missing_ok=True)
            return
        if action == "fix-profile":
            self.profile_broken = False
            self.note("fix-profile")
            self.write_profile()
            return
        if action in ("revert-again", "resume"):
            self.again(item)
            return
        instance = self.instances[name]
        if action == "fix":
            instance.broken = False
        elif action == "revive":
            instance.state = "running"
        elif action == "restore":
            instance.present = True
        self.note(f"{action} {name}")
        if instance.present:  # a removed manifest takes the change when it is restored
            self.write(instance)

    def again(self, item: Pending) -> None:
        """A revert cut short, run again; a resume (run again while it fails)."""
        if item.action == "revert-again":
            window = self.reverts.get(item.name)
            if window is None:
                return
            window.attempts += 1
            self.note(f"revert {item.name} {item.label} again (attempt {window.attempts})")
            self.revert(item.name, self.rng.uniform(10, 40))
            return
        self.note(f"resume {item.name}")
        done = self.command("resume", item.name)
        if done.returncode != 0:
            self.command_failed("resume", item.name, done)
            if item.attempt < RESUME_ATTEMPTS:
                self.schedule(5, "resume", item.name, attempt=item.attempt + 1)

    def calm(self) -> None:
        """The faults stop: every process is up, everything pending is undone."""
        if self.libvirtd is not None and (
            self.libvirtd.process is None or self.libvirtd.process.poll() is not None
        ):
            self.libvirtd.start()
        if self.daemon is None or self.daemon.poll() is not None:
            self.start_daemon()
        deadline = time.monotonic() + 120
        while self.status() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        for worker in self.workers:
            worker.join(timeout=600)
        for _ in range(20):  # a revert run again adds a resume, a failed resume a retry
            with self.lock:
                if not self.pending:
                    break
            self.run_pending(everything=True)
        self.note("calm: the last fault is over")

    # -- invariants ---------------------------------------------------------------------

    def check_loop(self) -> None:
        while not self.stop_checking.wait(self.args.check_every):
            self.check_all()

    def check_all(self) -> None:
        # the disks before the counters: a revert shrinks a disk before its guest boots
        for check in (self.check_qemus, self.check_disks, self.check_counters,
                      self.check_foreign, self.check_daemon, self.check_status):  # fmt: skip
            try:
                check()
            except Exception as err:  # a checker's own error is a finding too
                self.violation("checker", f"{check.__name__}: {type(err).__name__}: {err}")

    def violation(self, invariant: str, detail: str) -> None:
        with self.lock:
            before = list(self.events)
        self.report.violations.append({"invariant": invariant, "detail": detail,
                                       "eventsBefore": before})  # fmt: skip
        print(f"VIOLATION {invariant}: {detail}\n  events before it:\n    "
              + "\n    ".join(before), flush=True)  # fmt: skip

    def check_qemus(self) -> None:
        self.report.checks["one-qemu-per-disk"] += 1
        users: dict[str, list[int]] = {}
        for pid, cmdline in _qemu_processes():
            for disk in set(
                re.findall(
                    rf"{re.escape(str(self.state))}/instances/[^\",]+?\.(?:qcow2|raw)", cmdline
                )
            ):
                users.setdefault(disk, []).append(pid)
        for disk, pids in users.items():
            if len(pids) > 1:
                self.violation("one-qemu-per-disk", f"{disk} is open in QEMUs {pids}")

    def check_counters(self, count: bool = True) -> None:
        with self.counting:
            if count:
                self.report.checks["counter"] += 1
            for name in list(self.instances):
                log = self.state / "instances" / name / "console.log"
                try:
                    data = log.read_bytes()
                except OSError:
                    continue
                # each start of the guest truncates its console log: a file shorter than
                # what was read, or that starts otherwise (its first lines carry the boot's
                # time), is a new boot's, read from its start
                offset, head = self.offsets.get(name, 0), self.heads.get(name, b"")
                if len(data) < offset or not data.startswith(head):
                    offset = 0
                complete = data.rfind(b"\n") + 1
                if complete <= offset:
                    continue
                self.offsets[name] = complete
                self.heads[name] = data[:HEAD_BYTES]
                for line in data[offset:complete].decode(errors="replace").splitlines():
                    self.counter_line(name, line.strip())

    def counter_line(self, name: str, line: str) -> None:
        start = re.search(r"reconciler-guest: counter-start \w+ value=(\d+)", line)
        step = re.search(r"reconciler-guest: counter=(\d+)", line)
        last = self.counters.get(name)
        if start:
            value = int(start.group(1))
            window = self.reverts.get(name)
            if window is not None and window.low <= value <= window.high:
                # a boot in the revert's window reads its snapshot's value; the first one whose
                # QEMU started after the revert was asked for closes the window once it is done
                started = _process_start(self.qemu_pid(name))
                if started is not None and started > window.asked:
                    window.seen_boot = True
                    if window.done:
                        self.close_window(name)
                self.note(f"{name}: a boot in the window of the revert to {window.label} read "
                          f"{value} (printed last: {last})")  # fmt: skip
                if last is not None and value < last:
                    self.report.reverts_accepted["asked"] += 1
            elif last is not None and value < last:
                if self.rollout_reverted(name):
                    self.report.reverts_accepted["rollout"] += 1
                    self.note(f"{name}: a failed rollout's revert: counter {last} -> {value}")
                else:
                    self.violation("counter", f"{name}: a boot read {value} from its data "
                                   f"disk, after {last} was written and printed")  # fmt: skip
            self.counters[name] = value
        elif step:
            self.printed[name] += 1
            value = int(step.group(1))
            if last is not None and value <= last:
                self.violation("counter", f"{name}: counter {value} after {last}")
            self.counters[name] = value

    def rollout_reverted(self, name: str) -> bool:
        """Whether the daemon's log says a rollout reverted this member and no boot after it
        was taken for it yet (waits up to 10 s: the guest may boot before the line is
        written)."""
        deadline = time.monotonic() + 10
        while True:
            self.read_daemon_log()
            if self.rollout_reverts[name] > 0:
                self.rollout_reverts[name] -= 1
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    def read_daemon_log(self) -> None:
        try:
            with (self.root / "daemon.log").open("rb") as stream:
                stream.seek(self.log_offset)
                data = stream.read()
        except OSError:
            return
        complete = data.rfind(b"\n") + 1
        self.log_offset += complete
        for found in re.finditer(r"(\S+): rollout (?:failed|undone): reverted to snapshot",
                                 data[:complete].decode(errors="replace")):  # fmt: skip
            self.rollout_reverts[found.group(1)] += 1

    def check_disks(self) -> None:
        """No disk file deleted or replaced; none shrunk but across an asked-for revert."""
        self.report.checks["disks-kept"] += 1
        seen: set[Path] = set()
        for disk in self.state.glob("instances/*/*.qcow2"):
            try:
                inode, size = disk.stat().st_ino, _virtual_size(disk)
            except OSError:
                continue
            seen.add(disk)
            name = disk.parent.name
            known = self.disks.get(disk)
            if known is not None and known[0] != inode:
                self.violation("disks-kept", f"{disk} was replaced (inode {known[0]} -> {inode})")
            elif known is not None and size < known[1] and not self.reverting(name):
                self.violation("disks-kept", f"{disk} shrank from {known[1]} to {size} bytes")
            self.disks[disk] = (inode, size)
        for disk in set(self.disks) - seen:
            self.violation("disks-kept", f"{disk} was deleted")
            del self.disks[disk]

    def reverting(self, name: str) -> bool:
        with self.counting:
            closed = self.reverts_closed.get(name)
            return name in self.reverts or (closed is not None and time.monotonic() - closed < 10)

    def check_foreign(self) -> None:
        self.report.checks["foreign-untouched"] += 1
        for path, digest in self.foreign.items():
            if _digest(path) != digest:
                self.violation("foreign-untouched", f"{path} was changed or removed")
        if self.libvirtd is not None and self.libvirtd.process is not None \
                and self.libvirtd.process.poll() is None:  # fmt: skip
            listed = self.libvirtd.virsh("list", "--all", "--name").split()
            if listed and f"{self.prefix}-foreign" not in listed:
                self.violation("foreign-untouched", "the foreign domain is gone")

    def check_daemon(self) -> None:
        daemon = self.daemon
        if daemon is None or daemon.poll() is not None:
            return
        self.report.checks["bounded"] += 1
        try:
            rss = _rss_mib(daemon.pid)
            fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
        except OSError:
            return
        self.report.peak_rss_mib = max(self.report.peak_rss_mib, rss)
        self.report.peak_fds = max(self.report.peak_fds, fds)
        if rss > MAX_RSS_MIB or fds > MAX_FDS:
            self.violation("bounded", f"daemon RSS {rss:.0f} MiB, {fds} descriptors "
                           f"(bounds {MAX_RSS_MIB} MiB, {MAX_FDS})")  # fmt: skip

    def status(self) -> dict[str, Any] | None:
        try:
            answer = request(self.state / "control.sock", {"op": "status"}, timeout=10)
        except (DaemonUnavailable, OSError):
            return None
        return answer

    def check_status(self) -> None:
        answer = self.status()
        if answer is None:
            return
        self.report.checks["status-well-formed"] += 1
        status = answer.get("status")
        problems = []
        if not isinstance(status, dict) or status.get("version") != 1:
            problems.append("no status of version 1")
        else:
            for row in status.get("sets", []):
                counts = [row.get(key) for key in ("desired", "current", "updated", "ready",
                                                   "available")]  # fmt: skip
                if not isinstance(row.get("name"), str) or not all(
                    isinstance(c, int) and c >= 0 for c in counts
                ):
                    problems.append(f"a set row without its name and counts: {row!r:.200}")
            for rollout in status.get("rollouts", []):
                if not isinstance(rollout.get("group"), str) or not isinstance(
                    rollout.get("state"), str
                ):
                    problems.append(f"a rollout without group and state: {rollout!r:.200}")
            for item in status.get("instances", []):
                if not isinstance(item.get("name"), str) or not isinstance(
                    item.get("events"), list
                ):
                    problems.append(f"an instance entry without name or events: {item!r:.200}")
                if item.get("observed") not in (None, "running", "shutoff", "paused", "absent",
                                                "shutdown", "crashed", "unknown", "pmsuspended",
                                                "blocked", "nostate"):  # fmt: skip
                    problems.append(f"{item.get('name')}: observed {item.get('observed')!r}")
        for problem in problems:
            self.violation("status-well-formed", problem)

    # -- the end ------------------------------------------------------------------------

    def converge(self) -> None:
        self.check_counters()
        self.calm_printed = Counter(self.printed)  # a running guest must print more than these
        start = time.monotonic()
        deadline = start + self.args.converge_seconds
        while time.monotonic() < deadline:
            if self.converged():
                self.report.converged = True
                self.report.converge_seconds = round(time.monotonic() - start, 1)
                self.note(f"converged after {self.report.converge_seconds}s")
                return
            time.sleep(1)
        self.note("not converged in time")

    def converged(self) -> bool:
        answer = self.status()
        if answer is None:
            return False
        entries = {item["name"]: item for item in answer["status"]["instances"]}
        for instance in self.instances.values():
            entry = entries.get(instance.name)
            if instance.member and not instance.present:  # scaled down: its domain goes
                if entry is not None and entry.get("observed") not in (None, "absent"):
                    return False
                continue
            if not instance.present:
                continue
            if instance.state == "absent":
                if entry is not None and entry.get("observed") not in (None, "absent"):
                    return False
                continue
            if entry is None or entry.get("lastError") is not None:
                return False
            if instance.state == "stopped" and entry.get("observed") != "shutoff":
                return False
            if instance.state == "running":
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in entry.get("conditions") or [])  # fmt: skip
                # a pending restart is converged: updatePolicy next-boot takes the change at
                # the guest's next boot, as the manifest asks
                if entry.get("observed") != "running" or not ready:
                    return False
                # and it really runs: its QEMU is there and its guest counts on
                pid = self.qemu_pid(instance.name)
                if pid is None or not Path(f"/proc/{pid}").exists():
                    return False
                self.check_counters()
                # printed since the calm (not a higher value: a guest reverted since counts
                # again from its snapshot's value)
                if self.printed[instance.name] <= self.calm_printed[instance.name]:
                    return False
        return True

    def teardown(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        # the guests this run started, by their pids: those whose command line names this
        # run's directory, and those its pid files name (a QMP guest outlives its daemon)
        ours = {pid for pid, cmdline in _qemu_processes() if str(self.root) in cmdline}
        for pid_file in self.state.glob("instances/*/qemu.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                if str(self.root) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
                    errors="replace"
                ):
                    ours.add(pid)
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.libvirtd is not None:
            with contextlib.suppress(Exception):
                self.libvirtd.destroy_all()
            self.libvirtd.kill()
        with contextlib.suppress(OSError):
            shutil.copy(
                self.root / "daemon.log", Path(tempfile.gettempdir()) / "reconciler-soak-daemon.log"
            )
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.state)], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def finish(self) -> int:
        data = self.report.as_json()
        if self.args.report:
            Path(self.args.report).write_text(json.dumps(data, indent=2) + "\n")
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.report.faults.items()))
        checks = sum(self.report.checks.values())
        print(f"soak: seed {self.report.seed}, {self.report.driver}, {self.report.minutes:g} min, "
              f"{len(self.instances)} instances")  # fmt: skip
        print(f"  faults: {sum(self.report.faults.values())} ({faults})")
        print(f"  checks: {checks}, violations: {len(self.report.violations)}")
        after = self.report.converge_seconds
        print(f"  converged: {'after ' + str(after) + ' s' if self.report.converged else 'no'}; "
              f"daemon peak RSS {self.report.peak_rss_mib:.0f} MiB, {self.report.peak_fds} "
              f"descriptors, {self.report.daemon_restarts} restart(s)")  # fmt: skip
        ok = not self.report.violations and self.report.converged
        return 0 if ok else 1

    def qemu_pid(self, name: str) -> int | None:
        if self.libvirtd is not None:
            return self.libvirtd.qemu_pid(name)
        try:
            return int((self.state / "instances" / name / "qemu.pid").read_text())
        except (OSError, ValueError):
            return None


def _qemu_processes() -> Iterator[tuple[int, str]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "qemu-system" in cmdline.split(" ", 1)[0]:
            yield int(entry), cmdline


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def _since_boot() -> float:
    """Seconds since the host booted, as /proc counts a process's start."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _process_start(pid: int | None) -> float | None:
    """When process `pid` started, in seconds since the host booted (None: no such process)."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after the command, which may hold spaces
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks


def _virtual_size(path: Path) -> int:
    """A qcow2 file's virtual size, from its header."""
    with path.open("rb") as stream:
        header = stream.read(32)
    if len(header) < 32 or header[:4] != b"QFI\xfb":
        return 0
    return int.from_bytes(header[24:32], "big")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--driver", choices=("libvirtd", "qmp"), default="qmp")
    parser.add_argument("--instances", type=int, default=12)
    parser.add_argument(
        "--fault-every", type=float, default=8.0, help="mean seconds between faults"
    )
    parser.add_argument("--check-every", type=float, default=2.0)
    parser.add_argument("--converge-seconds", type=float, default=300.0)
    parser.add_argument(
        "--tmpfs-mib",
        type=int,
        default=1024,
        help="the state directory on a tmpfs this big (0: no; fill-disk skipped)",
    )
    parser.add_argument("--report", default=None, help="write the JSON report here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each event")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    print(f"soak: seed {args.seed} (replay with --seed {args.seed})", flush=True)
    # stopped early (SIGINT, even where a shell started it in the background with SIGINT
    # ignored, or SIGTERM), it still tears down: its guests, daemons and tmpfs go
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda _number, _frame: sys.exit(143))
    return Soak(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
