"""The state directory: its creation, its id, its modes, and the lock that admits one writer
at a time. Where each file lives is reconciler.layout's (StateDir is a StateLayout)."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ConfigError, StateDirBusy
from reconciler.layout import StateLayout

LOG = logging.getLogger(__name__)

ENV_STATE_DIR = "RECONCILER_STATE_DIR"
# What the state directory holds is its owner's alone: guest disks (cloud-init writes secrets
# into them), consoles, the status, sockets. Every command runs under one of these umasks.
PRIVATE_UMASK = 0o077  # directories 0700, files and sockets 0600
# with a system libvirt (qemu:///system), QEMU runs as another user that libvirt hands each
# disk to: directories 0711 let it pass through them without listing them (as libvirt's own
# /var/lib/libvirt/images), files stay 0600
TRAVERSABLE_UMASK = 0o066
# libvirt puts unix sockets under the embedded root (about 50 more bytes), and a socket path
# is limited to 108 bytes.
MAX_STATE_DIR_LENGTH = 48


def default_state_dir() -> Path:
    """$RECONCILER_STATE_DIR, else /var/lib/reconciler for root, else the XDG state home."""
    configured = os.environ.get(ENV_STATE_DIR)
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/reconciler")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "reconciler"


@dataclass(frozen=True, slots=True)
class StateDir(StateLayout):
    """A state directory: its layout, and what is done to it as a whole."""

    def prune_enabled(self) -> bool:
        """Whether prune is on for this state directory (the file STATE/prune exists)."""
        return self.prune_flag.exists()

    def check_embedded_path_length(self) -> None:
        """Refuse a state directory too long for the embedded driver's unix sockets."""
        if len(str(self.root)) > MAX_STATE_DIR_LENGTH:
            raise ConfigError(
                f"state directory {self.root} is too long for libvirt's embedded driver "
                f"(at most {MAX_STATE_DIR_LENGTH} characters: unix socket paths under it are "
                "limited to 108 bytes); choose a shorter --state-dir"
            )

    def create(self) -> str:
        """Create the directory tree and its id (idempotent); return the id. A tree that other
        users could read (made by an older version, or by hand) is made private first."""
        for directory in (self.root, self.images, self.instances):
            directory.mkdir(parents=True, exist_ok=True)
        self.make_private(current_umask())
        existing = self.read_id()
        if existing is not None:
            return existing
        temporary = self.root / f".id.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        temporary.write_text(secrets.token_hex(16) + "\n")
        try:
            os.link(temporary, self.id_file)  # never replaces an id another process made
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
        made = self.read_id()
        if made is None:
            raise ConfigError(f"state directory {self.root} has an unreadable id file")
        return made

    def make_private(self, umask: int) -> int:
        """Take from every entry under the state directory the permissions `umask` forbids
        (symlinks are not followed); return how many changed, saying so once. Only looked
        at when the directory itself is too open: under a private one nothing is reachable,
        and everything the reconciler makes is made private."""
        try:
            if stat.S_IMODE(os.lstat(self.root).st_mode) & umask == 0:
                return 0
        except OSError:
            return 0
        changed = 0
        for directory, subdirs, files in os.walk(self.root):
            for entry in [directory, *(os.path.join(directory, n) for n in (*subdirs, *files))]:
                changed += _make_private(entry, umask)
        LOG.warning(
            "state directory %s was open to other users: %d entries made private to their "
            "owner (umask %04o)",
            self.root,
            changed,
            umask,
        )
        return changed

    def read_id(self) -> str | None:
        """The directory's id (None before `create`): proof that a domain is ours."""
        try:
            text = self.id_file.read_text().strip()
        except FileNotFoundError:
            return None
        return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else None


def _make_private(entry: str, umask: int) -> int:
    """Take `umask`'s permissions from `entry` (1 when it changed). The entry is opened
    without following a symlink and changed through that descriptor, so that one swapped in
    for it (by whoever could write to a directory that was open) is never followed: a symlink,
    and anything that cannot be opened so (a socket), is left as it is."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(entry, flags)
    except OSError:  # a symlink (ELOOP), a socket (ENXIO), gone meanwhile
        return 0
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if not mode & umask:
            return 0
        os.fchmod(fd, mode & ~umask)
        return 1
    except OSError:
        return 0
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask (set to the strictest one for the instant it takes to read it)."""
    umask = os.umask(PRIVATE_UMASK)
    os.umask(umask)
    return umask


class StateDirLock:
    """An exclusive flock on STATE/lock; the file names the holder's pid and command."""

    def __init__(self, state: StateDir) -> None:
        self._path = state.lock_file
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StateDirBusy naming the holder."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            pid = holder.removeprefix("pid ").split(":", 1)[0]
            raise StateDirBusy(
                f"state directory {self._path.parent} is in use by another reconciler",
                f"holder: {holder}",
                holder=int(pid) if pid.isdigit() else None,
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join(Path("/proc/self/cmdline").read_bytes().decode().split("\0")).strip()
        os.pwrite(fd, f"pid {os.getpid()}: {command[:200]}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
