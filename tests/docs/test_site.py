"""The documentation site builds with ``mkdocs build --strict``: every page in the navigation, every
link and included file resolves, and the API reference renders from the docstrings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "index.html").read_text()
    # Signatures and docstrings came through, the seed's positional forms included.
    assert "track_storage_update" in api and "operation" in api
    assert "Make <code>client</code> the default client" in api or "the default client" in api
    testing = (site / "testing" / "index.html").read_text()
    assert "billing_entity" in testing  # the sample project's app.py, included verbatim
    for page in ("configuration", "testing", "semantics", "sources", "changelog", "seed-to-python"):
        assert (site / page / "index.html").is_file(), page
