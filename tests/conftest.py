"""Settings for every test."""

from __future__ import annotations

import os

import pytest

# the host's configuration file (/etc/reconciler/config.yaml, which `make demo` may write) is
# not the tests': every command they run, in this process or as a subprocess, reads none
# unless a test names one
os.environ["RECONCILER_CONFIG"] = ""
# a reconciler the tests find hung gets SIGABRT (tests.helpers.run_bounded): every thread's stack
os.environ["PYTHONFAULTHANDLER"] = "1"

PROXY_VARIABLES = (
    "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
    "no_proxy", "NO_PROXY",
)  # fmt: skip


@pytest.fixture(autouse=True)
def no_proxy_from_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to servers on 127.0.0.1 directly, whatever proxy the host is set up with;
    the proxy tests set their own variables."""
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` starts two workers per core (the README's command caps them at four): an
    end-to-end test spends most of its time waiting for a guest to boot, a daemon to notice
    or a timeout to pass, and two workers on two cores left them about half idle."""
    return 2 * len(os.sched_getaffinity(0))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `first` go first. The README's command makes each test a unit of work of
    its own (`--dist loadgroup` with no test in a group), handed to the next free worker in
    collection order (`--no-loadscope-reorder`: xdist would otherwise put the biggest units
    first, and the slowest module, one test booting a real cloud image under TCG, last). So
    the slowest run beside everything else instead of alone at the end; and which tests a
    worker meets before a given one varies from run to run, so a test that leans on another
    having run before it fails instead of passing by luck."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)
