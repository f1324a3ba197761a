"""Base image inspection and the image cache, on images made by real qemu-img."""

from __future__ import annotations

import hashlib
import struct
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import InstanceError, UnsafeImageError
from reconciler.images.cache import CacheUse, ImageCache
from reconciler.images.diskheaders import (
    HeaderError,
    detect_formats,
    parse_qcow2_header,
    read_head,
    read_overlay_header,
)
from reconciler.images.inspect import inspect_base_image
from reconciler.images.qemuimg import QemuImg
from reconciler.images.sources import SourcePolicy
from reconciler.loop.observe import read_overlay
from reconciler.model.desired import ImageFormat, ImageSource
from reconciler.statedir import StateDir
from tests.helpers import write_base_image


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_overlay_header_facts_match_qemu_img(tmp_path: Path) -> None:
    base, _ = write_base_image(tmp_path)
    overlay = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay), "3G")
    facts, problem = read_overlay(str(overlay))
    assert problem is None and facts is not None
    assert facts.virtual_size == 3 * 1024**3
    assert facts.backing_file == str(base)
    assert facts.backing_format == "raw"
    assert read_overlay(str(tmp_path / "missing.qcow2")) == (None, None)
    facts, problem = read_overlay(str(base))
    assert facts is None and problem is not None and "not a qcow2" in problem


def test_an_overlay_header_read_from_its_first_bytes_is_the_whole_heads_reading(
    tmp_path: Path,
) -> None:
    """read_overlay_header reads 4 KiB when that decides everything, else the whole head: the
    same answer (or the same refusal) as parsing the whole head, whatever the file."""
    base, _ = write_base_image(tmp_path)
    overlay, plain, far = tmp_path / "o.qcow2", tmp_path / "p.qcow2", tmp_path / "far.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay), "3G")
    qemu_img("create", "-f", "qcow2", str(plain), "1G")
    # a backing name past the first 4 KiB (qemu-img never writes one there; a hostile file may)
    head = bytearray(plain.read_bytes()[:65536].ljust(65536, b"\0"))
    name = str(base).encode()
    struct.pack_into(">QI", head, 8, 5000, len(name))
    head[5000 : 5000 + len(name)] = name
    far.write_bytes(bytes(head))
    short = tmp_path / "short"
    short.write_bytes(b"QFI\xfb")
    for path in (overlay, plain, far, short, base):
        try:
            expected: object = parse_qcow2_header(read_head(str(path)))
        except HeaderError as err:
            expected = str(err)
        try:
            got: object = read_overlay_header(str(path))
        except HeaderError as err:
            got = str(err)
        assert got == expected, path.name
    far_header = read_overlay_header(str(far))
    assert far_header.backing_file == str(base) and far_header.virtual_size == 1024**3


def test_plain_qcow2_and_raw_pass_inspection(tmp_path: Path) -> None:
    base, _ = write_base_image(tmp_path)
    plain = tmp_path / "plain.qcow2"
    qemu_img("create", "-f", "qcow2", str(plain), "16M")
    for image, declared in ((base, ImageFormat.RAW), (plain, ImageFormat.QCOW2)):
        before = image.read_bytes()
        inspect_base_image(image, declared)  # accepted: nothing raised
        assert detect_formats(str(image)) == [declared.value]  # what it judged by
        assert image.read_bytes() == before  # inspection only reads


def test_qcow2_declared_raw_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.qcow2"
    qemu_img("create", "-f", "qcow2", str(plain), "16M")
    with pytest.raises(UnsafeImageError, match="declared raw but its header says qcow2"):
        inspect_base_image(plain, ImageFormat.RAW)


def test_qcow2_naming_a_host_file_as_backing_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", str(evil), "16M")
    assert parse_qcow2_header(read_head(str(evil))).backing_file == "/etc/passwd"
    with pytest.raises(UnsafeImageError, match=r"backing file .*/etc/passwd"):
        inspect_base_image(evil, ImageFormat.QCOW2)


def test_qcow2_with_external_data_file_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(evil), "16M")
    with pytest.raises(UnsafeImageError, match="external data file"):
        inspect_base_image(evil, ImageFormat.QCOW2)


def test_vmdk_is_refused(tmp_path: Path) -> None:
    vmdk = tmp_path / "disk.vmdk"
    qemu_img("create", "-f", "vmdk", str(vmdk), "16M")
    with pytest.raises(UnsafeImageError, match="header says vmdk"):
        inspect_base_image(vmdk, ImageFormat.RAW)


def test_unknown_incompatible_feature_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "future.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "16M")
    with image.open("r+b") as stream:
        stream.seek(72)
        stream.write(struct.pack(">Q", 1 << 40))
    with pytest.raises(UnsafeImageError, match="unknown incompatible features"):
        inspect_base_image(image, ImageFormat.QCOW2)


def test_cache_fetches_once_verifies_checksum_and_leaves_nothing_half_made(tmp_path: Path) -> None:
    base, sha = write_base_image(tmp_path)
    cache = ImageCache(StateDir(tmp_path / "state"), QemuImg(), SourcePolicy((tmp_path,)))
    image = ImageSource(base, sha, ImageFormat.RAW)
    use = cache.ensure(image)
    path = use.path
    assert use.fetched and sha256_of(path) == sha
    assert cache.ensure(image) == CacheUse(path)

    wrong = ImageSource(base, "f" * 64, ImageFormat.RAW)
    with pytest.raises(UnsafeImageError, match="checksum mismatch"):
        cache.ensure(wrong)
    assert not cache.is_cached(wrong)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []

    with pytest.raises(InstanceError, match="does not exist"):
        cache.ensure(ImageSource(tmp_path / "nope.raw", "e" * 64, ImageFormat.RAW))


