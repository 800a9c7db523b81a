"""Anthropic: the Messages API (``messages.create``, ``stream=True``, ``messages.stream()``, and the
beta messages route), as the ``anthropic`` SDK reports its usage.

Anthropic's ``input_tokens`` count only the uncached part of the prompt; cache reads and cache writes
are reported beside it. Polar's ``_llm.input_tokens`` here are the whole prompt (uncached + cache
writes + cache reads) and ``cached_input_tokens`` the cache reads, so totals compare across vendors
(``docs/llm.md``). A stream reports input usage on ``message_start`` and cumulative output usage on each
``message_delta``; the last values win. Streams need no option for that.
"""

from __future__ import annotations

from typing import Any

from polar_metering.llm._common import Endpoint, StreamReader, Usage, get, to_int

__all__ = ["ENDPOINTS"]

_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _counts(usage: Any, into: dict[str, int]) -> None:
    for name in _FIELDS:
        value = to_int(get(usage, name))
        if value is not None:
            into[name] = value


def _usage(counts: dict[str, int], model: Any) -> Usage | None:
    if "input_tokens" not in counts and "output_tokens" not in counts:
        return None
    read = counts.get("cache_read_input_tokens")
    prompt = counts.get("input_tokens", 0) + counts.get("cache_creation_input_tokens", 0) + (read or 0)
    return Usage(prompt, counts.get("output_tokens", 0), read, model if isinstance(model, str) else None)


def _read_message(body: Any) -> Usage | None:
    usage = get(body, "usage")
    if usage is None:
        return None
    counts: dict[str, int] = {}
    _counts(usage, counts)
    return _usage(counts, get(body, "model"))


class _MessagesReader(StreamReader):
    __slots__ = ("counts", "model")

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.model: Any = None

    def item(self, item: Any) -> bool:
        kind = get(item, "type")
        if kind == "message_start":
            message = get(item, "message")
            self.model = get(message, "model")
            usage = get(message, "usage")
        elif kind == "message_delta":
            usage = get(item, "usage")
        else:
            return True
        if usage is not None:
            _counts(usage, self.counts)
            self.usage = _usage(self.counts, self.model)
        return True


ENDPOINTS = {
    "/v1/messages": Endpoint("anthropic", "/v1/messages", _read_message, lambda _hide: _MessagesReader())
}
