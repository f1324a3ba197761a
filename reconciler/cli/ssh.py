"""`reconcile ssh NAME [--user USER] [-- COMMAND...]` and `reconcile ssh-config [NAME]`: SSH
into a guest without looking up its address, port or user.

The address: the user-mode port forward to guest port 22 (on 127.0.0.1), else the guest's
address on an interface that is not user-mode (from its guest agent, the libvirt network's
DHCP leases or the host's neighbour table). The user: --user, else the one the manifest's
cloud-config names (`user`, `users`, `system_info.default_user`), recorded by the last pass.
Host keys: STATE/ssh/known_hosts, under the instance's name (HostKeyAlias), learnt on first
contact and refused when they change (OpenSSH's StrictHostKeyChecking=accept-new); after a
guest was made anew, `ssh-keygen -R NAME -f STATE/ssh/known_hosts` forgets its old key.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from reconciler.cli.backends import Access, backend_for
from reconciler.cli.options import Exit, Options
from reconciler.errors import ConfigError
from reconciler.layout import StateLayout

SSH_PORT = 22
_FORWARD = re.compile(r"^(?P<address>[0-9.]+):(?P<port>[0-9]{1,5}) -> (?P<guest>[0-9]{1,5})/tcp$")


@dataclass(frozen=True, slots=True)
class SshTarget:
    host: str
    port: int
    user: str | None

    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


def ssh_target(access: Access, user: str | None) -> SshTarget:
    """Where and as whom to reach `access`'s SSH server; ConfigError saying why not."""
    if access.state != "running":
        raise ConfigError(f"{access.name} is {access.state}: nothing to log into")
    login = user or access.login
    for interface in access.addresses:
        for forward in interface.get("forwards") or []:
            match = _FORWARD.match(str(forward))
            if match and int(match["guest"]) == SSH_PORT:
                host = "127.0.0.1" if match["address"] == "0.0.0.0" else match["address"]
                return SshTarget(host, int(match["port"]), login)
    for interface in access.addresses:
        if interface.get("type") != "user" and interface.get("address"):
            return SshTarget(str(interface["address"]), SSH_PORT, login)
    raise ConfigError(
        f"{access.name} has no way in for SSH: forward a host port to its port 22 "
        "(networks[].ports), or give it an interface on a libvirt network or bridge whose "
        "address is known (guestAgent: true reports it)"
    )


def ssh_options(layout: StateLayout, name: str, identity: Path | None = None) -> list[str]:
    """The options that tie the host key to the instance, kept in the state directory (and
    the private key to use, when given)."""
    chosen = ["-o", f"IdentityFile={identity}", "-o", "IdentitiesOnly=yes"] if identity else []
    return [
        "-o", f"UserKnownHostsFile={layout.known_hosts}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"HostKeyAlias={name}",
        "-o", "HashKnownHosts=no",  # readable: one line per instance, under its name
        *chosen,
    ]  # fmt: skip


def ssh_argv(
    layout: StateLayout,
    access: Access,
    user: str | None,
    command: list[str],
    identity: Path | None = None,
) -> list[str]:
    target = ssh_target(access, user)
    if target.user is None:
        raise ConfigError(
            f"no user is known for {access.name}: its cloud-config names none (user, users) "
            "and the image's default user is the image's own; give --user"
        )
    argv = ["ssh", *ssh_options(layout, access.name, identity), "-p", str(target.port)]
    return [*argv, target.destination(), *(["--", *command] if command else [])]


def _known_hosts_ready(layout: StateLayout) -> None:
    layout.known_hosts.parent.mkdir(mode=0o700, exist_ok=True)


def run_ssh(options: Options, out: TextIO) -> int:
    """Replace this process with `ssh` to the guest (its exit status is ssh's)."""
    name = options.name or ""
    (access,) = backend_for(options).access([name])
    command = list(options.ssh_command)
    argv = ssh_argv(options.state, access, options.user, command, options.identity)
    if shutil.which("ssh") is None:
        raise ConfigError("ssh is not installed (Debian package openssh-client)")
    _known_hosts_ready(options.state)
    out.flush()
    sys.stderr.flush()
    terminal = sys.stderr.fileno()
    if terminal != 2:  # descriptor 2 went to STATE/libvirt.log when the driver opened
        os.dup2(terminal, 2)
    os.execvp("ssh", argv)
    return Exit.FAILED  # not reached


def ssh_config_text(
    layout: StateLayout, accesses: list[Access], user: str | None, identity: Path | None = None
) -> str:
    """An OpenSSH `Host` block per running instance that can be reached (others as a
    comment, saying why not)."""
    blocks = []
    for access in accesses:
        try:
            target = ssh_target(access, user)
        except ConfigError as err:
            blocks.append(f"# {access.name}: {err}\n")
            continue
        lines = [f"Host {access.name}", f"  HostName {target.host}", f"  Port {target.port}"]
        if target.user:
            lines.append(f"  User {target.user}")
        options = ssh_options(layout, access.name, identity)
        lines += [f"  {option.replace('=', ' ', 1)}" for option in options[1::2]]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def run_ssh_config(options: Options, out: TextIO) -> int:
    names = [options.name] if options.name else None
    accesses = backend_for(options).access(names)
    _known_hosts_ready(options.state)
    out.write(ssh_config_text(options.state, accesses, options.user, options.identity))
    return Exit.OK
