"""The daemon's resolution of images by name that the lock file does not hold yet: in a
thread of its own, since resolving may download a whole image (a distribution that signs only
sha512 is locked by fetching its image to learn its sha256), and the loop must keep answering
and converging the other instances meanwhile. When the lock is written, the watcher sees it
and the manifests are read again; the instances waiting on it converge then.

Never in pull mode: there the lock is the repository's, read and never written. A name that
cannot be resolved (no network, a bad signature) is tried again after RETRY_SECONDS, not at
every reread of the manifests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from reconciler.clock import Clock
from reconciler.errors import ReconcilerError
from reconciler.images.byname import lock_missing
from reconciler.images.cache import ImageCache
from reconciler.images.catalogue import CatalogueEntry
from reconciler.images.download import DownloadLimits, Transport
from reconciler.model.imagelock import ImageName

LOG = logging.getLogger(__name__)
RETRY_SECONDS = 300.0


class NameResolver:
    """Resolves the names asked for, one batch at a time, off the caller's thread."""

    def __init__(
        self,
        directory: Path,
        catalogue: dict[str, CatalogueEntry],
        cache: Callable[[], ImageCache],
        transport: Transport,
        limits: DownloadLimits,
        clock: Clock,
    ) -> None:
        self._directory = directory
        self._catalogue = catalogue
        self._cache = cache
        self._transport = transport
        self._limits = limits
        self._clock = clock
        self._guard = threading.Lock()
        self._failed: dict[ImageName, float] = {}  # when each last failed
        self._thread: threading.Thread | None = None

    def ask(self, names: Iterable[ImageName]) -> bool:
        """Start resolving `names` unless a resolution is under way; whether one started.
        Names that failed within RETRY_SECONDS wait."""
        now = self._clock.monotonic()
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                return False
            wanted = [
                name
                for name in names
                if now - self._failed.get(name, -RETRY_SECONDS) >= RETRY_SECONDS
            ]
            if not wanted:
                return False
            self._thread = threading.Thread(
                target=self._resolve, args=(wanted,), name="image-names", daemon=True
            )
            self._thread.start()
            return True

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _resolve(self, names: list[ImageName]) -> None:
        LOG.info("resolving %s from the catalogue", ", ".join(str(name) for name in names))
        failed: dict[ImageName, object]
        try:
            written, found_failed = lock_missing(
                self._directory, names, self._catalogue, self._cache(), self._transport,
                self._limits,
            )  # fmt: skip
            failed = dict(found_failed)
        except (ReconcilerError, OSError) as err:  # the lock file itself cannot be written
            written, failed = [], {name: err for name in names}
        now = self._clock.monotonic()
        with self._guard:
            for name, why in failed.items():
                self._failed[name] = now
                LOG.warning("image %s: %s (tried again in %.0fs)", name, why, RETRY_SECONDS)
            for locked in written:
                LOG.info("locked %s (%s, %s): %s", locked.name, locked.arch, locked.variant,
                         locked.url)  # fmt: skip
