"""Metering for the OpenAI and Anthropic SDKs, which share one generated client design: every API
method ends in ``client.request(cast_to, options, stream=..., stream_cls=...)``.

``wrap`` returns a copy of the user's client (same options, same connection pool) whose class is a
subclass of theirs, made once per client class, overriding ``request``. So the copy passes
``isinstance(x, openai.OpenAI)``, keeps every method, and meters every path that reaches ``request``:
``create``, ``parse``, the ``.stream()`` helpers, ``with_raw_response`` and ``with_streaming_response``.

``request`` is where the gate runs (before the SDK's retry loop, so a refused call sends nothing) and
where the result is tapped: a parsed body is read at once, a stream is read item by item as the caller
consumes it, and a raw response is read when it is parsed (see ``docs/llm.md`` for the exact rules).
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from polar_metering.llm import _record
from polar_metering.llm._common import Endpoint, Settings, StreamReader, Usage, logger

__all__ = ["Binding", "wrap"]

_ATTR = "_polar_metering"
_classes: dict[type, type] = {}
_lock = threading.Lock()


class Binding:
    """What a metered client meters: its settings and its vendor's endpoints by path."""

    __slots__ = ("endpoints", "settings")

    def __init__(self, settings: Settings, endpoints: Mapping[str, Endpoint]) -> None:
        self.settings, self.endpoints = settings, endpoints

    def route(self, options: Any) -> tuple[Endpoint, Any, dict[str, Any], bool] | None:
        """``(endpoint, options to send, request parameters, usage requested for the user)`` for a
        metered call, ``None`` for any other request."""
        url = getattr(options, "url", None)
        if getattr(options, "method", "").lower() != "post" or not isinstance(url, str):
            return None
        endpoint = self.endpoints.get(url.split("?", 1)[0])
        body = getattr(options, "json_data", None)
        if endpoint is None or not isinstance(body, Mapping):
            return None
        params = dict(body)
        injected = False
        if endpoint.prepare is not None and endpoint.prepare(params):
            injected = True
            options = options.model_copy()
            options.json_data = params
        return endpoint, options, params, injected


def wrap(client: Any, settings: Settings, endpoints: Mapping[str, Endpoint]) -> Any:
    """A metered copy of ``client`` (an ``openai.OpenAI``, ``anthropic.AsyncAnthropic``, ...)."""
    binding = Binding(settings, endpoints)
    existing = getattr(client, "__dict__", {}).get(_ATTR)
    metered = client.copy()  # same options and the same HTTP client (connection pool)
    metered.__class__ = _subclass(type(client) if existing is None else type(client).__mro__[1])
    metered.__dict__[_ATTR] = binding
    return metered


def _subclass(base: type) -> type:
    with _lock:
        cls = _classes.get(base)
        if cls is None:
            cls = (
                _make_async(base)
                if inspect.iscoroutinefunction(getattr(base, "request", None))
                else _make_sync(base)
            )
            cls.__name__ = cls.__qualname__ = f"Metered{base.__name__}"
            _classes[base] = cls
        return cls


def _copying(base: type) -> Any:
    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        new = base.copy(self, *args, **kwargs)  # type: ignore[attr-defined]
        new.__dict__[_ATTR] = self.__dict__.get(_ATTR)
        return new

    return copy


def _make_sync(base: type) -> type:
    class Metered(base):  # type: ignore[misc]
        copy = with_options = _copying(base)

        def request(self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None) -> Any:
            binding: Binding | None = self.__dict__.get(_ATTR)
            routed = binding.route(options) if binding is not None else None
            if routed is None:
                return super().request(cast_to, options, stream=stream, stream_cls=stream_cls)
            endpoint, options, params, injected = routed
            call = _record.begin(binding.settings, endpoint, params)  # type: ignore[union-attr]
            try:
                result = super().request(cast_to, options, stream=stream, stream_cls=stream_cls)
            except BaseException:
                _record.abort(call)
                raise
            return _attach(call, result, injected)

    return Metered


def _make_async(base: type) -> type:
    class Metered(base):  # type: ignore[misc]
        copy = with_options = _copying(base)

        async def request(
            self, cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
        ) -> Any:
            binding: Binding | None = self.__dict__.get(_ATTR)
            routed = binding.route(options) if binding is not None else None
            if routed is None:
                return await super().request(cast_to, options, stream=stream, stream_cls=stream_cls)
            endpoint, options, params, injected = routed
            call = await _record.begin_async(binding.settings, endpoint, params)  # type: ignore[union-attr]
            try:
                result = await super().request(cast_to, options, stream=stream, stream_cls=stream_cls)
            except BaseException:
                await _record.abort_async(call)
                raise
            return await _attach_async(call, result, injected)

    return Metered


# -- results ------------------------------------------------------------------------------------------
_kinds: dict[type, str] = {}


def _kind(result: Any) -> str:
    """``stream``, ``raw`` (an API response wrapper) or ``body``, decided once per result class."""
    cls = type(result)
    kind = _kinds.get(cls)
    if kind is None:
        if hasattr(result, "_iterator") and hasattr(result, "response") and hasattr(result, "close"):
            kind = "stream"
        elif hasattr(result, "http_response") and hasattr(result, "parse"):
            kind = "raw"
        else:
            kind = "body"
        _kinds[cls] = kind
    return kind


