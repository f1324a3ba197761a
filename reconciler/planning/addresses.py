"""Where a guest can be reached, per interface, as far as the machine itself says: for a
user-mode NIC, the address QEMU's user-mode network gives the guest (or the static one the
port forwards are aimed at) and each port forward from the host. Pure.

Interfaces on a libvirt network, a bridge or a host device get their addresses from the
guest (agent, DHCP leases, the neighbour table), which this does not observe: they are
listed with no address.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.model.desired import NicType
from reconciler.model.machine import Machine

# what QEMU's user-mode network (slirp) gives the first DHCP client of each interface
USER_MODE_DHCP_ADDRESS = "10.0.2.15"


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    interface: str  # the MAC
    type: str  # user, network, bridge, direct
    address: str | None  # None: not known from the machine
    source: str  # where the address comes from
    forwards: tuple[str, ...] = ()  # "127.0.0.1:2222 -> 22/tcp"

    def as_json(self) -> dict[str, object]:
        return {
            "interface": self.interface,
            "type": self.type,
            "address": self.address,
            "source": self.source,
            "forwards": list(self.forwards),
        }

    def describe(self) -> str:
        """`10.0.2.15 (127.0.0.1:2222 -> 22/tcp)`, or what is known."""
        where = self.address or f"{self.type} ({self.source})"
        return where + (f" ({', '.join(self.forwards)})" if self.forwards else "")


def machine_addresses(machine: Machine) -> tuple[InterfaceAddress, ...]:
    found = []
    for nic in machine.nics:
        if nic.type is not NicType.USER:
            found.append(InterfaceAddress(nic.mac, nic.type.value, None, "not observed"))
            continue
        static = next((p.guest_address for p in nic.ports if p.guest_address), None)
        forwards = tuple(
            f"{port.address}:{port.host} -> {port.guest}/{port.protocol.value}"
            for port in nic.ports
        )
        source = "static, the port forwards' guest address" if static else "user-mode DHCP"
        address = static or USER_MODE_DHCP_ADDRESS
        found.append(InterfaceAddress(nic.mac, nic.type.value, address, source, forwards))
    return tuple(found)
