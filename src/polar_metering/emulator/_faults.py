"""A fault-injecting HTTP proxy to put between a client and the emulator.

For a share of requests it answers 429 (with ``Retry-After``) or 500 without forwarding, stalls
before forwarding (so the client times out while the server may still process the request), or
forwards the request and then drops the connection without answering: the server stored the batch
but the client never hears, the case that only ``external_id`` dedup makes safe.

It can also play a slow server: every request on the fault path takes ``latency`` seconds plus
``latency_per_event`` per event in its body, and with ``workers`` set only that many are served at
once while the rest queue, as on a Polar server with that many API workers. A request whose client
gave up (closed the connection) before its answer was ready is counted as ``abandoned``: the server
did the work for nothing.

It speaks just enough HTTP/1.1 for JSON APIs (``Content-Length`` bodies, keep-alive) and binds
127.0.0.1. Decisions come from a seeded RNG so a run can be repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["FaultPlan", "FaultProxy", "running_fault_proxy"]


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """Shares of requests (0..1, summing to at most 1) that get each fault; the rest pass."""

    rate_limited: float = 0.0
    server_error: float = 0.0
    slow: float = 0.0
    dropped_after_forward: float = 0.0
    slow_seconds: float = 6.0
    retry_after: int = 1
    seed: int = 0
    #: the slow-server model (module docstring): seconds per request, per event, and concurrency
    latency: float = 0.0
    latency_per_event: float = 0.0
    workers: int | None = None
    #: only requests whose path starts with this prefix get faults (others pass untouched)
    path_prefix: str = "/v1/events/ingest"

    def __post_init__(self) -> None:
        shares = (self.rate_limited, self.server_error, self.slow, self.dropped_after_forward)
        if any(s < 0 for s in shares) or sum(shares) > 1:
            raise ValueError("FaultPlan: shares must be >= 0 and sum to at most 1")
        if self.latency < 0 or self.latency_per_event < 0 or (self.workers is not None and self.workers < 1):
            raise ValueError("FaultPlan: latencies must be >= 0 and workers >= 1")


@dataclass
class FaultCounts:
    passed: int = 0
    rate_limited: int = 0
    server_error: int = 0
    slow: int = 0
    dropped_after_forward: int = 0
    abandoned: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def faulted(self) -> int:
        return self.rate_limited + self.server_error + self.slow + self.dropped_after_forward


class FaultProxy:
    """Run with :func:`running_fault_proxy`; ``base_url`` is where clients should point."""

    def __init__(self, upstream: str, plan: FaultPlan) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError("upstream: must be http://host:port")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.plan = plan
        self.counts = FaultCounts()
        self._rng = random.Random(plan.seed)
        self._lock = threading.Lock()
        self._workers: asyncio.Semaphore | None = None  # made on the proxy's loop
        self.base_url = ""

    def _decide(self, path: str) -> str:
        if not path.startswith(self.plan.path_prefix):
            return "pass"
        with self._lock:
            r = self._rng.random()
        p = self.plan
        for kind, share in (
            ("rate_limited", p.rate_limited),
            ("server_error", p.server_error),
            ("slow", p.slow),
            ("dropped_after_forward", p.dropped_after_forward),
        ):
            if r < share:
                return kind
            r -= share
        return "pass"

    def _count(self, kind: str) -> None:
        with self._lock:
            setattr(self.counts, kind, getattr(self.counts, kind) + 1)

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, str, bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length else b""
        return head, path, body

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        """Send one request upstream and return the whole response (headers and body)."""
        reader, writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            writer.write(head + body)
            await writer.drain()
            response_head = await reader.readuntil(b"\r\n\r\n")
            length, chunked = None, False
            for line in response_head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if length is not None:
                return response_head + await reader.readexactly(length)
            if chunked:
                data = b""
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    data += size_line + chunk
                    if size == 0:
                        return response_head + data
            return response_head + await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_slowly(self, head: bytes, body: bytes) -> bytes:
        """Forward under the slow-server model: wait for a worker, take the request's time, answer."""
        plan = self.plan
        if not (plan.latency or plan.latency_per_event or plan.workers):
            return await self._forward(head, body)
        if plan.workers is not None and self._workers is None:
            self._workers = asyncio.Semaphore(plan.workers)
        events = body.count(b'"external_customer_id"') + body.count(b'"customer_id"')
        async with self._workers if self._workers is not None else contextlib.nullcontext():
            await asyncio.sleep(plan.latency + plan.latency_per_event * events)
            return await self._forward(head, body)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                head, path, body = request
                kind = self._decide(path)
                if kind != "pass":
                    self._count(kind)
                else:
                    self._count("passed")
                if kind == "rate_limited":
                    writer.write(
                        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: %d\r\nContent-Length: 0\r\n\r\n"
                        % self.plan.retry_after
                    )
                    await writer.drain()
                    continue
                if kind == "server_error":
                    msg = b'{"error":"InternalServerError","detail":"injected"}'
                    writer.write(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(msg), msg)
                    )
                    await writer.drain()
                    continue
                if kind == "slow":
                    await asyncio.sleep(self.plan.slow_seconds)
                if path.startswith(self.plan.path_prefix):
                    response = await self._serve_slowly(head, body)
                else:
                    response = await self._forward(head, body)
                if kind == "dropped_after_forward":
                    return  # the upstream stored it; the client gets a closed connection
                if reader.at_eof() or writer.is_closing():
                    self._count("abandoned")
                    return
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.contextmanager
def running_fault_proxy(upstream: str, plan: FaultPlan, *, host: str = "127.0.0.1") -> Iterator[FaultProxy]:
    """Serve a :class:`FaultProxy` in a background thread for the ``with`` block."""
    proxy = FaultProxy(upstream, plan)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def start() -> None:
        server = await asyncio.start_server(proxy._handle, host, 0)
        state["server"] = server
        port = server.sockets[0].getsockname()[1]
        proxy.base_url = f"http://{host}:{port}"
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("fault proxy did not start")
    try:
        yield proxy
    finally:

        async def stop() -> None:
            server = state["server"]
            assert isinstance(server, asyncio.base_events.Server)
            server.close()
            loop.set_exception_handler(lambda _loop, _context: None)  # connections torn down on purpose
            tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
