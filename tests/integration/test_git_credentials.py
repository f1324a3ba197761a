"""Pull mode over HTTP with a password in the URL: git gets it through GIT_ASKPASS, never in
a command line that any local user can read in `ps`, and never in repo.git/config. Real git,
against a dumb-HTTP server with basic authentication on 127.0.0.1."""

from __future__ import annotations

import base64
import functools
import http.server
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.gitops.source import GitSettings, GitSource
from tests.gitrepo import Repository
from tests.httpserver import QuietHTTPServer

PASSWORD = "s3cr3tPW"


class _AuthHandler(http.server.SimpleHTTPRequestHandler):
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(0.2)  # long enough for the watcher to see every process at work
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="fleet"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Repository, int]]:
    repository = Repository(tmp_path / "remote")
    repository.write("fleet/README", "manifests\n")
    repository.commit("first")
    subprocess.run(["git", "--git-dir", str(repository.origin), "update-server-info"], check=True)
    handler = functools.partial(_AuthHandler, directory=str(repository.origin.parent))
    server = QuietHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield repository, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def command_lines_with(secret: str, stop: threading.Event, seen: list[str]) -> None:
    """Until `stop`: every process command line that holds `secret`, into `seen`."""
    while not stop.is_set():
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    line = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if secret in line and "pytest" not in line:
                    seen.append(line.replace("\0", " "))
        time.sleep(0.01)


def test_a_url_password_reaches_git_without_a_command_line_or_the_config(
    served: tuple[Repository, int], tmp_path: Path
) -> None:
    _repository, port = served
    url = f"http://alice:{PASSWORD}@127.0.0.1:{port}/origin.git"
    source = GitSource(tmp_path / "git", GitSettings(url, path="fleet"))
    stop, seen = threading.Event(), list[str]()
    watcher = threading.Thread(target=command_lines_with, args=(PASSWORD, stop, seen))
    watcher.start()
    try:
        result = source.sync()
    finally:
        stop.set()
        watcher.join()
    assert result.changed and (source.directory / "README").is_file()  # the password worked
    assert seen == []
    config = (tmp_path / "git" / "repo.git" / "config").read_text()
    assert PASSWORD not in config and "alice" not in config
    assert f"url = http://127.0.0.1:{port}/origin.git" in config
    assert PASSWORD not in (tmp_path / "git" / "state.json").read_text()
    assert (tmp_path / "git" / "askpass").stat().st_mode & 0o077 == 0


def test_a_wrong_password_fails_without_prompting_or_showing_it(
    served: tuple[Repository, int], tmp_path: Path
) -> None:
    _repository, port = served
    url = f"http://alice:wrong-{PASSWORD}@127.0.0.1:{port}/origin.git"
    source = GitSource(tmp_path / "git", GitSettings(url, path="fleet"))
    with pytest.raises(Exception) as caught:
        source.sync()
    assert "wrong-" not in str(caught.value)


def test_a_pushed_symlink_out_of_the_repository_is_never_read(tmp_path: Path) -> None:
    """Whoever can push commits `fleet -> /etc` (the --path itself), or a manifest that links
    to a host file: the commit is not applied, and its reason quotes nothing of the file."""
    secret = tmp_path / "host-secret.yaml"
    secret.write_text("AWS_SECRET=topsecretvalue123\n")
    repository = Repository(tmp_path / "remote")
    (repository.work).mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_path, repository.work / "fleet")
    repository.commit("the path is a link to the host")
    source = GitSource(tmp_path / "git", GitSettings(repository.url, path="fleet"))
    result = source.sync()
    assert not result.changed and source.state.refused is not None
    assert "fleet leads out of the repository" in source.state.refused["reason"]

    (repository.work / "fleet").unlink()
    (repository.work / "fleet").mkdir()
    os.symlink(secret, repository.work / "fleet" / "env.yaml")
    repository.commit("a manifest that is a link to a host file")
    result = source.sync()
    assert not result.changed and source.state.refused is not None
    reason = source.state.refused["reason"]
    assert "env.yaml (which resolves to" in reason and "is outside" in reason
    assert "topsecret" not in reason
    assert "topsecret" not in (tmp_path / "git" / "state.json").read_text()
