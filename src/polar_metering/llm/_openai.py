"""OpenAI: Chat Completions, Completions and Responses, as the ``openai`` SDK reports their usage.

- Chat Completions and Completions report ``usage`` on the body, and at the end of a stream only when
  ``stream_options.include_usage`` is set; we set it for the user and hide the extra usage-only chunk
  (``choices == []``) from them, so their stream looks as it would without metering.
- Responses report ``usage`` on the body and on the ``response.completed`` (or ``.incomplete`` /
  ``.failed``) event of a stream, with no option needed.

``prompt_tokens`` / ``input_tokens`` already include cached tokens, which is the convention Polar's
``_llm.input_tokens`` follows here (``docs/llm.md``).
"""

from __future__ import annotations

from typing import Any

from polar_metering.llm._common import Endpoint, StreamReader, Usage, get, to_int

__all__ = ["ENDPOINTS"]


def _chat_usage(usage: Any, model: Any) -> Usage | None:
    inp, out = to_int(get(usage, "prompt_tokens")), to_int(get(usage, "completion_tokens"))
    if inp is None or out is None:
        return None
    cached = to_int(get(get(usage, "prompt_tokens_details"), "cached_tokens"))
    return Usage(inp, out, cached, model if isinstance(model, str) else None)


def _responses_usage(usage: Any, model: Any) -> Usage | None:
    inp, out = to_int(get(usage, "input_tokens")), to_int(get(usage, "output_tokens"))
    if inp is None or out is None:
        return None
    cached = to_int(get(get(usage, "input_tokens_details"), "cached_tokens"))
    return Usage(inp, out, cached, model if isinstance(model, str) else None)


def _read_chat(body: Any) -> Usage | None:
    usage = get(body, "usage")
    return None if usage is None else _chat_usage(usage, get(body, "model"))


def _read_responses(body: Any) -> Usage | None:
    usage = get(body, "usage")
    return None if usage is None else _responses_usage(usage, get(body, "model"))


class _ChatReader(StreamReader):
    __slots__ = ("hide",)

    def __init__(self, hide: bool) -> None:
        super().__init__()
        self.hide = hide

    def item(self, item: Any) -> bool:
        usage = get(item, "usage")
        if usage is None:
            return True
        self.usage = _chat_usage(usage, get(item, "model")) or self.usage
        # The usage-only chunk exists because we asked for it: the caller never did, so never sees it.
        return not (self.hide and not get(item, "choices"))


class _ResponsesReader(StreamReader):
    __slots__ = ()

    def item(self, item: Any) -> bool:
        response = get(item, "response")
        if response is not None:
            usage = get(response, "usage")
            if usage is not None:
                self.usage = _responses_usage(usage, get(response, "model")) or self.usage
        return True


def _include_usage(params: dict[str, Any]) -> bool:
    """Ask for a stream's usage chunk unless the caller already did (True: we asked, so hide it).

    ``include_usage=False`` is overridden too: without the chunk the call could not be metered, and the
    chunk never reaches the caller."""
    if params.get("stream") is not True:
        return False
    options = params.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    params["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return True


ENDPOINTS = {
    e.path: e
    for e in (
        Endpoint("openai", "/chat/completions", _read_chat, _ChatReader, _include_usage),
        Endpoint("openai", "/completions", _read_chat, _ChatReader, _include_usage),
        Endpoint("openai", "/responses", _read_responses, lambda _hide: _ResponsesReader()),
    )
}
