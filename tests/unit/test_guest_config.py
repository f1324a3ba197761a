"""Guest configuration, pure: manifest fields and their errors, the config drive's files and
ISO, derived MACs, and the plan's config drive and network steps."""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from pathlib import Path

import pycdlib
import pytest
import yaml

from reconciler.manifests.loader import load_manifests
from reconciler.model.desired import (
    GuestConfig,
    InjectedFile,
    InstanceSpec,
    NetworkSpec,
    NicModel,
    NicType,
    PortForward,
)
from reconciler.planning.cloudinit import drive_content, user_data
from reconciler.planning.network import choose_macs, derived_mac
from reconciler.planning.plan import StepKind
from reconciler.planning.steps import BuildConfigDrive, DefineDomain, RemoveFiles
from reconciler.steps.configdrive import render_iso
from tests.helpers import make_spec
from tests.planning import Observed, planned
from tests.unit.test_manifests import VALID
from tests.unit.test_plan import RUNNING, context, domain, overlay

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB user@host"


def load(
    tmp_path: Path, extra: str, name: str = "m.yaml"
) -> tuple[list[str], tuple[InstanceSpec, ...]]:
    (tmp_path / name).write_text(VALID + extra)
    result = load_manifests(tmp_path)
    return [str(e) for e in result.errors], result.instances


# -- manifest fields -----------------------------------------------------------------------


def test_guest_fields_are_read_with_their_files(tmp_path: Path) -> None:
    (tmp_path / "user-data").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "motd").write_bytes(b"\x00binary\xff")
    errors, instances = load(
        tmp_path,
        f"""\
  hostname: web-1.example.org
  cloudInit:
    userDataFile: user-data
    networkConfig: {{version: 2, ethernets: {{eth0: {{dhcp4: true}}}}}}
  ssh:
    authorizedKeys: ["{KEY}"]
  files:
    - {{path: /etc/motd, source: motd, permissions: "0600", owner: "root:root"}}
  networks:
    - {{type: user, ports: [{{host: 2222, guest: 22}}]}}
    - {{type: bridge, source: br0, model: e1000, mac: "52:54:00:00:00:01"}}
""",
    )
    assert errors == []
    (spec,) = instances
    assert spec.guest.hostname == "web-1.example.org"
    assert spec.guest.user_data == b"#!/bin/sh\necho hi\n"
    assert yaml.safe_load(spec.guest.network_config or b"") == {
        "version": 2,
        "ethernets": {"eth0": {"dhcp4": True}},
    }
    assert spec.guest.files == (InjectedFile("/etc/motd", b"\x00binary\xff", "0600", "root:root"),)
    assert spec.networks == (
        NetworkSpec(NicType.USER, ports=(PortForward(2222, 22),)),
        NetworkSpec(NicType.BRIDGE, "br0", NicModel.E1000, "52:54:00:00:00:01"),
    )


