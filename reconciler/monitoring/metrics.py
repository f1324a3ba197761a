"""The daemon's metrics in the Prometheus text format, through prometheus_client.

Counters and the duration histogram move as the daemon works (`DaemonMetrics.reconciled`,
`retried`); everything else is read when Prometheus scrapes, from a `DaemonView` the daemon
hands over (its queue, its status book, the image cache, the connection, pull mode), so a
scrape never waits on the loop and an idle daemon does no work for metrics at all.

Label cardinality is bounded: outcome (3) x trigger (13) for reconciles; desired x observed
power states; per-instance series (label `name`, the instance's name: Prometheus keeps
`instance` for the scrape target) only for what an alert needs per instance: ready, live,
failing and crash-loop restarts, one series each per managed instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "reconciler"
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One managed instance as the metrics show it."""

    name: str
    desired: str  # running | stopped | absent | unknown
    observed: str  # the domain's power state as the daemon last saw it (unknown: not yet)
    ready: bool | None  # its Ready condition (None: not known)
    live: bool | None  # its Live condition
    failing: bool  # its last reconcile failed
    crash_loop_restarts: int


@dataclass(frozen=True, slots=True)
class GitView:
    applied_time: float | None  # the commit in force's commit time
    newest_time: float | None  # the newest commit fetched
    current_at: float | None  # the last fetch that found the newest commit in force
    refused: bool  # the newest commit is not applied (a manifest error, a signature)


@dataclass(frozen=True, slots=True)
class DaemonView:
    """What a scrape reads of the daemon."""

    instances: tuple[InstanceView, ...] = ()
    queue_depth: int = 0
    queue_longest_wait: float = 0.0  # seconds the longest-waiting due name has waited
    connected: bool = True
    first_pass_done: bool = False
    cache_bytes: int = 0
    cache_entries: int = 0
    download_bytes: int = 0
    download_failures: int = 0
    manifest_errors: int = 0
    git: GitView | None = None
    loop_tick_age: float = 0.0  # seconds since the loop last went round


@dataclass
class DaemonMetrics:
    """The daemon's registry: its own counters, the view read at scrape time, and the
    process metrics (CPU, memory, open files) prometheus_client collects."""

    view: Callable[[], DaemonView]
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry())

    def __post_init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # _created: never used
        self.reconciles = Counter(
            f"{PREFIX}_reconcile", "Reconciles, by outcome and by what caused them.",
            ["outcome", "trigger"], registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            f"{PREFIX}_reconcile_errors", "Reconciles that failed, by failure class.",
            ["failure"], registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds", "How long one reconcile took.",
            registry=self.registry, buckets=DURATION_BUCKETS,
        )  # fmt: skip
        self.retries = Counter(
            f"{PREFIX}_workqueue_retries", "Names queued again after a failure (with backoff).",
            registry=self.registry,
        )  # fmt: skip
        ProcessCollector(namespace=PREFIX, registry=self.registry)
        self.registry.register(_ViewCollector(self.view))

    def reconciled(self, outcome: str, trigger: str, seconds: float, failure: str | None) -> None:
        self.reconciles.labels(outcome, trigger).inc()
        self.duration.observe(seconds)
        if failure is not None:
            self.errors.labels(failure).inc()

    def retried(self) -> None:
        self.retries.inc()

    def exposition(self) -> tuple[bytes, str]:
        """The scrape's body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ViewCollector(Collector):
    def __init__(self, view: Callable[[], DaemonView]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        yield _gauge("workqueue_depth", "Names waiting in the work queue (due or not).",
                     view.queue_depth)  # fmt: skip
        yield _gauge(
            "workqueue_longest_waiting_seconds",
            "How long the longest-waiting due name has waited for a worker.",
            view.queue_longest_wait,
        )
        yield _gauge("connected", "1 while the hypervisor connection is up.", view.connected)
        yield _gauge("first_pass_done", "1 once every instance was reconciled once.",
                     view.first_pass_done)  # fmt: skip
        yield _gauge("loop_tick_age_seconds", "Seconds since the daemon's loop last went round.",
                     view.loop_tick_age)  # fmt: skip
        yield _gauge("manifest_errors", "Errors in the manifests as last read.",
                     view.manifest_errors)  # fmt: skip
        yield _gauge("image_cache_bytes", "Bytes of the cached base images.", view.cache_bytes)
        yield _gauge("image_cache_entries", "Cached base images.", view.cache_entries)
        downloaded = CounterMetricFamily(
            f"{PREFIX}_download_bytes", "Bytes received by base image downloads."
        )
        downloaded.add_metric([], view.download_bytes)
        yield downloaded
        failed = CounterMetricFamily(
            f"{PREFIX}_download_failures", "Downloads that failed (after their retries)."
        )
        failed.add_metric([], view.download_failures)
        yield failed
        yield from _instance_families(view.instances)
        if view.git is not None:
            yield from _git_families(view.git)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=float(value))


def _instance_families(instances: tuple[InstanceView, ...]) -> Iterator[Metric]:
    by_state = GaugeMetricFamily(
        f"{PREFIX}_instances", "Managed instances by desired and observed state.",
        labels=["desired", "observed"],
    )  # fmt: skip
    counts: dict[tuple[str, str], int] = {}
    for instance in instances:
        key = (instance.desired, instance.observed)
        counts[key] = counts.get(key, 0) + 1
    for (desired, observed), count in sorted(counts.items()):
        by_state.add_metric([desired, observed], count)
    yield by_state
    families = {
        "ready": "1 while the instance's Ready condition is True (0 False; absent: unknown).",
        "live": "1 while the instance's Live condition is True (0 False; absent: unknown).",
        "failing": "1 while the instance's last reconcile failed.",
        "crash_loop_restarts": "Restarts in a row after failures (its crash loop).",
    }
    for field_name, documentation in families.items():
        family = GaugeMetricFamily(
            f"{PREFIX}_instance_{field_name}", documentation, labels=["name"]
        )
        for instance in instances:
            value: bool | int | None = getattr(instance, field_name)
            if value is not None:
                family.add_metric([instance.name], float(value))
        yield family


def _git_families(git: GitView) -> Iterator[Metric]:
    for key, value, documentation in (
        ("applied_commit_timestamp_seconds", git.applied_time,
         "Pull mode: the commit time of the commit in force."),
        ("newest_commit_timestamp_seconds", git.newest_time,
         "Pull mode: the commit time of the newest commit fetched."),
        ("last_good_sync_timestamp_seconds", git.current_at,
         "Pull mode: when a fetch last found the newest commit in force."),
    ):  # fmt: skip
        if value is not None:
            yield _gauge(f"git_{key}", documentation, value)
    yield _gauge("git_newest_refused", "Pull mode: 1 while the newest commit is not applied.",
                 git.refused)  # fmt: skip
