"""JSON for the outbox: orjson when it is installed (~10x faster), the standard library otherwise.

orjson stops at 64-bit integers, and Polar takes integers of any size (server/polar/kit/metadata.py).
``dumps`` falls back
to the standard library for such a document and marks it with one leading space (JSON allows it), so
that ``loads`` knows to do the same: orjson would read the big integer as a rounded float.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BIG_INT_MARK", "dumps", "loads"]

BIG_INT_MARK = " "


def _std_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


try:
    import orjson

    def dumps(obj: Any) -> bytes:
        """Compact UTF-8 JSON."""
        try:
            return orjson.dumps(obj)
        except TypeError:  # an integer beyond 64 bits
            return BIG_INT_MARK.encode() + _std_dumps(obj)

    def loads(text: str | bytes, *, big_ints: bool | None = None) -> Any:
        """Parse JSON written by ``dumps`` (or several such documents joined into an array, with
        ``big_ints`` saying whether any of them carried the mark)."""
        if big_ints is None:
            big_ints = text[:1] in (BIG_INT_MARK, BIG_INT_MARK.encode())
        return json.loads(text) if big_ints else orjson.loads(text)

except ImportError:  # pragma: no cover - exercised only without orjson
    dumps = _std_dumps

    def loads(text: str | bytes, *, big_ints: bool | None = None) -> Any:
        return json.loads(text)
