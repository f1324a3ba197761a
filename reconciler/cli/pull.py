"""Pull mode on the command line: the repository of this state directory, and the fetch
before a --once pass (the daemon fetches in its own loop)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from reconciler.cli.options import Options
from reconciler.errors import ConfigError, ReconcilerError

if TYPE_CHECKING:  # imported in pull mode only (git, subprocesses)
    from reconciler.gitops.source import GitSource


def git_source(options: Options) -> GitSource:
    from reconciler.gitops.source import GitSettings, GitSource

    git = options.git
    assert git is not None
    state = options.checked_state()
    settings = GitSettings(git.url, git.ref, git.path, git.verify_signatures)
    if git.verify_signatures is not None and not git.verify_signatures.is_file():
        raise ConfigError(f"--verify-signatures {git.verify_signatures}: no such file")
    return GitSource(state.git, settings)


def sync_for_once(source: GitSource, out: TextIO) -> str | None:
    """Fetch and apply the newest good commit for --once; why the newest is not in force
    (None: it is). Without any good commit, the pass cannot run."""
    try:
        source.sync()
    except ReconcilerError as err:
        if source.state.applied is None:
            raise
        print(f"reconcile: {err}; the commit in force stays", file=sys.stderr)
    state = source.state
    if state.applied is None:
        reason = (state.refused or {}).get("reason", "no commit fetched")
        raise ConfigError(f"no commit of {state.url} can be applied: {reason}")
    print(f"reconcile: {state.url} {state.ref} at commit {state.applied[:12]}", file=out)
    if state.refused is not None:
        commit, reason = state.refused["commit"], state.refused["reason"]
        print(f"reconcile: newest commit {commit[:12]} not applied: {reason}", file=sys.stderr)
        return reason
    return None
