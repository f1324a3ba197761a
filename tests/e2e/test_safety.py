"""Data safety on real QEMU and qemu-img: a spoiled cached base never reaches a guest, a forged
marker proves nothing, a lost disk is not silently replaced, a disk is never smaller than its
base."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.model.actual import PowerState
from reconciler.model.desired import Accelerator
from reconciler.model.machine import Disk, Machine, OwnershipMarker
from tests.e2e.conftest import E2E, CliRun, private_host, wait_for
from tests.guest import guest_image
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers

Reconcile = Callable[..., CliRun]


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qemu_open_files(e2e: E2E, name: str) -> set[str]:
    """Every file the domain's QEMU process holds open."""
    fds = Path(f"/proc/{e2e.qemu_pid(name)}/fd")
    return {os.path.realpath(fds / fd) for fd in os.listdir(fds)}


def poison(entry: Path, directory: Path) -> None:
    """Replace a cache entry with a qcow2 whose header names /etc/passwd as its backing file."""
    crafted = directory / "crafted.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(crafted), "1M")
    entry.chmod(0o644)
    entry.write_bytes(crafted.read_bytes())


def test_a_hostile_cached_base_never_reaches_a_guest_that_already_exists(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    source = tmp_path / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(e2e.base), str(source))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    name = unique_name()
    write_manifest(tmp_path, name, source, sha, "qcow2", state="stopped")
    assert reconcile("--once", str(tmp_path)).code == 0
    entry = e2e.state.images / f"sha256-{sha}.qcow2"
    poison(entry, tmp_path)

    plan = reconcile("plan", str(tmp_path))
    assert f"cached base {entry.name} changed since it was verified" in plan.out
    write_manifest(tmp_path, name, source, sha, "qcow2", state="running")
    started = reconcile("--once", str(tmp_path))
    assert started.code == 0, started.out + started.err
    assert f"cached base {entry.name} changed since it was fetched" in started.out
    assert "fetched again from its source" in started.out
    assert "changed since it was verified" not in started.out  # the plan's forecast, now moot
    assert e2e.state_of(name) is PowerState.RUNNING
    assert "/etc/passwd" not in qemu_open_files(e2e, name)
    assert entry.read_bytes() == source.read_bytes()

    # spoiled again while the source is gone: the start is refused, with the reason
    write_manifest(tmp_path, name, source, sha, "qcow2", state="stopped")
    assert reconcile("--once", str(tmp_path)).code == 0
    poison(entry, tmp_path)
    source.unlink()
    write_manifest(tmp_path, name, source, sha, "qcow2", state="running")
    refused = reconcile("--once", str(tmp_path))
    assert refused.code == 1
    assert "the base image under the disk cannot be used, so the domain was not started" in (
        refused.out
    )
    assert e2e.state_of(name) is PowerState.SHUTOFF
    assert not entry.exists()


