"""Prune on real QEMU, through the command line, on a state directory of its own (prune looks
at every managed domain of a state directory, so it must not share the session's), under
each driver."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Host, private_host
from tests.helpers import run_bounded, unique_name, write_base_image, write_manifest

pytestmark = pytest.mark.both_drivers


@pytest.fixture(scope="module")
def host(driver_name: str) -> Iterator[Host]:
    with private_host("rcp", driver_name) as made:
        yield made


def reconcile(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return run_bounded(host.command(*args), 300, host.root)


def domains(host: Host) -> set[str]:
    return set(host.domains())


def test_prune_deletes_orphans_only_when_allowed_and_never_a_protected_one(
    host: Host, tmp_path: Path
) -> None:
    base, sha = write_base_image(tmp_path)
    manifests = tmp_path / "m"
    manifests.mkdir()
    kept, gone, guarded = unique_name("rcp"), unique_name("rcp"), unique_name("rcp")
    for name in (kept, gone):
        write_manifest(manifests, name, base, sha)
    write_manifest(manifests, guarded, base, sha, protect=True)
    first = reconcile(host, "--once", str(manifests), "--image-dir", str(tmp_path))
    assert first.returncode == 0, first.stdout + first.stderr
    (manifests / f"{gone}.yaml").unlink()
    (manifests / f"{guarded}.yaml").unlink()

    # prune off: listed as an orphan, left running
    listed = reconcile(host, "--once", str(manifests), "--image-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "orphan: its manifest is gone; kept (prune is off" in listed.stdout
    assert {kept, gone, guarded} <= domains(host)

    # prune on, but another manifest broken: nothing deleted, and the output says why
    (manifests / "broken.yaml").write_text("apiVersion: [\n")
    held = reconcile(host, "--once", "--prune", str(manifests), "--image-dir", str(tmp_path))
    assert held.returncode == 2
    assert "nothing is pruned unless every manifest loads and validates" in held.stdout
    assert {gone, guarded} <= domains(host)
    (manifests / "broken.yaml").unlink()

    # prune on: the orphan goes, the protected one stays (and says why), its disk is kept
    plan = reconcile(host, "plan", "--prune", str(manifests), "--image-dir", str(tmp_path))
    assert f"{gone}: 2 step(s)" in plan.stdout, plan.stdout
    pruned = reconcile(host, "--once", "--prune", str(manifests), "--image-dir", str(tmp_path))
    assert pruned.returncode == 1, pruned.stdout  # the protected orphan is a refusal
    assert f"{gone}: undefined domain" in pruned.stdout
    assert "protected (protect: true is recorded on it)" in pruned.stdout
    assert gone not in domains(host)
    assert {kept, guarded} <= domains(host)
    assert (host.root / "instances" / gone / "disk.qcow2").exists()

    # an empty directory deletes nothing without --allow-empty
    (manifests / f"{kept}.yaml").unlink()
    empty = reconcile(host, "--once", "--prune", str(manifests), "--image-dir", str(tmp_path))
    assert "no instance is defined while managed domains exist" in empty.stdout, empty.stdout
    assert kept in domains(host)