def test_no_networks_field_gives_one_user_mode_virtio_nic_and_no_drive(tmp_path: Path) -> None:
    _errors, instances = load(tmp_path, "")
    (spec,) = instances
    assert spec.networks == (NetworkSpec(NicType.USER, None, NicModel.VIRTIO),)
    assert not spec.guest.configured
    _errors, instances = load(tmp_path, "  networks: []\n")
    assert instances[0].networks == ()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (  # a file source outside the manifest directory
            "  files: [{path: /etc/x, source: ../outside}]\n",
            "m.yaml:14:34: /spec/files/0/source: ../outside (which resolves to ",
        ),
        (  # a guest path that climbs
            "  files: [{path: ../etc/passwd, content: x}]\n",
            'm.yaml:14:18: /spec/files/0/path: "../etc/passwd" is not valid (expected an '
            "absolute path in the guest, without . or .. components)",
        ),
        (
            "  files: [{path: /etc/x}]\n",
            "m.yaml:14:11: /spec/files/0: a mapping is not valid (expected either content or "
            "source)",
        ),
        (  # user-data with a NUL byte (and XML's CDATA end, which is harmless)
            '  cloudInit: {userData: "#cloud-config\\n# ]]>\\0\\n"}\n',
            "m.yaml:14:25: /spec/cloudInit/userData: user-data contains a NUL byte",
        ),
        (
            "  cloudInit: {userData: 'hello'}\n",
            "m.yaml:14:25: /spec/cloudInit/userData: user-data starts with 'hello': expected a "
            "cloud-config (first line #cloud-config) or a script (first line #!)",
        ),
        (
            '  cloudInit: {userData: "#cloud-config\\n- a list\\n"}\n',
            "/spec/cloudInit/userData: user-data's cloud-config must be a mapping",
        ),
        (  # a MAC given twice
            '  networks: [{type: user, mac: "52:54:00:00:00:01"}, '
            '{type: user, mac: "52:54:00:00:00:01"}]\n',
            "/spec/networks/1/mac: mac 52:54:00:00:00:01 is given twice",
        ),
        (  # a multicast MAC
            '  networks: [{type: user, mac: "53:54:00:00:00:01"}]\n',
            '/spec/networks/0/mac: "53:54:00:00:00:01" is not valid (expected a unicast MAC',
        ),
        (  # a MAC YAML reads as a number
            "  networks: [{type: user, mac: 52:54:00:00:00:01}]\n",
            "quote the value",
        ),
        (  # a host port twice on one interface
            "  networks: [{type: user, ports: [{host: 80, guest: 80}, {host: 80, guest: 81}]}]\n",
            "/spec/networks/0/ports/1/host: host port 127.0.0.1:80/tcp is given twice",
        ),
        (  # the same host port on two interfaces
            "  networks: [{type: user, ports: [{host: 80, guest: 80}]}, "
            "{type: user, ports: [{host: 80, guest: 81}]}]\n",
            "/spec/networks/1/ports: host port 127.0.0.1:80/tcp is forwarded twice",
        ),
        (
            "  networks: [{type: bridge}]\n",
            "/spec/networks/0/source: missing required field 'source'",
        ),
        (
            "  networks: [{type: bridge, source: br0, ports: [{host: 1, guest: 1}]}]\n",
            "ports only with type user",
        ),
    ],
)
def test_hostile_guest_inputs_are_located_errors(tmp_path: Path, extra: str, expected: str) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    (tmp_path / "outside").write_text("secret")
    errors, instances = load(directory, extra)
    assert instances == ()
    assert any(expected in error for error in errors), errors


def test_a_user_data_file_too_large_is_refused_without_reading_it(tmp_path: Path) -> None:
    with (tmp_path / "big").open("wb") as big:
        big.truncate(100 * 1024**2)  # sparse: 100 MiB that take no room
    errors, _ = load(tmp_path, "  cloudInit: {userDataFile: big}\n")
    assert errors == [
        f"{tmp_path}/m.yaml:14:29: /spec/cloudInit/userDataFile: big is 100MiB, more than the "
        "maximum of 16MiB for a file on the config drive"
    ]


def test_a_symlink_out_of_the_manifest_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "key").symlink_to("/etc/hostname")
    errors, _ = load(directory, "  files: [{path: /etc/k, source: key}]\n")
    assert len(errors) == 1 and "(which resolves to /etc/hostname) is outside" in errors[0]


def test_an_unreadable_file_is_a_located_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    errors, _ = load(tmp_path, "  files: [{path: /etc/k, source: dir}]\n")
    assert errors == [
        f"{tmp_path}/m.yaml:14:34: /spec/files/0/source: dir is a directory, not a regular file"
    ]


def test_the_same_mac_in_two_manifests_fails_both(tmp_path: Path) -> None:
    nic = '  networks: [{type: user, mac: "52:54:00:00:00:07"}]\n'
    (tmp_path / "a.yaml").write_text(VALID + nic)
    (tmp_path / "b.yaml").write_text(VALID.replace("name: web", "name: db") + nic)
    result = load_manifests(tmp_path)
    assert result.instances == ()
    assert sorted(result.invalid_names) == ["db", "web"]
    assert all("mac 52:54:00:00:00:07 is also given by" in str(e) for e in result.errors)


# -- the drive's files and image -------------------------------------------------------------


