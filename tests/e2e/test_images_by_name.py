"""Images by name, end to end, with no internet: a fake distribution on 127.0.0.1 (a tree in
Debian's layout and one in Ubuntu's simplestreams layout, signed with a key the test makes)
and a host configuration whose catalogue points at it.

A manifest naming the image boots the test guest, and the lock file is written beside it; a
second host fills its cache from the lock with no lookup (from the URL, or from a tarball
carried over); a checksum file with a bad signature, an image whose checksum differs from
the signed file, and an unknown name are refused with what went wrong and nothing kept in
the cache; `images outdated` sees a newer image, `images update` rewrites the lock, and
`plan` then shows the instances that take the new base with their disruption class."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import main as cli
from reconciler.model.imagelock import host_architecture
from tests.distribution import FILES, STREAM, Distribution, product_file
from tests.e2e.conftest import E2E, CliRun, private_state_dir
from tests.e2e.test_daemon import daemon_of_its_own, observed, wait_until
from tests.gitrepo import Repository, openpgp_key_with_fingerprint
from tests.guest import guest_image, wait_for_marker
from tests.helpers import unique_name
from tests.httpserver import Behaviour, image_server

Reconcile = Callable[..., CliRun]
ARCH = host_architecture()
pytestmark = pytest.mark.skipif(ARCH != "x86_64", reason="the fake trees publish amd64 only")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, str]:
    return openpgp_key_with_fingerprint(tmp_path_factory.mktemp("distribution-key"))


@pytest.fixture
def distribution(
    key: tuple[dict[str, str], Path, str],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Distribution]:
    """The fake distribution, and this host's configuration naming it in its catalogue
    (test-debian, test-ubuntu)."""
    with image_server() as server:
        fake = Distribution(server, *key)
        config = tmp_path_factory.mktemp("host-config") / "config.yaml"
        catalogue = {"test-debian": fake.entry("debian"), "test-ubuntu": fake.entry("ubuntu")}
        config.write_text(yaml.safe_dump({"catalogue": catalogue}))
        config.chmod(0o644)
        monkeypatch.setenv("RECONCILER_CONFIG", str(config))
        yield fake


def manifest(directory: Path, name: str, image: dict[str, Any], **spec: Any) -> Path:
    document = {
        "apiVersion": "reconciler/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": name},
        "spec": {"vcpus": 1, "memory": "128MiB", "image": image, "disk": {"size": "256MiB"},
                 "shutdownTimeoutSeconds": 30, **spec},
    }  # fmt: skip
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def on_host(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """Run `reconcile` in this process on a state directory of the test's own (another
    host), with the QMP driver (this process runs libvirt's embedded driver for the
    session's root already, and it serves one root per process)."""

    def run(state: Path, *args: str) -> CliRun:
        capsys.readouterr()
        code = cli.main([*args, "--state-dir", str(state), "--driver", "qmp"])
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


def cached_bases(state: Path) -> set[str]:
    images = state / "images"
    return {p.name for p in images.glob("sha256-*")} - {p.name for p in images.glob("*.lock")}


def test_a_name_boots_the_guest_and_a_second_host_uses_the_lock_with_no_lookup(
    e2e: E2E,
    reconcile: Reconcile,
    on_host: Callable[..., CliRun],
    distribution: Distribution,
    tmp_path: Path,
) -> None:
    image = guest_image("qcow2").read_bytes()
    distribution.publish("debian", image)
    sha256 = hashlib.sha256(image).hexdigest()
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    name = unique_name()
    manifest(manifests, name, {"name": "test-debian"})

    run = reconcile("--once", str(manifests))
    assert run.code == 0, run.out + run.err
    assert "locked test-debian (x86_64, genericcloud)" in run.err
    lock = json.loads((manifests / "images.lock.json").read_text())
    entry = lock["images"][f"test-debian/{ARCH}"]
    assert entry["url"] == distribution.server.url(f"/debian/{FILES['debian']}")
    assert (entry["algorithm"], entry["digest"]) == ("sha512", hashlib.sha512(image).hexdigest())
    assert entry["sha256"] == sha256 and entry["signed_by"] == distribution.fingerprint
    assert entry["size"] == len(image)
    assert f"sha256-{sha256}.qcow2" in cached_bases(e2e.state.root)
    assert wait_for_marker(e2e.state.instance(name).console_log, "ready").booted
    # the image was fetched once (locking it fetched it into the cache: Debian signs sha512)
    assert distribution.server.served(f"/debian/{FILES['debian']}").completed == 1

    # a second host: the lock is in the repository, the checksum file is never looked up
    signed = [distribution.server.served(f"/debian/{p}") for p in ("SHA512SUMS", "SHA512SUMS.sign")]
    looked_up = [file.gets for file in signed]
    with private_state_dir("rcn") as second:
        plan = on_host(second, "plan", str(manifests))
        assert plan.code == 0, plan.out + plan.err
        assert "fetch base" in plan.out and f"sha256 {sha256[:12]}" in plan.out
        pulled = on_host(second, "images", "pull", "test-debian", "--dir", str(manifests))
        assert pulled.code == 0, pulled.out + pulled.err
        assert "fetched into the cache" in pulled.out
        assert f"sha256-{sha256}.qcow2" in cached_bases(second)
    assert [file.gets for file in signed] == looked_up

    # an air-gapped host: the image carried over in a tarball, checked against the lock
    carried = tmp_path / "carried.tar.gz"
    (tmp_path / FILES["debian"]).write_bytes(image)
    with tarfile.open(carried, "w:gz") as archive:
        archive.add(tmp_path / FILES["debian"], arcname=f"images/{FILES['debian']}")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / FILES["debian"]).write_bytes(image[:-1] + b"\1")
    distribution.server.serve(f"/debian/{FILES['debian']}", Behaviour(status=404))
    with private_state_dir("rca") as third:
        pull = ("images", "pull", "test-debian", "--dir", str(manifests), "--from")
        refused = on_host(third, *pull, str(tampered))
        assert refused.code != 0 and "the lock says" in refused.err
        assert cached_bases(third) == set()
        pulled = on_host(third, *pull, str(carried))
        assert pulled.code == 0, pulled.out + pulled.err
        assert cached_bases(third) == {f"sha256-{sha256}.qcow2"}
    assert [file.gets for file in signed] == looked_up


