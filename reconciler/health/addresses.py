"""A running guest's addresses as observed (the guest agent, the libvirt network's DHCP
leases, the host's neighbour table), merged with what its machine says by
planning.addresses. What the guest reports is the guest's: only well-formed addresses are
kept."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from reconciler.drivers.base import Driver
from reconciler.errors import DriverError
from reconciler.model.desired import NicType
from reconciler.model.machine import Machine
from reconciler.planning.addresses import (
    DHCP_LEASE,
    GUEST_AGENT,
    NEIGHBOUR,
    InterfaceAddress,
    Observed,
    machine_addresses,
)

NEIGHBOURS = Path("/proc/net/arp")
AGENT_TIMEOUT_SECONDS = 2.0
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def observe_addresses(
    driver: Driver, name: str, machine: Machine, neighbours: Path = NEIGHBOURS
) -> tuple[InterfaceAddress, ...]:
    """Every interface's address, from the best source that knows it."""
    observed: Observed = {}
    if machine.guest_agent:
        try:
            reply = driver.agent_command(
                name, "guest-network-get-interfaces", None, AGENT_TIMEOUT_SECONDS
            )
            observed[GUEST_AGENT] = agent_addresses(reply)
        except DriverError:
            pass  # no agent (yet): the other sources
    networks = {nic.source for nic in machine.nics if nic.type is NicType.NETWORK and nic.source}
    leases: dict[str, str] = {}
    for network in sorted(networks):
        try:
            leases.update(driver.dhcp_leases(network))
        except DriverError:
            continue
    observed[DHCP_LEASE] = leases
    if any(nic.type is not NicType.USER for nic in machine.nics):
        observed[NEIGHBOUR] = neighbour_table(neighbours)
    return machine_addresses(machine, observed)


def agent_addresses(reply: Any) -> dict[str, str]:
    """MAC -> the first IPv4 address (else the first global IPv6 one) of each interface in
    the agent's guest-network-get-interfaces reply."""
    found: dict[str, str] = {}
    for interface in reply if isinstance(reply, list) else []:
        if not isinstance(interface, dict):
            continue
        mac = str(interface.get("hardware-address", "")).lower()
        if not _MAC.match(mac) or mac == "00:00:00:00:00:00":
            continue
        candidates = []
        for entry in interface.get("ip-addresses") or []:
            try:
                address = ipaddress.ip_address(str(entry.get("ip-address")))
            except (ValueError, AttributeError):
                continue
            # the guest's word: nothing that would aim a probe at the host itself or at nobody
            if address.is_loopback or address.is_link_local or address.is_unspecified:
                continue
            if address.is_multicast:
                continue
            candidates.append(address)
        candidates.sort(key=lambda a: a.version)  # IPv4 first
        if candidates:
            found[mac] = str(candidates[0])
    return found


def neighbour_table(path: Path = NEIGHBOURS) -> dict[str, str]:
    """MAC -> IPv4 address from the kernel's ARP table (complete entries only)."""
    found: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] != "0x0" and _MAC.match(fields[3].lower()):
            found.setdefault(fields[3].lower(), fields[0])
    return found
