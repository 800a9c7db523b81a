"""Polar objects the emulator keeps in the engine's database: one JSON document per product, benefit,
subscription or benefit grant (``pm_polar_objects``).

The engine's own readings never look here: credits reach the rollups through ``grant_credits`` and
``cycle_credit`` as Polar's ``meter.credited`` events do, and billing periods through
``follow_period``. Documents are small and few, so listing reads a kind whole and the emulator
filters and orders in Python, as it does for customers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select, update

from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.dialect import insert_ignore

if TYPE_CHECKING:
    from polar_metering.backends._engine.dialect import Database

__all__ = ["PolarObjects"]


class PolarObjects:
    """``kind`` is ``product``, ``benefit``, ``subscription`` or ``grant``; ``body`` a JSON object."""

    def __init__(self, db: Database, now_us: Callable[[], int]) -> None:
        self.db = db
        self._now_us = now_us

    def put(self, kind: str, object_id: str, body: dict[str, Any], *, customer_id: str | None = None) -> None:
        """Store ``body`` under (kind, id), replacing what was there."""
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        c = t.polar_objects.c
        with self.db.write() as conn:
            conn.execute(
                insert_ignore(self.db.engine, t.polar_objects).values(
                    kind=kind, id=object_id, customer_id=customer_id, body=text, created_us=self._now_us()
                )
            )
            conn.execute(
                update(t.polar_objects)
                .where(and_(c.kind == kind, c.id == object_id))
                .values(body=text, customer_id=customer_id)
            )

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        c = t.polar_objects.c
        with self.db.read() as conn:
            row = conn.execute(select(c.body).where(and_(c.kind == kind, c.id == object_id))).first()
        return None if row is None else dict(json.loads(row.body))

    def all(self, kind: str, *, customer_id: str | None = None) -> list[dict[str, Any]]:
        """Every document of ``kind`` (of one customer's, when given), oldest first."""
        c = t.polar_objects.c
        where = c.kind == kind
        if customer_id is not None:
            where = and_(where, c.customer_id == customer_id)
        with self.db.read() as conn:
            rows = conn.execute(select(c.body).where(where).order_by(c.created_us, c.id)).all()
        return [dict(json.loads(r.body)) for r in rows]
