"""Images by name, resolved: the catalogue entry's checksum file (or Ubuntu's simplestreams
product file) fetched, its signature checked (images.signatures), the image picked out of the
signed text; the result is what the lock file records (model.imagelock), so that every host
and every pass uses those bytes with no lookup until the lock is updated.

The image itself goes through the cache (inspection, quarantine and all) like any image with
a checksum. Where the distribution signs only sha512 (Debian), locking fetches the image into
the cache, checked against that sha512, to learn the sha256 that every host then verifies:
the lock never holds a sha256 that did not come from bytes the signature vouched for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ConfigError, InstanceError, ReconcilerError
from reconciler.fileops import InputFileRefused, read_input_file, write_atomically
from reconciler.images.cache import ImageCache
from reconciler.images.catalogue import CatalogueEntry
from reconciler.images.checksums import parse_checksums
from reconciler.images.download import DownloadLimits, Transport, fetch_small, probe_size
from reconciler.images.signatures import verify
from reconciler.images.streams import StreamError, newest_item
from reconciler.model.desired import ImageFormat
from reconciler.model.imagelock import (
    LOCK_FILE,
    MAX_LOCK_BYTES,
    ImageName,
    LockedImage,
    lock_text,
    parse_lock,
)

MAX_CHECKSUM_FILE_BYTES = 4 * 1024 * 1024
MAX_PRODUCT_FILE_BYTES = 64 * 1024 * 1024  # Ubuntu's released:download.sjson is ~20 MB
MAX_SIGNATURE_BYTES = 64 * 1024


class NameNotResolved(InstanceError):
    """A name the catalogue does not have, or whose signed checksum file has no image for
    it."""


@dataclass(frozen=True, slots=True)
class Published:
    """What the distribution's signed checksum file says of one image."""

    name: str
    arch: str
    variant: str
    url: str
    algorithm: str
    digest: str
    format: str
    size: int | None
    published: str | None
    signed_by: str
    checksums_url: str

    def locked(self, sha256: str) -> LockedImage:
        return LockedImage(
            self.name, self.arch, self.variant, self.url, self.algorithm, self.digest, sha256,
            self.format, self.size, self.published, self.signed_by, self.checksums_url,
        )  # fmt: skip

    def same_image(self, locked: LockedImage) -> bool:
        """Whether the lock already holds this image (same URL and signed checksum)."""
        return (self.url, self.algorithm, self.digest) == (
            locked.url,
            locked.algorithm,
            locked.digest,
        )


def entry_for(name: ImageName, catalogue: dict[str, CatalogueEntry]) -> CatalogueEntry:
    entry = catalogue.get(name.name)
    if entry is None:
        raise NameNotResolved(
            f"image {name.name!r} is not in the catalogue (names: {', '.join(sorted(catalogue))})"
        )
    return entry


def find_published(
    entry: CatalogueEntry,
    arch: str | None = None,
    variant: str | None = None,
    transport: Transport | None = None,
    limits: DownloadLimits | None = None,
) -> Published:
    """What the distribution publishes now for `entry`, `arch` and `variant`, from its signed
    checksum file: SignatureError (bad or missing signature, key not allowed), NameNotResolved
    (no image for it), DownloadRefused/DownloadFailed (the files cannot be fetched)."""
    transport = transport or Transport()
    limits = limits or DownloadLimits()
    where = entry.image(arch, variant)
    biggest = MAX_PRODUCT_FILE_BYTES if entry.kind == "simplestreams" else MAX_CHECKSUM_FILE_BYTES
    sums = fetch_small(where.checksums_url, biggest, limits, transport)
    signature = (
        None
        if where.signature_url is None
        else fetch_small(where.signature_url, MAX_SIGNATURE_BYTES, limits, transport)
    )
    verified = verify(sums, signature, entry.keyring, entry.fingerprints, where.checksums_url)
    text = verified.text.decode("utf-8", "replace")
    published = None if verified.created is None else _iso(verified.created)
    if where.product is not None:
        try:
            item = newest_item(text, where.product, where.file)
        except StreamError as err:
            raise NameNotResolved(
                f"image {entry.name!r}: the signed product file {where.checksums_url}: {err}"
            ) from err
        url, algorithm, digest, size = where.directory + item.path, "sha256", item.sha256, item.size
    else:
        checksum = parse_checksums(text).get(where.file)
        if checksum is None:
            raise NameNotResolved(
                f"image {entry.name!r}: the signed checksum file {where.checksums_url} has no "
                f"line for {where.file}"
            )
        url, algorithm, digest = where.url, checksum.algorithm, checksum.digest
        size = probe_size(url, transport)
    return Published(
        name=entry.name,
        arch=where.arch,
        variant=where.variant,
        url=url,
        algorithm=algorithm,
        digest=digest,
        format=entry.format,
        size=size,
        published=published,
        signed_by=verified.fingerprint,
        checksums_url=where.checksums_url,
    )


