"""What reading each manifest file gave, kept while stat says that neither the file nor a
file it names (user-data, injected files) changed: a daemon's resync rereads only what did.

A file's stamp is its device, inode, size, modification and change times. A file modified
within RACY_SECONDS of being read is not kept: a second write inside the same timestamp tick,
of the same size, would look unchanged (git calls these files racy). Symlinks are followed, and
a named file is checked by where it resolves to now, so that repointing a link is a change.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RACY_SECONDS = 2.0

# device, inode, size, mtime_ns, ctime_ns; None when the file cannot be stat'ed
FileStamp = tuple[int, int, int, int, int] | None


def stamp(path: Path | str) -> FileStamp:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _racy(file_stamp: FileStamp, now_ns: int) -> bool:
    return (
        file_stamp is not None and now_ns - max(file_stamp[3], file_stamp[4]) < RACY_SECONDS * 1e9
    )


@dataclass(frozen=True, slots=True)
class NamedFile:
    """A file a manifest names, as it was when the manifest was read."""

    path: Path  # as named (relative to the manifest's directory)
    real: str  # where it resolved to
    stamp: FileStamp

    @classmethod
    def now(cls, path: Path) -> NamedFile:
        real = os.path.realpath(path)
        return cls(path, real, stamp(real))

    def unchanged(self) -> bool:
        real = os.path.realpath(self.path)
        return real == self.real and stamp(real) == self.stamp


@dataclass(frozen=True, slots=True)
class Reading:
    """One file's reading: its stamp before it was read, where its named files had to lie,
    what it named, and what reading it gave (opaque here)."""

    stamp: FileStamp
    confine: Path
    named: tuple[NamedFile, ...]
    result: Any


class ManifestFileCache:
    """Readings by path; safe to use from any thread."""

    def __init__(self) -> None:
        self._readings: dict[Path, Reading] = {}
        self._lock = threading.Lock()
        self.changed = False  # a reading was kept, replaced or dropped since it was made

    def restore(self, readings: Iterable[tuple[Path, Reading]]) -> None:
        """Readings kept by an earlier process (readingstore), as they were."""
        with self._lock:
            self._readings.update(readings)

    def items(self) -> list[tuple[Path, Reading]]:
        with self._lock:
            return list(self._readings.items())

    def get(self, path: Path, confine: Path, before: FileStamp) -> Reading | None:
        """The reading of `path` if it still holds (`before`: its stamp now)."""
        with self._lock:
            reading = self._readings.get(path)
        if reading is None or before is None or reading.stamp != before:
            return None
        if reading.confine != confine or not all(f.unchanged() for f in reading.named):
            return None
        return reading

    def put(self, path: Path, reading: Reading) -> None:
        """Keep `reading`, unless the file or a file it names was modified too recently."""
        now_ns = time.time_ns()
        stamps = [reading.stamp, *(named.stamp for named in reading.named)]
        with self._lock:
            if reading.stamp is None or any(_racy(s, now_ns) for s in stamps):
                self.changed |= self._readings.pop(path, None) is not None
            else:
                self.changed = True
                self._readings[path] = reading

    def forget(self, paths: Iterable[Path]) -> None:
        with self._lock:
            for path in paths:
                self.changed |= self._readings.pop(path, None) is not None

    def keep_only(self, paths: Iterable[Path]) -> None:
        """Drop the readings of files no longer found."""
        wanted = set(paths)
        with self._lock:
            for path in [p for p in self._readings if p not in wanted]:
                del self._readings[path]
                self.changed = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._readings)