def _read_body(call: _record.Call, raw: Any) -> Usage | None:
    """Usage from a raw response whose body the SDK has already read (``with_raw_response``)."""
    import orjson

    try:
        return call.endpoint.read(orjson.loads(raw.http_response.content))
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None


def _body_read(raw: Any) -> bool:
    http = raw.http_response
    return bool(getattr(http, "is_stream_consumed", False)) and "event-stream" not in http.headers.get(
        "content-type", ""
    )


def _attach(call: _record.Call, result: Any, injected: bool) -> Any:
    kind = _kind(result)
    if kind == "stream":
        reader = call.endpoint.reader(injected)
        tap = _observe(result._iterator, call, reader)
        result._iterator = tap
        result.close = _Closer(result, tap)
    elif kind == "raw":
        if _body_read(result):
            _record.finish(call, _read_body(call, result))
        else:
            result.parse = _RawParse(result.parse, call, injected)
    else:
        _record.finish(call, _safe_read(call, result))
    return result


async def _attach_async(call: _record.Call, result: Any, injected: bool) -> Any:
    kind = _kind(result)
    if kind == "stream":
        reader = call.endpoint.reader(injected)
        tap = _observe_async(result._iterator, call, reader)
        result._iterator = tap
        result.close = _AsyncCloser(result, tap)
    elif kind == "raw":
        if _body_read(result):
            await _record.finish_async(call, _read_body(call, result))
        else:
            result.parse = _AsyncRawParse(result.parse, call, injected)
    else:
        await _record.finish_async(call, _safe_read(call, result))
    return result


def _safe_read(call: _record.Call, body: Any) -> Usage | None:
    try:
        return call.endpoint.read(body)
    except Exception as e:  # an unexpected body shape must never fail a call that succeeded
        logger.warning("polar_metering.llm: could not read usage from %s: %s", type(body).__name__, e)
        return None


def _observe(items: Iterator[Any], call: _record.Call, reader: StreamReader) -> Iterator[Any]:
    """Yield the stream's items (minus the usage chunk we asked for on the user's behalf); record once
    it ends: exhausted, or closed early with whatever usage the vendor had reported by then."""
    ended = False
    try:
        for item in items:
            if reader.item(item):
                yield item
        ended = True
    except GeneratorExit:
        ended = True
        raise
    except BaseException:
        _record.abort(call)
        raise
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
        if ended:
            _record.finish(call, reader.usage)


async def _observe_async(
    items: AsyncIterator[Any], call: _record.Call, reader: StreamReader
) -> AsyncIterator[Any]:
    ended = False
    try:
        async for item in items:
            if reader.item(item):
                yield item
        ended = True
    except GeneratorExit:
        ended = True
        raise
    except BaseException:
        await _record.abort_async(call)
        raise
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
        if ended:
            await _record.finish_async(call, reader.usage)


class _Closer:
    """``stream.close()`` that also ends our tap, so a stream closed early records at once. It holds
    the stream weakly: a stream must not keep itself alive through its own attribute."""

    __slots__ = ("_close", "_stream", "_tap")

    def __init__(self, stream: Any, tap: Iterator[Any]) -> None:
        self._stream, self._close, self._tap = weakref.ref(stream), type(stream).close, tap

    def __call__(self) -> None:
        stream = self._stream()
        try:
            if stream is not None:
                self._close(stream)
        finally:
            self._tap.close()  # type: ignore[attr-defined]


class _AsyncCloser:
    __slots__ = ("_close", "_stream", "_tap")

    def __init__(self, stream: Any, tap: AsyncIterator[Any]) -> None:
        self._stream, self._close, self._tap = weakref.ref(stream), type(stream).close, tap

    async def __call__(self) -> None:
        stream = self._stream()
        try:
            if stream is not None:
                await self._close(stream)
        finally:
            await self._tap.aclose()  # type: ignore[attr-defined]


class _RawParse:
    """``raw.parse()`` that meters what it returns: a body at once, a stream as it is consumed. The
    SDK caches what ``parse`` returns, so only the first result is tapped."""

    __slots__ = ("_call", "_injected", "_parse", "_tapped")

    def __init__(self, parse: Any, call: _record.Call, injected: bool) -> None:
        self._parse, self._call, self._injected, self._tapped = parse, call, injected, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            parsed = self._parse(*args, **kwargs)
        except BaseException:
            _record.abort(self._call)
            raise
        if self._tapped or self._call.done:
            return parsed
        self._tapped = True
        return _attach(self._call, parsed, self._injected)


class _AsyncRawParse(_RawParse):
    __slots__ = ()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            parsed = await self._parse(*args, **kwargs)
        except BaseException:
            await _record.abort_async(self._call)
            raise
        if self._tapped or self._call.done:
            return parsed
        self._tapped = True
        return await _attach_async(self._call, parsed, self._injected)
