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


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each module is one unit of work for xdist (`--dist loadgroup`), and a `both_drivers`
    module is two, one per driver: its fixtures are per driver anyway, and the slowest
    modules then run on two workers at once. Units are handed out in collection order
    (`--no-loadscope-reorder`), and modules marked `first` go first, so that the slowest (a
    real cloud image booting under TCG) overlaps with everything else instead of running
    alone at the end."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(work_unit(item)))
    items.sort(key=lambda item: item.get_closest_marker("first") is None)


def work_unit(item: pytest.Item) -> str:
    """The module's path, and the driver a parametrized test runs under (no `]`: xdist takes
    a group name after one for a parameter)."""
    module = item.nodeid.split("::", 1)[0]
    callspec = getattr(item, "callspec", None)
    driver = callspec.params.get("driver_name") if callspec is not None else None
    return module if driver is None else f"{module}:{driver}"
