"""Pull mode: manifests from a git remote, through the `git` command.

The clone lives in STATE/git: a bare repository (`repo.git`, the remote configured as
`origin`), one checkout per applied commit (`trees/<commit>`, made with `git worktree`) and
`current`, a symlink to the checkout in force, renamed into place atomically, which is the
manifest directory the reconciler reads. A fetched commit is applied only when its signature
checks out (with `--verify-signatures`) and every manifest under `--path` loads and
validates; otherwise the last good commit stays in force and the reason is kept for `status`.

Why the `git` command and not a Python git library: it is what users already have and
configure (credential helpers, SSH keys, proxies, every transport), and it verifies commit
signatures itself, OpenPGP through gpg and SSH through ssh-keygen; dulwich would need all of
that rebuilt, and GitPython drives the same command anyway.

Credentials: a URL's user:password part is never logged nor written to the status (see
`redact`), never given to git in an argument (any local user reads command lines in `ps`) and
never written to repo.git/config: the remote is configured without them, and git asks for them
through GIT_ASKPASS, a script in STATE/git that answers from its own environment (readable by
its owner only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from reconciler.errors import ConfigError, TransientError
from reconciler.fileops import temporary_path, write_atomically
from reconciler.manifests.loader import LoadResult, load_manifests

LOG = logging.getLogger(__name__)

GIT_TIMEOUT_SECONDS = 300.0
_COMMIT = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
# an SSH allowed-signers line: principals, optional options, then a key type and its key
_SSH_KEY = re.compile(r"(^|\s)(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)\s+AAAA")


class GitError(TransientError):
    """A git operation failed (the remote unreachable, a ref missing): retried later."""


@dataclass(frozen=True, slots=True)
class GitSettings:
    url: str
    ref: str = "main"
    path: str = "."  # the manifest directory inside the repository
    keyring: Path | None = None  # --verify-signatures: OpenPGP keyring or SSH allowed signers

    def __post_init__(self) -> None:
        parts = Path(self.path).parts
        if Path(self.path).is_absolute() or ".." in parts:
            raise ConfigError(f"--path {self.path!r} must be relative, inside the repository")
        if not self.ref or self.ref.startswith("-") or any(c in self.ref for c in " ~^:?*[\\"):
            raise ConfigError(f"--ref {self.ref!r} is not a branch or tag name")


@dataclass(slots=True)
class GitState:
    """What `status` shows of the source (persisted in STATE/git/state.json)."""

    url: str  # redacted
    ref: str
    applied: str | None = None  # the commit in force
    applied_at: str | None = None
    newest: str | None = None  # the newest commit fetched
    fetched_at: str | None = None
    refused: dict[str, str] | None = None  # {"commit": ..., "reason": ...} of the newest
    error: str | None = None  # the last fetch's failure, when it failed
    applied_time: float | None = None  # the commit in force's commit time (seconds)
    newest_time: float | None = None  # the newest commit's
    current_at: float | None = None  # the last fetch that found the newest commit in force

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ref": self.ref,
            "appliedCommit": self.applied,
            "appliedAt": self.applied_at,
            "newestCommit": self.newest,
            "fetchedAt": self.fetched_at,
            "notApplied": self.refused,
            "fetchError": self.error,
        }


@dataclass(frozen=True, slots=True)
class SyncResult:
    changed: bool  # a new commit is in force
    state: GitState
    load: LoadResult | None = field(default=None)  # of the commit in force, when one is


def without_credentials(url: str) -> str:
    """`url` without its user and password part (what git is given and keeps)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# git runs this (not through a shell) with its prompt as the one argument
_ASKPASS = """#!/bin/sh
# reconciler pull mode: answers git's credential prompts from the environment of this git
case "$1" in
  Username*) printf '%s\\n' "$RECONCILER_GIT_USERNAME" ;;
  *) printf '%s\\n' "$RECONCILER_GIT_PASSWORD" ;;
esac
"""


