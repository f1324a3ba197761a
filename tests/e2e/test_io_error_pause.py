"""A guest that QEMU paused on an I/O error (its disks' file system full) is resumed once
the file system has room, and goes on where it stopped; while the file system is full the
reconcile fails as transient (retried with backoff) and the guest stays paused. The soak
(bench/soak.py) found the domain left paused for good: "paused after an error; set state:
stopped, then running" after a full disk that was freed again. On the QMP driver: with
libvirt's embedded driver its own root lies on the same full file system (what libvirt does
then is the next soak's to find)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from reconciler.model.actual import PowerState
from tests.e2e.conftest import CliRun, destroy_domains, domain_states
from tests.guest import IMAGES, guest_image, wait_for_marker
from tests.helpers import poll, unique_name

DRIVER = "qmp"


@pytest.fixture
def small_state() -> Iterator[Path]:
    """A state directory on a 64 MiB tmpfs of its own; skipped where mounting is not allowed."""
    root = Path(tempfile.mkdtemp(prefix="rcio-", dir="/tmp"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(root)], capture_output=True,
        check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield root
    finally:
        destroy_domains(root)
        subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.fixture
def run() -> Callable[..., CliRun]:
    """`reconcile` as a process of its own (an embedded libvirt root admits one process)."""

    def reconcile(state: Path, *args: str) -> CliRun:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", *args, "--state-dir", str(state), "--driver",
             DRIVER, "--image-dir", str(IMAGES)],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "RECONCILER_CONFIG": ""},
        )  # fmt: skip
        return CliRun(done.returncode, done.stdout, done.stderr)

    return reconcile


def fill(path: Path) -> None:
    with contextlib.suppress(OSError), path.open("wb") as out:
        while True:
            out.write(b"\0" * (1 << 20))
            out.flush()


def test_a_guest_paused_on_a_full_disk_is_resumed_when_there_is_room(
    small_state: Path, run: Callable[..., CliRun], tmp_path: Path
) -> None:
    name = unique_name()
    document = {
        "apiVersion": "reconciler/v1alpha1", "kind": "Instance", "metadata": {"name": name},
        "spec": {"vcpus": 1, "memory": "128MiB", "accelerator": "tcg",
                 "image": {"source": str(guest_image("qcow2")), "format": "qcow2"},
                 "disk": {"size": "256MiB"}, "disks": [{"name": "data", "size": "16MiB"}],
                 "cloudInit": {"userData": "#cloud-config\n# reconciler-guest: counter\n"}},
    }  # fmt: skip
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(document))
    # the file system fills up before the guest's first write to its data disk
    filler = small_state / "filler"
    started = run(small_state, "--once", str(tmp_path))
    assert started.code == 0, started.out + started.err
    fill(filler)
    console = small_state / "instances" / name / "console.log"

    def paused() -> bool:
        return domain_states(small_state, DRIVER).get(name) is PowerState.PAUSED

    poll(paused, 120, "the guest paused on an I/O error")
    stuck = run(small_state, "--once", str(tmp_path))  # no room: nothing resumes
    assert stuck.code == 1, stuck.out + stuck.err
    assert "no space left on the file system" in stuck.err or "stays paused" in stuck.out
    assert paused()

    filler.unlink()
    resumed = run(small_state, "--once", str(tmp_path))
    assert resumed.code == 0, resumed.out + resumed.err
    assert "resumed the domain paused on an I/O error" in resumed.out
    assert domain_states(small_state, DRIVER).get(name) is PowerState.RUNNING
    wait_for_marker(console, "counter=")  # its writes go through again
