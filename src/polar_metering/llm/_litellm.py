"""LiteLLM: ``metered(litellm, ...)`` gives ``completion`` and ``acompletion`` that meter each call.

LiteLLM answers in OpenAI's shape whatever the provider, so usage is read as for OpenAI Chat
Completions. For a stream, ``stream_options={"include_usage": True}`` is set for the user and the
usage chunk hidden from them, as for OpenAI; the returned stream is LiteLLM's own
``CustomStreamWrapper`` (a subclass of it), so it behaves as usual. ``_llm.vendor`` is the provider
LiteLLM routed to (``openai``, ``anthropic``, ...).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from polar_metering.llm import _record
from polar_metering.llm._common import Endpoint, Settings, Usage, logger
from polar_metering.llm._openai import ENDPOINTS as _OPENAI

__all__ = ["MeteredLiteLLM"]

_CHAT = _OPENAI["/chat/completions"]
_classes: dict[type, type] = {}
_lock = threading.Lock()


def _endpoint(module: Any, kwargs: Mapping[str, Any]) -> Endpoint:
    """The chat endpoint, named after the provider LiteLLM will route ``model`` to."""
    provider = kwargs.get("custom_llm_provider")
    model = kwargs.get("model")
    if not (isinstance(provider, str) and provider) and isinstance(model, str):
        prefix = model.split("/", 1)[0] if "/" in model else None
        if prefix is not None and prefix in getattr(module, "provider_list", ()):
            provider = prefix
        else:
            try:
                provider = module.get_llm_provider(model=model, api_base=kwargs.get("api_base"))[1]
            except Exception:  # an unknown model: LiteLLM itself raises when it is called
                provider = None
    vendor = provider if isinstance(provider, str) and provider else "litellm"
    return Endpoint(vendor, "completion", _CHAT.read, _CHAT.reader, _CHAT.prepare)


class MeteredLiteLLM:
    """``completion`` / ``acompletion`` of the ``litellm`` module, metered. Other attributes are the
    module's own."""

    def __init__(self, module: Any, settings: Settings) -> None:
        self.litellm, self._settings = module, settings

    def __getattr__(self, name: str) -> Any:
        return getattr(self.litellm, name)

    def __repr__(self) -> str:
        return f"MeteredLiteLLM(customer={self._settings.customer!r}, limit={self._settings.limit!r})"

    def completion(self, *args: Any, **kwargs: Any) -> Any:
        """``litellm.completion(...)``, recording the call's usage (streams: once consumed)."""
        kwargs = _keywords(args, kwargs)
        endpoint = _endpoint(self.litellm, kwargs)
        injected = bool(endpoint.prepare and endpoint.prepare(kwargs))
        call = _record.begin(self._settings, endpoint, kwargs)
        try:
            result = self.litellm.completion(**kwargs)
        except BaseException:
            _record.abort(call)
            raise
        if kwargs.get("stream") is True:
            return _tap_stream(result, call, endpoint, injected)
        _record.finish(call, _read(endpoint, result))
        return result

    async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
        """``await litellm.acompletion(...)``, recording the call's usage (streams: once consumed)."""
        kwargs = _keywords(args, kwargs)
        endpoint = _endpoint(self.litellm, kwargs)
        injected = bool(endpoint.prepare and endpoint.prepare(kwargs))
        call = await _record.begin_async(self._settings, endpoint, kwargs)
        try:
            result = await self.litellm.acompletion(**kwargs)
        except BaseException:
            await _record.abort_async(call)
            raise
        if kwargs.get("stream") is True:
            return _tap_stream(result, call, endpoint, injected)
        await _record.finish_async(call, _read(endpoint, result))
        return result


def _keywords(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    # litellm.completion(model, messages, ...) is positional-friendly; meter by name.
    names = ("model", "messages")
    out = dict(zip(names, args, strict=False))
    if len(args) > len(names):
        from polar_metering._exceptions import ValidationError

        raise ValidationError("args", "pass at most model and messages by position, the rest by name", args)
    out.update(kwargs)
    return out


def _read(endpoint: Endpoint, response: Any) -> Usage | None:
    try:
        return endpoint.read(response)
    except Exception as e:  # an unexpected shape must never fail a call that succeeded
        logger.warning("polar_metering.llm: could not read LiteLLM usage: %s", e)
        return None


def _tap_stream(stream: Any, call: _record.Call, endpoint: Endpoint, injected: bool) -> Any:
    """Turn LiteLLM's stream into a metered subclass of its own class, in place."""
    base = type(stream)
    with _lock:
        cls = _classes.get(base)
        if cls is None:
            cls = _classes[base] = _stream_class(base)
    stream._polar_call = call
    stream._polar_reader = endpoint.reader(injected)
    stream.__class__ = cls
    return stream


def _stream_class(base: type) -> type:
    class MeteredStream(base):  # type: ignore[misc]
        def __next__(self) -> Any:
            call, reader = self._polar_call, self._polar_reader
            while True:
                try:
                    chunk = super().__next__()
                except StopIteration:
                    _record.finish(call, reader.usage)
                    raise
                except BaseException:
                    _record.abort(call)
                    raise
                if reader.item(chunk):
                    return chunk

        async def __anext__(self) -> Any:
            call, reader = self._polar_call, self._polar_reader
            while True:
                try:
                    chunk = await super().__anext__()
                except StopAsyncIteration:
                    await _record.finish_async(call, reader.usage)
                    raise
                except BaseException:
                    await _record.abort_async(call)
                    raise
                if reader.item(chunk):
                    return chunk

    MeteredStream.__name__ = MeteredStream.__qualname__ = f"Metered{base.__name__}"
    return MeteredStream
