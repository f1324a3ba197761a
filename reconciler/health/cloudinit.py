"""What cloud-init says about this boot, read from the serial console (nothing installed in
the guest) or from its result file through the guest agent. Pure: text in, a verdict out.

The console lines relied on (cloud-init prints them to the console by default; the same
words from 0.7 to 24.x, Debian 12's 22.4 included):

- `Cloud-init v. VERSION running 'init-local' at DATE. Up N seconds.`: the banner of its
  first stage; a new one starts a new boot (what came before is forgotten);
- `Cloud-init v. VERSION finished at DATE. Datasource NAME.  Up N seconds`: the default
  `final_message`, printed last; a user's own `final_message` replaces it, and then only the
  guest agent can tell (`/run/cloud-init/result.json`);
- its WARNING and ERROR log lines (`DATE - FILE.py[WARNING]: Running module NAME (...)
  failed`, `... [ERROR]: ...`, `Failed to run module ...`), which the console handler of its
  default logging configuration prints: a boot with any is done with errors.

Console text is the guest's: lines are cut, control characters dropped, and at most a few
kept, before they are shown anywhere.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field

MAX_ERRORS = 5  # error lines kept per boot
MAX_LINE = 200  # characters kept of each
_BANNER = re.compile(r"Cloud-init v\. (\S{1,40}) running '(init-local|init)' at ")
_FINISHED = re.compile(r"Cloud-init v\. (\S{1,40}) finished at ")
_ERROR = re.compile(
    r"\.py\[(ERROR|CRITICAL)\]: |\.py\[WARNING\]: (Running module \S+ .*failed|Failed to run)"
)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class CloudInitState(enum.StrEnum):
    NOT_SEEN = "not-seen"  # no banner this boot (not started yet, or no cloud-init)
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # finished, with errors


@dataclass(slots=True)
class CloudInitConsole:
    """Fed the console's text as it grows (`feed`); says where cloud-init is this boot."""

    state: CloudInitState = CloudInitState.NOT_SEEN
    version: str | None = None
    errors: list[str] = field(default_factory=list)
    _partial: str = ""

    def feed(self, text: str) -> None:
        """More of the console (any cut: an unfinished last line waits for the next call)."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[-4096:]
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        banner = _BANNER.search(line)
        if banner is not None:
            if banner.group(2) == "init-local" or self.state in (
                CloudInitState.DONE, CloudInitState.FAILED,
            ):  # fmt: skip
                self.errors = []  # a new boot
            self.state, self.version = CloudInitState.RUNNING, banner.group(1)
            return
        if _ERROR.search(line) is not None and len(self.errors) < MAX_ERRORS:
            self.errors.append(shown(line))
            return
        finished = _FINISHED.search(line)
        if finished is not None:
            self.version = finished.group(1)
            self.state = CloudInitState.FAILED if self.errors else CloudInitState.DONE

    def describe(self) -> str:
        if self.state is CloudInitState.NOT_SEEN:
            return "cloud-init has not started this boot (no banner on the console)"
        version = f"cloud-init {self.version}"
        if self.state is CloudInitState.RUNNING:
            return f"{version} is running"
        if self.state is CloudInitState.DONE:
            return f"{version} finished"
        return f"{version} finished with errors: " + " | ".join(self.errors)


def shown(line: str) -> str:
    """A line of the guest's, safe to print: printable ASCII, cut."""
    return _UNPRINTABLE.sub("", line).strip()[:MAX_LINE]


def result_errors(text: bytes) -> list[str] | None:
    """The errors of cloud-init's `/run/cloud-init/result.json` (written when it finished;
    `{"v1": {"datasource": ..., "errors": [...]}}`); None when it is not such a file."""
    try:
        data = json.loads(text)
        errors = data["v1"]["errors"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return None
    if not isinstance(errors, list):
        return None
    return [shown(str(error)) for error in errors[:MAX_ERRORS]]
