"""Choosing the accelerator: KVM only where KVM can really run a guest, TCG otherwise.

`probe_local_kvm` reads the host (device node, kernel modules); `resolve_accelerator` is the
pure decision from that fact and the settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.model.desired import Accelerator


@dataclass(frozen=True, slots=True)
class KvmSupport:
    """Whether KVM can run a guest where the domains run, and why we think so."""

    usable: bool
    reason: str


@dataclass(frozen=True, slots=True)
class AcceleratorChoice:
    """The accelerator a domain runs with, and the reason printed beside it."""

    accelerator: Accelerator
    reason: str


def resolve_accelerator(requested: Accelerator, kvm: KvmSupport) -> AcceleratorChoice:
    """AUTO becomes KVM where usable, else TCG; an explicit choice is kept as asked."""
    if requested is Accelerator.AUTO:
        if kvm.usable:
            return AcceleratorChoice(Accelerator.KVM, f"auto: {kvm.reason}")
        return AcceleratorChoice(Accelerator.TCG, f"auto: {kvm.reason}")
    return AcceleratorChoice(requested, "requested")