def lock_published(published: Published, cache: ImageCache) -> LockedImage:
    """The lock entry of what a distribution publishes: its sha256 is the signed one, or,
    for a distribution that signs sha512, that of the image fetched into the cache and
    checked against it."""
    if published.algorithm == "sha256":
        return published.locked(published.digest)
    sha256, _use = cache.fetch_published(
        published.url, published.algorithm, published.digest, ImageFormat(published.format)
    )
    return published.locked(sha256)


def resolve(
    names: Iterable[ImageName],
    catalogue: dict[str, CatalogueEntry],
    cache: ImageCache,
    transport: Transport | None = None,
    limits: DownloadLimits | None = None,
) -> tuple[dict[str, LockedImage], dict[ImageName, ReconcilerError]]:
    """Each name's lock entry by its key, and the error of each that could not be resolved
    (its instances stay unlocked: nothing else is held back by them)."""
    found: dict[str, LockedImage] = {}
    failed: dict[ImageName, ReconcilerError] = {}
    for name in sorted(set(names), key=lambda n: n.key):
        try:
            entry = entry_for(name, catalogue)
            published = find_published(entry, name.arch, name.variant, transport, limits)
            found[name.key] = lock_published(published, cache)
        except ReconcilerError as err:  # a download failing after its retries, too
            failed[name] = err
    return found, failed


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def lock_path(directory: Path) -> Path:
    """The lock file of a manifest directory (or of the directory of a manifest file)."""
    return (directory if directory.is_dir() else directory.parent) / LOCK_FILE


def read_lock(path: Path) -> dict[str, LockedImage]:
    """The lock file's entries by key (empty when there is none); ConfigError for a file
    that is there but cannot be used (a lock is never half read), or that leads out of its
    directory (a symlink the pusher made)."""
    confine = Path(path.parent).resolve()
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        raw = read_input_file(path, confine, MAX_LOCK_BYTES)
    except InputFileRefused as err:
        raise ConfigError(str(err)) from err
    return parse_lock(raw, str(path))


def write_lock(path: Path, entries: dict[str, LockedImage]) -> None:
    """Write the lock file atomically (readable by all: it belongs in the repository); the
    rename replaces a symlink there, never writing through it."""
    write_atomically(path, lock_text(entries), mode=0o644)


def lock_missing(
    directory: Path,
    names: Iterable[ImageName],
    catalogue: dict[str, CatalogueEntry],
    cache: ImageCache,
    transport: Transport | None = None,
    limits: DownloadLimits | None = None,
) -> tuple[list[LockedImage], dict[ImageName, ReconcilerError]]:
    """Resolve `names` (those the manifests of `directory` use and its lock does not hold)
    and add them to the lock: the entries written, and the names that could not be
    resolved with why. Never called in pull mode, which only reads the lock."""
    wanted = list(names)
    if not wanted:
        return [], {}
    path = lock_path(directory)
    found, failed = resolve(wanted, catalogue, cache, transport, limits)
    if found:
        write_lock(path, {**read_lock(path), **found})
    return [found[key] for key in sorted(found)], failed
