"""The manifest directory watcher: watchdog events, filtered and debounced into one callback
per burst of changes.

An editor's save is a burst (write a temporary file, rename it over the manifest, maybe a
backup and a swap file): the callback fires once, `DEBOUNCE_SECONDS` after the last event of
the burst (at most `MAX_DELAY_SECONDS` after its first), with every path the burst touched
(manifests, and the files they name). Swap, backup and hidden files are ignored; directories
created or removed count (a removed directory takes its manifests with it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

LOG = logging.getLogger(__name__)
DEBOUNCE_SECONDS = 0.1
MAX_DELAY_SECONDS = 1.0


def is_relevant_path(path: str) -> bool:
    """Whether a change to `path` can change what the manifests say: a manifest, or a file a
    manifest names (user-data, an injected file: any name), but not a swap, backup or hidden
    file (vim's .x.swp and 4913, emacs's #x# and x~, .x.yaml.tmp and the like)."""
    name = os.path.basename(path)
    if name.startswith((".", "#")) or name.endswith(("~", ".swp", ".swx", ".tmp")):
        return False
    return name != "4913"


class ManifestWatcher:
    """Calls `on_change(paths)` from its own thread after each burst of relevant changes."""

    def __init__(self, directory: Path, on_change: Callable[[set[Path]], None]) -> None:
        self._directory = directory
        self._on_change = on_change
        self._lock = threading.Condition()
        self._pending: set[Path] = set()
        self._first: float | None = None
        self._last = 0.0
        self._stopped = False
        self._observer = Observer()
        self._thread = threading.Thread(target=self._debounce, name="manifest-watch", daemon=True)

    def start(self) -> None:
        handler = _Handler(self._note)
        self._observer.schedule(handler, str(self._directory), recursive=True)
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    def _note(self, paths: list[str], is_directory: bool) -> None:
        relevant = {Path(p) for p in paths if is_directory or is_relevant_path(p)}
        if not relevant:
            return
        now = time.monotonic()
        with self._lock:
            self._pending |= relevant
            self._first = self._first if self._first is not None else now
            self._last = now
            self._lock.notify_all()

    def _debounce(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and self._first is None:
                    self._lock.wait()
                if self._stopped:
                    return
                assert self._first is not None
                due = min(self._last + DEBOUNCE_SECONDS, self._first + MAX_DELAY_SECONDS)
                wait = due - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                paths, self._pending, self._first = self._pending, set(), None
            try:
                self._on_change(paths)
            except Exception:
                LOG.exception("handling manifest changes")


class _Handler(FileSystemEventHandler):
    def __init__(self, note: Callable[[list[str], bool], None]) -> None:
        self._note = note

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reading a file changes nothing
        paths = [_text(event.src_path)]
        destination = getattr(event, "dest_path", "")
        if destination:
            paths.append(_text(destination))
        self._note(paths, event.is_directory)


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)