def test_a_forged_ownership_marker_proves_nothing(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    own_id = e2e.state.read_id() or e2e.state.create()
    for forged_id, disk in (("", "/tmp/elsewhere.qcow2"), (own_id, "/tmp/elsewhere.qcow2")):
        name = unique_name()
        forged = OwnershipMarker("/elsewhere.yaml", "sha256:bogus", forged_id)
        e2e.driver.define(
            Machine(
                name,
                Accelerator.TCG,
                vcpus=1,
                memory_kib=32 * 1024,
                disks=(Disk("vda", disk, "qcow2"),),
                marker=forged,
            )
        )
        before = e2e.driver.lookup(name)
        write_manifest(tmp_path, name, e2e.base, e2e.sha256)
        result = reconcile("--once", str(tmp_path))
        assert result.code == 1
        assert "it is left untouched" in result.out
        assert e2e.driver.lookup(name) == before
        assert not e2e.state.instance(name).disk.exists()  # nothing was made for it
        (tmp_path / f"{name}.yaml").unlink()


def test_a_disk_deleted_under_a_running_domain_is_reported_not_replaced(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name()
    write_manifest(tmp_path, name, e2e.base, e2e.sha256)
    assert reconcile("--once", str(tmp_path)).code == 0
    disk = e2e.state.instance(name).disk
    disk.unlink()

    refused = reconcile("--once", str(tmp_path))
    assert refused.code == 1
    assert f"disk {disk} is missing although the domain exists" in refused.out
    assert "created disk" not in refused.out
    assert not disk.exists()
    assert e2e.state_of(name) is PowerState.RUNNING

    write_manifest(tmp_path, name, e2e.base, e2e.sha256, allowReplace=True)
    replaced = reconcile("--once", str(tmp_path))
    assert replaced.code == 0, replaced.out
    assert f"{name}: created disk (64MiB)" in replaced.out
    assert "a new, empty one is made (allowReplace)" in replaced.out
    assert disk.exists()


def test_a_disk_smaller_than_its_base_is_refused_in_the_plan(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name()
    image = guest_image("qcow2")
    write_manifest(tmp_path, name, image, None, "qcow2", disk={"size": "16MiB"})
    plan = reconcile("plan", "--detailed-exitcode", str(tmp_path))
    assert plan.code == 1
    assert (
        f"{name}: cannot converge: disk.size 16MiB is smaller than the base image's virtual "
        "size 24MiB; ask for at least 24MiB" in plan.out
    )
    applied = reconcile("--once", str(tmp_path))
    assert applied.code == 1
    assert not e2e.state.instance(name).directory.exists()
    assert e2e.state_of(name) is None


def test_a_hand_edited_definition_cannot_make_the_reconciler_delete_a_file_elsewhere(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    """Whoever can define domains adds a data disk marked delete-when-removed whose source is
    a file outside the instance directory (directly, through `..`, and one of the driver's own
    files beside the disks): neither the drift repair nor a deletion removes any of them."""
    name = unique_name()
    directory = e2e.state.instance(name).directory
    outside = Path(f"/var/tmp/{name}-outside")
    outside.mkdir()
    victims = [outside / "victim.txt", outside / "through-dotdot.txt"]
    for victim in victims:
        victim.write_text("keep me\n")
    own_file = directory / "keep-me.txt"  # not a kind of file the reconciler makes
    try:
        write_manifest(
            tmp_path, name, e2e.base, e2e.sha256, state="stopped", deletionPolicy="delete"
        )
        assert reconcile("--once", str(tmp_path)).code == 0
        own_file.write_text("keep me too\n")
        named = [
            str(victims[0]),
            f"{directory}/../../../../../../..{victims[1]}",
            str(own_file),
        ]
        record = e2e.driver.lookup(name)
        machine = record.definition
        planted = tuple(
            Disk(f"vd{letter}", path, "raw", delete_when_removed=True)
            for letter, path in zip("bcd", named, strict=True)
        )
        e2e.driver.define(dataclasses.replace(machine, disks=(*machine.disks, *planted)))

        plan = reconcile("plan", str(tmp_path))
        for path in named:
            assert f"the definition names {path!r} for removal" in plan.out, plan.out
        repaired = reconcile("--once", str(tmp_path))
        assert repaired.code == 0, repaired.out + repaired.err
        assert "left in place" in repaired.out
        assert all(victim.read_text() == "keep me\n" for victim in victims)
        assert own_file.exists()

        # the same disks planted again, then the instance deleted with its disks
        e2e.driver.define(
            dataclasses.replace(
                e2e.driver.lookup(name).definition,
                disks=(*e2e.driver.lookup(name).definition.disks, *planted),
            )
        )
        write_manifest(
            tmp_path, name, e2e.base, e2e.sha256, state="absent", deletionPolicy="delete"
        )
        deleted = reconcile("--once", str(tmp_path))
        assert deleted.code == 0, deleted.out + deleted.err
        assert f"removed {directory}/disk.qcow2" in deleted.out  # its own disk, by full path
        assert e2e.driver.lookup(name) is None
        assert all(victim.read_text() == "keep me\n" for victim in victims)
        assert own_file.exists()
    finally:
        for victim in victims:
            victim.unlink(missing_ok=True)
        outside.rmdir()


READER = "rct-reader"  # a second local user, made by the test when missing


def second_user() -> str:
    if subprocess.run(["id", READER], capture_output=True, check=False).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", READER],
            check=True,
            capture_output=True,
        )
    return READER


def readable_by(user: str, path: Path) -> bool:
    """Whether `user` can open `path` for reading (or list it, for a directory)."""
    probe = "import os,sys; p=sys.argv[1]; os.listdir(p) if os.path.isdir(p) else open(p,'rb')"
    done = subprocess.run(
        ["python3", "-c", probe, str(path)], user=user, capture_output=True, check=False
    )
    return done.returncode == 0


def test_the_state_directory_is_private_to_its_owner(driver_name: str, tmp_path: Path) -> None:
    """A state directory made open (by hand, or by an older version) is made private at the
    next start, saying so; guest disks, drives, consoles, logs and sockets made afterwards
    are the owner's alone; a second local user reads none of them."""
    reader = second_user()
    with private_host("rcm", driver_name) as host:
        host.root.chmod(0o755)
        old = host.root / "instances" / "old" / "leftover.log"
        old.parent.mkdir(parents=True)
        old.write_text("from before\n")
        old.chmod(0o644)
        old.parent.chmod(0o755)
        name = unique_name()
        base = guest_image("qcow2")
        write_manifest(
            tmp_path, name, base, None, "qcow2", memory="64MiB", hostname="private",
            disks=[{"name": "data", "size": "8MiB"}],
        )  # fmt: skip
        images = ["--image-dir", str(base.parent)]
        done = subprocess.run(
            host.command("--once", str(tmp_path), *images),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stderr.count("made private to their owner") == 1, done.stderr
        directory = host.root / "instances" / name
        wait_for(lambda: (directory / "console.log").exists(), 30, "the console log")
        open_entries = []
        # libvirt's embedded root keeps its own modes inside: the directory itself is the wall
        libvirt_root = host.root / "libvirt"
        assert not libvirt_root.exists() or libvirt_root.stat().st_mode & 0o077 == 0
        for parent, subdirs, files in os.walk(host.root):
            if Path(parent).is_relative_to(libvirt_root):
                continue
            for entry in [parent, *(os.path.join(parent, n) for n in (*subdirs, *files))]:
                info = os.lstat(entry)
                if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
                    open_entries.append(f"{entry} {stat.filemode(info.st_mode)}")
        assert open_entries == []
        for path in (
            host.root,
            directory / "disk.qcow2",
            directory / "data-data.qcow2",
            directory / "console.log",
            old,
            *directory.glob("config-*.iso"),
        ):
            assert not readable_by(reader, path), path
        again = subprocess.run(
            host.command("--once", str(tmp_path), *images),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert again.returncode == 0 and "made private" not in again.stderr  # said once