def test_a_bad_signature_a_wrong_checksum_and_an_unknown_name_are_refused_with_nothing_kept(
    on_host: Callable[..., CliRun], distribution: Distribution, tmp_path: Path
) -> None:
    image = guest_image("qcow2").read_bytes()
    distribution.publish("debian", image)
    name = unique_name()
    manifest(tmp_path, name, {"name": "test-debian"})
    with private_state_dir("rcb") as state:
        # the checksum file changed after it was signed (a hostile mirror)
        evil = f"{'e' * 128}  {FILES['debian']}\n".encode()
        distribution.server.serve("/debian/SHA512SUMS", Behaviour(body=evil))
        run = on_host(state, "--once", str(tmp_path))
        assert run.code == 2, run.out + run.err
        assert "BAD signature" in run.err and "is not in the lock file" in run.err
        assert not (tmp_path / "images.lock.json").exists()
        assert distribution.server.served(f"/debian/{FILES['debian']}").gets == 0
        assert cached_bases(state) == set() and name not in run.out

        # signed properly, but the image the server sends is another one
        distribution.signed(
            "/debian/SHA512SUMS",
            f"{hashlib.sha512(b'another image').hexdigest()}  {FILES['debian']}\n".encode(),
            "/debian/SHA512SUMS.sign",
        )
        run = on_host(state, "--once", str(tmp_path))
        assert run.code == 2, run.out + run.err
        assert "checksum mismatch" in run.err and "the file was not kept" in run.err
        assert not (tmp_path / "images.lock.json").exists()
        assert cached_bases(state) == set()
        assert not [p for p in (state / "images").iterdir() if p.name.endswith(".tmp")]

        # a name no catalogue has
        manifest(tmp_path, name, {"name": "no-such-os"})
        run = on_host(state, "--once", str(tmp_path))
        assert run.code == 2, run.out + run.err
        assert "'no-such-os' is not in the catalogue" in run.err
        assert "test-debian" in run.err and "debian-12" in run.err  # the names it has
        assert f"{name}.yaml:" in run.err and "/spec/image/name" in run.err


