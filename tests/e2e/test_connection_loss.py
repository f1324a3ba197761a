"""Connection loss: the daemon watches a libvirtd that the test starts itself, which is then
killed and restarted. Nothing may be recreated, redefined or deleted because of the loss, and
events must work again after the restart."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import yaml

from tests.e2e.test_daemon import launch, observed, stop_daemon, wait_until
from tests.helpers import manifest_document, unique_name, write_base_image
from tests.libvirtd import Libvirtd


def test_a_lost_libvirtd_changes_nothing_and_events_work_after_its_restart() -> None:
    root = Path(tempfile.mkdtemp(prefix="rcl-", dir="/tmp"))
    libvirtd = Libvirtd(root / "d")
    libvirtd.prepare()
    libvirtd.start()
    process = None
    try:
        manifests = root / "m"
        manifests.mkdir()
        base, sha = write_base_image(root)
        name = unique_name()
        document = manifest_document(name, base, sha, accelerator="tcg")
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump(document))
        daemon = launch(root, manifests, base, sha, "--connect", libvirtd.uri)
        process = daemon.process
        wait_until(lambda: observed(daemon, name, "running"), "the instance to run", daemon)
        uuid = libvirtd.virsh("domuuid", name).strip()
        pid = libvirtd.qemu_pid(name)
        assert pid is not None
        reconciles = daemon.instance(name)["reconciles"]  # type: ignore[index]

        libvirtd.kill()
        wait_until(
            lambda: not daemon.status()["daemon"]["connected"], "the loss to be noticed", daemon
        )
        time.sleep(2)  # the reconnection is failing meanwhile: nothing may be done
        assert "reconnecting" in daemon.cli("status").stdout
        assert libvirtd.qemu_pid(name) == pid and os.path.exists(f"/proc/{pid}")

        libvirtd.start()
        wait_until(lambda: daemon.status()["daemon"]["connected"], "the reconnection", daemon)
        wait_until(
            lambda: daemon.instance(name)["reconciles"] > reconciles,  # type: ignore[index]
            "a reconcile after the reconnection",
            daemon,
        )
        entry = daemon.instance(name)
        assert entry is not None and entry["lastReconcile"]["outcome"] == "unchanged"
        assert libvirtd.virsh("domuuid", name).strip() == uuid  # not redefined anew
        assert libvirtd.qemu_pid(name) == pid  # not restarted

        os.kill(pid, signal.SIGKILL)  # events flow again: the death is seen and repaired
        wait_until(
            lambda: (
                observed(daemon, name, "running") and libvirtd.qemu_pid(name) not in (None, pid)
            ),
            "the instance to run again after its QEMU was killed",
            daemon,
        )
    finally:
        if process is not None:
            stop_daemon(process)
        libvirtd.destroy_all()
        libvirtd.kill()
        shutil.rmtree(root, ignore_errors=True)
