import pytest

from reconciler.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GiB", 20 * 1024**3),
        ("512 MiB", 512 * 1024**2),
        ("10G", 10 * 1024**3),
        ("1.5GiB", 1536 * 1024**2),
        ("10GB", 10 * 1000**3),
        ("4096", 4096),
        (4096, 4096),
        ("0", 0),
    ],
)
def test_parse_size_accepts(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["10XB", "", "GiB", "-1GiB", "1.3B", "1e9", "ten"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_size_refuses_booleans() -> None:
    with pytest.raises(ValueError):
        parse_size(True)


@pytest.mark.parametrize(
    ("size", "text"),
    [(2 * 1024**3, "2GiB"), (1536 * 1024**2, "1536MiB"), (1000, "1000B"), (1500, "1.5KiB")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
