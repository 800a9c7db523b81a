"""The public surface is exactly what ``__all__`` lists, sorted, and nothing leaks a private module path."""

from __future__ import annotations

import polar_metering
import polar_metering.aio


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted and names every public attribute of the package (and nothing else)."""
    exported = polar_metering.__all__
    assert exported == sorted(exported)
    # pytest rewrites the asserts of a pytest11 plugin's whole distribution, which adds "@py_builtins"
    # and "@pytest_ar" to each module it imports; those are not names anyone can import.
    public = {n for n in dir(polar_metering) if not n.startswith(("_", "@"))} | {"__version__"}
    # Subpackages become attributes once imported anywhere; only aio and testing are part of the API.
    internal = {
        "backends",
        "dashboard",
        "delivery",
        "emulator",
        "integrations",
        "llm",
        "pytest_plugin",  # loaded by pytest through the pytest11 entry point
        "webhooks",
    }
    assert set(exported) == public - internal


def test_async_module_mirrors_sync_functions() -> None:
    """Every module-level function has an awaitable twin in ``polar_metering.aio``."""
    sync_functions = {n for n in polar_metering.__all__ if n.startswith(("track_", "check_", "with_usage"))}
    sync_functions |= {"get_all_usage", "reserve", "subscribe", "flush", "usage_history"}
    sync_functions |= {"get_subscription", "cancel", "list_customers", "list_plans"}
    missing = sync_functions - set(polar_metering.aio.__all__)
    assert not missing


def test_exported_types_are_the_documented_ones() -> None:
    """The seed's types keep their fields: UsageStatus(allowed, current, limit, remaining, reason)."""
    fields = polar_metering.UsageStatus.__dataclass_fields__
    assert list(fields)[:5] == ["allowed", "current", "limit", "remaining", "reason"]
    assert list(polar_metering.TrackingResult.__dataclass_fields__)[:3] == [
        "success",
        "inserted",
        "duplicates",
    ]


def test_core_import_stays_light() -> None:
    """Importing the package loads no optional dependency: servers, SDKs and frameworks are extras."""
    import subprocess
    import sys

    heavy = [
        "polar",
        "httpx",
        "starlette",
        "uvicorn",
        "typer",
        "rich",
        "fastapi",
        "django",
        "flask",
        "psycopg",
        "alembic",
        "pydantic",
        "openai",
        "anthropic",
        "litellm",
        "httpx2",
    ]
    code = f"import sys, polar_metering; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
