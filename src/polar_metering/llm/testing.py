"""A fake LLM server on 127.0.0.1 for tests: the real ``openai`` / ``anthropic`` SDKs (and LiteLLM) talk
to it as they would to the vendors, JSON and SSE streams included, with the usage you choose.

::

    from openai import OpenAI
    from polar_metering.llm import metered
    from polar_metering.llm.testing import FakeLLMServer

    with FakeLLMServer(input_tokens=12, output_tokens=5) as fake:
        client = metered(OpenAI(base_url=fake.openai_url, api_key="test", max_retries=0), customer="u1")
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert fake.requests[-1].path == "/v1/chat/completions"

Routes: OpenAI ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses``; Anthropic
``POST /v1/messages``. A reply has ``min(output_tokens, max_tokens)`` words, one per stream chunk.
``fail(status)`` makes the next request(s) fail. Needs the ``emulator`` extra (starlette, uvicorn).
Like the vendors, an OpenAI chat/completions stream reports usage only with
``stream_options.include_usage``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from polar_metering._exceptions import BackendUnavailable

__all__ = ["FakeLLMServer", "FakeRequest"]


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request the fake received: its path and JSON body."""

    path: str
    body: dict[str, Any]


@dataclass
class FakeLLMServer:
    """Serves the fake vendors from a background thread while used as a context manager."""

    input_tokens: int = 12
    output_tokens: int = 5
    cached_tokens: int = 0
    model_suffix: str = "-2026-01-01"  # the vendors answer with a dated snapshot of the model asked for
    requests: list[FakeRequest] = field(default_factory=list, init=False)
    url: str = field(default="", init=False)
    _failures: list[int] = field(default_factory=list, init=False, repr=False)
    _server: Any = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _sock: socket.socket | None = field(default=None, init=False, repr=False)

    @property
    def openai_url(self) -> str:
        """``base_url`` for ``openai.OpenAI``."""
        return f"{self.url}/v1"

    @property
    def anthropic_url(self) -> str:
        """``base_url`` for ``anthropic.Anthropic``."""
        return self.url

    def fail(self, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``status`` and a vendor-shaped error body."""
        self._failures.extend([status] * times)

    def reported(self, max_tokens: int | None = None) -> tuple[int, int]:
        """``(input_tokens, output_tokens)`` the fake reports for a request with ``max_tokens``."""
        out = self.output_tokens if max_tokens is None else min(self.output_tokens, max_tokens)
        return self.input_tokens, out

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> FakeLLMServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this: a response's head and body leave at once instead of waiting
        # out the client's delayed ACK (~40 ms per request on loopback).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-llm", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise BackendUnavailable("fake LLM server: the server thread did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()

    # -- the app ------------------------------------------------------------------------------------
    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        def handler(kind: str) -> Any:
            async def endpoint(request: Request) -> Response:
                try:
                    body = await request.json()
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    return JSONResponse({"error": {"message": "body must be a JSON object"}}, 400)
                self.requests.append(FakeRequest(request.url.path, body))
                if self._failures:
                    status = self._failures.pop(0)
                    error = {"type": "api_error", "message": f"fake failure {status}"}
                    if kind == "messages":
                        return JSONResponse({"type": "error", "error": error}, status)
                    return JSONResponse({"error": error}, status)
                reply = _Reply(self, kind, body)
                if body.get("stream") is True:
                    return StreamingResponse(reply.sse(), media_type="text/event-stream")
                return JSONResponse(reply.body())

            return endpoint

        routes = [
            Route("/v1/chat/completions", handler("chat"), methods=["POST"]),
            Route("/v1/completions", handler("completions"), methods=["POST"]),
            Route("/v1/responses", handler("responses"), methods=["POST"]),
            Route("/v1/messages", handler("messages"), methods=["POST"]),
        ]
        return Starlette(routes=routes)


class _Reply:
    """The answer to one request, as a JSON body or as the SSE events of a stream."""

    def __init__(self, fake: FakeLLMServer, kind: str, body: dict[str, Any]) -> None:
        self.kind = kind
        model = body.get("model")
        self.model = f"{model}{fake.model_suffix}" if isinstance(model, str) else "unknown"
        limit = next(
            (body[k] for k in ("max_tokens", "max_completion_tokens", "max_output_tokens") if k in body),
            None,
        )
        self.input, self.output = fake.reported(limit if isinstance(limit, int) else None)
        self.cached = min(fake.cached_tokens, self.input)
        self.words = ["word"] * self.output
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True

    # -- usage shapes -------------------------------------------------------------------------------
    def chat_usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.input,
            "completion_tokens": self.output,
            "total_tokens": self.input + self.output,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        }

    def responses_usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input,
            "output_tokens": self.output,
            "total_tokens": self.input + self.output,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens_details": {"reasoning_tokens": 0},
        }

    def messages_usage(self, output: int) -> dict[str, Any]:
        # Anthropic counts cache reads beside input_tokens, not inside them.
        return {
            "input_tokens": self.input - self.cached,
            "output_tokens": output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cached,
        }

    # -- bodies -------------------------------------------------------------------------------------
    def text(self) -> str:
        return " ".join(self.words)

    def response_object(self, status: str, usage: bool) -> dict[str, Any]:
        item = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": self.text(), "annotations": []}],
        }
        return {
            "id": "resp_fake",
            "object": "response",
            "created_at": 1767225600,
            "status": status,
            "model": self.model,
            "output": [item] if status == "completed" else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": self.responses_usage() if usage else None,
        }

    def body(self) -> dict[str, Any]:
        if self.kind == "chat":
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1767225600,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.text()},
                        "finish_reason": "stop",
                    }
                ],
                "usage": self.chat_usage(),
            }
        if self.kind == "completions":
            return {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1767225600,
                "model": self.model,
                "choices": [{"index": 0, "text": self.text(), "finish_reason": "stop", "logprobs": None}],
                "usage": self.chat_usage(),
            }
        if self.kind == "responses":
            return self.response_object("completed", usage=True)
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.text()}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": self.messages_usage(self.output),
        }

    # -- streams ------------------------------------------------------------------------------------
    async def sse(self) -> AsyncIterator[bytes]:
        for event, data in self.events():
            head = f"event: {event}\n" if event else ""
            yield f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()

    def events(self) -> Iterator[tuple[str | None, Any]]:
        if self.kind in ("chat", "completions"):
            yield from ((None, chunk) for chunk in self.chat_chunks())
            yield None, "[DONE]"
        elif self.kind == "responses":
            yield from self.responses_events()
        else:
            yield from self.messages_events()

    def chat_chunks(self) -> Iterator[dict[str, Any]]:
        chat = self.kind == "chat"
        base = {
            "id": "chatcmpl-fake" if chat else "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1767225600,
            "model": self.model,
        }
        extra = {"usage": None} if self.include_usage else {}

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "finish_reason": finish}

        yield {**base, "choices": [choice("", None, first=True)], **extra}
        for i, word in enumerate(self.words):
            yield {**base, "choices": [choice(word if i == 0 else " " + word, None)], **extra}
        yield {**base, "choices": [choice(None, "stop")], **extra}
        if self.include_usage:
            yield {**base, "choices": [], "usage": self.chat_usage()}

    def responses_events(self) -> Iterator[tuple[str | None, Any]]:
        seq = iter(range(1, 1000))

        def event(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
            return kind, {"type": kind, "sequence_number": next(seq), **data}

        part = {"type": "output_text", "text": "", "annotations": []}
        item = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        yield event("response.created", response=self.response_object("in_progress", usage=False))
        yield event("response.in_progress", response=self.response_object("in_progress", usage=False))
        yield event("response.output_item.added", output_index=0, item=item)
        yield event(
            "response.content_part.added", item_id="msg_fake", output_index=0, content_index=0, part=part
        )
        for i, word in enumerate(self.words):
            yield event(
                "response.output_text.delta",
                item_id="msg_fake",
                output_index=0,
                content_index=0,
                delta=word if i == 0 else " " + word,
                logprobs=[],
            )
        text = self.text()
        yield event(
            "response.output_text.done",
            item_id="msg_fake",
            output_index=0,
            content_index=0,
            text=text,
            logprobs=[],
        )
        done_part = {**part, "text": text}
        yield event(
            "response.content_part.done", item_id="msg_fake", output_index=0, content_index=0, part=done_part
        )
        done_item = {**item, "status": "completed", "content": [done_part]}
        yield event("response.output_item.done", output_index=0, item=done_item)
        yield event("response.completed", response=self.response_object("completed", usage=True))

    def messages_events(self) -> Iterator[tuple[str | None, Any]]:
        start: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.messages_usage(1),
        }
        yield "message_start", {"type": "message_start", "message": start}
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        for i, word in enumerate(self.words):
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word if i == 0 else " " + word},
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": self.output},
            },
        )
        yield "message_stop", {"type": "message_stop"}
