"""Instance sets on the test guest's image, under both drivers: a set scales 2 -> 3 -> 1
(the members past the replicas are removed, prune on or off, their disks kept as their
deletion policy says), while an instance that merely left the manifests is not pruned
without --prune, and a manifest error anywhere holds every removal back. The members are
left stopped: what is checked is which domains exist."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import E2E, CliRun
from tests.guest import guest_image
from tests.helpers import unique_name, write_manifest

pytestmark = pytest.mark.both_drivers
Reconcile = Callable[..., CliRun]


def write_set(directory: Path, name: str, replicas: int) -> None:
    document: dict[str, Any] = {
        "apiVersion": "reconciler/v1alpha1", "kind": "InstanceSet",
        "metadata": {"name": name, "labels": {"tier": "web"}},
        "spec": {"replicas": replicas, "template": {
            "state": "stopped", "vcpus": 1, "memory": "128MiB", "networks": [],
            "image": {"source": str(guest_image("qcow2")), "format": "qcow2"},
            "disk": {"size": "256MiB"}, "hostname": "node-{{ordinal}}",
        }},
    }  # fmt: skip
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(document))


def test_a_set_scales_up_and_down_and_removes_only_its_own_members(
    e2e: E2E, reconcile: Reconcile, tmp_path: Path
) -> None:
    name = unique_name("rss")
    single = unique_name("rsi")
    manifests = tmp_path / "m"
    manifests.mkdir()

    def members() -> list[str]:
        return sorted(r.name for r in e2e.driver.list_domains() if r.name.startswith(name))

    write_set(manifests, name, 2)
    write_manifest(manifests, single, e2e.base, e2e.sha256, state="stopped", networks=[])
    run = reconcile("--once", str(manifests))
    assert run.code == 0, run.out + run.err
    assert members() == [f"{name}-0", f"{name}-1"]
    labels = dict(e2e.driver.lookup(f"{name}-1").definition.marker.labels)
    assert labels == {"reconciler/set": name, "tier": "web"}

    write_set(manifests, name, 3)
    assert reconcile("--once", str(manifests)).code == 0
    assert members() == [f"{name}-0", f"{name}-1", f"{name}-2"]

    # scaled down while a manifest is broken: nothing is removed
    write_set(manifests, name, 1)
    (manifests / "broken.yaml").write_text("apiVersion: reconciler/v1alpha1\nkind: Instance\n")
    assert reconcile("--once", str(manifests)).code == 2
    assert len(members()) == 3
    (manifests / "broken.yaml").unlink()

    # scaled down, the single instance gone from the manifests, prune off: the set's
    # members past its replicas go (disks kept), the single one stays an orphan
    (manifests / f"{single}.yaml").unlink()
    run = reconcile("--once", str(manifests))
    assert run.code == 0, run.out + run.err
    assert members() == [f"{name}-0"]
    assert e2e.driver.lookup(single) is not None
    assert "prune is off" in run.out
    assert e2e.state.instance(f"{name}-2").disk.exists()  # deletionPolicy: retain


def test_the_daemon_shows_each_set_as_a_deployment_does(driver_name: str) -> None:
    """desired, current, updated and ready, as the set scales 1 -> 2 -> 1 (running members
    of the small boot-sector image: nothing to wait for but their start)."""
    from tests.e2e.test_daemon import daemon_of_its_own, wait_until

    with daemon_of_its_own("rsd-", driver_name) as daemon:
        name = unique_name("rsd")

        def scale(replicas: int) -> None:
            document: dict[str, Any] = {
                "apiVersion": "reconciler/v1alpha1", "kind": "InstanceSet",
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "template": {
                    "vcpus": 1, "memory": "64MiB", "networks": [],
                    "image": {"source": str(daemon.base), "sha256": daemon.sha256,
                              "format": "raw"},
                    "disk": {"size": "64MiB"}, "shutdownTimeoutSeconds": 1,
                }},
            }  # fmt: skip
            (daemon.manifests / f"{name}.yaml").write_text(yaml.safe_dump(document))

        def row() -> dict[str, Any]:
            sets = daemon.status().get("sets") or []
            return next((s for s in sets if s["name"] == name), {})

        def counts(*wanted: int) -> Callable[[], bool]:
            keys = ("desired", "current", "updated", "ready")
            return lambda: tuple(row().get(k) for k in keys) == wanted

        scale(1)
        wait_until(counts(1, 1, 1, 1), "one member, ready", daemon, timeout=120)
        scale(2)
        wait_until(counts(2, 2, 2, 2), "two members, ready", daemon, timeout=120)
        shown = daemon.cli("status").stdout
        assert "SET" in shown and f"  {name}  2        2        2        2" in shown, shown
        scale(1)
        wait_until(counts(1, 1, 1, 1), "scaled down to one", daemon, timeout=120)
