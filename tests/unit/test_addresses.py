"""A guest's addresses as far as its machine says (planning.addresses): a user-mode NIC's
address (QEMU's DHCP one, or the static one its forwards aim at) and its forwards; other
interfaces listed without one. And how `status` shows them, from the daemon's JSON."""

from __future__ import annotations

from dataclasses import replace

from reconciler.cli.report import render_status
from reconciler.model.desired import NicType, PortForward, PortProtocol
from reconciler.model.machine import Nic
from reconciler.planning.addresses import machine_addresses
from tests.unit.test_change_rules import BASE


def test_a_user_mode_nic_has_its_dhcp_or_static_address_and_each_forward() -> None:
    forwards = (PortForward(2222, 22), PortForward(5353, 53, PortProtocol.UDP, "0.0.0.0"))
    dhcp = Nic(NicType.USER, "52:54:00:00:00:01", ports=forwards)
    static = Nic(
        NicType.USER, "52:54:00:00:00:02", ports=(PortForward(8080, 80, guest_address="10.0.2.50"),)
    )
    bridged = Nic(NicType.BRIDGE, "52:54:00:00:00:03", source="br0")
    first, second, third = machine_addresses(replace(BASE, nics=(dhcp, static, bridged)))
    assert (first.address, first.source) == ("10.0.2.15", "user-mode DHCP")
    assert first.forwards == ("127.0.0.1:2222 -> 22/tcp", "0.0.0.0:5353 -> 53/udp")
    assert first.describe() == "10.0.2.15 (127.0.0.1:2222 -> 22/tcp, 0.0.0.0:5353 -> 53/udp)"
    assert second.address == "10.0.2.50" and second.source.startswith("static")
    assert (third.type, third.address, third.describe()) == (
        "bridge",
        None,
        "bridge (not observed)",
    )


def test_the_daemons_status_shows_each_instances_addresses() -> None:
    address = machine_addresses(
        replace(
            BASE, nics=(Nic(NicType.USER, "52:54:00:00:00:01", ports=(PortForward(2222, 22),)),)
        )
    )[0]
    snapshot = {
        "daemon": {"running": True, "pid": 1, "manifests": "/m"},
        "instances": [
            {
                "name": "web",
                "desired": "running",
                "observed": "running",
                "addresses": [address.as_json()],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        ],
    }
    head, row = render_status(snapshot)[1:3]
    assert head.split() == ["NAME", "DESIRED", "OBSERVED", "READY", "ACCEL", "ADDRESSES", "LAST"]
    assert row.split()[:5] == ["web", "running", "running", "True", "-"]
    assert "  10.0.2.15 (127.0.0.1:2222 -> 22/tcp)  - at -" in row
