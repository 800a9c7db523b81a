"""The Polar backend in the conformance matrix: ``polar://`` pointed at a real emulator process on
loopback, spoken to by the unmodified ``polar-sdk``.

Polar keeps customer meters only for customers it knows, so ``settle`` registers every customer seen
in the events, as an app does when it creates customers at signup; credits are granted through the
emulator's admin surface, the way a meter-credit benefit grants them in Polar. The catalog's plans
are provisioned by ``setup`` (products with meter-credit benefits), so ``subscribe`` works as on
Polar.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from polar.v2026_10 import Polar
from tests.conformance.harness import register

from polar_metering import Catalog, Metering
from polar_metering._setup import run_setup
from polar_metering.emulator import AdminClient, running_emulator


class PolarHarness:
    name = "polar-emulator"

    def __init__(self, catalog: Catalog, tmp: Path) -> None:
        self._stack = contextlib.ExitStack()
        self.emulator = self._stack.enter_context(running_emulator())
        token, base = self.emulator.token, self.emulator.base_url
        report = run_setup(catalog, access_token=token, base_url=base)
        assert report.ok, str(report)
        self.admin = AdminClient(base, token)
        self.sdk = self._stack.enter_context(Polar(token, base_url=base))
        self.meter_ids = {m.name: m.id for m in self.sdk.meters.list(limit=100).items}
        self.slug_to_name = {m.slug: m.name for m in catalog.meters}
        self.client = Metering(
            f"polar://?base_url={base}",
            catalog=catalog,
            access_token=token,
            outbox_path=str(tmp / "outbox.db"),
            cache_ttl=0,
            subscription_ttl=0,
            fail_open=False,
        )
        self._known: set[str] = set()

    def _ensure_customer(self, customer: str) -> None:
        if customer not in self._known:
            with contextlib.suppress(Exception):  # already created by an earlier settle
                self.admin.create_customer(external_id=customer)
            self._known.add(customer)

    def give_credits(self, customer: str, meter: str, units: float) -> None:
        self._ensure_customer(customer)
        self.admin.grant(customer, self.meter_ids[self.slug_to_name[meter]], int(units))

    def settle(self) -> None:
        assert self.client.flush(20), "events were not delivered"
        page = 1
        while True:
            listing = self.sdk.events.list(page=page, limit=100)
            for event in listing.items:
                if event.external_customer_id:
                    self._ensure_customer(event.external_customer_id)
            if page >= listing.pagination.max_page:
                break
            page += 1
        self.admin.settle()

    def close(self) -> None:
        self.client.close(timeout=5)
        self._stack.close()


@register("polar-emulator")
def _polar(request: pytest.FixtureRequest, catalog: Catalog) -> Any:
    return PolarHarness(catalog, request.getfixturevalue("tmp_path"))