def redact(url: str) -> str:
    """`url` without its password (and user) part, for logs and the status."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


class GitSource:
    """The repository of one state directory: fetch, check, check out, switch."""

    def __init__(self, root: Path, settings: GitSettings) -> None:
        self.root = root  # STATE/git
        self.settings = settings
        self.repo = root / "repo.git"
        self.trees = root / "trees"
        self.current = root / "current"
        self._state_file = root / "state.json"
        self.state = self._read_state()

    @property
    def directory(self) -> Path:
        """The manifest directory in force (through `current`, stable across commits)."""
        return self.current / self.settings.path

    def sync(self) -> SyncResult:
        """Fetch; apply the newest commit if it is new and good. Raises GitError when the
        fetch fails (the commit in force stays)."""
        self._ensure_repository()
        try:
            newest = self._fetch()
        except GitError as err:
            self.state.error = str(err)
            self._write_state()
            raise
        self.state.error = None
        if newest != self.state.newest or self.state.newest_time is None:
            self.state.newest_time = self._commit_time(newest)
        self.state.newest = newest
        self.state.fetched_at = _now()
        if newest == self.state.applied and self.current.exists():
            self.state.current_at = time.time()
            self._write_state()
            return SyncResult(False, self.state, None)
        reason, load = self._check(newest)
        if reason is not None:
            if self.state.refused is None or self.state.refused.get("commit") != newest:
                LOG.warning("git: commit %s is not applied: %s", newest[:12], reason)
            self.state.refused = {"commit": newest, "reason": reason}
            self._write_state()
            return SyncResult(False, self.state, None)
        self._switch(newest)
        LOG.info("git: applied commit %s of %s", newest[:12], self.state.ref)
        self.state.applied, self.state.applied_at, self.state.refused = newest, _now(), None
        self.state.applied_time, self.state.current_at = self.state.newest_time, time.time()
        self._write_state()
        return SyncResult(True, self.state, load)

    # -- steps -------------------------------------------------------------------------------

    def _ensure_repository(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._credentials():
            askpass = self.root / "askpass"
            if not askpass.exists() or askpass.read_text() != _ASKPASS:
                write_atomically(askpass, _ASKPASS.encode(), mode=0o700)
        if not (self.repo / "HEAD").exists():
            scratch = temporary_path(self.repo)
            self._git("init", "--quiet", "--bare", str(scratch), git_dir=None)
            os.replace(scratch, self.repo)
        self._git("config", "remote.origin.url", without_credentials(self.settings.url))

    def _fetch(self) -> str:
        ref = self.settings.ref
        self._git(
            "fetch", "--quiet", "--no-tags", "--force", "origin",
            f"+{ref}:refs/reconciler/fetched",
        )  # fmt: skip
        commit = self._git("rev-parse", "--verify", "refs/reconciler/fetched^{commit}").strip()
        if not _COMMIT.match(commit):
            raise GitError(f"git: unexpected commit id {commit!r}")
        return commit

    def _check(self, commit: str) -> tuple[str | None, LoadResult | None]:
        """Why `commit` may not be applied (None: it may), and its manifests when it may."""
        if self.settings.keyring is not None:
            problem = self._signature_problem(commit)
            if problem is not None:
                return problem, None
        tree = self._checkout(commit)
        directory = tree / self.settings.path
        if not Path(os.path.realpath(directory)).is_relative_to(os.path.realpath(tree)):
            self._remove_tree(tree)  # a symlink to a host directory: never read
            return f"{self.settings.path} leads out of the repository (a symlink)", None
        if not directory.is_dir():
            self._remove_tree(tree)
            return f"{self.settings.path} is not a directory in this commit", None
        load = load_manifests(directory)
        if load.errors:
            self._remove_tree(tree)
            first = str(load.errors[0]).replace(str(tree), "")
            more = f" (and {len(load.errors) - 1} more)" if len(load.errors) > 1 else ""
            return f"{len(load.errors)} manifest error(s): {first.lstrip('/')}{more}", None
        return None, load

    def _signature_problem(self, commit: str) -> str | None:
        keyring = self.settings.keyring
        assert keyring is not None
        try:
            text = keyring.read_bytes()
        except OSError as err:
            raise ConfigError(f"--verify-signatures {keyring}: {err.strerror}") from err
        options: list[str]
        env: dict[str, str] = {}
        if _SSH_KEY.search(text.decode("utf-8", "replace")):
            options = ["-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={keyring}"]
        else:
            env["GNUPGHOME"] = str(self._gnupg_home(keyring, text))
            options = ["-c", "gpg.format=openpgp"]
        verified = subprocess.run(
            ["git", "--git-dir", str(self.repo), *options, "verify-commit", commit],
            capture_output=True, text=True, env={**os.environ, **env},
            timeout=GIT_TIMEOUT_SECONDS, check=False,
        )  # fmt: skip
        if verified.returncode == 0:
            return None
        detail = verified.stderr.strip().splitlines()
        why = detail[-1] if detail else "no signature"
        return f"its signature does not verify against {keyring.name}: {why}"

    def _gnupg_home(self, keyring: Path, text: bytes) -> Path:
        """A GNUPGHOME holding exactly the keys of `keyring` (one per keyring content, made
        once; no gpg-agent is started: public keys and verification need none)."""
        home = self.root / f"gnupg-{hashlib.sha256(text).hexdigest()[:16]}"
        if home.is_dir():
            return home
        for stale in self.root.glob("gnupg-*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = temporary_path(home)
        scratch.mkdir(mode=0o700)
        imported = subprocess.run(
            ["gpg", "--batch", "--quiet", "--no-autostart", "--import", str(keyring)],
            capture_output=True, text=True, env={**os.environ, "GNUPGHOME": str(scratch)},
            check=False, timeout=GIT_TIMEOUT_SECONDS,
        )  # fmt: skip
        if imported.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise ConfigError(
                f"--verify-signatures {keyring}: not an OpenPGP keyring nor an SSH allowed "
                f"signers file ({imported.stderr.strip()[:200]})"
            )
        os.rename(scratch, home)
        return home

    def _checkout(self, commit: str) -> Path:
        self.trees.mkdir(exist_ok=True)
        tree = self.trees / commit
        if tree.exists():
            self._remove_tree(tree)
        self._git("worktree", "prune")
        self._git("worktree", "add", "--quiet", "--force", "--detach", str(tree), commit)
        return tree

    def _switch(self, commit: str) -> None:
        """Point `current` at the checkout of `commit` (atomically), then drop the others."""
        link = temporary_path(self.current)
        os.symlink(Path("trees") / commit, link)
        os.replace(link, self.current)
        for tree in self.trees.iterdir():
            if tree.name != commit:
                self._remove_tree(tree)

    def _remove_tree(self, tree: Path) -> None:
        shutil.rmtree(tree, ignore_errors=True)
        self._git("worktree", "prune")

    # -- plumbing ----------------------------------------------------------------------------

    def _git(self, *args: str, git_dir: Path | str | None = "repo") -> str:
        command = ["git"]
        if git_dir == "repo":
            command += ["--git-dir", str(self.repo)]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}
        env.update(self._credentials())
        try:
            done = subprocess.run(
                [*command, *args], capture_output=True, text=True, env=env,
                timeout=GIT_TIMEOUT_SECONDS, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as err:
            raise GitError(f"git {args[0]} timed out after {GIT_TIMEOUT_SECONDS:.0f}s") from err
        except FileNotFoundError as err:
            raise ConfigError("pull mode needs the git command (Debian package git)") from err
        if done.returncode != 0:
            message = _scrub(done.stderr.strip() or done.stdout.strip(), self.settings.url)
            raise GitError(f"git {args[0]} failed: {message[-500:]}")
        return done.stdout

    def _credentials(self) -> dict[str, str]:
        """The environment that hands the URL's user and password to git (through the askpass
        script), empty when the URL has none."""
        parts = urlsplit(self.settings.url)
        if parts.username is None and parts.password is None:
            return {}
        return {
            "GIT_ASKPASS": str(self.root / "askpass"),
            "SSH_ASKPASS": "/bin/false",
            "RECONCILER_GIT_USERNAME": unquote(parts.username or ""),
            "RECONCILER_GIT_PASSWORD": unquote(parts.password or ""),
        }

    def _read_state(self) -> GitState:
        url, ref = redact(self.settings.url), self.settings.ref
        try:
            data = json.loads(self._state_file.read_text())
            state = GitState(**data)
        except (OSError, ValueError, TypeError):
            return GitState(url, ref)
        if state.url != url or state.ref != ref:  # another source: nothing of it is in force
            return GitState(url, ref)
        state.applied = state.applied if self.current.exists() else None
        return state

    def _commit_time(self, commit: str) -> float | None:
        """When `commit` was made (its committer time), or None when git cannot say."""
        try:
            text = self._git("log", "-1", "--format=%ct", commit).strip()
        except GitError:
            return None
        return float(text) if text.isdigit() else None

    def _write_state(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(asdict(self.state), indent=2).encode()
        write_atomically(self._state_file, data, mode=0o600)


def _scrub(text: str, url: str) -> str:
    """`text` with `url`'s credentials removed (git may quote the URL in its messages)."""
    parts = urlsplit(url)
    if parts.password:
        text = text.replace(parts.password, "***")
    if url != redact(url):
        text = text.replace(url, redact(url))
    return text


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
