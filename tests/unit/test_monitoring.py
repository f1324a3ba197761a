"""Monitoring, the parts with no daemon: the listener's address, the metrics a view gives
(parsed as Prometheus parses them, label cardinality as documented), and the event history
the status book keeps (bounded, numbered, condition transitions only when they change)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.errors import ConfigError
from reconciler.loop.results import InstanceResult, Outcome
from reconciler.loop.status import EVENTS_KEPT, StatusBook
from reconciler.monitoring.metrics import DaemonMetrics, DaemonView, GitView, InstanceView
from reconciler.monitoring.server import parse_address


def test_the_listener_address_is_host_and_port() -> None:
    assert parse_address("127.0.0.1:9177") == ("127.0.0.1", 9177)
    assert parse_address("[::1]:9177") == ("::1", 9177)
    assert parse_address(":9177") == ("", 9177)
    for wrong in ("9177", "127.0.0.1", "host:0", "host:70000", "a b:1", "http://x:1"):
        with pytest.raises(ConfigError, match="expected HOST:PORT"):
            parse_address(wrong)


def test_a_view_becomes_metrics_with_bounded_labels() -> None:
    view = DaemonView(
        instances=(
            InstanceView("web-1", "running", "running", True, True, False, 0),
            InstanceView("web-2", "running", "shutoff", None, None, True, 3),
        ),
        queue_depth=2, connected=False, first_pass_done=True, cache_bytes=10, cache_entries=1,
        git=GitView(1.0, 2.0, None, True),
    )  # fmt: skip
    metrics = DaemonMetrics(lambda: view)
    metrics.reconciled("failed", "manifest", 0.2, "permanent")
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert (
        found[("reconciler_reconcile_total", (("outcome", "failed"), ("trigger", "manifest")))] == 1
    )
    assert found[("reconciler_reconcile_errors_total", (("failure", "permanent"),))] == 1
    assert found[("reconciler_instances", (("desired", "running"), ("observed", "shutoff")))] == 1
    assert found[("reconciler_instance_ready", (("name", "web-1"),))] == 1
    assert ("reconciler_instance_ready", (("name", "web-2"),)) not in found  # unknown
    assert found[("reconciler_instance_crash_loop_restarts", (("name", "web-2"),))] == 3
    assert found[("reconciler_connected", ())] == 0
    assert found[("reconciler_git_newest_refused", ())] == 1
    assert ("reconciler_git_last_good_sync_timestamp_seconds", ()) not in found
    instance_labelled = {name for name, labels in found if ("name", "web-1") in labels}
    assert instance_labelled == {
        "reconciler_instance_ready", "reconciler_instance_live",
        "reconciler_instance_failing", "reconciler_instance_crash_loop_restarts",
    }  # fmt: skip


def test_the_event_history_is_bounded_numbered_and_says_only_transitions(tmp_path: Path) -> None:
    book = StatusBook(tmp_path / "status.json", {})
    book.set_desired("web", "web.yaml", "running")
    changed = InstanceResult("web", Outcome.CHANGED, actions=("started domain",))
    for _ in range(EVENTS_KEPT + 5):
        book.record_result(changed, started=0.0, triggers={"manifest"}, observed="running",
                           failures=0, next_retry=None, pending_restart=False)  # fmt: skip
    unchanged = InstanceResult("web", Outcome.UNCHANGED)
    book.record_result(unchanged, started=0.0, triggers={"resync"}, observed="running",
                       failures=0, next_retry=None, pending_restart=False)  # fmt: skip
    events, last = book.events("web")
    assert len(events) == EVENTS_KEPT and last == EVENTS_KEPT + 5  # no event for a no-op
    assert events[-1]["actions"] == ["started domain"] and events[-1]["instance"] == "web"
    ready = [{"type": "Ready", "status": "False", "reason": "Probing"}]
    book.set_health("web", ready)
    book.set_health("web", ready)  # no transition: no event
    book.set_health("web", [{"type": "Ready", "status": "True", "reason": "ProbeSucceeded"}])
    events, last = book.events(since=EVENTS_KEPT + 5)
    assert [(e["kind"], e["status"]) for e in events] == [("condition", "False"),
                                                          ("condition", "True")]  # fmt: skip
    book.record_event("web", "lifecycle", "stopped: crashed")
    (crash,), _ = book.events("web", since=last)
    assert (crash["kind"], crash["event"], crash["detail"]) == ("domain", "lifecycle",
                                                                "stopped: crashed")  # fmt: skip
    assert book.events("nobody") == ([], last + 1)
    assert book.snapshot()["instances"][0]["events"][-1] == {k: v for k, v in crash.items()
                                                              if k != "instance"}  # fmt: skip


def test_the_watchdog_is_fed_only_when_systemd_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import socket
    from typing import Any, cast

    from reconciler.loop.monitor import DaemonMonitor

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(0.2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        monitor = DaemonMonitor(cast(Any, None), None)
        monitor.tick()  # no WatchdogSec: READY=1 and STOPPING=1 only
        with pytest.raises(TimeoutError):
            notify.recv(64)
        monkeypatch.setenv("WATCHDOG_USEC", "120000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # another process's
        monitor.tick()
        with pytest.raises(TimeoutError):
            notify.recv(64)
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        monitor.tick()
        assert notify.recv(64) == b"WATCHDOG=1"
        assert monitor.unhealthy() is None
