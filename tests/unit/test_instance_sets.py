"""Instance sets, pure: members and their names, the ordinal put in its few fields (and
refused elsewhere), a template error said once at its line, the set's own errors, profiles
in a template, and which orphans count as scaled down."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.loop.once import orphan_refusal, scaled_down
from reconciler.loop.reconcile import Settings
from reconciler.manifests.loader import load_manifests
from reconciler.model.machine import OwnershipMarker
from tests.unit.test_machine_shape import running
from tests.unit.test_plan import RUNNING

SHA = "0" * 64


def set_text(replicas: object = 3, template: str = "", name: str = "web") -> str:
    base = textwrap.dedent(f"""\
        vcpus: 1
        memory: 64MiB
        image: {{source: /i/base.raw, sha256: "{SHA}", format: raw}}
        disk: {{size: 1GiB}}
        """)  # fmt: skip
    body = textwrap.indent(base + textwrap.dedent(template), "    ")
    return (
        f"apiVersion: reconciler/v1alpha1\nkind: InstanceSet\n"
        f"metadata: {{name: {name}, labels: {{tier: front}}}}\n"
        f"spec:\n  replicas: {replicas}\n  template:\n{body}"
    )


def test_members_with_the_ordinal_put_in(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(set_text(3, """\
        hostname: "web-{{ordinal}}"
        description: "node {{ordinal+1}} of 3"
        networks:
          - type: user
            mac: "52:54:00:00:01:{{ordinal:02x}}"
            ports: [{host: "{{ordinal+18080}}", guest: 80}]
        """))  # fmt: skip
    result = load_manifests(tmp_path)
    assert result.errors == ()
    assert result.sets == (("web", 3),)
    members = {spec.name: spec for spec in result.instances}
    assert sorted(members) == ["web-0", "web-1", "web-2"]
    two = members["web-2"]
    assert two.guest.hostname == "web-2" and two.description == "node 3 of 3"
    assert two.networks[0].mac == "52:54:00:00:01:02"
    assert two.networks[0].ports[0].host == 18082
    assert dict(two.labels) == {"reconciler/set": "web", "tier": "front"}


@pytest.mark.parametrize(
    ("template", "pointer", "message"),
    [
        ('machine: "{{ordinal}}"\n', "/spec/template/machine", "is put in only in: hostname"),
        ('hostname: "{{ordinal*2}}"\n', "/spec/template/hostname", "is not an ordinal"),
        ("memory: 1MiB\n", "/spec/template/memory", "is too small"),
    ],
)
def test_a_template_error_is_said_once_at_its_line(
    tmp_path: Path, template: str, pointer: str, message: str
) -> None:
    text = set_text(3, template)
    if template.startswith("memory"):
        text = text.replace("    memory: 64MiB\n", "")
    (tmp_path / "web.yaml").write_text(text)
    result = load_manifests(tmp_path)
    (error,) = [str(e) for e in result.errors]
    assert f"/web.yaml:{11 if not template.startswith('memory') else 10}:" in error, error
    assert f": {pointer}: " in error and message in error
    assert result.instances == ()


def test_the_sets_own_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(set_text(-1))
    (tmp_path / "b.yaml").write_text(set_text(2, name="x" * 60))
    errors = [str(e) for e in load_manifests(tmp_path).errors]
    assert any("a.yaml:5:" in e and "/spec/replicas" in e for e in errors), errors
    assert any("b.yaml:3:" in e and "/metadata/name" in e and "58" in e for e in errors), errors


def test_a_template_may_list_profiles(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "apiVersion: reconciler/v1alpha1\nkind: Profile\nmetadata: {name: big}\n"
        "spec: {memory: 2GiB}\n"
    )
    (tmp_path / "web.yaml").write_text(set_text(2, "profiles: [big]\n").replace(
        "    memory: 64MiB\n", ""))  # fmt: skip
    result = load_manifests(tmp_path)
    assert result.errors == ()
    assert {spec.memory_bytes for spec in result.instances} == {2 * 1024**3}


def test_which_orphans_a_set_scaled_down(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(set_text(2))
    load = load_manifests(tmp_path)
    domain = running(RUNNING).domain
    assert domain is not None

    def member(name: str, labels: tuple[tuple[str, str], ...]) -> object:
        marker = OwnershipMarker("web.yaml", "d", "s", None, labels)
        definition = replace(domain.definition, marker=marker)
        return replace(domain, name=name, definition=definition)

    ours = (("reconciler/set", "web"),)
    assert scaled_down(load, member("web-2", ours)) == "web"  # type: ignore[arg-type]
    assert scaled_down(load, member("web-1", ours)) is None  # type: ignore[arg-type]
    assert scaled_down(load, member("web-7", (("reconciler/set", "db"),))) is None  # type: ignore[arg-type]
    assert scaled_down(load, member("web-9", ())) is None  # type: ignore[arg-type]
    settings = Settings(prune=False)
    assert orphan_refusal(load, settings, member("web-2", ours), 1) is None  # type: ignore[arg-type]
    refused = orphan_refusal(load, settings, member("other", ()), 1)  # type: ignore[arg-type]
    assert refused is not None and "prune is off" in refused


def test_members_are_spread_over_the_hosts_in_turn(tmp_path: Path) -> None:
    from reconciler.manifests.selection import Selection, select

    text = set_text(5).replace("  template:\n", "  hosts: [hv-a, hv-b]\n  template:\n")
    (tmp_path / "web.yaml").write_text(text)
    result = load_manifests(tmp_path)
    assert {s.name: s.host for s in result.instances} == {
        "web-0": "hv-a", "web-1": "hv-b", "web-2": "hv-a", "web-3": "hv-b", "web-4": "hv-a",
    }  # fmt: skip
    mine, _ignored = select(result, Selection.parse("hv-b", None))
    assert sorted(s.name for s in mine.instances) == ["web-1", "web-3"]
    both = text.replace("    vcpus: 1\n", "    vcpus: 1\n    host: hv-c\n")
    (tmp_path / "web.yaml").write_text(both)
    (error,) = [str(e) for e in load_manifests(tmp_path).errors]
    assert "/spec/template/host: give the hosts in spec.hosts or here, not both" in error


def test_a_member_name_given_twice_refuses_both(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(set_text(2))
    (tmp_path / "one.yaml").write_text(set_text(1).replace("kind: InstanceSet", "kind: Instance")
        .replace("metadata: {name: web,", "metadata: {name: web-1,")
        .replace("spec:\n  replicas: 1\n  template:\n", "spec:\n")
        .replace("\n    ", "\n  "))  # fmt: skip
    result = load_manifests(tmp_path)
    errors = [str(e) for e in result.errors]
    assert sum("instance name 'web-1' is also defined at" in e for e in errors) == 2, errors
    assert [s.name for s in result.instances] == ["web-0"]
