"""Where a guest can be reached, per interface. Pure: what was observed is passed in.

From the machine itself: for a user-mode NIC, the address QEMU's user-mode network gives the
guest (or the static one the port forwards are aimed at) and each port forward from the
host. Observed (health.addresses), by MAC, in this order: the guest agent's report of the
guest's interfaces, the libvirt network's DHCP leases, the host's neighbour table; the first
that knows an interface's address gives it, and is named as its source.
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


# the observed sources, in the order they are believed
GUEST_AGENT, DHCP_LEASE, NEIGHBOUR = "guest agent", "DHCP lease", "neighbour table"
Observed = dict[str, dict[str, str]]  # source -> MAC (lower case) -> address


def machine_addresses(
    machine: Machine, observed: Observed | None = None
) -> tuple[InterfaceAddress, ...]:
    found = []
    for nic in machine.nics:
        seen = _observed(nic.mac, observed or {})
        if nic.type is not NicType.USER:
            address, source = seen or (None, "not observed")
            found.append(InterfaceAddress(nic.mac, nic.type.value, address, source))
            continue
        static = next((p.guest_address for p in nic.ports if p.guest_address), None)
        forwards = tuple(
            f"{port.address}:{port.host} -> {port.guest}/{port.protocol.value}"
            for port in nic.ports
        )
        source = "static, the port forwards' guest address" if static else "user-mode DHCP"
        address = static or USER_MODE_DHCP_ADDRESS
        if seen is not None:
            address, source = seen
        found.append(InterfaceAddress(nic.mac, nic.type.value, address, source, forwards))
    return tuple(found)


def _observed(mac: str, observed: Observed) -> tuple[str, str] | None:
    for source in (GUEST_AGENT, DHCP_LEASE, NEIGHBOUR):
        address = observed.get(source, {}).get(mac.lower())
        if address is not None:
            return address, source
    return None


def first_address(addresses: tuple[InterfaceAddress, ...], mac: str) -> str | None:
    """The known address of the interface with MAC `mac` (None: not known)."""
    return next((a.address for a in addresses if a.interface.lower() == mac.lower()), None)
