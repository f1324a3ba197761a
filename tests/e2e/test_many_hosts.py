"""Many hosts over one manifest directory: three state directories stand for three hosts, each
with its own daemon and `--host`. Each plans and touches only its own slice; one host's
failure (its daemon SIGKILLed, its embedded libvirt gone with it) leaves the others
converging. Small N here; bench/bench_scale.py measures large ones."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import destroy_domains
from tests.e2e.test_daemon import Daemon, launch, observed, stop_daemon, wait_until
from tests.helpers import unique_name, write_base_image

HOSTS = ("hv-a", "hv-b", "hv-c")
PER_HOST = 3


@pytest.fixture
def hosts() -> Iterator[dict[str, Daemon]]:
    root = Path(tempfile.mkdtemp(prefix="rcm-", dir="/tmp"))  # short: libvirt's sockets
    manifests = root / "m"
    manifests.mkdir()
    base, sha = write_base_image(root)
    daemons: dict[str, Daemon] = {}
    try:
        for host in HOSTS:
            (root / host).mkdir()
            daemons[host] = launch(root / host, manifests, base, sha, "--host", host)
        yield daemons
    finally:
        for daemon in daemons.values():
            stop_daemon(daemon.process)
        for host in HOSTS:
            destroy_domains(root / host / "s")
        shutil.rmtree(root, ignore_errors=True)


def shut_off(daemon: Daemon, name: str) -> Callable[[], bool]:
    return lambda: observed(daemon, name, "shutoff")


def test_each_host_touches_only_its_slice_and_survives_another_hosts_failure(
    hosts: dict[str, Daemon],
) -> None:
    some = next(iter(hosts.values()))
    names = {host: [unique_name("rcm") for _ in range(PER_HOST)] for host in HOSTS}
    for host, owned in names.items():
        for name in owned:
            some.write(name, host=host, state="stopped")
    for host, daemon in hosts.items():
        for name in names[host]:
            wait_until(shut_off(daemon, name), f"{name} on {host}", daemon)

    # each status holds its own slice and nothing else: the others' are not planned here
    for host, daemon in hosts.items():
        shown = {entry["name"] for entry in daemon.status()["instances"]}
        assert shown == set(names[host]), (host, shown)
        plan = daemon.cli("plan", "--detailed-exitcode", str(daemon.manifests))
        assert plan.returncode == 0, plan.stdout + plan.stderr
        others = [n for h, owned in names.items() if h != host for n in owned]
        assert not any(other in plan.stdout for other in others), plan.stdout

    # host a fails; b and c go on converging, a's new instance is left to a
    failed = hosts["hv-a"]
    failed.process.send_signal(signal.SIGKILL)
    failed.process.wait(30)
    late = {host: unique_name("rcm") for host in HOSTS}
    for host, name in late.items():
        some.write(name, host=host, state="stopped")
    for host in ("hv-b", "hv-c"):
        daemon = hosts[host]
        wait_until(shut_off(daemon, late[host]), f"{late[host]} on {host}", daemon)
        assert daemon.instance(late["hv-a"]) is None
        assert daemon.process.poll() is None
    # a's slice was never taken over: its domains are in its own state directory only
    assert not (hosts["hv-b"].state.instances / late["hv-a"]).exists()
    assert not (hosts["hv-c"].state.instances / late["hv-a"]).exists()
    assert all((failed.state.instances / name).is_dir() for name in names["hv-a"])
