"""JSON for the outbox: orjson when it is installed (~10x faster), the standard library otherwise."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "loads"]


def _std_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


try:
    import orjson

    def dumps(obj: Any) -> bytes:
        """Compact UTF-8 JSON."""
        try:
            return orjson.dumps(obj)
        except TypeError:  # orjson stops at 64-bit integers; Polar takes any size (§1.6)
            return _std_dumps(obj)

    loads: Callable[[str | bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - exercised only without orjson
    dumps = _std_dumps
    loads = json.loads
