"""Pull mode on real QEMU: manifests from bare repositories the tests create on local disk
(file:// URLs). A new commit is applied; a broken commit is not and the commit in force
stays, with the reason in `status`; unsigned commits are refused under --verify-signatures;
with --host, two reconcilers on two state directories over one repository each touch only
their own instances. Under each driver."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.model.actual import PowerState
from tests.e2e.conftest import Host, destroy_domains, private_host
from tests.e2e.test_daemon import launch, stop_daemon, wait_until
from tests.gitrepo import Repository, openpgp_signing_key, ssh_signing_key
from tests.helpers import run_bounded, unique_name, write_base_image

pytestmark = pytest.mark.both_drivers
RUNNING, SHUTOFF = PowerState.RUNNING, PowerState.SHUTOFF


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Repository, Path, str]]:
    images = tmp_path / "images"
    images.mkdir()
    base, sha = write_base_image(images)
    yield Repository(tmp_path / "repo"), base, sha


def reconcile(host: Host, base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = host.command(*args, "--image-dir", str(base.parent))
    return run_bounded(command, 300, host.root)


@contextlib.contextmanager
def agent_stopped(env: dict[str, str]) -> Iterator[None]:
    """Stop the gpg-agent that signing started in env's GNUPGHOME, afterwards."""
    try:
        yield
    finally:
        if "GNUPGHOME" in env:
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, **env})


def git_state(host: Host) -> dict[str, Any]:
    return dict(json.loads((host.root / "git" / "state.json").read_text()))


def test_once_applies_each_host_its_slice_and_keeps_the_last_good_commit(
    world: tuple[Repository, Path, str], driver_name: str
) -> None:
    repo, base, sha = world
    first, second = unique_name("rcg"), unique_name("rcg")
    repo.write_instance("fleet", first, base, sha, host="hv-a")
    repo.write_instance("fleet", second, base, sha, host="hv-b")
    repo.write("README.md", "not a manifest\n")
    good = repo.commit("two hosts")
    pull = ("--once", "--git", repo.url, "--path", "fleet")
    with private_host("rcga", driver_name) as host_a, private_host("rcgb", driver_name) as host_b:
        applied = reconcile(host_a, base, *pull, "--host", "hv-a")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert f"at commit {good[:12]}" in applied.stdout
        assert "1 instance(s) left to other hosts" in applied.stdout
        assert host_a.domains() == {first: RUNNING}
        assert reconcile(host_b, base, *pull, "--host", "hv-b").returncode == 0
        assert host_b.domains() == {second: RUNNING}

        # a broken commit: not applied, the commit in force stays, the reason is kept
        repo.write_instance("fleet", first, base, sha, host="hv-a", memory="lots")
        repo.write_instance("fleet", second, base, sha, host="hv-b", state="stopped")
        broken = repo.commit("a typo")
        refused = reconcile(host_b, base, *pull, "--host", "hv-b")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert f"newest commit {broken[:12]} not applied: 1 manifest error(s)" in refused.stderr
        assert f"{first}.yaml:" in refused.stderr and "/spec/memory" in refused.stderr
        assert host_b.domains() == {second: RUNNING}  # the good commit's state: running
        recorded = git_state(host_b)
        assert recorded["applied"] == good and recorded["newest"] == broken
        assert recorded["refused"]["commit"] == broken

        # fixed: applied, each host again only its own
        repo.write_instance("fleet", first, base, sha, host="hv-a")
        fixed = repo.commit("fixed")
        again = reconcile(host_b, base, *pull, "--host", "hv-b")
        assert again.returncode == 0, again.stdout + again.stderr
        assert host_b.domains() == {second: SHUTOFF}
        assert git_state(host_b)["applied"] == fixed
        assert git_state(host_b)["refused"] is None
        assert host_a.domains() == {first: RUNNING}
        # the clone keeps one checkout, that of the commit in force
        trees = [p.name for p in (host_b.root / "git" / "trees").iterdir()]
        assert trees == [fixed]


@pytest.mark.parametrize("kind", ["ssh", "openpgp"])
def test_only_signed_commits_are_applied_under_verify_signatures(
    world: tuple[Repository, Path, str], tmp_path: Path, kind: str, driver_name: str
) -> None:
    repo, base, sha = world
    env: dict[str, str] = {}
    if kind == "ssh":
        sign, keyring = ssh_signing_key(tmp_path)
    else:
        sign, env, keyring = openpgp_signing_key(tmp_path)
    name = unique_name("rcg")
    repo.write_instance(".", name, base, sha)
    unsigned = repo.commit("unsigned")
    pull = ("--once", "--git", repo.url, "--verify-signatures", str(keyring))
    with private_host("rcgs", driver_name) as state, agent_stopped(env):
        refused = reconcile(state, base, *pull)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "no commit of" in refused.stderr and "signature does not verify" in refused.stderr
        assert state.domains() == {}
        assert git_state(state)["refused"]["commit"] == unsigned

        signed = repo.commit("signed", *sign, **env)
        applied = reconcile(state, base, *pull)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert f"at commit {signed[:12]}" in applied.stdout
        assert state.domains() == {name: RUNNING}


def test_the_daemon_pulls_new_commits_and_shows_a_refused_one_in_status(
    world: tuple[Repository, Path, str], driver_name: str
) -> None:
    repo, base, sha = world
    first = unique_name("rcg")
    repo.write_instance(".", first, base, sha)
    good = repo.commit("one")
    root = Path(tempfile.mkdtemp(prefix="rcgd-", dir="/tmp"))  # short: libvirt's sockets
    git = ("--git", repo.url, "--interval", "1s")
    daemon = launch(root, None, base, sha, *git, driver=driver_name)
    try:
        wait_until(
            lambda: (daemon.instance(first) or {}).get("observed") == "running",
            "the first commit's instance to run",
            daemon,
        )
        git = daemon.status()["daemon"]["git"]
        assert git["appliedCommit"] == good

        second = unique_name("rcg")
        repo.write_instance(".", second, base, sha)
        newer = repo.commit("two")
        wait_until(
            lambda: (daemon.instance(second) or {}).get("observed") == "running",
            "the new commit's instance to run",
            daemon,
        )
        assert daemon.status()["daemon"]["git"]["appliedCommit"] == newer

        repo.write(f"{second}.yaml", "apiVersion: [\n")
        broken = repo.commit("broken")
        wait_until(
            lambda: (
                (daemon.status()["daemon"]["git"].get("notApplied") or {}).get("commit") == broken
            ),
            "the broken commit to be refused",
            daemon,
        )
        git = daemon.status()["daemon"]["git"]
        assert git["appliedCommit"] == newer and git["newestCommit"] == broken
        assert "manifest error" in git["notApplied"]["reason"]
        text = daemon.cli("status").stdout
        assert f"newest commit {broken[:12]} not applied" in text
        assert daemon.instance(second)["observed"] == "running"  # type: ignore[index]
    finally:
        stop_daemon(daemon.process)
        destroy_domains(root / "s")
        shutil.rmtree(root, ignore_errors=True)
