import pytest

from reconciler.cli import parse_duration
from reconciler.errors import ConfigError
from reconciler.progress import render_transfer


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
