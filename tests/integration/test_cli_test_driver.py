"""The command line over libvirt's test:/// driver (fast control-flow checks; it proves nothing
about disks, which are still made by real qemu-img here)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.cli import main as cli
from reconciler.errors import StateDirBusy
from reconciler.statedir import StateDir, StateDirLock
from tests.helpers import write_base_image, write_manifest

TEST_URI = "test:///default"


@pytest.fixture
def one_manifest(tmp_path: Path) -> tuple[Path, str]:
    """A manifest directory with one instance on the boot-sector image; returns (dir, sha)."""
    base, sha = write_base_image(tmp_path)
    manifests = tmp_path / "m"
    manifests.mkdir()
    base = base.rename(manifests / base.name)  # inside the manifest directory: allowed
    write_manifest(manifests, "itest-a", base, sha)
    return manifests, sha


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_once_over_test_driver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_manifest: tuple[Path, str]
) -> None:
    manifests, _sha = one_manifest
    state = ["--state-dir", str(tmp_path / "s"), "--connect", TEST_URI]
    code, out, err = run(capsys, "--once", str(manifests), *state)
    # test:/// is fresh in every connection, so each call starts from an empty hypervisor
    assert code == 0, out + err
    assert "itest-a: created disk (64MiB)" in out
    assert "itest-a: started domain (accelerator tcg)" in out
    assert (tmp_path / "s" / "instances" / "itest-a" / "disk.qcow2").exists()


def test_usage_errors_exit_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ["--state-dir", str(tmp_path / "s"), "--connect", TEST_URI]
    assert run(capsys, "--workers", "0", str(tmp_path), *state)[0] == 2
    assert run(capsys, "--resync", "soon", str(tmp_path), *state)[0] == 2
    (tmp_path / "one.yaml").write_text("")
    code, _out, err = run(capsys, str(tmp_path / "one.yaml"), *state)
    assert code == 2 and "the daemon watches a directory" in err
    assert run(capsys, "plan", "--once", str(tmp_path))[0] == 2
    assert run(capsys, "status", "--detailed-exitcode")[0] == 2
    code, _out, err = run(capsys, "--once", str(tmp_path / "missing"), "--connect", TEST_URI)
    assert code == 2 and "no such file or directory" in err


def test_second_writer_is_refused_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateDir(tmp_path / "s")
    state.create()
    with StateDirLock(state):
        with pytest.raises(StateDirBusy, match=r"holder: pid \d+"):
            StateDirLock(state).acquire()
        code, _out, err = run(
            capsys, "--once", str(tmp_path), "--state-dir", str(state.root), "--connect", TEST_URI
        )
        assert code == 1 and "in use by another reconciler" in err


def test_console_script_plan_on_broken_manifests(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: reconciler/v1alpha1\nkind: Instance\nspec: [\n")
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--detailed-exitcode", str(tmp_path),
         "--connect", TEST_URI, "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{tmp_path}/bad.yaml:4:1: /: malformed YAML" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s" / "instances").exists()


def test_leftovers_of_a_killed_run_are_removed_not_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_manifest: tuple[Path, str]
) -> None:
    manifests, sha = one_manifest
    state = StateDir(tmp_path / "s")
    instance = state.instance("itest-a")
    instance.directory.mkdir(parents=True)
    # what a run killed mid-step leaves: a half-written overlay under a temporary name of a
    # process that no longer exists (pid 4194304 is above Linux's pid_max)
    leftover = instance.directory / ".disk.qcow2.4194304.0badc0de.tmp"
    leftover.write_bytes(b"QFI\xfb half written")
    state.images.mkdir(parents=True)
    cache_leftover = state.images / f".sha256-{sha}.raw.4194304.0badc0de.tmp"
    cache_leftover.write_bytes(b"partial")

    code, out, err = run(
        capsys, "--once", str(manifests), "--state-dir", str(state.root), "--connect", TEST_URI
    )
    assert code == 0, out + err
    assert not leftover.exists()
    assert not cache_leftover.exists()
    assert instance.disk.read_bytes()[:4] == b"QFI\xfb"
    assert sorted(p.name for p in instance.directory.iterdir()) == ["disk.qcow2"]

    # the disk exists now, so no step rewrites it: the pass itself removes what a dead
    # process left beside it
    leftover.write_bytes(b"QFI\xfb half written")
    code, out, err = run(
        capsys, "--once", str(manifests), "--state-dir", str(state.root), "--connect", TEST_URI
    )
    assert code == 0, out + err
    assert f"itest-a: removed {leftover.name}, left by an interrupted run" in out
    assert sorted(p.name for p in instance.directory.iterdir()) == ["disk.qcow2"]


def test_plan_refuses_a_source_outside_the_allowed_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base, sha = write_base_image(elsewhere)
    manifests = tmp_path / "m"
    manifests.mkdir()
    write_manifest(manifests, "itest-o", base, sha)
    common = ["--state-dir", str(tmp_path / "s"), "--connect", TEST_URI]
    code, out, _err = run(capsys, "plan", "--detailed-exitcode", str(manifests), *common)
    assert code == 1
    assert f"itest-o: cannot converge: image source {base} is outside the allowed" in out
    # an instance that cannot converge fails the plan however it is asked (CI must not pass)
    for extra in ([], ["--fail-on", "delete"], ["-o", "json"]):
        code, _out, _err = run(capsys, "plan", str(manifests), *common, *extra)
        assert code == 1, extra
    allowed = ["--image-dir", str(elsewhere)]
    code, out, _err = run(capsys, "plan", "--detailed-exitcode", str(manifests), *common, *allowed)
    assert code == 2
    assert f"fetch base image {base} into the cache" in out
    # or by the host's configuration file, with no flag at all (the state directory too)
    config = tmp_path / "config.yaml"
    config.write_text(f"image-dir: [{elsewhere}]\nstate-dir: {tmp_path / 's'}\n")
    config.chmod(0o644)
    os.environ["RECONCILER_CONFIG"] = str(config)
    try:
        code, out, _err = run(
            capsys, "plan", "--detailed-exitcode", str(manifests), "--connect", TEST_URI
        )
    finally:
        os.environ["RECONCILER_CONFIG"] = ""
    assert code == 2, out
    assert f"fetch base image {base} into the cache" in out


def test_unusable_state_directory_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], one_manifest: tuple[Path, str]
) -> None:
    manifests, _sha = one_manifest
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    code, _out, err = run(
        capsys, "--once", str(manifests), "--state-dir", str(blocked / "s"), "--connect", TEST_URI
    )
    assert code == 1
    assert err == f"reconcile: error: {blocked / 's'}: Not a directory\n"
    code, _out, err = run(capsys, "gc", "--state-dir", str(blocked))
    assert code == 2 and "does not exist" in err and "Traceback" not in err


@pytest.fixture
def small_file_system(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (the test runs as root); skipped where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_while_the_config_drive_is_built_is_a_clear_transient_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_manifest: tuple[Path, str],
    small_file_system: Path,
) -> None:
    manifests, sha = one_manifest
    (manifests / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    base = manifests / "bootsector.raw"
    files = [{"path": "/srv/big.bin", "source": "big.bin"}]
    write_manifest(manifests, "itest-a", base, sha, files=files)
    state = small_file_system / "s"
    code, out, err = run(capsys, "--once", str(manifests), "--state-dir", str(state),
                         "--connect", TEST_URI)  # fmt: skip
    assert code == 1
    assert "internal error" not in out + err
    assert f"no space left on the file system of {state}/instances/itest-a/config-" in out
    assert "bytes free; " in out and "bytes were needed" in out


def test_a_full_disk_at_lock_time_names_the_state_directory(
    capsys: pytest.CaptureFixture[str], one_manifest: tuple[Path, str], small_file_system: Path
) -> None:
    manifests, _sha = one_manifest
    state = small_file_system / "s"
    # every block taken (the close's flush too may meet the full disk)
    with contextlib.suppress(OSError), (small_file_system / "filler").open("wb") as filler:
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    code, _out, err = run(capsys, "--once", str(manifests), "--state-dir", str(state),
                          "--connect", TEST_URI)  # fmt: skip
    assert code == 1
    assert f"reconcile: error: no space left on the file system of {state}" in err
    assert "(0 bytes free)" in err


@pytest.mark.parametrize(
    "command",
    [
        "run",
        "plan",
        "validate",
        "export",
        "adopt",
        "status",
        "gc",
        "console",
        "shutdown-guests",
        "schema",
        "snapshot",
        "snapshots",
        "revert",
        "resume",
    ],
)
def test_each_command_help_has_its_own_usage_line(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command, "--help"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"usage: reconcile {command} [-h]"), first


def test_a_missing_argument_names_the_command_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: reconcile validate [-h]"), err[:200]
    assert "the following arguments are required: PATH" in err


def test_console_of_an_unknown_instance_says_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    (state / "instances" / "itest-made").mkdir(parents=True)
    code, _out, err = run(capsys, "console", "itest-nosuch", "--state-dir", str(state))
    assert code == 2 and f"no instance named itest-nosuch in {state}" in err
    code, _out, err = run(capsys, "console", "itest-made", "--state-dir", str(state))
    assert code == 2 and "has no console log" in err and "not been started yet" in err
