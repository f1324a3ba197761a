"""The controller's decisions against the fake driver, one name at a time (no threads): which
triggers enqueue what, backoff after a transient failure, and permanent failures parked until
their manifest changes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import yaml

from reconciler.drivers.base import DomainEvent, EventKind
from reconciler.errors import DriverError
from reconciler.health.conditions import ConditionType
from reconciler.images.sources import SourcePolicy
from reconciler.loop.controller import Controller, DaemonOptions
from reconciler.loop.names import Trigger
from reconciler.loop.reconcile import Settings
from reconciler.loop.status import read_status_file, status_file_text
from reconciler.loop.watch import is_relevant_path
from reconciler.statedir import StateDir
from reconciler.testing.fake import FakeDriver
from tests.helpers import manifest_document, write_base_image


def make_controller(
    tmp_path: Path, prune: bool = False
) -> tuple[Controller, FakeDriver, Path, Path, str]:
    """A controller on the fake driver, its manifest directory and a base image in it."""
    manifests = tmp_path / "m"
    manifests.mkdir(exist_ok=True)
    base, sha = write_base_image(manifests)
    state = StateDir(tmp_path / "s")
    state.create()
    driver = FakeDriver()
    settings = Settings(sources=SourcePolicy((manifests,)), prune=prune)
    controller = Controller(driver, state, settings, DaemonOptions(manifests))
    return controller, driver, manifests, base, sha


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Controller, FakeDriver, Path, Path, str]:
    controller, driver, manifests, base, sha = make_controller(tmp_path)
    controller.attach()  # as run() does
    return controller, driver, manifests, base, sha


def write(manifests: Path, name: str, base: Path, sha: str, **spec: Any) -> None:
    document = manifest_document(name, base, sha, **spec)
    (manifests / f"{name}.yaml").write_text(yaml.safe_dump(document))


def drain(controller: Controller) -> list[str]:
    """Reconcile every name due now, in order; return them."""
    return controller.reconcile_ready()


def test_only_changed_manifests_are_reconciled_again(setup: tuple) -> None:  # type: ignore[type-arg]
    controller, _driver, manifests, base, sha = setup
    write(manifests, "rct-a", base, sha)
    write(manifests, "rct-b", base, sha)
    controller.reload(Trigger.START)
    assert sorted(drain(controller)) == ["rct-a", "rct-b"]
    write(manifests, "rct-b", base, sha, memory="80MiB")
    controller.reload(Trigger.MANIFEST, changed={manifests / "rct-b.yaml"})
    assert drain(controller) == ["rct-b"]
    status = controller.status.get("rct-b")
    assert status is not None and status.triggers == {"start": 1, "manifest": 1}


def test_events_enqueue_managed_names_only(setup: tuple) -> None:  # type: ignore[type-arg]
    controller, driver, manifests, base, sha = setup
    write(manifests, "rct-a", base, sha)
    controller.reload(Trigger.START)
    drain(controller)
    controller.on_event(DomainEvent("someone-elses", EventKind.LIFECYCLE, "stopped"))
    assert drain(controller) == []
    driver.crash("rct-a")
    assert drain(controller) == ["rct-a"]  # the fake emitted "stopped: crashed"
    assert driver.domains["rct-a"].state.value == "running"


def test_a_transient_failure_backs_off_and_a_success_resets_it(setup: tuple) -> None:  # type: ignore[type-arg]
    controller, driver, manifests, base, sha = setup
    write(manifests, "rct-a", base, sha)
    controller.reload(Trigger.START)
    driver.failures["start"] = DriverError("start rct-a", "busy")
    assert drain(controller) == ["rct-a"]
    retry = controller.queue.retry_state("rct-a")
    assert retry.failures == 1 and retry.due is not None
    assert 0.9 < retry.due - time.monotonic() <= 1.1
    status = controller.status.get("rct-a")
    assert status is not None and status.next_retry is not None and status.failures == 1
    controller.queue.add("rct-a")  # as if the backoff had elapsed
    assert drain(controller) == ["rct-a"]
    assert controller.queue.retry_state("rct-a").failures == 0


def test_a_permanent_failure_waits_for_its_manifest_to_change(setup: tuple) -> None:  # type: ignore[type-arg]
    controller, _driver, manifests, base, sha = setup
    write(manifests, "rct-a", base, sha, disk={"size": "64MiB"})
    controller.reload(Trigger.START)
    drain(controller)
    write(manifests, "rct-a", base, sha, disk={"size": "32MiB"})  # a shrink: refused
    controller.reload(Trigger.MANIFEST, changed={manifests / "rct-a.yaml"})
    assert drain(controller) == ["rct-a"]
    status = controller.status.get("rct-a")
    assert status is not None and status.waiting_for_change and status.next_retry is None
    controller.resync()
    assert drain(controller) == []  # parked: the same inputs would fail the same way
    write(manifests, "rct-a", base, sha, disk={"size": "128MiB"})
    controller.resync()  # a resync rereads the directory too: the change is seen
    assert drain(controller) == ["rct-a"]
    status = controller.status.get("rct-a")
    assert status is not None and not status.waiting_for_change and status.last_error is None


def test_an_edited_injected_file_reconciles_the_instances_that_name_it(setup: tuple) -> None:  # type: ignore[type-arg]
    controller, driver, manifests, base, sha = setup
    (manifests / "motd").write_text("one\n")
    files = [{"path": "/etc/motd", "source": "motd"}]
    write(manifests, "rct-a", base, sha, files=files)
    write(manifests, "rct-b", base, sha)
    controller.reload(Trigger.START)
    assert sorted(drain(controller)) == ["rct-a", "rct-b"]
    assert is_relevant_path(str(manifests / "motd"))  # the watcher passes such a change on
    (manifests / "motd").write_text("two\n")
    controller.reload(Trigger.MANIFEST, changed={manifests / "motd"})
    assert drain(controller) == ["rct-a"]
    record = driver.lookup("rct-a")
    assert record is not None and record.live_definition is not None
    assert record.live_definition.config_drive_path is not None
    assert "config-" in record.live_definition.config_drive_path


def test_a_resync_settles_converged_names_from_one_listing(setup: tuple) -> None:  # type: ignore[type-arg]
    """A full pass lists every domain once: the converged names are settled from that listing
    (no lookup of their own, status as before), a name an event also asked for is observed
    afresh, and a crashed one is started."""
    controller, driver, manifests, base, sha = setup
    for name in ("rct-a", "rct-b", "rct-c"):
        write(manifests, name, base, sha)
    controller.reload(Trigger.START)
    drain(controller)
    looked_up: list[str] = []
    lookup = driver.lookup

    def counting_lookup(name: str) -> Any:
        looked_up.append(name)
        return lookup(name)

    driver.lookup = counting_lookup
    driver.calls.clear()
    controller.resync()
    assert sorted(drain(controller)) == ["rct-a", "rct-b", "rct-c"]
    assert looked_up == [] and driver.calls == []
    status = controller.status.get("rct-b")
    assert status is not None and status.observed == "running"
    assert status.last_reconcile is not None and status.last_reconcile["outcome"] == "unchanged"
    assert status.triggers == {"start": 1, "resync": 1}

    controller.resync()
    driver.crash("rct-b")  # after the listing: its event asks for rct-b too
    assert sorted(drain(controller)) == ["rct-a", "rct-b", "rct-c"]
    assert set(looked_up) == {"rct-b"} and [call for call, _ in driver.calls] == ["start"]
    assert driver.domains["rct-b"].state.value == "running"


def test_a_resync_over_converged_names_writes_no_file_of_theirs(setup: tuple) -> None:  # type: ignore[type-arg]
    """Every pass tells the prober again how each instance is; a pass that finds nothing new
    writes nothing under the instances (their health.json was rewritten, with two fsyncs,
    for every instance on every pass)."""
    controller, _driver, manifests, base, sha = setup
    write(manifests, "rct-a", base, sha)
    write(manifests, "rct-b", base, sha, state="stopped")
    controller.reload(Trigger.START)
    drain(controller)
    instances = controller.state.root / "instances"

    def stamps() -> dict[str, tuple[int, int]]:
        return {
            str(p): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in instances.rglob("*")
            if p.is_file() and not p.name.endswith(".log")
        }

    before = stamps()
    assert any(path.endswith("health.json") for path in before)
    for _ in range(2):
        controller.resync()
        assert sorted(drain(controller)) == ["rct-a", "rct-b"]
    assert stamps() == before


@pytest.mark.parametrize(
    ("name", "relevant"),
    [
        ("web.yaml", True),
        ("user-data", True),
        ("motd.txt", True),
        (".web.yaml.swp", False),
        ("web.yaml~", False),
        ("#web.yaml#", False),
        ("4913", False),
        (".hidden", False),
    ],
)
def test_the_watcher_ignores_only_swap_backup_and_hidden_files(name: str, relevant: bool) -> None:
    assert is_relevant_path(f"/srv/manifests/{name}") is relevant


def test_the_daemon_lists_an_orphan_and_prunes_it_only_with_prune_on(tmp_path: Path) -> None:
    from dataclasses import replace

    manifests = tmp_path / "m"
    manifests.mkdir()
    base, sha = write_base_image(manifests)
    state = StateDir(tmp_path / "s")
    state.create()
    driver = FakeDriver()
    settings = Settings(sources=SourcePolicy((manifests,)))
    for prune in (False, True):
        controller = Controller(
            driver, state, replace(settings, prune=prune), DaemonOptions(manifests)
        )
        write(manifests, "rct-kept", base, sha)
        write(manifests, "rct-gone", base, sha)
        controller.reload(Trigger.START, everything=True)
        drain(controller)
        (manifests / "rct-gone.yaml").unlink()
        controller.reload(Trigger.MANIFEST, changed={manifests / "rct-gone.yaml"})
        assert drain(controller) == ["rct-gone"]
        entry = controller.status.get("rct-gone")
        if not prune:
            assert driver.lookup("rct-gone") is not None
            assert entry is not None and entry.last_reconcile is not None
            (note,) = entry.last_reconcile["notes"]
            assert note.startswith("orphan: its manifest is gone; kept (prune is off")
        else:
            assert driver.lookup("rct-gone") is None
        assert driver.lookup("rct-kept") is not None


@pytest.mark.parametrize("prune", [False, True])
def test_an_instance_whose_manifest_breaks_is_left_as_it_is_not_called_an_orphan(
    tmp_path: Path, prune: bool
) -> None:
    """The soak found it: a manifest made invalid was said to be gone ("orphan: its manifest
    is gone; kept (prune is off: --prune ... turns it on)"), as if --prune would remove it."""
    controller, driver, manifests, base, sha = make_controller(tmp_path, prune)
    write(manifests, "rct-broken", base, sha)
    write(manifests, "rct-other", base, sha)
    controller.reload(Trigger.START, everything=True)
    drain(controller)
    write(manifests, "rct-broken", base, sha, memory="lots")
    controller.reload(Trigger.MANIFEST, changed={manifests / "rct-broken.yaml"})
    assert drain(controller) == ["rct-broken"]
    assert driver.lookup("rct-broken") is not None
    entry = controller.status.get("rct-broken")
    assert entry is not None and entry.last_reconcile is not None
    (note,) = entry.last_reconcile["notes"]
    assert note == (
        "its manifest has errors (see the manifest errors): left as it is until they are fixed"
    )
    assert "orphan" not in json.dumps(entry.last_reconcile)


def test_the_status_file_reads_back_as_the_snapshot_it_was_written_from(setup: tuple) -> None:  # type: ignore[type-arg]
    """One instance per line (json's C encoder), the rest indented: the same JSON either way."""
    controller, _driver, manifests, base, sha = setup
    controller.status_writer.now()  # no instance yet
    written = read_status_file(controller.state.status_file)
    assert written == controller.status.snapshot() | {"written": ANY}
    assert written is not None and written["instances"] == []
    for name in ("rct-a", "rct-b"):
        write(manifests, name, base, sha)
    (manifests / "broken.yaml").write_text('kind: "\\u00e9\\n\\t"\n')
    controller.reload(Trigger.START)
    drain(controller)
    snapshot = controller.status.snapshot()
    text = status_file_text(snapshot)
    assert json.loads(text) == snapshot
    assert len(snapshot["instances"]) == 2 and snapshot["manifestErrors"]
    assert text.count("\n    {") == 2  # one line per instance


def test_status_shows_the_last_change_after_a_pass_that_found_nothing_to_do(
    tmp_path: Path,
) -> None:
    from reconciler.cli.report import render_status
    from reconciler.loop.results import InstanceResult, Outcome
    from reconciler.loop.status import StatusBook

    book = StatusBook(tmp_path / "status.json", {"running": True, "pid": 1})
    book.set_desired("web", "/m/web.yaml", "running")
    changed = InstanceResult("web", Outcome.CHANGED, ("redefined domain",), seconds=2.13)
    book.record_result(
        changed, started=1_000_000.0, triggers={"manifest"}, observed="running", failures=0,
        next_retry=None, pending_restart=False,
    )  # fmt: skip
    unchanged = InstanceResult("web", Outcome.UNCHANGED, seconds=0.01)
    book.record_result(
        unchanged, started=1_000_001.0, triggers={"event"}, observed="running", failures=0,
        next_retry=None, pending_restart=False,
    )  # fmt: skip
    (entry,) = book.snapshot()["instances"]
    assert entry["lastChange"]["actions"] == ["redefined domain"]
    (row,) = [line for line in render_status(book.snapshot()) if line.strip().startswith("web")]
    assert "unchanged at " in row and "; last changed at 1970-01-12T13:46:40" in row


def test_a_failing_liveness_probe_restarts_the_guest_and_a_new_boot_starts_it_over(
    setup: tuple,  # type: ignore[type-arg]
) -> None:
    controller, driver, manifests, base, sha = setup
    liveness = {"exec": {"command": ["test", "-e", "/run/alive"]}, "failureThreshold": 2}
    write(manifests, "rct-a", base, sha, guestAgent=True, liveness=liveness)
    controller.reload(Trigger.START)
    assert drain(controller) == ["rct-a"]
    exit_codes = [1, 0, 1, 1]  # failing while it boots (not counted), up, then failing

    def agent(command: str, arguments: dict[str, Any] | None) -> Any:
        if command == "guest-exec":
            return {"pid": 1}
        if command == "guest-exec-status":
            return {"exited": True, "exitcode": exit_codes.pop(0) if exit_codes else 0}
        return []

    driver.domains["rct-a"].agent = agent
    tracker = controller.prober._watched["rct-a"].trackers[ConditionType.LIVE]
    for _ in range(4):
        assert tracker is not None
        tracker.next_due = 0.0  # due now, whatever its period
        for future in controller.prober.tick():
            future.result()
    assert controller.prober.liveness_failure("rct-a") == (
        "exec test -e /run/alive: exited 1 (2 in a row)"
    )
    driver.calls.clear()
    assert drain(controller) == ["rct-a"]  # enqueued by the probe
    assert [call for call, _name in driver.calls] == ["shut down", "start"]
    status = controller.status.get("rct-a")
    assert status is not None and status.triggers.get("probe") == 1
    assert status.crash_loop is None or status.crash_loop["restarts"] == 1
    # the start (its event) began a new boot: alive until proven otherwise
    assert controller.prober.liveness_failure("rct-a") is None


def test_a_daemon_started_again_reads_only_the_files_that_changed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readings a daemon keeps are in the state directory (manifest-readings.json): the
    next daemon, or plan and --once, read again only the files that changed since."""
    from reconciler.manifests import filecache, loader

    monkeypatch.setattr(filecache, "RACY_SECONDS", 0.0)
    first, _driver, manifests, base, sha = make_controller(tmp_path)
    for name in ("rct-a", "rct-b", "rct-c"):
        write(manifests, name, base, sha)
    first.reload(Trigger.START, everything=True)
    write(manifests, "rct-b", base, sha, memory="96MiB")  # while no daemon runs
    parsed: list[str] = []
    real = loader.parse_manifest_file

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        parsed.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(loader, "parse_manifest_file", counting)
    second = Controller(FakeDriver(), first.state, first.reconciler.settings,
                        DaemonOptions(manifests))  # fmt: skip
    load = second.read_manifests()
    assert parsed == ["rct-b.yaml"]
    assert {s.name: s.memory_bytes for s in load.instances}["rct-b"] == 96 * 1024 * 1024


def test_a_name_that_leaves_while_its_manifest_is_invalid_is_reconciled(tmp_path: Path) -> None:
    """The soak found it: a set scaled down while its template was broken (its profile had
    an error) kept its highest member running for good, and an invalid manifest removed was
    never noted as an orphan: the daemon enqueues the names whose spec changed, and a name
    an invalid manifest claimed had none before, and has none after."""
    controller, driver, manifests, base, sha = make_controller(tmp_path)
    template = manifest_document("x", base, sha)["spec"]

    def write_set(replicas: int, broken: bool) -> None:
        spec = {"replicas": replicas, "template": {**template, "memory": "lots"} if broken
                else template}  # fmt: skip
        document = {"apiVersion": "reconciler/v1alpha1", "kind": "InstanceSet",
                    "metadata": {"name": "rct-set"}, "spec": spec}  # fmt: skip
        (manifests / "rct-set.yaml").write_text(yaml.safe_dump(document))

    write_set(2, broken=False)
    write(manifests, "rct-loose", base, sha)
    controller.reload(Trigger.START, everything=True)
    drain(controller)
    assert driver.lookup("rct-set-1") is not None and driver.lookup("rct-loose") is not None
    write_set(2, broken=True)
    write(manifests, "rct-loose", base, sha, memory="lots")
    controller.reload(Trigger.MANIFEST, changed={manifests / "rct-set.yaml",
                                                 manifests / "rct-loose.yaml"})  # fmt: skip
    drain(controller)
    write_set(1, broken=True)  # scaled down while broken
    (manifests / "rct-loose.yaml").unlink()  # removed while broken
    controller.reload(Trigger.MANIFEST, changed={manifests / "rct-set.yaml",
                                                 manifests / "rct-loose.yaml"})  # fmt: skip
    assert "rct-loose" in drain(controller)
    entry = controller.status.get("rct-loose")
    assert entry is not None and entry.last_reconcile is not None
    assert entry.last_reconcile["notes"][0].startswith("orphan: its manifest is gone")
    write_set(1, broken=False)  # fixed: the member it no longer counts goes
    controller.reload(Trigger.MANIFEST, changed={manifests / "rct-set.yaml"})
    assert "rct-set-1" in drain(controller)
    assert driver.lookup("rct-set-1") is None and driver.lookup("rct-set-0") is not None
