"""What metering adds to an OpenAI call: p50 of a metered ``chat.completions.create`` against the bare
SDK call with the same settings, to the same fake LLM server.

The fake LLM server runs in a child process on 127.0.0.1 (so its event loop does not share our GIL).
Subjects alternate call by call, so all see the same machine noise:

- ``bare``: the plain ``openai.OpenAI`` call (the floor);
- ``metered``: ``metered(client, customer=...)``, which records one ``ai.tokens`` event per call;
- ``bare + track_ai_tokens``: the plain call plus the hand-written tracking it replaces.

The default backend is ``polar://`` against the emulator (a child process): tracking is a hand-off to
the durable outbox, as in production. ``--backend sqlite`` uses the embedded engine on an SQLite file,
where every track is a synchronous write that costs more than the wrapper itself (see BENCHMARKS.md).

    python bench/llm_overhead.py [--calls 2000] [--runs 3] [--backend polar|sqlite] [--stream]

``--stream`` measures ``stream=True`` consumed to the end.

Target: p50(metered) / p50(bare) <= 1.05.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai
from _common import percentile

from polar_metering import Metering
from polar_metering.llm import metered

_SERVER = """
import sys
from polar_metering.llm.testing import FakeLLMServer
with FakeLLMServer() as fake:
    print(fake.url, flush=True)
    sys.stdin.read()
"""
MESSAGES = [{"role": "user", "content": "hello"}]


@contextlib.contextmanager
def fake_server() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip() + "/v1"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


@contextlib.contextmanager
def metering_client(backend: str, tmp: str) -> Iterator[Metering]:
    if backend == "sqlite":
        client = Metering(f"sqlite:///{tmp}/bench.db")
        try:
            yield client
        finally:
            client.close()
        return
    from polar_metering.delivery import DeliveryConfig
    from polar_metering.emulator import running_emulator

    with running_emulator() as emu:
        delivery = DeliveryConfig(path=f"{tmp}/outbox.db", environment=None, rate_limit_per_minute=6000)
        client = Metering(
            f"polar://?base_url={emu.base_url}",
            access_token=emu.token,
            backend_options={"delivery": delivery},
        )
        try:
            yield client
        finally:
            client.close(timeout=30)


def one_run(subjects: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    names = list(subjects)
    for _ in range(50):  # warm the connection pools and every code path
        for name in names:
            subjects[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(calls):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            start = time.perf_counter()
            subjects[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: percentile(values, 50) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=["polar", "sqlite"], default="polar")
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    with fake_server() as base, tempfile.TemporaryDirectory() as tmp, metering_client(args.backend, tmp) as m:
        bare = openai.OpenAI(base_url=base, api_key="sk-bench", max_retries=0)
        wrapped = metered(
            openai.OpenAI(base_url=base, api_key="sk-bench", max_retries=0), customer="u1", metering=m
        )

        def call(client: openai.OpenAI) -> int:
            if args.stream:
                chunks = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    max_tokens=16,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                return sum(c.usage.total_tokens for c in chunks if c.usage is not None)
            result = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=16)
            return result.usage.total_tokens if result.usage else 0

        def by_hand() -> None:
            m.track_ai_tokens("u2", call(bare), model="gpt-4o-mini", type="total")

        subjects = {
            "bare": lambda: call(bare),
            "metered": lambda: call(wrapped),
            "bare + track_ai_tokens": by_hand,
        }
        ratios, manual = [], []
        for run in range(args.runs):
            p50 = one_run(subjects, args.calls)
            b, w, h = p50["bare"], p50["metered"], p50["bare + track_ai_tokens"]
            ratios.append(w / b)
            manual.append(h / b)
            print(
                f"run {run + 1}: p50 bare {b * 1e6:.1f} us, metered {w * 1e6:.1f} us, "
                f"bare + track_ai_tokens {h * 1e6:.1f} us; ratio {w / b:.3f}"
            )
        m.flush(timeout=60)
        used = m.check_limit("u1", "ai_tokens").current
    calls = (50 + args.calls) * args.runs
    mode = "stream" if args.stream else "create"
    print(f"{mode}, backend {args.backend}, {args.calls} calls x {args.runs} runs")
    print(f"metered / bare p50 ratio: median {statistics.median(ratios):.3f} (target <= 1.05)")
    print(f"(bare + track_ai_tokens) / bare: median {statistics.median(manual):.3f}")
    print(f"u1 recorded {used:.0f} tokens over {calls} metered calls ({calls * 17} expected)")


if __name__ == "__main__":
    main()