def test_cache_refuses_an_image_declared_with_another_format(tmp_path: Path) -> None:
    plain = tmp_path / "plain.qcow2"
    qemu_img("create", "-f", "qcow2", str(plain), "16M")
    cache = ImageCache(StateDir(tmp_path / "state"), QemuImg(), SourcePolicy((tmp_path,)))
    image = ImageSource(plain, sha256_of(plain), ImageFormat.RAW)
    with pytest.raises(UnsafeImageError, match="declared raw"):
        cache.ensure(image)
    assert not cache.is_cached(image)


def test_source_digest_is_memoised_by_file_identity(tmp_path: Path) -> None:
    from reconciler.images.records import SourceDigests

    base, sha = write_base_image(tmp_path)
    digests = SourceDigests(StateDir(tmp_path / "state"), SourcePolicy((tmp_path,)))
    assert digests.digest(base, persist=False) == sha
    assert not (tmp_path / "state" / "images" / ".sources").exists()  # plan writes nothing
    assert digests.digest(base, persist=True) == sha
    (memo,) = (tmp_path / "state" / "images" / ".sources").iterdir()
    # an unchanged file is not read again: a wrong memo proves the memo is what answers
    memo.write_text(memo.read_text().replace(sha, "1" * 64))
    assert digests.digest(base, persist=True) == "1" * 64
    # a changed file is hashed again
    base.write_bytes(base.read_bytes()[:-1] + b"\x01")
    assert digests.digest(base, persist=True) == sha256_of(base) != sha
    with pytest.raises(InstanceError, match="does not exist"):
        digests.digest(tmp_path / "nope.raw", persist=False)


def poisoned_qcow2(directory: Path, size: str = "1M") -> bytes:
    """A qcow2 whose header names /etc/passwd as its backing file (made by real qemu-img)."""
    path = directory / "poison.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(path), size)
    data = path.read_bytes()
    path.unlink()
    return data


def cached_copy(tmp_path: Path) -> tuple[ImageCache, ImageSource, Path, bytes]:
    base, sha = write_base_image(tmp_path)
    state = StateDir(tmp_path / "state")
    cache = ImageCache(state, QemuImg(), SourcePolicy((tmp_path,)))
    image = ImageSource(base, sha, ImageFormat.RAW)
    entry = cache.ensure(image).path
    return cache, image, entry, entry.read_bytes()


def replace_entry(entry: Path, data: bytes) -> None:
    entry.chmod(0o644)
    entry.write_bytes(data)


@pytest.mark.parametrize("poison", ["bytes changed in place", "backing file /etc/passwd"])
def test_a_spoiled_entry_is_quarantined_and_fetched_again(tmp_path: Path, poison: str) -> None:
    cache, image, entry, original = cached_copy(tmp_path)
    if poison == "bytes changed in place":
        replace_entry(entry, original[:4096] + b"\xcc" * 512 + original[4608:])
    else:
        replace_entry(entry, poisoned_qcow2(tmp_path))

    use = cache.ensure(image)
    assert use.path == entry and use.fetched
    assert use.note is not None and f"cached base {entry.name} " in use.note
    assert "moved to" in use.note and "fetched again from its source" in use.note
    assert entry.read_bytes() == original
    (quarantined,) = (entry.parent / ".quarantine").iterdir()
    assert quarantined.name.startswith(entry.name + ".")
    assert quarantined.read_bytes() != original  # kept for inspection, never used
    assert cache.ensure(image) == CacheUse(entry)  # intact again: nothing to say


def test_an_entry_whose_identity_changed_but_content_did_not_is_kept(tmp_path: Path) -> None:
    cache, image, entry, original = cached_copy(tmp_path)
    identity = entry.stat().st_ino, entry.stat().st_mtime_ns
    cache.ensure(image)
    assert (entry.stat().st_ino, entry.stat().st_mtime_ns) == identity  # use does not touch it
    replace_entry(entry, original)  # same bytes, new mtime and ctime
    assert cache.records.changed(entry)
    assert cache.ensure(image) == CacheUse(entry)
    assert not cache.records.changed(entry)  # hashed again once, then trusted again
    assert not (entry.parent / ".quarantine").exists()


def test_an_entry_without_a_record_is_hashed_and_then_recorded(tmp_path: Path) -> None:
    cache, image, entry, _ = cached_copy(tmp_path)
    cache.records.remove(entry)  # as an entry cached before records existed
    assert cache.ensure(image) == CacheUse(entry)
    assert cache.records.read(entry) is not None


def test_a_spoiled_entry_whose_source_is_gone_is_not_used(tmp_path: Path) -> None:
    cache, image, entry, _ = cached_copy(tmp_path)
    replace_entry(entry, poisoned_qcow2(tmp_path))
    image.path.unlink()
    with pytest.raises(InstanceError, match="does not exist"):
        cache.ensure(image)
    assert not entry.exists()
    assert len(list((entry.parent / ".quarantine").iterdir())) == 1