def test_keys_and_files_are_merged_into_a_cloud_config() -> None:
    config = GuestConfig(
        user_data=b"#cloud-config\nssh_authorized_keys: [existing]\npackages: [htop]\n",
        authorized_keys=(KEY,),
        files=(InjectedFile("/etc/motd", b"hi\n", "0644"),),
    )
    merged = yaml.safe_load(user_data(config))
    assert merged["ssh_authorized_keys"] == ["existing", KEY]
    assert merged["packages"] == ["htop"]
    assert merged["write_files"] == [
        {"path": "/etc/motd", "encoding": "b64", "content": "aGkK", "permissions": "0644"}
    ]
    assert user_data(config).startswith(b"#cloud-config\n")


def test_a_script_is_combined_with_the_additions_as_mime_multipart() -> None:
    import email

    script = b"#!/bin/sh\necho ]]> done\n"
    config = GuestConfig(user_data=script, authorized_keys=(KEY,))
    message = email.message_from_bytes(user_data(config))
    assert message.is_multipart()
    parts = [part for part in message.walk() if not part.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert parts[1].get_payload(decode=True) == script
    additions = parts[0].get_payload(decode=True)
    assert isinstance(additions, bytes)
    assert yaml.safe_load(additions)["ssh_authorized_keys"] == [KEY]
    assert GuestConfig(user_data=script).user_data == user_data(GuestConfig(user_data=script))


def test_meta_data_and_the_iso_are_reproducible_with_long_names() -> None:
    config = GuestConfig(hostname="h", files=(InjectedFile("/x", b"y"),))
    content = drive_content(config, "web", "iid-1")
    assert yaml.safe_load(content.file("meta-data") or b"") == {
        "instance-id": "iid-1",
        "local-hostname": "h",
    }
    image = render_iso(content)
    assert image == render_iso(drive_content(config, "web", "iid-1"))
    assert render_iso(drive_content(config, "web", "iid-2")) != image
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        assert iso.pvd.volume_identifier.rstrip() == b"cidata"
        for name, data in content.files:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue() == data
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            assert out.getvalue() == data
    finally:
        iso.close()
    assert "secret" not in content.describe()
    assert base64.b64encode(b"y").decode() in (content.file("user-data") or b"").decode()


# -- MACs --------------------------------------------------------------------------------------


def test_derived_macs_are_stable_local_and_avoid_those_in_use() -> None:
    networks = (NetworkSpec(), NetworkSpec(mac="52:54:00:aa:aa:aa"), NetworkSpec())
    first = choose_macs("web", networks, None, ())
    assert first == (derived_mac("web", 0), "52:54:00:aa:aa:aa", derived_mac("web", 2))
    assert all(mac.startswith("52:54:00:") for mac in first)
    assert choose_macs("web", networks, None, ()) == first
    taken = choose_macs("web", networks, None, {derived_mac("web", 0)})
    assert taken[0] == derived_mac("web", 0, 1)
    # a domain that has a candidate keeps it, even once the first candidate is free again
    current = domain(make_spec(name="web", networks=networks)).definition
    current = replace(
        current, nics=tuple(replace(n, mac=m) for n, m in zip(current.nics, taken, strict=True))
    )
    assert choose_macs("web", networks, current, ()) == taken


# -- the plan ------------------------------------------------------------------------------


def test_config_drive_steps_in_order_and_a_no_op_once_built() -> None:
    spec = replace(RUNNING, guest=GuestConfig(hostname="h"))
    plan = planned(spec, Observed(None, None, None, True), context(spec))
    assert [s.kind for s in plan.steps] == [
        StepKind.CREATE_OVERLAY,
        StepKind.BUILD_CONFIG_DRIVE,
        StepKind.DEFINE,
        StepKind.START,
    ]
    drive, define = plan.steps[1], plan.steps[2]
    assert isinstance(drive, BuildConfigDrive) and isinstance(define, DefineDomain)
    assert define.machine.config_drive_path == str(drive.path)
    assert define.machine.uuid is not None  # known before the domain exists: the instance-id


def test_a_rebuilt_drive_is_swapped_into_the_running_domain_and_the_old_one_removed() -> None:
    spec = replace(RUNNING, guest=GuestConfig(hostname="old"))
    first = planned(spec, Observed(None, None, None, True), context(spec))
    define = first.steps[2]
    assert isinstance(define, DefineDomain)
    machine = define.machine
    assert machine.config_drive_path is not None and machine.uuid is not None
    old_drive = Path(machine.config_drive_path)
    running = replace(domain(spec), uuid=machine.uuid, definition=machine, live_definition=machine)
    actual = Observed(running, overlay(spec), None, True, config_drives=frozenset({old_drive.name}))
    assert planned(spec, actual, context(spec)).converged

    edited = replace(spec, guest=GuestConfig(hostname="new"))
    plan = planned(edited, actual, context(edited))
    assert [s.kind for s in plan.steps] == [
        StepKind.BUILD_CONFIG_DRIVE,
        StepKind.DEFINE,
        StepKind.CHANGE_MEDIUM,
        StepKind.REMOVE_FILES,
    ]
    assert not plan.pending_restart
    assert plan.steps[3] == RemoveFiles("web", (old_drive,), old_drive.parent)
    assert any("only once per instance-id" in note for note in plan.notes)
    assert machine.marker is not None and machine.marker.instance_id == machine.uuid  # recorded

    # a new instance-id (the README's remedy) is a new instance to cloud-init: said so
    renewed = replace(spec, guest=GuestConfig(hostname="old", instance_id="web-v2"))
    plan = planned(renewed, actual, context(renewed))
    (note,) = [n for n in plan.notes if "instance-id" in n]
    assert note.startswith(
        f"config drive rebuilt with a new instance-id web-v2 (was {machine.uuid})"
    )
    define = next(step for step in plan.steps if isinstance(step, DefineDomain))
    assert define.machine.marker is not None and define.machine.marker.instance_id == "web-v2"


def test_interfaces_that_cannot_attach_refuse_the_instance_before_anything_is_made() -> None:
    problem = "interface 0: host port 127.0.0.1:2222/tcp is in use"
    plan = planned(
        RUNNING, Observed(None, None, None, False), context(RUNNING, unavailable=(problem,))
    )
    assert plan.refusal == problem and plan.steps == ()


STATIC_V2 = (
    "  networks: [{type: user, ports: [{host: 2222, guest: 22}, "
    "{host: 8080, guest: 80, guestAddress: 10.0.2.60}]}]\n"
    "  cloudInit:\n"
    "    networkConfig: {version: 2, ethernets: {eth0: {addresses: [%s/24]}}}\n"
)


def test_forwards_go_to_the_static_address_the_network_configuration_gives(
    tmp_path: Path,
) -> None:
    errors, instances = load(tmp_path, STATIC_V2 % "10.0.2.50")
    assert errors == []
    (nic,) = instances[0].networks
    assert [p.guest_address for p in nic.ports] == ["10.0.2.50", "10.0.2.60"]  # one said its own
    from reconciler.drivers.libvirt_xml import hostfwd_rule

    assert hostfwd_rule(nic.ports[0]) == "tcp:127.0.0.1:2222-10.0.2.50:22"
    v1 = (
        "  networks: [{type: user, ports: [{host: 2222, guest: 22}]}]\n"
        "  cloudInit:\n"
        "    networkConfig: {version: 1, config: [{type: physical, name: eth0, subnets: "
        "[{type: static, address: 10.0.2.51/24, gateway: 10.0.2.2}]}]}\n"
    )
    errors, instances = load(tmp_path, v1)
    assert errors == [] and instances[0].networks[0].ports[0].guest_address == "10.0.2.51"


def test_a_static_address_outside_the_user_subnet_is_refused(tmp_path: Path) -> None:
    errors, instances = load(tmp_path, STATIC_V2 % "192.168.7.5")
    assert instances == ()
    (error,) = errors
    assert "/spec/cloudInit/networkConfig: static address 192.168.7.5 on a user-mode " in error
    assert "use an address from 10.0.2.4 to 10.0.2.254" in error


def test_a_guest_address_outside_the_user_subnet_is_refused(tmp_path: Path) -> None:
    extra = "  networks: [{type: user, ports: [{host: 2222, guest: 22, guestAddress: 10.0.3.5}]}]\n"
    (error,) = load(tmp_path, extra)[0]
    assert "/spec/networks/0/ports/0/guestAddress" in error and "10.0.2.4 to 10.0.2.254" in error
