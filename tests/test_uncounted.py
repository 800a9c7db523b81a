"""Events that count for nothing are visible: the first of each (name, property) logs one warning
naming the nearest meter and its filter; ``strict=True`` makes each such event an error."""

from __future__ import annotations

import logging

import pytest

from polar_metering import (
    Aggregation,
    BatchValidationError,
    Filter,
    Meter,
    Metering,
    ValidationError,
)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "counts for nothing" in r.getMessage()]


def test_a_misspelt_name_warns_once_with_the_nearest_meter(caplog: pytest.LogCaptureFixture) -> None:
    with Metering("sqlite:///:memory:") as c, caplog.at_level(logging.WARNING, logger="polar_metering"):
        for _ in range(3):
            assert c.track_usage("u", "api.requst", {"endpoint": "/x"}).success  # still stored
        assert _warnings(caplog) == [
            "polar_metering: event 'api.requst' counts for nothing: no meter's filter matches it; the "
            "nearest meter, 'api_requests', counts events with the filter "
            '{"conjunction":"and","clauses":[{"property":"name","operator":"eq","value":"api.request"}]}'
        ]
        assert c.check_limit("u", "api_requests").current == 0


def test_a_missing_property_warns_once_per_name_and_property(caplog: pytest.LogCaptureFixture) -> None:
    with Metering("sqlite:///:memory:") as c, caplog.at_level(logging.WARNING, logger="polar_metering"):
        c.track_usage("u", "ai.tokens", {"token": 5})
        c.track_usage("u", "ai.tokens", {"tokens": "5"})
        c.track_usage("u", "seat.active", {})
        c.track_usage("u", "seat.active", {"user_id": "a"})
        found = _warnings(caplog)
        assert len(found) == 2
        assert "meter 'ai_tokens' takes it but needs a number in metadata 'tokens', which it sums" in found[0]
        assert "meter 'team_seats' takes it but needs a value in metadata 'user_id'" in found[1]


def test_events_that_count_are_quiet_and_checked_once(caplog: pytest.LogCaptureFixture) -> None:
    """A name that counts is evaluated once, then found with one set lookup."""
    with Metering("sqlite:///:memory:") as c, caplog.at_level(logging.WARNING, logger="polar_metering"):
        c.track_api_request("u", "/x")
        c.track_ai_tokens("u", 10)
        c.track_storage_update("u", 1.5)
        c.track_seat_activity("u", "alice")
        c.track_usage_batch([{"customer_id": "u", "event_name": "api.request"}])
        assert _warnings(caplog) == []
        assert c._core._counted == {"api.request", "ai.tokens", "storage.update", "seat.active"}


def test_a_filter_on_metadata_and_an_or_filter() -> None:
    premium = Meter("premium", "Premium", Filter.event("api.request", tier="premium"), Aggregation.count())
    either = Meter(
        "jobs",
        "Jobs",
        Filter("or", (Filter.event("job.start"), Filter.event("job.retry"))),
        Aggregation.sum("minutes"),
    )
    with Metering("sqlite:///:memory:", meters=[premium, either], strict=True) as c:
        with pytest.raises(ValidationError) as exc:
            c.track_usage("u", "api.request", {"tier": "basic"})
        assert exc.value.field == "name"
        assert "nearest meter, 'premium'" in exc.value.rule
        assert c.track_usage("u", "api.request", {"tier": "premium"}).success
        assert c.track_usage("u", "job.retry", {"minutes": 3}).success
        with pytest.raises(ValidationError) as missing:
            c.track_usage("u", "job.start", {"minute": 3})
        assert missing.value.field == "metadata.minutes"


def test_strict_makes_every_such_event_an_error() -> None:
    with Metering("sqlite:///:memory:", strict=True) as c:
        for _ in range(2):
            with pytest.raises(ValidationError, match="no meter's filter matches it"):
                c.track_usage("u", "api.requst")
        with pytest.raises(BatchValidationError) as batch:
            c.track_usage_batch(
                [
                    {"customer_id": "u", "event_name": "ai.tokens", "metadata": {"tokens": 5}},
                    {"customer_id": "u", "event_name": "ai.tokens", "metadata": {"tokens": "5"}},
                ]
            )
        assert str(batch.value).startswith("events[1].metadata.tokens: meter 'ai_tokens' takes it")
        assert c.check_limit("u", "ai_tokens").current == 0  # a strict batch with an error stores nothing
        assert c._core._counted == set()  # strict evaluates every event


def test_a_catalog_without_meters_expects_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with Metering("sqlite:///:memory:", meters=[]) as c, caplog.at_level(logging.WARNING):
        assert c.track_usage("u", "anything").success
        assert _warnings(caplog) == []
