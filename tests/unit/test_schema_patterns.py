"""The schemas are valid JSON Schema (the loader does not check its own on every run), and
their patterns mean the same to editors (ECMA-262) as to the reconciler (Python re)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import regress

from reconciler.manifests.loader import instance_schema, kind_schemas
from reconciler.sizes import SIZE_PATTERN

# A value each pattern accepts, by where the pattern sits in the schema. A new pattern
# without an entry here fails the test, so none escapes the check.
VALID_SAMPLES = {
    "/properties/spec/properties/profiles/items": ["base", "web-2"],
    "/properties/spec/properties/rollout/properties/maxUnavailable/oneOf/1": ["25%", "100%", "1%"],
    "/properties/spec/properties/snapshots/properties/schedule": ["hourly", "daily", "6h", "30m"],
    "/properties/spec/properties/snapshots/properties/expiry": ["7d", "12h"],
    "/properties/metadata/properties/name": ["web-1", "a"],
    "/properties/spec/properties/host": ["hv1", "hv-2.example.com", "a"],
    "/properties/metadata/properties/labels/propertyNames": ["app", "example.com/tier"],
    "/properties/metadata/properties/labels/additionalProperties": ["web", "", "a b: c"],
    "/properties/spec/properties/description": ["web server", "", "two\nlines\twith a tab"],
    "/properties/spec/properties/cpu/properties/model": ["qemu64", "Skylake-Client"],
    "/properties/spec/properties/image/properties/source": [
        "../images/base.raw",
        "file:///srv/base.raw",
        "https://example.invalid/base.qcow2",
    ],
    "/properties/spec/properties/image/properties/sha256": ["0" * 64],
    "/properties/spec/properties/image/allOf/1/if/properties/source": ["http://x/y"],
    "/properties/spec/properties/image/properties/name": ["debian-12", "ubuntu-24.04", "a"],
    "/properties/spec/properties/image/properties/arch": ["x86_64", "aarch64", "s390x"],
    "/properties/spec/properties/image/properties/variant": ["genericcloud", "server"],
    "/properties/spec/properties/hostname": ["web-1", "web-1.example.org"],
    "/properties/spec/properties/cloudInit/properties/userDataFile": ["user-data.yaml", "a/b"],
    "/properties/spec/properties/cloudInit/properties/instanceId": ["iid-web-1"],
    "/properties/spec/properties/ssh/properties/authorizedKeys/items": [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB user@host",
        "ecdsa-sha2-nistp256 AAAA=",
    ],
    "/properties/spec/properties/files/items/properties/path": ["/etc/motd", "/a/b.c"],
    "/properties/spec/properties/files/items/properties/source": ["files/motd"],
    "/properties/spec/properties/files/items/properties/permissions": ["0644", "600"],
    "/properties/spec/properties/files/items/properties/owner": ["root", "root:root"],
    "/properties/spec/properties/networks/items/properties/source": ["default", "br0"],
    "/properties/spec/properties/networks/items/properties/mac": ["52:54:00:12:34:56"],
    "/properties/spec/properties/networks/items/properties/ports/items/properties/guestAddress": [
        "10.0.2.4",
        "10.0.2.15",
        "10.0.2.50",
        "10.0.2.254",
    ],
    "/properties/spec/properties/networks/items/properties/ports/items/properties/address": [
        "127.0.0.1",
        "0.0.0.0",
    ],
    "/properties/spec/properties/disks/items/properties/name": ["data", "logs-1"],
    "/$defs/size": ["20GiB", "1.5 G", "512"],
    "/$defs/probe/properties/http/properties/path": ["/", "/healthz", "/a?b=c&d=%20"],
}


@pytest.mark.parametrize(
    ("pointer", "sample"),
    [
        ("/properties/spec/properties/files/items/properties/path", "../etc/passwd"),
        ("/properties/spec/properties/files/items/properties/path", "/etc/../passwd"),
        ("/properties/spec/properties/files/items/properties/path", "/etc/."),
        ("/properties/spec/properties/files/items/properties/path", "etc/passwd"),
        ("/properties/spec/properties/cloudInit/properties/userDataFile", "/etc/shadow"),
        ("/properties/spec/properties/networks/items/properties/mac", "53:54:00:12:34:56"),
        # control characters, which libvirt's XML cannot hold
        ("/properties/metadata/properties/labels/additionalProperties", "a\x01b"),
        ("/properties/metadata/properties/labels/additionalProperties", "a\tb"),
        ("/properties/spec/properties/description", "bell\x07"),
        ("/properties/spec/properties/description", "\x00"),
        # a request line of our own: no space, no CR or LF to smuggle a header in
        ("/$defs/probe/properties/http/properties/path", "/ HTTP/1.1\r\nHost: x"),
        ("/$defs/probe/properties/http/properties/path", "/\n"),
        ("/$defs/probe/properties/http/properties/path", "healthz"),
    ],
)
def test_hostile_values_do_not_match(pointer: str, sample: str) -> None:
    pattern = dict(ALL_PATTERNS)[pointer]
    assert regress.Regex(pattern, flags="u").find(sample) is None
    assert re.search(pattern, sample) is None


def patterns(node: Any, pointer: str = "") -> Iterator[tuple[str, str]]:
    """Every (pointer, pattern) in the schema."""
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield pointer, node["pattern"]
        for key, value in node.items():
            yield from patterns(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from patterns(value, f"{pointer}/{index}")


ALL_PATTERNS = list(patterns(instance_schema()))


@pytest.mark.parametrize(("pointer", "pattern"), ALL_PATTERNS, ids=[p for p, _ in ALL_PATTERNS])
def test_python_and_ecma_agree(pointer: str, pattern: str) -> None:
    assert pointer in VALID_SAMPLES, f"add valid samples for the pattern at {pointer}"
    ecma = regress.Regex(pattern, flags="u")
    python = re.compile(pattern)
    for sample in VALID_SAMPLES[pointer]:
        assert python.search(sample) and ecma.find(sample) is not None, sample
        for variant in (sample + "\n", sample + "\r\n", "\n" + sample, sample + "\n\n"):
            assert bool(python.search(variant)) == (ecma.find(variant) is not None), variant
            if pattern.endswith("$(?!\\n)"):
                assert not python.search(variant), variant


def test_size_pattern_is_the_schemas() -> None:
    assert instance_schema()["$defs"]["size"]["pattern"] == SIZE_PATTERN


def test_every_schema_is_valid_against_its_meta_schema() -> None:
    schemas = (instance_schema(), *kind_schemas().values())
    meta = jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA)
    assert [list(meta.iter_errors(schema)) for schema in schemas] == [[]] * len(schemas)
