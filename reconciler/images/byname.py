"""Images by name, resolved: the catalogue entry's checksum file fetched, its signature
checked (images.signatures), the image's line picked out of the signed text; the result is
what a lock file records (exact URL, checksum, size, the date of the checksum file's
signature), so that every host and every pass uses those bytes with no lookup until the lock
is updated. Nothing is fetched into the image cache here: the image itself goes through the
cache (inspection, quarantine and all) like any image with a checksum.

The lock file (`images.lock.json`, next to the manifests) is JSON, versioned, written
atomically; a pull-mode host only reads it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError, InstanceError
from reconciler.fileops import write_atomically
from reconciler.images.catalogue import CatalogueEntry
from reconciler.images.checksums import parse_checksums
from reconciler.images.download import DownloadLimits, Transport, fetch_small, probe_size
from reconciler.images.signatures import verify

LOCK_FILE = "images.lock.json"
LOCK_VERSION = 1
MAX_CHECKSUM_FILE_BYTES = 4 * 1024 * 1024
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_LOCK_BYTES = 4 * 1024 * 1024


class NameNotResolved(InstanceError):
    """A name whose checksum file has no line for its image."""


@dataclass(frozen=True, slots=True)
class LockedImage:
    """One name as a lock file records it."""

    name: str
    arch: str
    variant: str
    url: str
    algorithm: str  # the checksum the distribution publishes: sha256 or sha512
    digest: str
    format: str
    size: int | None  # as the server announced it when locked (None: it did not say)
    published: str | None  # when the checksum file was signed (UTC, ISO 8601)
    signed_by: str  # the fingerprint of the key that signed it
    checksums_url: str

    @property
    def key(self) -> str:
        return lock_key(self.name, self.arch, self.variant)

    @property
    def sha256(self) -> str | None:
        return self.digest if self.algorithm == "sha256" else None


def lock_key(name: str, arch: str, variant: str) -> str:
    return f"{name}/{arch}/{variant}"


def resolve_name(
    entry: CatalogueEntry,
    arch: str | None = None,
    variant: str | None = None,
    transport: Transport | None = None,
    limits: DownloadLimits | None = None,
) -> LockedImage:
    """Resolve `entry` for `arch` and `variant` from the distribution's signed checksum file:
    SignatureError (bad or missing signature, key not allowed), NameNotResolved (no line
    for the image), DownloadRefused/DownloadFailed (the files cannot be fetched)."""
    transport = transport or Transport()
    limits = limits or DownloadLimits()
    where = entry.image(arch, variant)
    sums = fetch_small(where.checksums_url, MAX_CHECKSUM_FILE_BYTES, limits, transport)
    signature = (
        None
        if where.signature_url is None
        else fetch_small(where.signature_url, MAX_SIGNATURE_BYTES, limits, transport)
    )
    verified = verify(sums, signature, entry.keyring, entry.fingerprints, where.checksums_url)
    table = parse_checksums(verified.text.decode("utf-8", "replace"))
    checksum = table.get(where.file)
    if checksum is None:
        raise NameNotResolved(
            f"image {entry.name!r}: the signed checksum file {where.checksums_url} has no "
            f"line for {where.file}"
        )
    return LockedImage(
        name=entry.name,
        arch=where.arch,
        variant=where.variant,
        url=where.url,
        algorithm=checksum.algorithm,
        digest=checksum.digest,
        format=entry.format,
        size=probe_size(where.url, transport),
        published=None if verified.created is None else _iso(verified.created),
        signed_by=verified.fingerprint,
        checksums_url=where.checksums_url,
    )


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def read_lock(path: Path) -> dict[str, LockedImage]:
    """The lock file's entries by key (empty when there is none); ConfigError for a file
    that is there but cannot be used (a lock is never half read)."""
    try:
        with open(path, "rb") as stream:
            data = json.loads(stream.read(MAX_LOCK_BYTES))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a lock file: {err}") from err
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION:
        raise ConfigError(f"{path}: not a lock file of version {LOCK_VERSION}")
    images = data.get("images")
    if not isinstance(images, dict):
        raise ConfigError(f"{path}: a lock file needs images: a mapping")
    return {str(key): _locked(path, key, item) for key, item in images.items()}


def _locked(path: Path, key: object, item: object) -> LockedImage:
    """One entry of a lock file, every field checked: the file comes from the repository,
    whose pusher controls every byte of it."""
    where = f"{path}: entry {key!r}"
    if not isinstance(item, dict) or set(item) != set(_LOCK_FIELDS):
        raise ConfigError(f"{where}: expected exactly the fields {', '.join(_LOCK_FIELDS)}")
    texts = ("name", "arch", "variant", "url", "algorithm", "digest", "format", "signed_by",
             "checksums_url")  # fmt: skip
    for field in texts:
        if not isinstance(item[field], str) or len(item[field]) > 4096:
            raise ConfigError(f"{where}: {field} must be a string")
    for field in ("size", "published"):
        wanted = int if field == "size" else str
        if item[field] is not None and not isinstance(item[field], wanted):
            raise ConfigError(f"{where}: {field} must be a {wanted.__name__} or null")
    locked = LockedImage(**item)
    digest_length = {"sha256": 64, "sha512": 128}.get(locked.algorithm)
    problems = [
        locked.key != key and "its key does not name its name, arch and variant",
        not locked.url.startswith(("https://", "http://")) and "its url is not http(s)",
        digest_length is None and "its algorithm is not sha256 or sha512",
        not re.fullmatch(rf"[0-9a-f]{{{digest_length or 64}}}", locked.digest)
        and "its digest is not lowercase hex of its algorithm's length",
        locked.format not in ("qcow2", "raw") and "its format is not qcow2 or raw",
    ]
    wrong = [problem for problem in problems if problem]
    if wrong:
        raise ConfigError(f"{where}: {'; '.join(wrong)}")
    return locked


_LOCK_FIELDS = tuple(LockedImage.__dataclass_fields__)


def write_lock(path: Path, entries: dict[str, LockedImage]) -> None:
    data: dict[str, Any] = {
        "version": LOCK_VERSION,
        "images": {key: asdict(entries[key]) for key in sorted(entries)},
    }
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)
