"""Network interfaces of an instance: stable derived MACs and the machine's NICs. Pure.

A MAC the manifest does not give is derived from the instance's name and the interface's
position, in QEMU's 52:54:00 range. It never collides with a MAC that another domain uses: the
first candidate not in use is taken, and a domain that already has one of this interface's
candidates keeps it. So the MAC is the same after an undefine and a redefine, and changes
only where it would otherwise collide.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection

from reconciler.model.desired import NetworkSpec
from reconciler.model.machine import Machine, Nic

MAC_PREFIX = "52:54:00"
MAC_CANDIDATES = 64  # how far a derived MAC looks for one not in use


def derived_mac(name: str, index: int, attempt: int = 0) -> str:
    """The `attempt`th candidate MAC of interface `index` of instance `name`."""
    digest = hashlib.sha256(f"reconciler-mac/{name}/{index}/{attempt}".encode()).digest()
    return MAC_PREFIX + "".join(f":{byte:02x}" for byte in digest[:3])


def choose_macs(
    name: str,
    networks: tuple[NetworkSpec, ...],
    current: Machine | None,
    in_use: Collection[str],
) -> tuple[str, ...]:
    """The MAC of each interface: the manifest's, else the current definition's when it is one
    of this interface's candidates, else the first candidate that no other domain uses."""
    current_macs = [nic.mac for nic in current.nics] if current is not None else []
    chosen: list[str] = []
    for index, network in enumerate(networks):
        if network.mac is not None:
            chosen.append(network.mac)
            continue
        candidates = [derived_mac(name, index, attempt) for attempt in range(MAC_CANDIDATES)]
        if index < len(current_macs) and current_macs[index] in candidates:
            chosen.append(current_macs[index])
            continue
        taken = set(in_use) | set(chosen) | {n.mac for n in networks if n.mac}
        chosen.append(next((mac for mac in candidates if mac not in taken), candidates[0]))
    return tuple(chosen)


def needs_free_macs(name: str, networks: tuple[NetworkSpec, ...], current: Machine | None) -> bool:
    """Whether choosing the MACs needs to know those other domains use: some derived MAC is
    not yet one of its interface's candidates in the current definition."""
    current_macs = [nic.mac for nic in current.nics] if current is not None else []
    for index, network in enumerate(networks):
        if network.mac is not None:
            continue
        if index >= len(current_macs) or current_macs[index] not in {
            derived_mac(name, index, attempt) for attempt in range(MAC_CANDIDATES)
        }:
            return True
    return False


def build_nics(networks: tuple[NetworkSpec, ...], macs: tuple[str, ...]) -> tuple[Nic, ...]:
    return tuple(
        Nic(network.type, mac, network.model, network.source, network.ports)
        for network, mac in zip(networks, macs, strict=True)
    )


def instance_uuid(state_dir_id: str, name: str) -> str:
    """The UUID a new domain is defined with: derived from the state directory and the name,
    so that the config drive's instance-id (the UUID) is known before the domain exists."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:x-reconciler:{state_dir_id}:{name}"))
