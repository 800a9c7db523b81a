"""Race tests: many threads and processes reserve and commit against one limit.

The committed total never exceeds the limit, and every committed reservation is counted.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from pathlib import Path

from polar_metering import Metering, Plan, UsageLimitExceeded

LIMIT = 600
PLAN = Plan("race", credits={"ai_tokens": LIMIT, "api_requests": 150})


def _worker(url: str, seed: int, rounds: int) -> tuple[float, int]:
    """Reserve random amounts and commit part of each; return what was committed and refusals seen."""
    rng = random.Random(seed)
    client = Metering(url, plans=[PLAN])
    committed = 0.0
    refused = 0
    try:
        for _ in range(rounds):
            amount = rng.randint(1, 25)
            try:
                with client.reserve("racer", "ai_tokens", amount) as r:
                    actual = rng.randint(1, amount)
                    r.commit(actual)
                    committed += actual
            except UsageLimitExceeded:
                refused += 1
            try:
                with client.reserve("racer", "api_requests", 1) as r:
                    r.commit(1)
            except UsageLimitExceeded:
                pass
    finally:
        client.close()
    return committed, refused


def _process_main(url: str, seed: int, rounds: int, out: multiprocessing.Queue[tuple[float, int]]) -> None:
    out.put(_worker(url, seed, rounds))


def _setup(url: str) -> None:
    client = Metering(url, plans=[PLAN])
    client.subscribe("racer", "race")
    client.close()


def _check(url: str, committed: float) -> None:
    client = Metering(url, plans=[PLAN])
    tokens = client.check_limit("racer", "ai_tokens")
    requests = client.check_limit("racer", "api_requests")
    client.close()
    assert tokens.current == committed, "every committed reservation is counted, once"
    assert tokens.current <= LIMIT
    assert requests.current == 150, "count meter filled exactly to its limit"
    assert tokens.reserved == 0


def test_sixteen_threads_never_exceed_the_limit(tmp_path: Path) -> None:
    """16 threads in one process: committed tokens stay within the limit and all are counted."""
    url = f"sqlite:///{tmp_path / 'threads.db'}"
    _setup(url)
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def run(seed: int) -> None:
        result = _worker(url, seed, 30)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert len(results) == 16
    assert sum(r for _, r in results) > 0, "the limit was actually contended"
    _check(url, sum(c for c, _ in results))


def test_four_processes_never_exceed_the_limit(tmp_path: Path) -> None:
    """4 processes sharing one SQLite file: the same guarantee across processes."""
    url = f"sqlite:///{tmp_path / 'procs.db'}"
    _setup(url)
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[tuple[float, int]] = ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(url, 100 + i, 60, queue)) for i in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(r for _, r in results) > 0
    _check(url, sum(c for c, _ in results))
