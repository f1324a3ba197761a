"""Prune, protection and deletion policy on the in-memory driver: orphans are listed, pruned
only within the guards, never another state directory's; protected domains are not deleted;
disks go only by their recorded policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.images.sources import SourcePolicy
from reconciler.loop.once import apply_all, plan_all
from reconciler.loop.reconcile import Reconciler, Settings
from reconciler.loop.results import Outcome
from reconciler.manifests.loader import load_manifests
from reconciler.planning.removal import removable_files
from reconciler.planning.steps import RemoveFiles
from reconciler.statedir import StateDir
from reconciler.steps.apply import _remove_files
from reconciler.testing.fake import FakeDriver
from tests.helpers import write_base_image, write_manifest


class World:
    def __init__(self, tmp_path: Path, name: str = "s") -> None:
        self.manifests = tmp_path / "m"
        self.manifests.mkdir(exist_ok=True)
        self.base, self.sha = write_base_image(tmp_path)
        self.state = StateDir(tmp_path / name)
        self.state.create()
        self.driver = FakeDriver()
        self.settings = Settings(sources=SourcePolicy((tmp_path,)))

    def write(self, name: str, **spec: Any) -> Path:
        return write_manifest(self.manifests, name, self.base, self.sha, **spec)

    def reconciler(self, **settings: Any) -> Reconciler:
        return Reconciler(self.driver, self.state, replace(self.settings, **settings))

    def once(self, **settings: Any) -> dict[str, Any]:
        results = apply_all(load_manifests(self.manifests), self.reconciler(**settings))
        return {result.name: result for result in results}


def test_an_orphan_is_listed_with_prune_off_and_deleted_with_prune_on(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.write("rct-keep")
    gone = world.write("rct-gone")
    assert all(r.outcome is Outcome.CHANGED for r in world.once().values())
    gone.unlink()
    listed = world.once()["rct-gone"]
    assert listed.outcome is Outcome.UNCHANGED
    assert listed.notes[0].startswith("orphan: its manifest is gone; kept (prune is off")
    assert world.driver.lookup("rct-gone") is not None
    (plan,) = [p for p in plan_all(load_manifests(world.manifests), world.reconciler(prune=True))
               if p.name == "rct-gone"]  # fmt: skip
    assert [step.kind.value for step in plan.steps] == ["stop", "undefine"]
    pruned = world.once(prune=True)["rct-gone"]
    assert pruned.outcome is Outcome.CHANGED, pruned.message
    assert world.driver.lookup("rct-gone") is None
    assert world.driver.lookup("rct-keep") is not None
    assert world.state.instance("rct-gone").disk.exists()  # retain: the disk is kept


def test_a_broken_manifest_or_an_empty_directory_holds_prune_back(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.write("rct-a")
    gone = world.write("rct-b")
    world.once()
    gone.unlink()
    (world.manifests / "broken.yaml").write_text("apiVersion: [\n")
    held = world.once(prune=True)["rct-b"]
    assert "1 manifest error(s) in this pass" in held.notes[0]
    assert world.driver.lookup("rct-b") is not None
    (world.manifests / "broken.yaml").unlink()
    (world.manifests / "rct-a.yaml").unlink()
    empty = world.once(prune=True)
    assert all("no instance is defined" in r.notes[0] for r in empty.values())
    assert world.driver.lookup("rct-a") is not None
    world.once(prune=True, allow_empty=True)
    assert world.driver.list_domains() == []


def test_a_protected_domain_survives_absent_and_prune(tmp_path: Path) -> None:
    world = World(tmp_path)
    manifest = world.write("rct-p", protect=True)
    world.once()
    world.write("rct-p", protect=True, state="absent")
    refused = world.once()["rct-p"]
    assert refused.outcome is Outcome.FAILED
    assert refused.message is not None and "protected" in refused.message
    manifest.unlink()
    pruned = world.once(prune=True, allow_empty=True)["rct-p"]
    assert pruned.outcome is Outcome.FAILED and world.driver.lookup("rct-p") is not None
    # removing the protection takes a pass with the flag off and the instance kept
    world.write("rct-p", protect=False)
    assert world.once()["rct-p"].outcome is Outcome.CHANGED
    world.write("rct-p", state="absent")
    assert world.once()["rct-p"].outcome is Outcome.CHANGED
    assert world.driver.lookup("rct-p") is None


def test_absent_removes_disks_only_by_the_deletion_policy(tmp_path: Path) -> None:
    world = World(tmp_path)
    disks = [{"name": "data", "size": "1MiB"}]
    world.write("rct-d", deletionPolicy="delete", disks=disks, hostname="h")
    world.once()
    paths = world.state.instance("rct-d")
    assert paths.disk.exists() and (paths.directory / "data-data.qcow2").exists()
    assert list(paths.directory.glob("config-*.iso"))
    world.write("rct-d", deletionPolicy="delete", disks=disks, hostname="h", state="absent")
    assert world.once()["rct-d"].outcome is Outcome.CHANGED
    assert not paths.disk.exists() and not (paths.directory / "data-data.qcow2").exists()
    assert not list(paths.directory.glob("config-*.iso"))
    assert not list(paths.directory.glob(".*.tmp"))  # nothing half-deleted left behind


def test_another_state_directory_never_prunes_these_domains(tmp_path: Path) -> None:
    ours, theirs = World(tmp_path, "ours"), World(tmp_path, "theirs")
    theirs.driver = ours.driver  # one hypervisor, two state directories
    ours.write("rct-ours")
    ours.once()
    (ours.manifests / "rct-ours.yaml").unlink()
    theirs.write("rct-theirs")
    theirs.once(prune=True)
    assert ours.driver.lookup("rct-ours") is not None
    assert theirs.reconciler().orphans({"rct-theirs"}) == []
    assert ours.reconciler().orphans(set()) == ["rct-ours"]


def test_only_files_the_reconciler_makes_in_the_instance_directory_are_removable() -> None:
    directory = Path("/state/instances/web")
    kept, notes = removable_files(
        [
            "/state/instances/web/disk.qcow2",
            "/state/instances/web/data-logs.raw",
            "/state/instances/web/config-0123abcd.iso",
            "/state/instances/web/nvram.fd",
            "/var/tmp/outside/victim.txt",  # elsewhere
            "/state/instances/web/../other/disk.qcow2",  # climbs out
            "/state/instances/web//disk.qcow2",  # not normal
            "state/instances/web/disk.qcow2",  # relative
            "/state/instances/web/domain.xml",  # the QMP driver's own file
            "/state/instances/web/.disk.qcow2.1.ab.tmp",
            "/state/instances/web/sub/disk.qcow2",
        ],
        directory,
    )
    assert [str(p) for p in kept] == [
        "/state/instances/web/disk.qcow2",
        "/state/instances/web/data-logs.raw",
        "/state/instances/web/config-0123abcd.iso",
        "/state/instances/web/nvram.fd",
    ]
    assert len(notes) == 7
    assert notes[0] == (
        "the definition names '/var/tmp/outside/victim.txt' for removal, which is not a file "
        "this instance's directory /state/instances/web holds: left in place"
    )


def test_the_removal_step_checks_the_directory_again_with_symlinks_resolved(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "instances" / "web"
    directory.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "disk.qcow2").write_text("victim")
    (directory / "link").symlink_to(elsewhere)
    (directory / "data-x.raw").symlink_to(elsewhere / "disk.qcow2")
    step = RemoveFiles(
        "web", (directory / "link" / "disk.qcow2", directory / "data-x.raw"), directory, "disks"
    )
    assert _remove_files(step) == f"removed {directory}/data-x.raw"
    assert (elsewhere / "disk.qcow2").read_text() == "victim"  # the link went, not its target
    assert not (directory / "data-x.raw").is_symlink()
