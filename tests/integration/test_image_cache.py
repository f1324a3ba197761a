"""The image cache over HTTP: one download per image, crafted images refused, kill -9 safe,
garbage collection."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reconciler.errors import InstanceError, UnsafeImageError
from reconciler.images.cache import ImageCache
from reconciler.images.download import DownloadLimits
from reconciler.images.gc import collect_garbage
from reconciler.images.qemuimg import QemuImg
from reconciler.images.sources import SourcePolicy, SourceRefused
from reconciler.model.desired import ImageFormat, ImageSource
from reconciler.statedir import StateDir
from tests.helpers import PROJECT, bootsector_image_bytes, write_manifest
from tests.httpserver import Behaviour, image_server

BASE = bootsector_image_bytes()
SHA = hashlib.sha256(BASE).hexdigest()


def cache_for(root: Path) -> ImageCache:
    return ImageCache(StateDir(root), QemuImg(), SourcePolicy((root,)), DownloadLimits())


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def test_ten_instances_at_once_cause_one_download(tmp_path: Path) -> None:
    with image_server() as server:
        served = server.serve("/base.raw", Behaviour(BASE, chunk_delay=0.05))
        cache = cache_for(tmp_path)
        image = ImageSource(server.url("/base.raw"), SHA, ImageFormat.RAW)
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda _i: cache.ensure(image), range(10)))
    assert served.gets == 1
    assert sum(use.fetched for use in results) == 1
    assert results[0].path.read_bytes() == BASE


def test_two_processes_cause_one_download(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from tests.integration.test_image_cache import cache_for\n"
        "from reconciler.model.desired import ImageFormat, ImageSource\n"
        "image = ImageSource(sys.argv[1], sys.argv[2], ImageFormat.RAW)\n"
        "cache = cache_for(Path(sys.argv[3]))\n"
        "with ThreadPoolExecutor(5) as pool:\n"
        "    list(pool.map(lambda _i: cache.ensure(image), range(5)))\n"
    )
    with image_server() as server:
        served = server.serve("/base.raw", Behaviour(BASE, chunk_delay=0.05))
        command = [sys.executable, "-c", script, server.url("/base.raw"), SHA, str(tmp_path)]
        workers = [subprocess.Popen(command, cwd=PROJECT) for _ in range(2)]
        assert [worker.wait(timeout=60) for worker in workers] == [0, 0]
    assert served.gets == 1
    (cached,) = StateDir(tmp_path).images.glob("sha256-*.raw")
    assert cached.read_bytes() == BASE


@pytest.mark.parametrize(
    ("craft", "declared", "problem"),
    [
        (["-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw"], "qcow2", "backing file"),
        (["-f", "qcow2", "-o", "data_file=DATA"], "qcow2", "external data file"),
        (["-f", "vmdk"], "raw", "header says vmdk"),
        (["-f", "qcow2"], "raw", "declared raw but its header says qcow2"),
    ],
)
def test_crafted_images_over_http_are_refused_and_not_kept(
    tmp_path: Path, craft: list[str], declared: str, problem: str
) -> None:
    crafted = tmp_path / "crafted.img"
    options = [part.replace("DATA", str(tmp_path / "data.raw")) for part in craft]
    qemu_img("create", *options, str(crafted), "16M")
    data = crafted.read_bytes()
    with image_server() as server:
        server.serve("/crafted", Behaviour(data))
        cache = cache_for(tmp_path / "state")
        image = ImageSource(
            server.url("/crafted"), hashlib.sha256(data).hexdigest(), ImageFormat(declared)
        )
        with pytest.raises(UnsafeImageError, match=problem):
            cache.ensure(image)
    assert not cache.is_cached(image)
    assert [p.name for p in (tmp_path / "state" / "images").iterdir() if "tmp" in p.name] == []


def test_qcow2_source_converted_to_raw_in_the_cache(tmp_path: Path) -> None:
    raw = tmp_path / "base.raw"
    raw.write_bytes(BASE)
    qcow2 = tmp_path / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    data = qcow2.read_bytes()
    with image_server() as server:
        server.serve("/base.qcow2", Behaviour(data))
        cache = cache_for(tmp_path / "state")
        image = ImageSource(
            server.url("/base.qcow2"),
            hashlib.sha256(data).hexdigest(),
            ImageFormat.QCOW2,
            convert_to=ImageFormat.RAW,
        )
        use = cache.ensure(image)
    path = use.path
    assert use.fetched and path.name.endswith(".qcow2.raw")
    assert path.read_bytes() == BASE


def test_file_source_outside_allowed_directories_is_refused(tmp_path: Path) -> None:
    inside, outside = tmp_path / "images", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (outside / "base.raw").write_bytes(BASE)
    (inside / "link.raw").symlink_to(outside / "base.raw")
    policy = SourcePolicy((inside,))
    with pytest.raises(SourceRefused, match="outside the allowed image directories"):
        policy.resolve_local(outside / "base.raw")
    with pytest.raises(SourceRefused, match="resolves to"):
        policy.resolve_local(inside / "link.raw")
    (inside / "real.raw").write_bytes(BASE)
    assert policy.resolve_local(inside / "real.raw") == inside / "real.raw"


def test_kill_9_mid_download_then_a_new_run_converges(tmp_path: Path) -> None:
    body = os.urandom(8 * 1024 * 1024)
    image = tmp_path / "image.raw"
    image.write_bytes(BASE + body[len(BASE) :])
    data = image.read_bytes()
    manifests = tmp_path / "m"
    manifests.mkdir()
    state = tmp_path / "s"
    with image_server() as server:
        served = server.serve("/big.raw", Behaviour(data, chunk_delay=0.02))
        path = write_manifest(manifests, "itest-k", image, hashlib.sha256(data).hexdigest())
        path.write_text(path.read_text().replace(str(image), server.url("/big.raw")))
        command = [
            sys.executable, "-m", "reconciler", "--once", str(manifests),
            "--connect", "test:///default", "--state-dir", str(state),
        ]  # fmt: skip
        first = subprocess.Popen(
            command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        images = state / "images"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            partial = list(images.glob(".sha256-*.tmp")) if images.is_dir() else []
            if partial and partial[0].stat().st_size > 1024 * 1024:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the download never started")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert list(images.glob(".sha256-*.tmp")), "a partial file stays behind after kill -9"
        assert not list(images.glob("sha256-*.raw")), "nothing half-made is published"

        served.chunk_delay = 0
        second = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    (cached,) = images.glob("sha256-*.raw")
    assert cached.read_bytes() == data
    assert not list(images.glob(".*.tmp"))
    assert served.ranges[-1] == ""  # the new run started from zero: no partial file was used


def test_gc_removes_only_unused_and_old_bases(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.create()
    used = state.images / f"sha256-{'a' * 64}.raw"
    unused_old = state.images / f"sha256-{'b' * 64}.raw"
    unused_young = state.images / f"sha256-{'c' * 64}.raw"
    for base in (used, unused_old, unused_young):
        base.write_bytes(BASE)
    old = time.time() - 30 * 86400
    os.utime(used, (old, old))
    os.utime(unused_old, (old, old))
    disk = state.instance("itest-g").disk
    disk.parent.mkdir(parents=True)
    qemu_img("create", "-f", "qcow2", "-b", str(used), "-F", "raw", str(disk), "64M")
    leftover = state.images / f".sha256-{'d' * 64}.raw.4194304.0badc0de.tmp"
    leftover.write_bytes(b"partial")
    # a dead process's temporary file in an instance directory, and a live one's
    instance_leftover = disk.parent / ".disk.qcow2.4194304.0badc0de.tmp"
    instance_leftover.write_bytes(b"QFI\xfb half")
    live = disk.parent / f".console.log.{os.getppid()}.0badc0de.tmp"
    live.write_bytes(b"still being written")
    cache = cache_for(tmp_path)

    dry = collect_garbage(state, cache, 7 * 86400, dry_run=True)
    assert dry.removed == [unused_old]
    assert dry.leftovers == [leftover, instance_leftover]
    assert unused_old.exists() and leftover.exists() and instance_leftover.exists()

    report = collect_garbage(state, cache, 7 * 86400, dry_run=False)
    assert report.removed == [unused_old]
    assert report.in_use == [used]
    assert report.too_young == [unused_young]
    assert report.leftovers == [leftover, instance_leftover]
    assert not instance_leftover.exists() and live.exists()
    assert not unused_old.exists() and used.exists() and unused_young.exists()
    # a base in use is kept whatever its age
    assert collect_garbage(state, cache, 0, dry_run=False).removed == [unused_young]
    assert used.exists()


def test_permanent_failure_is_remembered_until_the_manifest_changes(tmp_path: Path) -> None:
    with image_server() as server:
        missing = server.serve("/gone.raw", Behaviour(BASE, status=404))
        cache = cache_for(tmp_path)
        image = ImageSource(server.url("/gone.raw"), SHA, ImageFormat.RAW)
        for _ in range(2):
            with pytest.raises(InstanceError, match="HTTP 404"):
                cache.ensure(image)
        assert missing.gets == 1  # the second pass did not ask again
        with pytest.raises(InstanceError, match="until the manifest's source or sha256 changes"):
            cache.ensure(image)
        server.serve("/moved.raw", Behaviour(BASE))
        use = cache.ensure(ImageSource(server.url("/moved.raw"), SHA, ImageFormat.RAW))
        assert use.fetched and use.path.read_bytes() == BASE


def test_crafted_image_fails_the_instance_and_no_disk_is_built(tmp_path: Path) -> None:
    crafted = tmp_path / "evil.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", str(crafted), "16M")
    data = crafted.read_bytes()
    manifests = tmp_path / "m"
    manifests.mkdir()
    with image_server() as server:
        server.serve("/evil.qcow2", Behaviour(data))
        path = write_manifest(
            manifests, "itest-e", crafted, hashlib.sha256(data).hexdigest(), "qcow2"
        )
        path.write_text(path.read_text().replace(str(crafted), server.url("/evil.qcow2")))
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", "--once", str(manifests), "--connect",
             "test:///default", "--state-dir", str(tmp_path / "s")],
            cwd=PROJECT, capture_output=True, text=True,
        )  # fmt: skip
    assert result.returncode == 1
    assert "names a backing file ('/etc/passwd'); refused" in result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s" / "instances" / "itest-e").exists()
    assert not list((tmp_path / "s" / "images").glob("sha256-*[!k]"))  # nothing but a lock
