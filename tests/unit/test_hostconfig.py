"""The host's configuration file: its settings fill what flags and the environment leave
unset, it is checked like any input, and only the host's own file is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli.main import build_parser
from reconciler.cli.options import Options, options_from
from reconciler.errors import ConfigError
from reconciler.statedir import default_state_dir


def options(*flags: str) -> Options:
    """`reconcile plan DIR FLAGS`, as main() builds its options."""
    _parser, commands = build_parser()
    return options_from("plan", commands["plan"].parse_intermixed_args(["m", *flags]))


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "state-dir: /srv/state\nimage-dir: [/srv/images]\ndriver: qmp\n"
        "connect: qemu:///system\nhost: hv-a\nca-bundle: /etc/ca.pem\n"
    )
    path.chmod(0o644)
    monkeypatch.setenv("RECONCILER_CONFIG", str(path))
    for variable in ("RECONCILER_STATE_DIR", "RECONCILER_DRIVER", "LIBVIRT_DEFAULT_URI"):
        monkeypatch.delenv(variable, raising=False)
    return path


def test_the_file_fills_what_nothing_else_set(config: Path) -> None:
    args = options("--image-dir", "/flag/images")
    assert (
        args.state.root, args.driver, args.connect, args.selection.host, args.ca_bundle
    ) == (Path("/srv/state"), "qmp", "qemu:///system", "hv-a", Path("/etc/ca.pem"))  # fmt: skip
    assert args.image_dirs == (Path("/flag/images"), Path("/srv/images"))  # they add up


def test_flags_win_over_the_environment_and_the_environment_over_the_file(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = options("--state-dir", "/flag", "--driver", "libvirt", "--connect", "test:///default")
    assert (flags.state.root, flags.driver, flags.connect) == (
        Path("/flag"), "libvirt", "test:///default",
    )  # fmt: skip
    monkeypatch.setenv("RECONCILER_STATE_DIR", "/env/state")
    monkeypatch.setenv("RECONCILER_DRIVER", "libvirt")
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu:///session")
    environment = options()
    assert environment.state.root == Path("/env/state")
    assert (environment.driver, environment.connect) == ("libvirt", "qemu:///session")


def test_no_file_and_an_empty_setting_read_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_CONFIG", "")
    monkeypatch.delenv("RECONCILER_DRIVER", raising=False)
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    monkeypatch.delenv("RECONCILER_STATE_DIR", raising=False)
    args = options()
    assert (args.driver, args.connect) == ("libvirt", None)
    assert args.state.root == default_state_dir()  # no file: the built-in default


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image-dirs: [/x]\n", "unknown setting(s) image-dirs"),
        ("driver: xen\n", "driver must be libvirt or qmp"),
        ("host: [a]\n", "host must be a string"),
        ("state-dir: [\n", "config.yaml:2:1: not valid YAML"),
        ("- a\n", "expected a mapping of settings"),
    ],
)
def test_a_bad_file_is_a_clear_error(config: Path, text: str, expected: str) -> None:
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        options()
    assert expected in str(caught.value)


def test_a_file_others_may_write_is_refused(config: Path) -> None:
    config.chmod(0o666)
    with pytest.raises(ConfigError) as caught:
        options()
    assert "other users may write it" in str(caught.value)


def test_a_missing_file_named_by_the_environment_is_a_plain_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_CONFIG", str(tmp_path / "none.yaml"))
    with pytest.raises(ConfigError) as caught:
        options()
    assert str(caught.value) == (
        f"configuration file {tmp_path / 'none.yaml'}: No such file or directory"
    )


def test_making_an_open_state_directory_private_never_follows_a_link(tmp_path: Path) -> None:
    from reconciler.statedir import PRIVATE_UMASK, StateDir

    victim = tmp_path / "victim"
    victim.write_text("someone else's\n")
    victim.chmod(0o644)
    root = tmp_path / "state"
    (root / "instances" / "web").mkdir(parents=True)
    (root / "instances" / "web" / "disk.qcow2").write_text("disk")
    (root / "instances" / "web" / "planted").symlink_to(victim)
    for path in (root, root / "instances", root / "instances" / "web"):
        path.chmod(0o777)
    (root / "instances" / "web" / "disk.qcow2").chmod(0o666)
    assert StateDir(root).make_private(PRIVATE_UMASK) == 4
    assert victim.stat().st_mode & 0o777 == 0o644  # the link's target is not touched
    assert (root / "instances" / "web" / "disk.qcow2").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700
