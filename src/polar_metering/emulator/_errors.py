"""Polar's error bodies, and reading request bodies the way Polar's FastAPI server reads them.

Polar answers a malformed request with 422 and a list of pydantic errors (``type``, ``loc``, ``msg``,
``input``, ``ctx``), under ``RequestValidationError`` for schema failures or
``PolarRequestValidationError`` for checks its services run afterwards
(``server/polar/exception_handlers.py`` and ``server/polar/exceptions.py`` at c6c3645). A body that
is not JSON at all is FastAPI's: 422 ``json_invalid`` when the decoder names a position, 400
``{"detail": "There was an error parsing the body"}`` for anything else it cannot decode (invalid
UTF-8, integers past Python's 4300-digit limit, nesting past the recursion limit).

Two things here go beyond Polar, so that no input can make the emulator answer 5xx or drop the
connection: every JSON response renders even when it echoes a lone surrogate or a NaN back (Polar's
own handler fails on those), and ``uuid_parsing`` messages are rewritten to the wording of the
pydantic-core release Polar pins, whatever pydantic is installed here.
"""

from __future__ import annotations

import email.message
import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from pydantic import ValidationError as PydanticValidationError
from starlette.responses import JSONResponse

__all__ = [
    "BODY_PARSE_ERROR",
    "PolarJSON",
    "RequestRejected",
    "decode_body",
    "detail_from_pydantic",
    "error_item",
    "json_safe",
    "uuid_error_text",
]

#: FastAPI's answer for a body it could not decode (``fastapi/routing.py``, Polar's FastAPI 0.136).
BODY_PARSE_ERROR = {"detail": "There was an error parsing the body"}
_HEX = frozenset("0123456789abcdefABCDEF")


class RequestRejected(Exception):
    """A request Polar would refuse: carries the status and Polar's JSON body.

    With ``detail`` a list it is a 422-style validation body ``{"error", "detail": [...]}``; ``body``
    overrides the whole body for the other shapes (400 parse errors, 404s).
    """

    def __init__(
        self,
        detail: list[dict[str, Any]],
        *,
        error: str = "RequestValidationError",
        status_code: int = 422,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.detail = detail
        self.error = error
        self.status_code = status_code
        self._body = body
        super().__init__(f"{error}: {len(detail)} error(s)")

    def body(self) -> dict[str, Any]:
        if self._body is not None:
            return self._body
        return {"error": self.error, "detail": self.detail}

    @classmethod
    def unparsable(cls) -> RequestRejected:
        return cls([], status_code=400, body=dict(BODY_PARSE_ERROR))


def error_item(type_: str, loc: Sequence[str | int], msg: str, input_: Any = None) -> dict[str, Any]:
    """One entry of Polar's 422 ``detail`` list."""
    return {"type": type_, "loc": list(loc), "msg": msg, "input": json_safe(input_)}


def json_safe(value: Any) -> Any:
    """``value`` as FastAPI's ``jsonable_encoder`` renders an error's input or context: exceptions
    become ``{}``, Decimals numbers, bytes text, dates ISO strings, enums their values."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, BaseException):
        return {}
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if hasattr(value, "model_dump"):
        return json_safe(value.model_dump(mode="python"))
    return str(value)


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity; an echoed input keeps its meaning as a string.
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class PolarJSON(JSONResponse):
    """Starlette's JSON response, rendered like Polar's, that cannot fail: a body echoing a NaN or a
    lone surrogate back (an error's ``input``) renders with those escaped instead of raising."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
                "utf-8"
            )
        except (ValueError, UnicodeEncodeError):
            return json.dumps(
                _finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")
            ).encode("ascii")


def uuid_error_text(text: str) -> str:
    """Why ``text`` is not a UUID, worded as by the ``uuid`` crate inside the pydantic-core release
    Polar pins (2.46, pydantic 2.13, ``server/uv.lock`` at c6c3645): positions count from 1 and
    byte-wise, a braced or ``urn:uuid:`` input of the hyphenated length is judged by its inner part."""
    raw = text.encode("utf-8", "surrogatepass")
    n = len(raw)
    body, offset, simple = raw, 0, True
    if (n == 38 and raw.startswith(b"{") and raw.endswith(b"}")) or (
        n == 45 and raw.startswith(b"urn:uuid:")
    ):
        body = raw[1:-1] if n == 38 else raw[9:]
        n = len(body)
    elif n >= 2 and raw.startswith(b"{") and raw.endswith(b"}"):
        body, offset, simple = raw[1:-1], 1, False
    elif raw.startswith(b"urn:uuid:"):
        body, offset, simple = raw[9:], 9, False
    try:
        chars = body.decode("utf-8")
    except UnicodeDecodeError:
        return "non-UTF8 input"
    hyphens: list[int] = []
    position = 0
    for ch in chars:
        if ch == "-":
            hyphens.append(position)
        elif ch not in _HEX:
            return f"invalid character: found `{ch}` at {position + offset + 1}"
        position += len(ch.encode("utf-8", "surrogatepass"))
    if not hyphens and simple:
        return f"invalid length: expected length 32 for simple format, found {n}"
    if len(hyphens) != 4:
        return f"invalid group count: expected 5, found {len(hyphens) + 1}"
    starts = (0, 9, 14, 19, 24)
    expected = (8, 4, 4, 4, 12)
    for group in range(4):
        if hyphens[group] != starts[group + 1] - 1:
            found = hyphens[group] - starts[group]
            return f"invalid group length in group {group}: expected {expected[group]}, found {found}"
    return f"invalid group length in group 4: expected 12, found {n - starts[4]}"


def detail_from_pydantic(exc: PydanticValidationError, prefix: Sequence[str | int]) -> list[dict[str, Any]]:
    """Polar's ``detail`` entries for a pydantic failure, each ``loc`` prefixed (``"body"``, ``"query"``)."""
    out: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False):
        msg, ctx = err["msg"], err.get("ctx")
        if err["type"] == "uuid_parsing" and isinstance(err.get("input"), str):
            reason = uuid_error_text(err["input"])
            msg, ctx = f"Input should be a valid UUID, {reason}", {"error": reason}
        item = error_item(err["type"], [*prefix, *err["loc"]], msg, err.get("input"))
        if ctx is not None:
            item["ctx"] = json_safe(ctx)
        out.append(item)
    return out


def _is_json(content_type: str) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def decode_body(raw: bytes, content_type: str | None) -> Any:
    """The request body as Polar's FastAPI hands it to validation.

    Empty: ``None`` (a required body is then ``missing``). A JSON content type: the decoded value.
    No or another content type: the raw bytes, which no model accepts (``model_attributes_type``).
    """
    if not raw:
        return None
    if not content_type or not _is_json(content_type):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        item = error_item("json_invalid", ["body", exc.pos], "JSON decode error", {})
        item["ctx"] = {"error": exc.msg}
        raise RequestRejected([item]) from None
    except (ValueError, RecursionError, MemoryError):
        # Invalid UTF-8, an integer past the 4300-digit limit, nesting past the recursion limit.
        raise RequestRejected.unparsable() from None
