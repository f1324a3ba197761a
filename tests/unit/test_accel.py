from pathlib import Path

import pytest

from reconciler.drivers.kvm import probe_local_kvm
from reconciler.drivers.libvirt_driver import uri_is_local
from reconciler.layout import StateLayout
from reconciler.model.accel import KvmSupport, resolve_accelerator
from reconciler.model.desired import Accelerator


def fake_sys(tmp_path: Path, *modules: str) -> Path:
    sys_module = tmp_path / "-".join(("module", *modules))
    for module in modules:
        (sys_module / module).mkdir(parents=True)
    sys_module.mkdir(exist_ok=True)
    return sys_module


def test_pseudo_virtualisation_is_not_kvm(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    support = probe_local_kvm(fake_sys(tmp_path, "kvm", "kvm_pvm"), device)
    assert not support.usable
    assert "kvm_pvm" in support.reason


def test_hardware_kvm_is_usable(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_text("")
    support = probe_local_kvm(fake_sys(tmp_path, "kvm", "kvm_intel"), device)
    assert support.usable


def test_missing_device_or_vendor_module(tmp_path: Path) -> None:
    assert not probe_local_kvm(fake_sys(tmp_path, "kvm_amd"), tmp_path / "nope").usable
    device = tmp_path / "kvm"
    device.write_text("")
    assert not probe_local_kvm(fake_sys(tmp_path, "kvm"), device).usable


def test_resolution() -> None:
    yes, no = KvmSupport(True, "ok"), KvmSupport(False, "no")
    assert resolve_accelerator(Accelerator.AUTO, yes).accelerator is Accelerator.KVM
    assert resolve_accelerator(Accelerator.AUTO, no).accelerator is Accelerator.TCG
    assert resolve_accelerator(Accelerator.TCG, yes).accelerator is Accelerator.TCG
    assert resolve_accelerator(Accelerator.KVM, no).reason == "requested"


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("qemu:///system", True),
        ("qemu:///embed?root=/var/lib/reconciler/libvirt", True),
        ("qemu+unix:///system?socket=/run/libvirt/libvirt-sock", True),  # a transport, no host
        ("qemu+ssh:///system", True),
        ("qemu+tcp://localhost/system", True),
        ("qemu+ssh://root@kvm-host-7/system", False),
        ("qemu+tls://10.0.0.7/system", False),
        ("qemu://kvm-host-7/system", False),
        ("test:///default", False),
    ],
)
def test_a_uri_is_remote_only_when_it_names_another_host(uri: str, local: bool) -> None:
    assert uri_is_local(uri) is local


def test_a_remote_libvirt_is_refused_at_plan_time_with_the_way_to_many_hosts() -> None:
    from pathlib import Path

    from reconciler.drivers.libvirt_driver import LibvirtDriver
    from reconciler.model.machine import Machine

    machine = Machine("web", Accelerator.TCG, vcpus=1, memory_kib=65536)
    remote = LibvirtDriver(
        "qemu+ssh://root@kvm-host-7/system", None, StateLayout(Path("/srv/state"))
    )
    (problem,) = remote.cannot_express(machine)
    assert "runs domains on kvm-host-7, which cannot open the disks" in problem
    assert "run one reconciler on each host" in problem
    for uri in ("qemu:///system", "qemu+unix:///system?socket=/x", "test:///default"):
        assert (
            LibvirtDriver(uri, None, StateLayout(Path("/srv/state"))).cannot_express(machine) == ()
        )
