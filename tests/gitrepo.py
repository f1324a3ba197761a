"""A git repository the tests create on local disk (a bare `origin` and a working clone that
commits manifests), and signing keys for it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import manifest_document

IDENTITY = {
    "GIT_AUTHOR_NAME": "Reconciler Test",
    "GIT_AUTHOR_EMAIL": "test@reconciler.invalid",
    "GIT_COMMITTER_NAME": "Reconciler Test",
    "GIT_COMMITTER_EMAIL": "test@reconciler.invalid",
}


class Repository:
    def __init__(self, root: Path, branch: str = "main") -> None:
        self.origin = root / "origin.git"
        self.work = root / "work"
        self.branch = branch
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.origin))
        git("init", "--quiet", f"--initial-branch={branch}", str(self.work))
        self.git("remote", "add", "origin", str(self.origin))

    @property
    def url(self) -> str:
        return f"file://{self.origin}"

    def git(self, *args: str, **env: str) -> str:
        return git("-C", str(self.work), *args, **env)

    def write(self, relative: str, document: dict[str, Any] | str) -> None:
        path = self.work / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = document if isinstance(document, str) else yaml.safe_dump(document)
        path.write_text(text)

    def write_instance(self, directory: str, name: str, base: Path, sha: str, **spec: Any) -> None:
        self.write(f"{directory}/{name}.yaml", manifest_document(name, base, sha, **spec))

    def remove(self, relative: str) -> None:
        (self.work / relative).unlink()

    def commit(self, message: str, *sign: str, **env: str) -> str:
        """Commit everything and push; `sign` are the git options that sign it (`env` what
        the signing needs)."""
        self.git("add", "--all")
        self.git(*sign, "commit", "--quiet", "--allow-empty", "-m", message, **env)
        self.git("push", "--quiet", "origin", f"HEAD:{self.branch}")
        return self.git("rev-parse", "HEAD").strip()


def git(*args: str, **env: str) -> str:
    done = subprocess.run(
        ["git", *args], capture_output=True, text=True, check=False,
        env={**os.environ, **IDENTITY, "GIT_CONFIG_NOSYSTEM": "1", **env},
    )  # fmt: skip
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def ssh_signing_key(directory: Path) -> tuple[list[str], Path]:
    """An SSH key pair: the git options that sign with it, and an allowed-signers file."""
    key = directory / "signing"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(key)],
        check=True,
    )
    public = (directory / "signing.pub").read_text().split()
    allowed = directory / "allowed_signers"
    allowed.write_text(f"{IDENTITY['GIT_COMMITTER_EMAIL']} {public[0]} {public[1]}\n")
    options = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "-c", "commit.gpgsign=true"]
    return options, allowed


def openpgp_signing_key(directory: Path) -> tuple[list[str], dict[str, str], Path]:
    """An OpenPGP key without a passphrase in a GNUPGHOME of its own: the git options and
    environment that sign with it, and its exported public keyring."""
    home = directory / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    run_env = {**os.environ, **env}
    subprocess.run(
        ["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
         IDENTITY["GIT_COMMITTER_EMAIL"], "ed25519", "sign", "never"],
        check=True, env=run_env, capture_output=True,
    )  # fmt: skip
    keyring = directory / "keyring.gpg"
    exported = subprocess.run(
        ["gpg", "--batch", "--export", IDENTITY["GIT_COMMITTER_EMAIL"]],
        check=True, env=run_env, capture_output=True,
    ).stdout  # fmt: skip
    keyring.write_bytes(exported)
    options = ["-c", "gpg.format=openpgp", "-c", "commit.gpgsign=true",
               "-c", f"user.signingkey={IDENTITY['GIT_COMMITTER_EMAIL']}"]  # fmt: skip
    return options, env, keyring


def openpgp_key_with_fingerprint(directory: Path) -> tuple[dict[str, str], Path, str]:
    """openpgp_signing_key's environment and public keyring, and the key's fingerprint (for
    signing files with gpg rather than commits)."""
    _options, env, keyring = openpgp_signing_key(directory)
    listed = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--fingerprint"], env={**os.environ, **env},
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    fingerprint = next(line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr"))
    return env, keyring, fingerprint
