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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked `first` go first: xdist hands out whole modules in collection order,
    so the slowest (a real cloud image booting under TCG) overlaps with everything else
    instead of running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)
