"""Whether KVM on this host can run a guest: read from the device node and kernel modules."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.model.accel import KvmSupport


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
