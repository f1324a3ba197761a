"""Pull mode's pure parts: credentials never shown, settings checked before any git runs, and
a fetch that fails keeps the commit in force and says why without the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.gitops.source import GitError, GitSettings, GitSource, redact


def test_credentials_are_redacted_from_urls() -> None:
    assert redact("https://robot:s3cret@git.example.com/fleet.git") == (
        "https://***@git.example.com/fleet.git"
    )
    assert (
        redact("https://token@git.example.com:8443/f.git")
        == "https://***@git.example.com:8443/f.git"
    )
    assert redact("file:///srv/fleet.git") == "file:///srv/fleet.git"
    assert redact("git@example.com:fleet.git") == "git@example.com:fleet.git"  # scp-like: no secret


@pytest.mark.parametrize(
    ("ref", "path"), [("-upload-pack=x", "."), ("main", "/etc"), ("main", "../up"), ("a b", ".")]
)
def test_unsafe_refs_and_paths_are_refused(ref: str, path: str) -> None:
    with pytest.raises(ConfigError):
        GitSettings("file:///srv/fleet.git", ref, path)


def test_a_failed_fetch_names_no_password_and_keeps_nothing_in_force(tmp_path: Path) -> None:
    url = f"https://robot:s3cret@127.0.0.1:9/{tmp_path.name}.git"  # nothing listens on port 9
    source = GitSource(tmp_path / "git", GitSettings(url))
    with pytest.raises(GitError) as caught:
        source.sync()
    assert "s3cret" not in str(caught.value)
    state = (tmp_path / "git" / "state.json").read_text()
    assert "s3cret" not in state and "***@127.0.0.1:9" in state
    assert source.state.applied is None and source.state.error
