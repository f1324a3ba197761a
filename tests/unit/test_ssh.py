"""`reconcile ssh` and `ssh-config` without a guest: the way in (a forward to port 22, else a
guest address), the user (the cloud-config's, or --user), the host key kept under the
instance's name in the state directory; the real thing runs against the cloud image e2e."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli.backends import Access
from reconciler.cli.ssh import ssh_argv, ssh_config_text, ssh_target
from reconciler.errors import ConfigError
from reconciler.layout import StateLayout
from reconciler.model.desired import GuestConfig
from reconciler.planning.cloudinit import login_user

USER_MODE = {"type": "user", "address": "10.0.2.15", "forwards": ["127.0.0.1:2222 -> 22/tcp"]}
BRIDGED = {"type": "bridge", "address": "192.0.2.9", "forwards": []}
LAYOUT = StateLayout(Path("/state"))


def test_the_forward_to_port_22_comes_first_then_a_bridged_address() -> None:
    both = Access("web", "running", [BRIDGED, USER_MODE], "debian")
    assert ssh_target(both, None).destination() == "debian@127.0.0.1"
    assert ssh_target(both, None).port == 2222
    bridged = Access("web", "running", [BRIDGED], None)
    assert (ssh_target(bridged, "ops").host, ssh_target(bridged, "ops").port) == ("192.0.2.9", 22)
    anywhere = {"type": "user", "address": "10.0.2.15", "forwards": ["0.0.0.0:2200 -> 22/tcp"]}
    assert ssh_target(Access("web", "running", [anywhere], None), None).host == "127.0.0.1"


def test_no_way_in_no_user_or_not_running_is_said() -> None:
    http_only = {"type": "user", "address": "10.0.2.15", "forwards": ["127.0.0.1:8080 -> 80/tcp"]}
    with pytest.raises(ConfigError, match="no way in for SSH"):
        ssh_target(Access("web", "running", [http_only], "debian"), None)
    with pytest.raises(ConfigError, match="web is shutoff"):
        ssh_target(Access("web", "shutoff", [USER_MODE], "debian"), None)
    with pytest.raises(ConfigError, match="give --user"):
        ssh_argv(LAYOUT, Access("web", "running", [USER_MODE], None), None, [])


def test_the_command_and_the_host_key_options() -> None:
    access = Access("web", "running", [USER_MODE], "debian")
    assert ssh_argv(LAYOUT, access, None, ["hostname", "-f"]) == [
        "ssh", "-o", "UserKnownHostsFile=/state/ssh/known_hosts",
        "-o", "StrictHostKeyChecking=accept-new", "-o", "HostKeyAlias=web",
        "-o", "HashKnownHosts=no", "-p", "2222", "debian@127.0.0.1", "--", "hostname", "-f",
    ]  # fmt: skip


def test_ssh_config_has_a_host_block_per_reachable_instance() -> None:
    accesses = [
        Access("web", "running", [USER_MODE], "debian"),
        Access("db", "shutoff", [], None),
    ]
    assert ssh_config_text(LAYOUT, accesses, None) == (
        "Host web\n  HostName 127.0.0.1\n  Port 2222\n  User debian\n"
        "  UserKnownHostsFile /state/ssh/known_hosts\n  StrictHostKeyChecking accept-new\n"
        "  HostKeyAlias web\n  HashKnownHosts no\n\n# db: db is shutoff: nothing to log into\n"
    )


@pytest.mark.parametrize(
    ("user_data", "user"),
    [
        ("#cloud-config\nuser: alice\n", "alice"),
        ("#cloud-config\nuser: {name: bob}\n", "bob"),
        ("#cloud-config\nusers: [default, {name: carol, sudo: ALL}]\n", "carol"),
        ("#cloud-config\nsystem_info: {default_user: {name: dave}}\n", "dave"),
        ("#cloud-config\nusers: [default]\n", None),
        ("#cloud-config\nuser: 'x; rm -rf /'\n", None),  # not a user name
        ("#!/bin/sh\necho hi\n", None),
        ("#cloud-config\n[unclosed\n", None),
    ],
)
def test_the_login_user_is_the_one_the_cloud_config_names(user_data: str, user: str | None) -> None:
    assert login_user(GuestConfig(user_data=user_data.encode())) == user
