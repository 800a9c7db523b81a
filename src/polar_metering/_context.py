"""The current customer: the billing entity (organization when there is one, else the user) of the
work in progress. Framework integrations set it per request; ``check_current_limit`` reads it.

It lives in a ``ContextVar``, so concurrent requests on threads or asyncio tasks never see each
other's customer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from polar_metering._events import check_text
from polar_metering._exceptions import NoCurrentCustomer, ValidationError

__all__ = ["current_customer", "get_current_customer", "require_current_customer", "set_current_customer"]

_current: ContextVar[str | None] = ContextVar("polar_metering_current_customer", default=None)


def get_current_customer() -> str | None:
    """The customer set for this context, or ``None``."""
    return _current.get()


def require_current_customer() -> str:
    customer = _current.get()
    if customer is None:
        raise NoCurrentCustomer(
            "current customer: none is set; wrap the call in `with metering.current_customer(id):` "
            "or install a framework integration that sets it per request (an anonymous request has none)"
        )
    return customer


def set_current_customer(customer_id: str | None) -> Token[str | None]:
    """Set the current customer and return the token that ``reset_current_customer`` takes."""
    if customer_id is not None:
        if not isinstance(customer_id, str) or not customer_id:
            raise ValidationError("customer_id", "must be a non-empty string", customer_id)
        check_text(customer_id, "customer_id")
    return _current.set(customer_id)


def reset_current_customer(token: Token[str | None]) -> None:
    """Restore the customer that was current before ``set_current_customer`` returned ``token``."""
    try:
        _current.reset(token)
    except (TypeError, ValueError, RuntimeError) as exc:
        # Not a token, one from another context, or one already used.
        raise ValidationError(
            "token", f"must be an unused token from set_current_customer ({exc})", None
        ) from None


@contextmanager
def current_customer(customer_id: str) -> Iterator[str]:
    """``with current_customer("org_456"):`` makes ``org_456`` the customer of the enclosed code."""
    token = set_current_customer(customer_id)
    try:
        yield customer_id
    finally:
        _current.reset(token)
