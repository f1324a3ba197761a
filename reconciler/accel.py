"""Choosing the accelerator: KVM only where KVM can really run a guest, TCG otherwise.

`probe_local_kvm` reads the host (device node, kernel modules); `resolve_accelerator` is the
pure decision from that fact and the settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.desired import Accelerator


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


def probe_local_kvm(
    sys_module: Path = Path("/sys/module"), device: Path = Path("/dev/kvm")
) -> KvmSupport:
    """KVM on this host: the device must open read-write and be backed by hardware KVM.

    `kvm_pvm` is a nested pseudo-virtualisation: QEMU starts on it, but a real guest faults at
    its bootloader's first protected-mode switch, so it does not count.
    """
    if (sys_module / "kvm_pvm").exists():
        return KvmSupport(
            False, "/dev/kvm is kvm_pvm, a pseudo-virtualisation that cannot run guests"
        )
    if not device.exists():
        return KvmSupport(False, f"{device} does not exist")
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return KvmSupport(False, f"{device} cannot be opened: {err.strerror}")
    os.close(fd)
    vendors = [name for name in ("kvm_intel", "kvm_amd") if (sys_module / name).exists()]
    if not vendors:
        return KvmSupport(False, "no hardware KVM module (kvm_intel, kvm_amd) is loaded")
    return KvmSupport(True, f"{device} is usable ({vendors[0]})")


def resolve_accelerator(requested: Accelerator, kvm: KvmSupport) -> AcceleratorChoice:
    """AUTO becomes KVM where usable, else TCG; an explicit choice is kept as asked."""
    if requested is Accelerator.AUTO:
        if kvm.usable:
            return AcceleratorChoice(Accelerator.KVM, f"auto: {kvm.reason}")
        return AcceleratorChoice(Accelerator.TCG, f"auto: {kvm.reason}")
    return AcceleratorChoice(requested, "requested")
