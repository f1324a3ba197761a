"""The shipped alert rules and dashboard (contrib/): the rules pass `promtool check rules`
and their unit tests (`promtool test rules`), or, where promtool is missing, parse with the
fields every rule needs; every metric the rules and the dashboard name is one the daemon
exposes (a renamed metric cannot leave a dead alert behind)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import yaml
from prometheus_client.parser import text_string_to_metric_families

from reconciler.monitoring.metrics import DaemonMetrics, DaemonView, GitView, InstanceView
from tests.helpers import PROJECT

RULES = PROJECT / "contrib" / "prometheus" / "reconciler-alerts.yml"
RULE_TESTS = PROJECT / "contrib" / "prometheus" / "reconciler-alerts.test.yml"
DASHBOARD = PROJECT / "contrib" / "grafana" / "reconciler-dashboard.json"


def exposed_names() -> set[str]:
    view = DaemonView(
        instances=(InstanceView("web-1", "running", "running", True, False, True, 1),),
        git=GitView(1.0, 2.0, 3.0, False),
    )
    metrics = DaemonMetrics(lambda: view)
    metrics.reconciled("changed", "manifest", 0.1, None)
    metrics.reconciled("failed", "manifest", 0.1, "transient")
    metrics.retried()
    body, _type = metrics.exposition()
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def named_metrics(text: str) -> set[str]:
    return set(re.findall(r"\breconciler_[a-z_]+\b", text))


def test_the_alert_rules_check_and_their_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is not None:
        for command in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
            done = subprocess.run([promtool, *command], capture_output=True, text=True,
                                  cwd=RULES.parent, check=False)  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
    document = yaml.safe_load(RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
    alerts = {rule["alert"] for rule in rules}
    for wanted in ("ReconcilerReconcileErrors", "ReconcilerInstanceNotConverged",
                   "ReconcilerInstanceNotReady", "ReconcilerCrashLoop",
                   "ReconcilerPullModeStuck", "ReconcilerConnectionLost"):  # fmt: skip
        assert wanted in alerts


def test_every_metric_the_rules_and_the_dashboard_name_is_exposed() -> None:
    exposed = exposed_names()
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    )
    for where, text in (("rules", RULES.read_text()), ("dashboard", expressions)):
        named = named_metrics(text)
        assert named, where
        assert named <= exposed, f"{where} names {sorted(named - exposed)}"
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_readme_lists_every_metric() -> None:
    readme = (PROJECT / "README.md").read_text()
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in exposed_names()}
    families = {name for name in families if not name.startswith("reconciler_process_")}
    missing = sorted(name for name in families if name not in readme)
    assert not missing, f"README's Monitoring section lacks {missing}"