def test_outdated_sees_a_newer_image_and_update_moves_the_lock_that_plan_then_shows(
    reconcile: Reconcile, distribution: Distribution, tmp_path: Path
) -> None:
    image = guest_image("qcow2").read_bytes()
    distribution.publish("ubuntu", image)
    name = unique_name()
    manifest(tmp_path, name, {"name": "test-ubuntu"}, state="stopped", allowReplace=True)
    run = reconcile("--once", str(tmp_path))
    assert run.code == 0, run.out + run.err
    before = (tmp_path / "images.lock.json").read_text()
    outdated = reconcile("images", "outdated", str(tmp_path))
    assert outdated.code == 0 and "newest its distribution publishes" in outdated.out
    unchanged = reconcile("plan", str(tmp_path), "--detailed-exitcode")
    assert unchanged.code == 0, unchanged.out + unchanged.err

    # the distribution publishes a newer image
    newer = image + b"\0" * 512
    path = "server/releases/noble/release-20250101/ubuntu-24.04-server-cloudimg-amd64.img"
    distribution.server.serve(f"/ubuntu/{path}", Behaviour(body=newer))
    distribution.signed(
        f"/ubuntu/{STREAM}",
        product_file({"20241004": (FILES["ubuntu"], image), "20250101": (path, newer)}),
    )
    listed = reconcile("images", "outdated", str(tmp_path))
    assert listed.code == 0, listed.out + listed.err
    assert f"test-ubuntu/{ARCH}" in listed.out
    assert hashlib.sha256(newer).hexdigest()[:12] in listed.out
    as_json = json.loads(reconcile("images", "outdated", str(tmp_path), "-o", "json").out)
    (row,) = as_json["outdated"]
    assert row["newest"]["url"].endswith(path) and row["locked"]["digest"] in before
    assert (tmp_path / "images.lock.json").read_text() == before  # outdated changes nothing

    updated = reconcile("images", "update", "--dir", str(tmp_path))
    assert updated.code == 0, updated.out + updated.err
    assert f"updated test-ubuntu/{ARCH}" in updated.out
    lock = json.loads((tmp_path / "images.lock.json").read_text())
    assert lock["images"][f"test-ubuntu/{ARCH}"]["sha256"] == hashlib.sha256(newer).hexdigest()

    plan = reconcile("plan", str(tmp_path), "--fail-on", "replace")
    assert plan.code == 3, plan.out + plan.err
    assert name in plan.out and "REPLACE THE BOOT DISK" in plan.out
    assert f"fetch base image test-ubuntu ({ARCH}) from http" in plan.out
    assert hashlib.sha256(newer).hexdigest()[:12] in plan.out
    again = reconcile("images", "update", "--dir", str(tmp_path))
    assert again.code == 0 and "newest its distribution publishes" in again.out


def test_the_daemon_resolves_a_new_name_off_its_loop_and_converges_when_the_lock_is_written(
    distribution: Distribution,
) -> None:
    """Outside pull mode the daemon resolves a name the lock lacks, in a thread of its own;
    the lock it writes is seen like any change, and the instance converges."""
    image = guest_image("qcow2").read_bytes()
    distribution.publish("debian", image)
    with daemon_of_its_own("rcd-", "qmp") as daemon:
        name = unique_name()
        manifest(daemon.manifests, name, {"name": "test-debian"}, state="stopped")
        lock = daemon.manifests / "images.lock.json"
        wait_until(lock.exists, "the lock file written", daemon)
        entry = json.loads(lock.read_text())["images"][f"test-debian/{ARCH}"]
        assert entry["sha256"] == hashlib.sha256(image).hexdigest()
        wait_until(lambda: observed(daemon, name, "shutoff"), "the instance defined", daemon)
        assert "locked test-debian" in daemon.log_text()


def test_pull_mode_applies_the_repositorys_lock_and_never_writes_one(
    on_host: Callable[..., CliRun], distribution: Distribution, tmp_path: Path
) -> None:
    """In pull mode the lock is the repository's: a commit naming an image its lock lacks is
    refused whole (nothing resolved, nothing written into the checkout); one with the lock
    is applied with no lookup."""
    image = guest_image("qcow2").read_bytes()
    distribution.publish("debian", image)
    name = unique_name("rcp")
    repo = Repository(tmp_path / "repo")
    document = yaml.safe_load(
        manifest(tmp_path, name, {"name": "test-debian"}, state="stopped").read_text()
    )
    repo.write(f"fleet/{name}.yaml", document)
    unlocked = repo.commit("an image by name, no lock")
    sums = distribution.server.served("/debian/SHA512SUMS")
    pull = ("--once", "--git", repo.url, "--path", "fleet")
    with private_state_dir("rcp") as state:
        refused = on_host(state, *pull)
        assert refused.code == 2, refused.out + refused.err
        assert f"commit {unlocked[:12]} is not applied" in refused.err
        assert "is not in the lock file" in refused.err
        assert sums.gets == 0 and not list(state.glob("git/trees/*/fleet/images.lock.json"))

        # the lock made where the manifests are edited, committed with them
        locking = tmp_path / "edit"
        locking.mkdir()
        manifest(locking, name, {"name": "test-debian"}, state="stopped")
        assert on_host(state, "images", "lock", str(locking)).code == 0
        repo.write("fleet/images.lock.json", (locking / "images.lock.json").read_text())
        locked = repo.commit("the lock")
        looked_up = sums.gets
        applied = on_host(state, *pull)
        assert applied.code == 0, applied.out + applied.err
        assert f"at commit {locked[:12]}" in applied.out and sums.gets == looked_up
        assert "defined domain" in applied.out
