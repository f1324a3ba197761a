"""What a pusher who controls every byte and symlink of the manifest tree can make the loader
do (RELIABILITY.md rule 12a, 14): read nothing outside the tree, never block on a special file,
quote no more than a short excerpt of any file, and cost bounded time on huge input."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from reconciler.manifests.loader import (
    MAX_DOCUMENTS_PER_FILE,
    MAX_ERRORS_PER_FILE,
    load_manifests,
)
from tests.unit.test_manifests import VALID

SECRET = "AWS_SECRET=topsecretvalue123-" + "x" * 200


def load_in_thread(root: Path, seconds: float = 10.0) -> list[str]:
    """The errors of loading `root`, failing the test (not hanging it) if the load blocks."""
    result: list[list[str]] = []
    worker = threading.Thread(
        target=lambda: result.append([str(e) for e in load_manifests(root).errors]), daemon=True
    )
    worker.start()
    worker.join(seconds)
    assert result, f"loading {root} did not return within {seconds}s"
    return result[0]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.env"
    secret.parent.mkdir()
    secret.write_text(SECRET + "\n")
    return secret


def test_a_manifest_that_links_out_of_the_tree_is_refused_unread(
    tmp_path: Path, outside: Path
) -> None:
    tree = tmp_path / "fleet"
    tree.mkdir()
    (tree / "web.yaml").write_text(VALID)
    (tree / "env.yaml").symlink_to(outside)
    result = load_manifests(tree)
    assert [i.name for i in result.instances] == ["web"]  # the valid one still loads
    (error,) = [str(e) for e in result.errors]
    assert error.startswith(f"{tree}/env.yaml:1:1: /: ")
    assert f"(which resolves to {outside}) is outside {tree}" in error
    assert "topsecret" not in error and "AWS_SECRET" not in error


def test_a_manifest_link_inside_the_tree_is_read(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "web.txt").write_text(VALID)
    (tmp_path / "web.yaml").symlink_to("real/web.txt")
    result = load_manifests(tmp_path)
    assert not result.errors and [i.name for i in result.instances] == ["web"]


def test_a_file_named_on_the_command_line_that_links_out_is_refused(
    tmp_path: Path, outside: Path
) -> None:
    link = tmp_path / "fleet" / "evil.yaml"
    link.parent.mkdir()
    link.symlink_to(outside)
    (error,) = [str(e) for e in load_manifests(link).errors]
    assert "is outside" in error and "topsecret" not in error


def test_no_message_quotes_more_than_a_short_excerpt_of_a_file(tmp_path: Path) -> None:
    """A file of the tree (not a link) whose content is a secret: the schema error quotes 60
    characters of it at most, with its length."""
    errors = load_in_thread_write(tmp_path, "env.yaml", SECRET + "\n")
    (error,) = errors
    assert error.startswith(f"{tmp_path}/env.yaml:1:1: /: expected object, got ")
    assert '"AWS_SECRET=topsecretvalue123-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"... (229 characters)' in (
        error
    )
    assert "x" * 61 not in error


def load_in_thread_write(tmp_path: Path, name: str, text: str) -> list[str]:
    (tmp_path / name).write_text(text)
    return load_in_thread(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: reconciler/v1alpha1\nkind: Instance\nmetadata: {name: web}\nspec: " + SECRET,
        f"{{{SECRET}: 1}}\n",  # a key
        f"apiVersion: {SECRET}\n",
        "apiVersion: reconciler/v1alpha1\nkind: Instance\nmetadata: {name: web, labels: {a: "
        + SECRET
        + "}}\n",
    ],
)
def test_long_values_and_keys_are_cut_in_every_message(tmp_path: Path, text: str) -> None:
    errors = load_in_thread_write(tmp_path, "m.yaml", text)
    assert errors
    for error in errors:
        assert "x" * 61 not in error, error
        assert len(error) < 700, error


def test_a_fifo_manifest_and_a_fifo_source_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "fifo")
    (tmp_path / "sub" / "web.yaml").write_text(VALID + "  files: [{path: /etc/x, source: fifo}]\n")
    (tmp_path / "db.yaml").write_text(VALID.replace("name: web", "name: db"))
    errors = load_in_thread(tmp_path)
    assert sorted(errors) == [
        f"{tmp_path}/pipe.yaml:1:1: /: {tmp_path}/pipe.yaml is a FIFO, not a regular file",
        f"{tmp_path}/sub/web.yaml:14:34: /spec/files/0/source: fifo is a FIFO, not a regular file",
    ]
    assert [i.name for i in load_manifests(tmp_path).instances] == ["db"]


def test_a_fifo_named_on_the_command_line_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    assert load_in_thread(tmp_path / "pipe.yaml") == [
        f"{tmp_path}/pipe.yaml:1:1: /: {tmp_path}/pipe.yaml is a FIFO, not a regular file"
    ]


def test_a_device_in_the_tree_is_refused_unopened(tmp_path: Path) -> None:
    (tmp_path / "null.yaml").symlink_to("/dev/null")  # outside the tree first of all
    (tmp_path / "user-data").symlink_to("/dev/zero")
    (tmp_path / "web.yaml").write_text(VALID + "  cloudInit: {userDataFile: user-data}\n")
    os.mknod(tmp_path / "tty.yaml", stat.S_IFCHR | 0o600, os.makedev(5, 0))  # /dev/tty
    errors = sorted(load_in_thread(tmp_path))
    assert len(errors) == 3
    assert "is outside" in errors[0] and "is outside" in errors[2]
    assert errors[1].endswith("tty.yaml is a character device, not a regular file")


def test_a_file_of_many_tiny_documents_costs_little_and_says_so_once(tmp_path: Path) -> None:
    (tmp_path / "many.yaml").write_text("---\n{x: 1}\n" * 94_545)
    (tmp_path / "web.yaml").write_text(VALID)
    result = load_manifests(tmp_path)
    (error,) = [str(e) for e in result.errors]
    assert f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file" in error
    assert [i.name for i in result.instances] == ["web"]


def test_errors_per_file_are_capped_with_a_count_of_the_rest(tmp_path: Path) -> None:
    documents = "".join(f"---\n{{x{n}: 1}}\n" for n in range(300))
    (tmp_path / "bad.yaml").write_text(documents)
    errors = [str(e) for e in load_manifests(tmp_path).errors]
    assert len(errors) == MAX_ERRORS_PER_FILE + 1
    assert errors[-1].endswith("more error(s) in bad.yaml, not shown")


def test_the_same_host_port_in_two_files_fails_both_with_both_places(tmp_path: Path) -> None:
    nic = "  networks: [{type: user, ports: [{host: 18551, guest: 22}]}]\n"
    (tmp_path / "a.yaml").write_text(VALID + nic)
    (tmp_path / "b.yaml").write_text(VALID.replace("name: web", "name: db") + nic)
    udp = "  networks: [{type: user, ports: [{host: 18551, guest: 53, protocol: udp}]}]\n"
    (tmp_path / "c.yaml").write_text(VALID.replace("name: web", "name: dns") + udp)
    result = load_manifests(tmp_path)
    assert [i.name for i in result.instances] == ["dns"]  # another protocol: no clash
    assert sorted(result.invalid_names) == ["db", "web"]
    errors = sorted(str(e) for e in result.errors)
    assert errors == [
        f"{tmp_path}/a.yaml:4:9: /spec/networks: host port 127.0.0.1:18551/tcp is also given "
        f"by db ({tmp_path}/b.yaml:4:9)",
        f"{tmp_path}/b.yaml:4:9: /spec/networks: host port 127.0.0.1:18551/tcp is also given "
        f"by web ({tmp_path}/a.yaml:4:9)",
    ]


def test_an_invalid_document_reusing_a_valid_name_is_a_duplicate_at_both_places(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID.replace("vcpus: 2", "vcpus: many"))
    result = load_manifests(tmp_path)
    assert result.instances == ()
    errors = sorted(str(e) for e in result.errors)
    assert (
        f"{tmp_path}/a.yaml:4:9: /metadata/name: instance name 'web' is also defined at "
        in (errors[0])
    )
    assert any(
        e.startswith(f"{tmp_path}/b.yaml:4:9: /metadata/name: instance name") for e in errors
    )
    assert any("/spec/vcpus" in e for e in errors)  # and its own error


def test_every_check_runs_on_what_parsed_in_one_round(tmp_path: Path) -> None:
    """A schema error does not hide the checks beyond the schema in the same document."""
    ports = (
        "  networks: [{type: user, ports: [{host: 2222, guest: 22}, {host: 2222, guest: 23}]}]\n"
    )
    files = "  files: [{path: /etc/a, source: missing.txt}]\n"
    (tmp_path / "m.yaml").write_text(VALID.replace("vcpus: 2", "vcpus: many") + ports + files)
    errors = [str(e) for e in load_manifests(tmp_path).errors]
    pointers = [e.split(": ")[1] for e in errors]
    assert "/spec/vcpus" in pointers
    assert "/spec/networks/0/ports/1/host" in pointers  # the repeated host port
    assert "/spec/files/0/source" in pointers  # the missing file


def test_a_file_of_instance_sets_stands_for_a_thousand_instances_at_most(tmp_path: Path) -> None:
    """A pusher's file of many large sets (1000 documents of 1000 replicas would be a
    million instances) is refused past the file's limit, its members counted; the sets
    within it are used."""
    from reconciler.manifests.loader import MAX_INSTANCES_PER_FILE, load_manifests

    one = (
        "apiVersion: reconciler/v1alpha1\nkind: InstanceSet\nmetadata: {{name: s{n}}}\n"
        "spec:\n  replicas: 600\n  template:\n    vcpus: 1\n    memory: 64MiB\n"
        "    image: {{source: /i.raw, sha256: '{sha}', format: raw}}\n    disk: {{size: 1GiB}}\n"
    )
    text = "---\n".join(one.format(n=n, sha="0" * 64) for n in range(1000))
    (tmp_path / "many.yaml").write_text(text)
    result = load_manifests(tmp_path)
    assert len(result.instances) == 600 < MAX_INSTANCES_PER_FILE
    assert len(result.errors) <= 51  # the file's errors are capped too
    assert "more than 1000 instances" in str(result.errors[0])
