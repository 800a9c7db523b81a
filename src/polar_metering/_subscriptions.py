"""What the customer lifecycle hands back: a customer's subscription, customers, and pages of them.

The same types on every backend: the embedded engine fills them from its own accounts, ``polar://``
from Polar's subscriptions and customers (``server/polar/subscription/schemas.py`` and
``server/polar/customer/schemas/customer.py`` at c6c3645).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

__all__ = ["Customer", "Page", "Subscription", "check_page"]

T = TypeVar("T")

#: Polar clamps list limits to 100 (``server/polar/kit/pagination.py``); the engine does the same
MAX_PAGE_SIZE = 100


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class Subscription:
    """A customer's current plan.

    - ``plan``: the catalog plan's name; ``None`` on ``polar://`` when the customer's active
      subscription is to a product that is none of the catalog's plans (``product_id`` says which).
    - ``status``: ``"active"`` on the engine; Polar's status on ``polar://`` (``active``, ``trialing``).
    - ``period_start`` / ``period_end``: the current billing period; usage and credits renew at
      ``period_end`` unless ``cancel_at_period_end``, when the plan stops applying then.
    """

    customer: str
    plan: str | None
    status: str
    period_start: datetime | None
    period_end: datetime | None
    cancel_at_period_end: bool = False
    started_at: datetime | None = None
    #: Polar's subscription id (``polar://`` only)
    id: str | None = None
    #: Polar's product id (``polar://`` only)
    product_id: str | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (timestamps as ISO-8601 strings)."""
        return {
            "customer": self.customer,
            "plan": self.plan,
            "status": self.status,
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "cancel_at_period_end": self.cancel_at_period_end,
            "started_at": _iso(self.started_at),
            "id": self.id,
            "product_id": self.product_id,
        }


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer a backend knows. ``id`` is the id you track with (Polar's ``external_id``; for a
    Polar customer without one, Polar's own id, which is also ``polar_id``)."""

    id: str
    polar_id: str | None = None
    email: str | None = None
    name: str | None = None
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "polar_id": self.polar_id,
            "email": self.email,
            "name": self.name,
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: ``items`` of page ``page`` (from 1) of ``limit`` items, out of
    ``total``."""

    items: tuple[T, ...] = field(default=())
    page: int = 1
    limit: int = MAX_PAGE_SIZE
    total: int = 0

    @property
    def has_next(self) -> bool:
        """True when a later page has items."""
        return self.page * self.limit < self.total

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def map(self, fn: Callable[[T], T]) -> Page[T]:
        return Page(tuple(fn(item) for item in self.items), self.page, self.limit, self.total)


def check_page(page: object, limit: object) -> tuple[int, int]:
    """``page`` >= 1 and ``limit`` in 1..100, as whole numbers: the library's own errors otherwise."""
    from polar_metering._exceptions import ValidationError

    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise ValidationError("page", "must be a whole number >= 1", page)
    if page > 10**9:
        raise ValidationError("page", "must be at most 1000000000", page)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError("limit", f"must be a whole number from 1 to {MAX_PAGE_SIZE}", limit)
    return page, limit
