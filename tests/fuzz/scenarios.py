"""Fuzz scenarios over the client API, shared by the SQLite and PostgreSQL runs.

Each takes a real client and hypothesis' ``data`` and asserts two things: nothing but the library's
own exceptions ever escapes, and in a batch of good and bad items every good one is stored exactly
once (read back with ``check_limit``) while every bad one is listed with its ``events[i].field``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from tests.fuzz import strategies as s
from tests.fuzz.helpers import check_error, check_tracking, only_ours, only_ours_async

from polar_metering import (
    AsyncMetering,
    AsyncReservation,
    BatchValidationError,
    Metering,
    MeteringError,
    Reservation,
    ReservationError,
    SafeResult,
    TrackingResult,
    UsageStatus,
    ValidationError,
    current_customer,
    reset_current_customer,
    set_current_customer,
)

METERS = ["api_requests", "ai_tokens", "storage_gb", "team_seats", "llm_cost", "latency", "llm_tokens"]


def arg(valid: Any, bad: st.SearchStrategy[Any] = s.anything) -> st.SearchStrategy[Any]:
    """Mostly the valid value, often an adversarial one."""
    return (
        st.one_of(st.just(valid), bad) if not isinstance(valid, st.SearchStrategy) else st.one_of(valid, bad)
    )


def batch_keeps_good_and_names_bad(client: Metering, strict: Metering, data: st.DataObject) -> None:
    customer = s.fresh()
    items = data.draw(s.mixed_batches(customer))
    batch = [item.value for item in items]
    bad = {i: item.field for i, item in enumerate(items) if item.field is not None}
    good_tokens = sum(item.tokens for item in items if item.field is None)

    result = check_tracking(client.track_usage_batch(batch))
    assert [i for i, _ in result.rejected] == sorted(bad), result.rejected
    for i, message in result.rejected:
        assert message.startswith(f"events[{i}].{bad[i]}: "), (message, bad[i])
    assert result.success is (not bad)
    assert (result.inserted, result.duplicates) == (len(items) - len(bad), 0)
    assert client.check_limit(customer, "ai_tokens").current == good_tokens

    # Sent again (the good items carry external ids): all duplicates, nothing counted twice.
    again = check_tracking(client.track_usage_batch(batch))
    assert (again.inserted, again.duplicates) == (0, len(items) - len(bad))
    assert client.check_limit(customer, "ai_tokens").current == good_tokens

    # strict: the same verdicts, raised as one BatchValidationError before anything is stored.
    outcome = only_ours(strict.track_usage_batch, batch)
    if bad:
        assert isinstance(outcome, BatchValidationError), outcome
        assert [i for i, _ in outcome.errors] == sorted(bad)
    else:
        assert isinstance(outcome, TrackingResult) and outcome.duplicates == len(items)


def _tracker_calls(customer: str) -> st.SearchStrategy[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    cust = arg(customer, st.one_of(s.bad_text, s.anything))
    metadata = st.one_of(
        st.none(),
        st.dictionaries(st.one_of(s.valid_text, s.any_text, st.integers()), s.scalars, max_size=3),
        s.anything,
    )
    return st.one_of(
        st.tuples(
            st.just("track_usage"),
            st.tuples(cust, arg("api.request", s.any_text), metadata),
            st.fixed_dictionaries(
                {},
                optional={
                    "timestamp": st.one_of(s.any_datetime, s.anything),
                    "external_id": st.one_of(s.any_text, s.anything),
                },
            ),
        ),
        st.tuples(
            st.just("track_api_request"),
            st.tuples(cust, arg("/api/x", s.any_text)),
            st.fixed_dictionaries(
                {},
                optional={
                    "method": arg("POST", s.any_text),
                    "status_code": st.one_of(
                        st.integers(min_value=100, max_value=599), s.any_int, s.anything
                    ),
                    "duration_ms": st.one_of(s.amounts, s.anything),
                },
            ),
        ),
        st.tuples(
            st.just("track_storage_update"),
            st.tuples(cust, s.amounts),
            st.fixed_dictionaries({}, optional={"operation": st.one_of(s.any_text, s.anything)}),
        ),
        st.tuples(
            st.just("track_ai_tokens"),
            st.tuples(cust, s.amounts),
            st.fixed_dictionaries(
                {},
                optional={
                    "model": st.one_of(s.any_text, s.anything),
                    "type": st.one_of(st.sampled_from(["input", "output", "total"]), s.anything),
                },
            ),
        ),
        st.tuples(
            st.just("track_seat_activity"),
            st.tuples(cust, arg("user_1", s.any_text)),
            st.fixed_dictionaries({}, optional={"action": st.one_of(s.any_text, s.anything)}),
        ),
    )


def trackers_never_raise(client: Metering, strict: Metering, data: st.DataObject) -> None:
    customer = s.fresh()
    name, args, kwargs = data.draw(_tracker_calls(customer))
    result = check_tracking(getattr(client, name)(*args, **kwargs))
    if result.success:
        assert result.inserted + result.duplicates == 1
    else:
        assert result.inserted == 0
    outcome = only_ours(getattr(strict, name), *args, **kwargs)
    if result.success and isinstance(outcome, ValidationError):
        # strict=True also refuses an event that counts for nothing (_uncounted.py); the same event
        # tracked without strict moved no meter of this fresh customer.
        assert "no meter's filter matches it" in outcome.rule or "takes it but needs" in outcome.rule, outcome
        assert all(status.current == 0 for status in client.get_all_usage(customer).values())
    elif result.success:
        assert isinstance(outcome, TrackingResult) and outcome.success
    else:
        assert isinstance(outcome, ValidationError), outcome
        assert result.error == str(outcome)


def _limit_call(client: Metering, data: st.DataObject) -> Any:
    customer = s.fresh()
    meter = data.draw(arg(st.sampled_from(METERS), s.any_text), label="meter")
    op = data.draw(
        st.sampled_from(
            [
                "check_limit",
                "check_current_limit",
                "get_all_usage",
                "usage_history",
                "reserve",
                "with_usage_limit",
                "with_usage_limit_safe",
                "subscribe",
                "flush",
                "set_current_customer",
            ]
        ),
        label="op",
    )
    cust = data.draw(arg(customer, s.any_text), label="customer")
    if op == "check_limit":
        return client.check_limit(
            cust,
            meter,
            amount=data.draw(st.one_of(st.none(), s.amounts)),
            value=data.draw(st.one_of(st.none(), s.anything)),
        )
    if op == "check_current_limit":
        with current_customer(cust):
            return client.check_current_limit(meter, amount=data.draw(st.one_of(st.none(), s.amounts)))
    if op == "get_all_usage":
        return client.get_all_usage(cust)
    if op == "usage_history":
        start = data.draw(
            st.one_of(st.just(datetime.now(UTC) - timedelta(days=2)), s.any_datetime, s.anything)
        )
        end = data.draw(st.one_of(st.none(), s.any_datetime, s.anything))
        interval = data.draw(st.one_of(st.sampled_from(["hour", "day", "week", "month", "year"]), s.anything))
        return client.usage_history(cust, meter, start=start, end=end, interval=interval)
    if op == "reserve":
        amount = data.draw(s.amounts, label="amount")
        ttl = data.draw(st.one_of(st.none(), st.floats(min_value=0.5, max_value=60), s.amounts), label="ttl")
        reservation = client.reserve(cust, meter, amount, ttl=ttl)
        assert isinstance(reservation, Reservation)
        _finish(reservation, data)
        return reservation
    if op in ("with_usage_limit", "with_usage_limit_safe"):
        action = data.draw(st.one_of(st.just(lambda: "ran"), s.anything), label="action")
        amount = data.draw(st.one_of(st.none(), s.amounts), label="amount")
        out = getattr(client, op)(meter, action, customer_id=cust, amount=amount)
        if op == "with_usage_limit_safe":
            assert isinstance(out, SafeResult)
            if out.error is not None:
                out.error.encode("utf-8")
        return out
    if op == "subscribe":
        plan = data.draw(st.one_of(st.sampled_from(["free", "pro", "nope"]), s.anything), label="plan")
        started = data.draw(
            st.one_of(st.none(), st.just(datetime.now(UTC) - timedelta(days=40)), s.any_datetime, s.anything),
            label="started_at",
        )
        return client.subscribe(cust, plan, started_at=started)
    if op == "flush":
        return client.flush(data.draw(s.timeouts, label="timeout"))
    token = set_current_customer(cust)
    reset_current_customer(token)
    return token


def _finish(reservation: Reservation, data: st.DataObject) -> None:
    how = data.draw(st.sampled_from(["commit", "release", "with"]), label="finish")
    if how == "release":
        reservation.release()
    elif how == "with":
        with reservation:
            pass
    else:
        actual = data.draw(st.one_of(st.none(), s.amounts), label="actual")
        value = data.draw(st.one_of(st.none(), st.text(min_size=1, max_size=5), s.anything), label="value")
        metadata = data.draw(st.one_of(st.none(), st.just({"note": "x"}), s.anything), label="metadata")
        outcome = only_ours(reservation.commit, actual, value=value, metadata=metadata)
        if isinstance(outcome, MeteringError):
            assert isinstance(outcome, ValidationError), outcome
            reservation.release()  # a refused commit leaves the hold open: it can still end
        else:
            assert isinstance(outcome, TrackingResult)
    again = only_ours(reservation.release)
    assert isinstance(again, ReservationError)


def limit_calls_raise_only_ours(client: Metering, data: st.DataObject) -> None:
    out = only_ours(_limit_call, client, data)
    if isinstance(out, UsageStatus):
        assert math.isfinite(out.current) or out.current == math.inf


async def _async_call(client: AsyncMetering, data: st.DataObject) -> Any:
    import polar_metering.aio as aio

    customer = s.fresh()
    cust = data.draw(arg(customer, s.any_text), label="customer")
    meter = data.draw(arg(st.sampled_from(METERS), s.any_text), label="meter")
    target: Any = data.draw(st.sampled_from([client, aio]), label="target")
    op = data.draw(
        st.sampled_from(
            [
                "track_usage",
                "track_usage_batch",
                "track_ai_tokens",
                "track_api_request",
                "track_storage_update",
                "track_seat_activity",
                "check_limit",
                "get_all_usage",
                "reserve",
                "with_usage_limit",
                "with_usage_limit_safe",
                "subscribe",
                "flush",
                "usage_history",
            ]
        ),
        label="op",
    )
    if op == "usage_history":
        target = client  # the module API has no usage_history
    if op == "track_usage":
        return check_tracking(
            await target.track_usage(cust, data.draw(arg("api.request", s.any_text)), data.draw(s.anything))
        )
    if op == "track_usage_batch":
        items = data.draw(s.mixed_batches(customer, max_size=5))
        result = check_tracking(await target.track_usage_batch([i.value for i in items]))
        assert [i for i, _ in result.rejected] == [i for i, item in enumerate(items) if item.field]
        return result
    if op == "track_ai_tokens":
        return check_tracking(
            await target.track_ai_tokens(cust, data.draw(s.amounts), model=data.draw(s.anything))
        )
    if op == "track_api_request":
        return check_tracking(
            await target.track_api_request(
                cust, data.draw(arg("/x", s.any_text)), duration_ms=data.draw(s.amounts)
            )
        )
    if op == "track_storage_update":
        return check_tracking(await target.track_storage_update(cust, data.draw(s.amounts)))
    if op == "track_seat_activity":
        return check_tracking(await target.track_seat_activity(cust, data.draw(arg("u1", s.any_text))))
    if op == "check_limit":
        return await target.check_limit(
            cust,
            meter,
            amount=data.draw(st.one_of(st.none(), s.amounts)),
            value=data.draw(st.one_of(st.none(), s.anything)),
        )
    if op == "get_all_usage":
        return await target.get_all_usage(cust)
    if op == "reserve":
        r = await target.reserve(
            cust, meter, data.draw(s.amounts), ttl=data.draw(st.one_of(st.none(), s.amounts))
        )
        assert isinstance(r, AsyncReservation)
        outcome = await only_ours_async(
            r.commit,
            data.draw(st.one_of(st.none(), s.amounts)),
            metadata=data.draw(st.one_of(st.none(), s.anything)),
        )
        if isinstance(outcome, MeteringError):
            assert isinstance(outcome, ValidationError), outcome
            await r.release()
        assert isinstance(await only_ours_async(r.release), ReservationError)
        return r
    if op in ("with_usage_limit", "with_usage_limit_safe"):

        async def action() -> str:
            return "ran"

        chosen = data.draw(st.one_of(st.just(action), st.just(lambda: "sync"), s.anything))
        return await getattr(target, op)(
            meter, chosen, customer_id=cust, amount=data.draw(st.one_of(st.none(), s.amounts))
        )
    if op == "subscribe":
        plan = data.draw(st.one_of(st.sampled_from(["free", "nope"]), s.anything))
        return await target.subscribe(cust, plan, started_at=data.draw(st.one_of(st.none(), s.any_datetime)))
    if op == "flush":
        return await target.flush(data.draw(s.timeouts))
    return await client.usage_history(
        cust,
        meter,
        start=data.draw(st.one_of(s.any_datetime, s.anything)),
        end=data.draw(st.one_of(st.none(), s.any_datetime)),
        interval=data.draw(st.one_of(st.sampled_from(["hour", "day", "month"]), s.anything)),
    )


def async_calls_raise_only_ours(client: AsyncMetering, data: st.DataObject) -> None:
    from tests.fuzz.helpers import run

    outcome = run(only_ours_async(_async_call, client, data))
    if isinstance(outcome, MeteringError):
        check_error(outcome)
