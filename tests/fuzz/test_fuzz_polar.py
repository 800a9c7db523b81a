"""The batch fuzz through ``polar://`` against the emulator (real HTTP on loopback, the unmodified
polar-sdk): bad items are refused at track time, and everything the library accepted is accepted by
a Polar-shaped server too, so nothing is ever dead-lettered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz import strategies as s
from tests.fuzz.helpers import CATALOG, check_tracking, examples

from polar_metering import Metering
from polar_metering.emulator import running_emulator


@pytest.fixture(scope="module")
def polar_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metering]:
    outbox: Path = tmp_path_factory.mktemp("polar-fuzz") / "outbox.db"
    with running_emulator() as emulator:
        client = Metering(
            f"polar://?base_url={emulator.base_url}",
            catalog=CATALOG,
            access_token=emulator.token,
            outbox_path=str(outbox),
            cache_ttl=0,
        )
        try:
            yield client
        finally:
            client.close(timeout=5)


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_polar_batches_refuse_bad_items_and_deliver_every_good_one(
    polar_client: Metering, data: st.DataObject
) -> None:
    outbox = polar_client.backend.outbox  # type: ignore[attr-defined]
    before = outbox.metrics()
    customer = s.fresh()
    items = data.draw(s.mixed_batches(customer, max_size=8))
    bad = {i: item.field for i, item in enumerate(items) if item.field is not None}
    result = check_tracking(polar_client.track_usage_batch([item.value for item in items]))
    assert [i for i, _ in result.rejected] == sorted(bad)
    for i, message in result.rejected:
        assert message.startswith(f"events[{i}].{bad[i]}: "), message
    assert result.inserted == len(items) - len(bad)
    assert polar_client.flush(20)
    after = outbox.metrics()
    assert after.dead_lettered == before.dead_lettered, after.last_error
    assert after.committed - before.committed == len(items) - len(bad)
    delivered = (after.sent + after.duplicates) - (before.sent + before.duplicates)
    assert delivered == len(items) - len(bad)
