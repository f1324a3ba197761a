"""Source resolution, in one place: from the image source a manifest names to what the plan
needs to know about it.

For each instance this fills in the digest of a local file the manifest gave no checksum
for (remembered per file identity, so a no-op pass does not hash), applies the source policy
(allowed schemes and directories) and the remembered permanent download failures, locates the
cache entry, observes whether it exists and changed since it was verified, and reads the sizes
the plan shows and checks (the source's download size, the base's virtual size).

A resolver lives for one pass (or one reconcile): what several instances share (a base, a
source) is looked at once in it.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

from reconciler.images.diskheaders import HeaderError, image_virtual_size
from reconciler.images.download import Transport, probe_size
from reconciler.images.records import EntryRecords, PermanentFailures, SourceDigests
from reconciler.images.sources import SourcePolicy, check_url
from reconciler.model.desired import ImageSource, InstanceSpec
from reconciler.model.resolved import ResolvedInstance
from reconciler.statedir import StateDir


@dataclass(frozen=True, slots=True)
class _Base:
    cached: bool
    changed: bool
    source_size: int | None
    virtual_size: int | None


class SourceResolver:
    """Resolves instances' image sources; raises InstanceError (a SourceRefused, a remembered
    DownloadRefused, an unreadable local file) for a source that can never be used as it is."""

    def __init__(
        self,
        state: StateDir,
        policy: SourcePolicy,
        transport: Transport | None = None,
        *,
        persist_digests: bool = False,
    ) -> None:
        self._state = state
        self._policy = policy
        self._transport = transport or Transport()
        self._persist = persist_digests
        self._digests = SourceDigests(state, policy)
        self._failures = PermanentFailures(state)
        self._records = EntryRecords(state)
        self._bases: dict[Path, _Base] = {}
        self._guard = threading.Lock()

    def resolve(self, spec: InstanceSpec) -> ResolvedInstance:
        image = spec.image
        if image.sha256 is None:
            digest = self._digests.digest(image.path, persist=self._persist)
            image = dataclasses.replace(image, sha256=digest)
            spec = dataclasses.replace(spec, image=image)
        base_path = self._state.cached_base(image)
        with self._guard:
            base = self._bases.get(base_path)
        if base is None:
            base = self._observe_base(image, base_path)
            with self._guard:
                self._bases[base_path] = base
        if not base.cached:
            self._check_source(image)
        return ResolvedInstance(
            spec, base_path, base.cached, base.changed, base.source_size, base.virtual_size
        )

    def _observe_base(self, image: ImageSource, base_path: Path) -> _Base:
        cached = base_path.is_file()
        if cached:
            changed = self._records.changed(base_path)
            return _Base(True, changed, None, _virtual_size(base_path, image.cached_format.value))
        if isinstance(image.location, str):
            self._check_source(image)  # no request to a refused URL, not even a HEAD
            return _Base(False, False, probe_size(image.location, self._transport), None)
        try:
            size: int | None = image.location.stat().st_size
        except OSError:
            size = None
        return _Base(False, False, size, _virtual_size(image.location, image.format.value))

    def _check_source(self, image: ImageSource) -> None:
        """Refuse, already in the plan, a source that fetching would refuse."""
        if isinstance(image.location, str):
            check_url(image.location)
            self._failures.raise_if_recorded(image)
        else:
            self._policy.resolve_local(image.location)


def _virtual_size(path: Path, image_format: str) -> int | None:
    """The disk size an image holds, from its header (None when unreadable: an unreadable base
    is refused when it is fetched or used)."""
    try:
        return image_virtual_size(str(path), image_format)
    except (HeaderError, OSError):
        return None
