"""Profiles in the daemon, on the test guest's image, under both drivers: a change to a
profile reaches every instance that lists it, and only those (the others are not even
reconciled). The instances are defined and left stopped: what is checked is the definition
the daemon gives each, which needs no boot."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.e2e.test_daemon import Daemon, daemon_of_its_own, wait_until
from tests.guest import IMAGES, guest_image
from tests.helpers import unique_name

pytestmark = pytest.mark.both_drivers


def profile(name: str, memory: str) -> dict[str, Any]:
    return {
        "apiVersion": "reconciler/v1alpha1", "kind": "Profile", "metadata": {"name": name},
        "spec": {
            "state": "stopped", "vcpus": 1, "memory": memory, "networks": [],
            "image": {"source": str(guest_image("qcow2")), "format": "qcow2"},
            "disk": {"size": "256MiB"},
        },
    }  # fmt: skip


def write_profiles(daemon: Daemon, web_memory: str, prefix: str) -> None:
    """Saved as an editor saves: a temporary file renamed over the old one."""
    documents = [profile(f"{prefix}-web", web_memory), profile(f"{prefix}-other", "128MiB")]
    temporary = daemon.manifests / ".profiles.yaml.swp"
    temporary.write_text(yaml.safe_dump_all(documents))
    os.replace(temporary, daemon.manifests / "profiles.yaml")


def memory_of(daemon: Daemon, name: str) -> str | None:
    exported = daemon.cli("export", name)
    if exported.returncode != 0:
        return None
    return str(yaml.safe_load(exported.stdout)["spec"]["memory"])


def last_reconcile(daemon: Daemon, name: str) -> str | None:
    item = daemon.instance(name) or {}
    return (item.get("lastReconcile") or {}).get("started")


def last_change_triggers(daemon: Daemon, name: str) -> list[str]:
    """The triggers of the last reconcile of `name` that changed something."""
    item = daemon.instance(name) or {}
    changes = [e for e in item.get("events", []) if e["kind"] == "reconcile" and e["actions"]]
    return list(changes[-1]["triggers"]) if changes else []


def test_a_profile_change_reaches_the_instances_that_list_it_and_only_those(
    driver_name: str,
) -> None:
    with daemon_of_its_own("rpf-", driver_name, "--image-dir", str(IMAGES)) as daemon:
        prefix = unique_name("rpf")
        write_profiles(daemon, "128MiB", prefix)
        users, other = [f"{prefix}-a", f"{prefix}-b"], f"{prefix}-c"
        for name, listed in ((users[0], "web"), (users[1], "web"), (other, "other")):
            document = {
                "apiVersion": "reconciler/v1alpha1", "kind": "Instance",
                "metadata": {"name": name}, "spec": {"profiles": [f"{prefix}-{listed}"]},
            }  # fmt: skip
            (daemon.manifests / f"{name}.yaml").write_text(yaml.safe_dump(document))

        def has_memory(name: str, memory: str) -> Callable[[], bool]:
            return lambda: memory_of(daemon, name) == memory

        def changed_by_manifest(name: str) -> Callable[[], bool]:
            return lambda: "manifest" in last_change_triggers(daemon, name)

        for name in (*users, other):
            wait_until(has_memory(name, "128MiB"), f"{name} defined", daemon)
        untouched = last_reconcile(daemon, other)
        assert untouched is not None

        write_profiles(daemon, "192MiB", prefix)
        for name in users:
            wait_until(has_memory(name, "192MiB"), f"{name} redefined", daemon)
        assert memory_of(daemon, other) == "128MiB"
        assert last_reconcile(daemon, other) == untouched  # not even reconciled
        for name in users:  # the change that redefined it came from the manifest (the echo
            # of its define may be reconciled after it, when the event comes late: no change)
            wait_until(changed_by_manifest(name), f"{name}'s change recorded", daemon)
