"""``DeliveryConfig``: every knob of the outbox and its sender, validated once, frozen afterwards."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from polar_metering._exceptions import ConfigurationError

__all__ = ["POLAR_RATE_LIMITS", "DeliveryConfig"]

MiB: Final = 1024 * 1024

#: Requests per minute Polar allows one organization token in the default rate-limit group
#: (server/polar/rate_limit.py).
POLAR_RATE_LIMITS: Final[dict[str, int]] = {"production": 500, "sandbox": 100}

# server/polar/middlewares.py: Polar refuses bodies over 10 MiB with 413. We count compact UTF-8 JSON; an SDK
# that re-encodes
# with ASCII escapes can turn one 4-byte character into a 12-byte surrogate pair, so a 3 MiB batch of
# ours stays under 10 MiB however the transport encodes it.
MAX_BATCH_BYTES: Final = 3 * MiB
# Polar's tests send up to 500 events per request (server/tests/event/test_service.py); we allow more but
# keep a sane ceiling.
MAX_BATCH_EVENTS: Final = 10_000


def _number(name: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name}: must be a finite number, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        hi = "" if high == math.inf else f" and <= {high:g}"
        raise ConfigurationError(f"{name}: must be {lo}{hi}, got {value!r}")
    return float(value)


def _integer(name: str, value: object, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name}: must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigurationError(f"{name}: must be from {low} to {high}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryConfig:
    """How events are stored locally and delivered to Polar. All fields are keyword-only.

    Storage:

    - ``path``: the outbox SQLite file (created with its folder). Processes that share a file share
      one queue; leases keep them from sending the same event at the same time.
    - ``durable``: when true (the default), ``enqueue`` returns only once its events are committed
      (callers tracking at the same moment share one commit). When false, events are committed by a
      writer thread within ``commit_interval`` seconds of ``enqueue`` returning, and a crash inside
      that window loses them (see ``docs/delivery.md`` for the measured window).
    - ``commit_interval``: with ``durable=False``, the writer's commit spacing in seconds (default 5 ms).
    - ``synchronous``: SQLite's ``synchronous`` pragma. ``"NORMAL"`` (default) survives a process
      crash; ``"FULL"`` also survives power loss, at ~5x the commit cost.
    - ``max_outbox_bytes``: disk budget of the outbox file; past it ``enqueue`` raises
      :class:`OutboxError`. A warning is logged once at ``warn_outbox_fraction`` of it.
    - ``max_buffer_events``: events held in memory waiting for the writer before ``enqueue`` refuses.
    - ``busy_timeout``: seconds a connection waits for another process's lock on the file.

    Sending:

    - ``batch_max_events`` / ``batch_max_bytes`` / ``batch_max_age``: a batch goes when it is full
      by count or by compact-JSON body size, or when its oldest event has waited ``batch_max_age``.
    - ``max_in_flight``: requests this process may have waiting for Polar at once (default 2), one
      sender thread each. While one waits for its answer the next batch is claimed and sent, so
      the time between requests stays off the critical path. ``1`` sends strictly one after another.
      The rate limit below binds them all together.
    - ``adaptive``: adapt requests in flight (up to ``max_in_flight``), events per request (up to
      ``batch_max_events``) and each request's timeout to the latency the server shows (default
      true; see ``polar_metering.delivery._pace``). ``False`` keeps all three fixed.
    - ``request_timeout``: seconds to wait for a request before giving up on it, while nothing is
      known of the server's latency; adaptive delivery waits longer for big batches on a slow
      server (up to 80% of ``lease_seconds``), never less. Default 5 s, polar-sdk's own (or half of
      ``lease_seconds`` when that is shorter); it must be shorter than ``lease_seconds``.
    - ``environment`` and ``rate_limit_per_minute`` / ``rate_limit_burst``: a token bucket shared
      by every process on the outbox file. The default rate is 80% of Polar's limit for the
      environment (server/polar/rate_limit.py); rate + burst may not exceed it. ``environment=None`` (the
      emulator, a
      test server) lifts the ceiling and then ``rate_limit_per_minute`` is required.
    - ``backoff_base`` / ``max_backoff``: exponential backoff with full jitter after a failure;
      ``max_retry_after`` caps how long a ``Retry-After`` header may pause delivery.
    - ``max_rejections``: how many times an event may be refused (clock skew, a non-retryable error)
      before it is dead-lettered. Network errors, 5xx and 429 never count: they retry forever.
    - ``lease_seconds``: how long a claimed batch is reserved for one sender. Must exceed the
      longest send (Polar SDK default timeout: 5 s, polar-sdk polar/base.py); after it a crashed sender's
      events are
      sent again by another, and Polar drops the repeat by ``external_id`` (server/polar/event/repository.py).
    - ``poll_interval``: how often an idle sender looks for events left by other processes.
    - ``exit_timeout``: total seconds the exit hook spends delivering before the process ends.
    """

    path: str | os.PathLike[str] = "polar-metering-outbox.db"
    durable: bool = True
    commit_interval: float = 0.005
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    max_outbox_bytes: int = 512 * MiB
    warn_outbox_fraction: float = 0.8
    max_buffer_events: int = 100_000
    busy_timeout: float = 5.0
    batch_max_events: int = 1000
    batch_max_bytes: int = 1 * MiB
    batch_max_age: float = 1.0
    max_in_flight: int = 2
    adaptive: bool = True
    request_timeout: float | None = None
    environment: Literal["production", "sandbox"] | None = "production"
    rate_limit_per_minute: float | None = None
    rate_limit_burst: int = 10
    backoff_base: float = 0.5
    max_backoff: float = 60.0
    max_retry_after: float = 900.0
    max_rejections: int = 8
    lease_seconds: float = 60.0
    poll_interval: float = 2.0
    exit_timeout: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str | os.PathLike):
            raise ConfigurationError(f"path: must be a file path, got {self.path!r}")
        text = os.fspath(self.path)
        if not text or text == ":memory:" or text.startswith("file::memory:"):
            raise ConfigurationError("path: must name a file; an in-memory outbox would not be durable")
        if not isinstance(self.durable, bool):
            raise ConfigurationError(f"durable: must be True or False, got {self.durable!r}")
        _number("commit_interval", self.commit_interval, low=0.0, high=1.0)
        if self.synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous: must be 'NORMAL' or 'FULL', got {self.synchronous!r}")
        _integer("max_outbox_bytes", self.max_outbox_bytes, low=64 * 1024, high=2**50)
        _number("warn_outbox_fraction", self.warn_outbox_fraction, low=0.0, high=1.0, low_open=True)
        _integer("max_buffer_events", self.max_buffer_events, low=1, high=10_000_000)
        _number("busy_timeout", self.busy_timeout, low=0.0, high=600.0)
        _integer("batch_max_events", self.batch_max_events, low=1, high=MAX_BATCH_EVENTS)
        _integer("batch_max_bytes", self.batch_max_bytes, low=1024, high=MAX_BATCH_BYTES)
        _number("batch_max_age", self.batch_max_age, low=0.0, high=3600.0)
        _integer("max_in_flight", self.max_in_flight, low=1, high=16)
        if not isinstance(self.adaptive, bool):
            raise ConfigurationError(f"adaptive: must be True or False, got {self.adaptive!r}")

        _integer("rate_limit_burst", self.rate_limit_burst, low=1, high=1000)
        if self.environment is None:
            if self.rate_limit_per_minute is None:
                raise ConfigurationError(
                    "rate_limit_per_minute: is required when environment is None "
                    "(there is no Polar limit to derive it from)"
                )
            _number("rate_limit_per_minute", self.rate_limit_per_minute, low=0.0, low_open=True)
        elif self.environment in POLAR_RATE_LIMITS:
            ceiling = POLAR_RATE_LIMITS[self.environment]
            if self.rate_limit_per_minute is None:
                # 80% leaves room for the limit checks that share the same token's budget
                # (server/polar/rate_limit.py).
                object.__setattr__(self, "rate_limit_per_minute", 0.8 * ceiling)
            rate = _number("rate_limit_per_minute", self.rate_limit_per_minute, low=0.0, low_open=True)
            if rate + self.rate_limit_burst > ceiling:
                raise ConfigurationError(
                    f"rate_limit_per_minute: with rate_limit_burst={self.rate_limit_burst} it must leave any "
                    f"60 s window under Polar's {self.environment} limit of {ceiling} requests/min; "
                    f"got {rate:g}"
                )
        else:
            raise ConfigurationError(
                f"environment: must be 'production', 'sandbox' or None, got {self.environment!r}"
            )
        _number("backoff_base", self.backoff_base, low=0.0, high=60.0, low_open=True)
        _number("max_backoff", self.max_backoff, low=self.backoff_base, high=3600.0)
        _number("max_retry_after", self.max_retry_after, low=0.0, high=86_400.0)
        _integer("max_rejections", self.max_rejections, low=1, high=1000)
        _number("lease_seconds", self.lease_seconds, low=0.1, high=86_400.0)
        if self.request_timeout is None:
            # polar-sdk's own 5 s, but always well inside the lease.
            object.__setattr__(self, "request_timeout", min(5.0, 0.5 * self.lease_seconds))
        timeout = _number("request_timeout", self.request_timeout, low=0.0, high=300.0, low_open=True)
        if timeout >= self.lease_seconds:
            raise ConfigurationError(
                f"request_timeout: must be shorter than lease_seconds ({self.lease_seconds:g} s), or another "
                f"sender could take a batch over while it is still being sent; got {self.request_timeout:g}"
            )
        _number("poll_interval", self.poll_interval, low=0.01, high=3600.0)
        _number("exit_timeout", self.exit_timeout, low=0.0, high=3600.0)

    @property
    def file(self) -> Path:
        """The outbox path as an absolute :class:`~pathlib.Path`."""
        return Path(self.path).expanduser().absolute()

    @property
    def timeout_seconds(self) -> float:
        """``request_timeout`` as set, or as derived in ``__post_init__``."""
        assert self.request_timeout is not None  # set in __post_init__
        return self.request_timeout

    @property
    def requests_per_second(self) -> float:
        """The sender's sustained request rate."""
        assert self.rate_limit_per_minute is not None  # set in __post_init__
        return self.rate_limit_per_minute / 60.0
