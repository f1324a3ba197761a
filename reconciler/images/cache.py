"""The base image cache: fetch once, verify the checksum, inspect as untrusted, publish atomically.

Entries are content-addressed (STATE/images/sha256-<hex>.<format>). A fetch holds a lock per
entry, in this process (threads) and across processes (flock on a lock file beside it), and
re-checks the final file under the lock, so concurrent instances cause one copy.

An entry is not trusted by its name: when it is published, its file identity (device, inode,
size, mtime, ctime) and content digest are recorded (STATE/images/.entries/). Before every use
its header is inspected again; an entry whose identity changed is hashed again, and one whose
content or header is no longer what was verified is moved to STATE/images/.quarantine/ and
fetched again from its source.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler.clock import Clock
from reconciler.errors import InstanceError, StepError, UnsafeImageError
from reconciler.fileops import publish, remove_leftovers, temporary_path
from reconciler.images.download import (
    DownloadLimits,
    DownloadRefused,
    Transport,
    download,
    download_published,
)
from reconciler.images.inspect import check_with_qemu_img, inspect_base_image
from reconciler.images.progress import TransferReporter
from reconciler.images.qemuimg import QemuImg
from reconciler.images.records import (
    CHUNK,
    EntryRecord,
    EntryRecords,
    PermanentFailures,
    file_identity,
    hash_fd,
    hash_file,
)
from reconciler.images.sources import SourcePolicy, check_url
from reconciler.model.desired import ImageFormat, ImageSource
from reconciler.statedir import StateDir

LOG = logging.getLogger(__name__)
FICLONE = 0x40049409


class Abandoned(StepError):
    """A download given up because the process is stopping (its temporary file is removed)."""


@dataclass(frozen=True, slots=True)
class CacheUse:
    """A verified cache entry, and what getting it took (None: it was there and intact)."""

    path: Path
    fetched: bool = False
    note: str | None = None


class ImageCache:
    """Fetches base images into the state directory's cache, one fetch per entry at a time."""

    def __init__(
        self,
        state: StateDir,
        qemu_img: QemuImg,
        policy: SourcePolicy,
        limits: DownloadLimits | None = None,
        transfers: TransferReporter | None = None,
        clock: Clock | None = None,
        transport: Transport | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self._state = state
        self._cancel = cancel  # set when the daemon stops: downloads in flight are abandoned
        self._transport = transport or Transport()
        self._qemu_img = qemu_img
        self._policy = policy
        self._limits = limits or DownloadLimits()
        self._transfers = transfers
        self._clock = clock or Clock()
        self._guard = threading.Lock()
        self._locks: dict[Path, threading.Lock] = {}
        self.failures = PermanentFailures(state)
        self.records = EntryRecords(state)

    @property
    def qemu_img(self) -> QemuImg:
        return self._qemu_img

    def path_for(self, image: ImageSource) -> Path:
        return self._state.cached_base(image)

    def is_cached(self, image: ImageSource) -> bool:
        return self.path_for(image).is_file()

    def ensure(self, image: ImageSource, fetched: Path | None = None) -> CacheUse:
        """The cached file for `image`, verified before use: fetched if missing (`fetched`:
        already downloaded and checked, it is used and removed instead), and quarantined then
        fetched again if it is no longer what was verified."""
        target = self.path_for(image)
        with self.entry_lock(target):
            note = None
            if target.is_file():
                problem = self._check_entry(target, image)
                if problem is None:
                    self.records.stamp_used(target)
                    if fetched is not None:
                        fetched.unlink(missing_ok=True)
                    return CacheUse(target)
                moved = self._quarantine(target)
                note = (
                    f"cached base {target.name} {problem}: moved to {moved} and fetched again "
                    "from its source"
                )
                LOG.info("%s", note)  # the step reports it to the user
            self._fetch_entry(image, target, fetched)
            return CacheUse(target, fetched=True, note=note)

    def fetch_published(
        self, url: str, algorithm: str, digest: str, image_format: ImageFormat
    ) -> tuple[str, CacheUse]:
        """Fetch the image at `url` that a distribution vouches for with an `algorithm`
        checksum (Debian signs only sha512) into the cache, through the same inspection as
        every entry; its sha256 (the entry's key) and the entry. Raises DownloadRefused
        (recorded, like any refused source) or DownloadFailed."""
        check_url(url)
        staging = self._state.images / f"published-{algorithm}-{digest[:32]}"
        with self.entry_lock(staging):
            remove_leftovers(staging)
            temporary = temporary_path(staging)
            try:
                with temporary.open("xb") as out:
                    sha256 = download_published(
                        url, out, algorithm, digest, self._limits, self._transport, self._clock
                    )
                    out.flush()
                    os.fsync(out.fileno())
                image = ImageSource(url, sha256, image_format)
                return sha256, self.ensure(image, temporary)
            finally:
                temporary.unlink(missing_ok=True)

    def import_carried(self, image: ImageSource, carried: Path) -> CacheUse:
        """Fill the entry of `image` (an http(s) source) from a copy carried to an air-gapped
        host: the file of the URL's name in the directory `carried`, or the member of that
        name in the tarball `carried`. Nothing about the medium is trusted: the bytes must
        have the sha256 the lock gives, and go through the same inspection."""
        assert isinstance(image.location, str) and image.sha256 is not None
        wanted = image.location.rsplit("/", 1)[-1]
        if self.path_for(image).is_file():
            return self.ensure(image)
        self._state.images.mkdir(parents=True, exist_ok=True)
        # not named like the entry's own temporary files: fetching removes those
        staging = temporary_path(self._state.images / f"carried-{image.sha256}")
        try:
            if carried.is_dir():
                digest = _copy_hashing(carried / wanted, staging)
            else:
                digest = _extract_hashing(carried, wanted, staging, self._limits.max_bytes)
            if digest != image.sha256:
                raise UnsafeImageError(
                    f"{wanted} from {carried} has sha256 {digest}, the lock says "
                    f"{image.sha256}: not used"
                )
            return self.ensure(image, staging)
        finally:
            staging.unlink(missing_ok=True)

    def _fetch_entry(self, image: ImageSource, target: Path, fetched: Path | None = None) -> None:
        """Fetch, inspect and publish a missing entry; record what was verified."""
        remove_leftovers(target)
        temporary = temporary_path(target)
        try:
            if fetched is None:
                self._fetch(image, temporary)
            else:
                os.replace(fetched, temporary)
            inspect_base_image(temporary, image.format)
            check_with_qemu_img(temporary, image.format, self._qemu_img)
            digest = image.sha256
            if image.convert_to is not None and image.convert_to is not image.format:
                temporary = self._convert(image, temporary, target)
                digest = hash_file(temporary)
            os.chmod(temporary, 0o400)
            publish(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        self.records.write(target, EntryRecord(file_identity(target), digest))
        LOG.info("cached %s as %s", image.location, target.name)

    def _check_entry(self, target: Path, image: ImageSource) -> str | None:
        """Why the entry may not be used as it is (None when it may). Hashes it again only when
        its file identity changed since it was last verified."""
        cached_format = image.cached_format
        record = self.records.read(target)
        identity = file_identity(target)
        if record is not None and record.identity == identity:
            try:
                inspect_base_image(target, cached_format)
            except UnsafeImageError as err:
                return f"fails inspection ({err})"
            return None
        converted = image.convert_to is not None and image.convert_to is not image.format
        expected = record.sha256 if record is not None else None
        expected = expected or (None if converted else image.sha256)
        digest = hash_file(target)
        if expected is not None and digest != expected:
            return (
                f"changed since it was fetched (its content's sha256 is {digest}, "
                f"expected {expected})"
            )
        try:
            inspect_base_image(target, cached_format)
            check_with_qemu_img(target, cached_format, self._qemu_img)
        except UnsafeImageError as err:
            return f"changed since it was fetched and fails inspection ({err})"
        self.records.write(target, EntryRecord(identity, digest))
        LOG.info("cached base %s changed on disk but its content is intact", target.name)
        return None

    def _quarantine(self, target: Path) -> Path:
        """Move a spoiled entry aside (kept for inspection, never used again)."""
        directory = self._state.images / ".quarantine"
        directory.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}.{secrets.token_hex(3)}"
        moved = directory / f"{target.name}.{stamp}"
        os.replace(target, moved)
        self.records.remove(target)
        return moved

    @contextlib.contextmanager
    def entry_lock(self, target: Path) -> Iterator[None]:
        """Exclusive use of one cache entry: among threads, and among processes (flock)."""
        with self._guard:
            thread_lock = self._locks.setdefault(target, threading.Lock())
        with thread_lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock_path = target.with_name(target.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _fetch(self, image: ImageSource, temporary: Path) -> None:
        """Bring the source's bytes into `temporary`, checking its sha256."""
        assert image.sha256 is not None
        if isinstance(image.location, str):
            check_url(image.location)
            self.failures.raise_if_recorded(image)
            name = image.location.rsplit("/", 1)[-1] or image.location
            shown = self._transfers.start(name) if self._transfers else None

            def report(received: int, total: int | None) -> None:
                if self._cancel is not None and self._cancel.is_set():
                    raise Abandoned(f"download of {image.location} abandoned: stopping")
                if shown is not None:
                    shown(received, total)

            try:
                with temporary.open("xb") as out:
                    download(
                        image.location,
                        out,
                        image.sha256,
                        self._limits,
                        report,
                        self._clock,
                        self._transport,
                    )
                    out.flush()
                    os.fsync(out.fileno())
            except DownloadRefused as err:
                self.failures.record(image, str(err))
                raise
            finally:
                if self._transfers is not None:
                    self._transfers.finish(name)
            return
        source = self._policy.resolve_local(image.location)
        digest = _copy_hashing(source, temporary)
        if digest != image.sha256:
            raise UnsafeImageError(
                f"checksum mismatch for {source}: expected sha256 {image.sha256}, file has {digest}"
            )

    def _convert(self, image: ImageSource, fetched: Path, target: Path) -> Path:
        """Convert the fetched (and inspected) image into a new temporary file."""
        assert image.convert_to is not None
        converted = temporary_path(target)
        try:
            self._qemu_img.convert(fetched, image.format.value, converted, image.convert_to.value)
            inspect_base_image(converted, image.convert_to)
        except BaseException:
            converted.unlink(missing_ok=True)
            raise
        fetched.unlink(missing_ok=True)
        return converted


def _copy_hashing(source: Path, destination: Path) -> str:
    """Copy `source` to a new file `destination` (reflink where the file system can) and
    return the sha256 of the bytes written."""
    try:
        # never blocks on a FIFO swapped in for the file (refused as not a regular file)
        source_fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise InstanceError(f"image source {source} does not exist") from err
    except OSError as err:
        raise InstanceError(f"cannot read image source {source}: {err.strerror}") from err
    try:
        if not os.path.isfile(f"/proc/self/fd/{source_fd}"):
            raise InstanceError(f"image source {source} is not a regular file")
        destination_fd = os.open(
            destination, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        try:
            if _reflink(source_fd, destination_fd):
                return hash_fd(destination_fd)
            digest = hashlib.sha256()
            while chunk := os.read(source_fd, CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(destination_fd, view) :]
            return digest.hexdigest()
        except OSError as err:
            raise StepError(f"copying {source} into the cache failed: {err.strerror}") from err
        finally:
            os.close(destination_fd)
    finally:
        os.close(source_fd)


def _extract_hashing(tarball: Path, name: str, destination: Path, max_bytes: int) -> str:
    """Write the regular-file member of `tarball` whose base name is `name` (compressed or
    not) to a new file `destination`; the sha256 of the bytes written."""
    import tarfile

    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:
                if member.name.rsplit("/", 1)[-1] != name:
                    continue
                if not member.isfile() or member.size > max_bytes:
                    raise InstanceError(
                        f"{name} in {tarball} is not a regular file of a usable size"
                    )
                stream = archive.extractfile(member)
                assert stream is not None
                digest = hashlib.sha256()
                with destination.open("xb") as out:
                    while chunk := stream.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                return digest.hexdigest()
    except (OSError, tarfile.TarError) as err:
        raise InstanceError(f"cannot read {tarball}: {err}") from err
    raise InstanceError(f"{tarball} holds no file named {name}")


def _reflink(source_fd: int, destination_fd: int) -> bool:
    try:
        fcntl.ioctl(destination_fd, FICLONE, source_fd)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EBADF):
            return False
        raise
    return True
