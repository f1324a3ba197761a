import io
import logging

import pytest

from reconciler.cli import main as cli
from reconciler.cli.options import parse_duration
from reconciler.errors import ConfigError
from reconciler.images.progress import TransferReporter, render_transfer


def test_progress_line_with_rate_and_eta() -> None:
    line = render_transfer("img.raw", 256 * 1024**2, 1024**3, 2.0)
    assert line == ("img.raw [######                  ]  25% 256MiB of 1GiB, 128MiB/s, ETA 6s")
    assert render_transfer("img.raw", 1024**2, None, 1.0) == "img.raw 1MiB, 1MiB/s"


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800), ("12h", 43200), ("30m", 1800), ("0", 0), ("45s", 45)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "d", "-1d", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_progress_without_a_terminal_is_an_info_line_without_the_bar(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reporter = TransferReporter(io.StringIO())  # not a terminal
    report = reporter.start("img.raw")
    with caplog.at_level(logging.INFO, logger="reconciler.images.progress"):
        report(1024**3, 1024**3)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith("img.raw 100% 1GiB of 1GiB, ")
    assert "#" not in record.getMessage()


def test_progress_is_visible_at_the_default_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("reconciler.images.progress"), "level", logging.NOTSET)
    cli._configure_logging(verbose=False, debug=False)
    assert logging.getLogger("reconciler.images.progress").isEnabledFor(logging.INFO)
    assert not logging.getLogger("reconciler.loop.engine").isEnabledFor(logging.INFO)
