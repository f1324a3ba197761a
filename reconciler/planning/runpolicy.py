"""The run policy: what becomes of a domain that stopped without the manifest asking.
Pure."""

from __future__ import annotations

from reconciler.model.actual import DomainFacts, PowerState
from reconciler.model.desired import InstanceSpec, RunPolicy

# shutoff reasons of a domain whose QEMU or guest failed ("unknown": the stop was not seen,
# as when no process held the embedded driver when QEMU died)
_FAILURE_REASONS = ("crashed", "failed", "unknown")


def stopped_unasked(domain: DomainFacts) -> bool:
    """Whether the domain is off although the manifest last asked for it to run (the state
    recorded on the domain): a stop nobody asked for, which the run policy decides about."""
    return domain.definition.asked_running is True


def stop_reason(domain: DomainFacts) -> str:
    return "crashed" if domain.state is PowerState.CRASHED else domain.state_reason


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
