"""What the image cache knows without fetching anything, read by every plan: the digests of
local sources named without a checksum, the downloads remembered as refused, and each cache
entry's verification record. Kept apart from the cache itself (downloads, inspection,
qemu-img), which only a pass with steps needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import InstanceError
from reconciler.fileops import temporary_path
from reconciler.images.download import DownloadRefused
from reconciler.images.sources import SourcePolicy
from reconciler.model.desired import ImageSource
from reconciler.statedir import StateDir

CHUNK = 1024 * 1024


class SourceDigests:
    """sha256 of local source files that manifests name without a checksum.

    Hashing a large image on every pass would make a no-op pass slow, so a digest is kept per
    source path together with the file's identity (device, inode, size, mtime, ctime) and
    reused while the identity is unchanged.
    """

    def __init__(self, state: StateDir, policy: SourcePolicy) -> None:
        self._directory = state.source_digests
        self._policy = policy

    def _memo_path(self, source: Path) -> Path:
        key = hashlib.sha256(str(source).encode()).hexdigest()[:32]
        return self._directory / f"{key}.json"

    def digest(self, source: Path, *, persist: bool) -> str:
        """The sha256 of `source` (from the memo when the file is unchanged); raises
        InstanceError when the file cannot be read. `persist` records a fresh digest."""
        source = self._policy.resolve_local(source)
        identity = file_identity(source)
        try:
            memo = json.loads(self._memo_path(source).read_text())
            if memo.get("path") == str(source) and memo.get("identity") == identity:
                return str(memo["sha256"])
        except (OSError, ValueError, KeyError):
            pass
        digest = hash_file(source)
        if persist and file_identity(source) == identity:
            self._record(source, identity, digest)
        return digest

    def _record(self, source: Path, identity: list[int], digest: str) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        target = self._memo_path(source)
        temporary = temporary_path(target)
        temporary.write_text(
            json.dumps({"path": str(source), "identity": identity, "sha256": digest})
        )
        os.replace(temporary, target)


def file_identity(source: Path) -> list[int]:
    try:
        st = source.stat()
    except FileNotFoundError as err:
        raise InstanceError(f"image source {source} does not exist") from err
    except OSError as err:
        raise InstanceError(f"cannot read image source {source}: {err.strerror}") from err
    if not stat.S_ISREG(st.st_mode):
        raise InstanceError(f"image source {source} is not a regular file")
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def hash_file(source: Path) -> str:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise InstanceError(f"cannot read image source {source}: {err.strerror}") from err
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device: never read
            raise InstanceError(f"image source {source} is not a regular file")
        return hash_fd(fd)
    finally:
        os.close(fd)


class PermanentFailures:
    """Downloads that can never succeed as the manifest stands (404, checksum mismatch, size
    cap), remembered by URL and sha256 so that later passes do not fetch them again. A
    manifest that changes either retries at once; deleting the record retries too."""

    def __init__(self, state: StateDir) -> None:
        self._directory = state.images / ".failures"

    def _path(self, image: ImageSource) -> Path:
        key = hashlib.sha256(f"{image.location}\0{image.sha256}".encode()).hexdigest()[:32]
        return self._directory / f"{key}.json"

    def record(self, image: ImageSource, reason: str) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        target = self._path(image)
        temporary = temporary_path(target)
        temporary.write_text(
            json.dumps({"url": image.location, "sha256": image.sha256, "reason": reason})
        )
        os.replace(temporary, target)

    def raise_if_recorded(self, image: ImageSource) -> None:
        path = self._path(image)
        try:
            memo = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if memo.get("url") == image.location and memo.get("sha256") == image.sha256:
            raise DownloadRefused(
                f"{memo.get('reason')} (remembered: not fetched again until the manifest's "
                f"source or sha256 changes, or {path} is deleted)"
            )


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """What a cache entry was when it was last verified."""

    identity: list[int]
    sha256: str | None  # of the entry's content (None: not known, for a legacy entry)


class EntryRecords:
    """The verification record of each cache entry; its mtime is the entry's last use (gc)."""

    def __init__(self, state: StateDir) -> None:
        self.directory = state.images / ".entries"

    def path(self, entry: Path) -> Path:
        return self.directory / f"{entry.name}.json"

    def read(self, entry: Path) -> EntryRecord | None:
        try:
            memo = json.loads(self.path(entry).read_text())
            return EntryRecord(list(memo["identity"]), memo.get("sha256"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, entry: Path, record: EntryRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(entry)
        temporary = temporary_path(target)
        temporary.write_text(json.dumps({"identity": record.identity, "sha256": record.sha256}))
        os.replace(temporary, target)

    def changed(self, entry: Path) -> bool:
        """True when the entry's file is not the one last verified (read-only: for the plan)."""
        record = self.read(entry)
        try:
            return record is None or record.identity != file_identity(entry)
        except InstanceError:
            return True

    def stamp_used(self, entry: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(entry))

    def last_used(self, entry: Path) -> float:
        """When the entry was last used: its record's mtime, else the entry's own."""
        for candidate in (self.path(entry), entry):
            try:
                return candidate.stat().st_mtime
            except FileNotFoundError:
                continue
        return 0.0

    def remove(self, entry: Path) -> None:
        self.path(entry).unlink(missing_ok=True)


def hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
