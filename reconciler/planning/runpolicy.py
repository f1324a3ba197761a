"""The power decision (stop, start, restart) and the run policy: what becomes of a domain
that stopped without the manifest asking. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.model.actual import DomainFacts, PowerState, StateReason
from reconciler.model.desired import InstanceSpec, RunPolicy

# shutoff reasons of a domain whose QEMU or guest failed ("unknown": the stop was not seen,
# as when no process held the embedded driver when QEMU died)
_FAILURE_REASONS = frozenset({StateReason.CRASHED, StateReason.FAILED, StateReason.UNKNOWN})


def stopped_unasked(domain: DomainFacts) -> bool:
    """Whether the domain is off although the manifest last asked for it to run (the state
    recorded on the domain): a stop nobody asked for, which the run policy decides about."""
    return domain.definition.asked_running is True


def stop_reason(domain: DomainFacts) -> StateReason:
    return StateReason.CRASHED if domain.state is PowerState.CRASHED else domain.state_reason


def held_by_run_policy(spec: InstanceSpec, domain: DomainFacts) -> str | None:
    """Why the run policy keeps a domain off after a stop nobody asked for (None: start it).
    One branch per policy."""
    reason = stop_reason(domain)
    again = "set state: stopped, apply, then state: running to start it again"
    if spec.run_policy is RunPolicy.RERUN_ON_FAILURE and reason not in _FAILURE_REASONS:
        return (
            f"runPolicy RerunOnFailure: the domain stopped without a failure ({reason}); it is "
            f"left off ({again})"
        )
    if spec.run_policy is RunPolicy.MANUAL:
        return (
            f"runPolicy Manual: the domain stopped ({reason}) after its first start; it is not "
            f"started again ({again})"
        )
    return None


@dataclass(frozen=True, slots=True)
class PowerFacts:
    """What the power decision is made from."""

    run: bool  # the manifest asks for it to run (state running, runPolicy not Halted)
    exists: bool  # there is a domain
    active: bool  # it runs now (an interrupted start or shutdown is not running)
    change_needs_restart: bool  # a new boot disk, or a restart-class change it must take now
    stopped_unasked: bool  # it is off although the manifest last asked for it to run
    host_shutdown: bool  # the host shut it down (reconcile shutdown-guests left its record)
    held: str | None = None  # why its run policy keeps it off after a stop nobody asked for


@dataclass(frozen=True, slots=True)
class PowerDecision:
    stop: bool  # stop it first (before its disks change)
    start: bool  # start it at the end
    restart: bool  # both: a running domain that must take a change now
    held: str | None  # kept off by its run policy (said in a note)
    after_unasked_stop: bool  # the start follows a stop nobody asked for (crash-loop guarded)
    after_host_shutdown: bool  # the start follows a host shutdown: whatever the run policy


def decide_power(facts: PowerFacts) -> PowerDecision:
    """Stop, start or restart, from the facts; table-tested (tests/unit/test_plan.py)."""
    restart = facts.active and facts.run and facts.change_needs_restart
    stop = facts.active and (not facts.run or restart)
    unasked = facts.run and not facts.active and facts.exists and facts.stopped_unasked
    host_shutdown = unasked and facts.host_shutdown
    held = facts.held if unasked and not host_shutdown else None
    start = facts.run and held is None and (not facts.active or restart)
    return PowerDecision(
        stop=stop,
        start=start,
        restart=restart,
        held=held,
        after_unasked_stop=unasked and start and not host_shutdown,
        after_host_shutdown=host_shutdown,
    )
