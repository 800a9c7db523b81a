"""The README's first screen, as a stranger reads it: what this is, the two commands, a short
example, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_two_commands_are_there_exactly() -> None:
    assert "pip install -e '.[cli]' && polar-metering demo" in README
    assert "pip install -e '.[dev]' && python -m pytest" in README


def test_the_first_screen_says_what_it_is_and_shows_the_example() -> None:
    first_screen = "\n".join(README.splitlines()[:45])
    assert "Usage-based billing on [Polar]" in first_screen
    assert "polar-metering demo" in first_screen and "python -m pytest" in first_screen
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) == 1
    assert len([line for line in blocks[0].splitlines() if line.strip()]) <= 10
    assert blocks[0] in README[: README.index("## Read more")]


def test_every_link_resolves() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith("https://")]
    assert local, "the README links to the documentation"
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_it_stays_short() -> None:
    assert len(README.splitlines()) <= 60
