"""The exception tree, token redaction, and the refusal message of a usage limit."""

from __future__ import annotations

import re

import pytest

import polar_metering._exceptions as exc_module
from polar_metering._exceptions import (
    AuthenticationError,
    BackendError,
    BackendUnavailable,
    BatchValidationError,
    ConfigurationError,
    MeteringError,
    NotFound,
    RateLimited,
    RemoteValidationError,
    UsageLimitExceeded,
    ValidationError,
    redact,
)
from polar_metering._status import UsageStatus, limit_reason

TOKEN = "polar_oat_Ab3dEf6hIj9kLmN0pQ_rs-TuvWxYz"


# --- redact ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"request failed with token {TOKEN}",
        f"POLAR_ACCESS_TOKEN={TOKEN}",
        f"{TOKEN}",
        "key polar_pat_0123456789abcdef here",
        "refresh polar_rt_abcDEF_123 expired",
    ],
)
def test_redact_masks_polar_tokens(text: str) -> None:
    """Anything shaped like a Polar token is replaced by ***."""
    out = redact(text)
    assert not re.search(r"polar_[a-z]{2,4}_[A-Za-z0-9]", out)
    assert "***" in out


@pytest.mark.parametrize(
    ("text", "secret_part"),
    [
        ("Authorization: Bearer xyz", "xyz"),
        ("authorization: bearer abc.def-ghi_jkl~mno+pqr/stu=", "abc.def"),
        ("headers={'Authorization': 'BEARER s3cr3t'}", "s3cr3t"),
        ('{"access_token": "tok123"}', "tok123"),
        ("access_token=tok456&x=1", "tok456"),
    ],
)
def test_redact_masks_bearer_and_access_tokens(text: str, secret_part: str) -> None:
    """Bearer credentials and access_token values are masked whatever their shape or case."""
    out = redact(text)
    assert secret_part not in out
    assert "***" in out


def test_redact_keeps_the_prefix_and_surrounding_text() -> None:
    """Only the credential goes; the words around it stay readable."""
    assert redact("Authorization: Bearer xyz (401)") == "Authorization: Bearer *** (401)"
    assert redact(f"bad token {TOKEN}.") == "bad token ***."


def test_redact_masks_explicit_secrets() -> None:
    """Secrets passed in are masked even when they look like nothing special; empty ones are ignored."""
    out = redact("connect to db with hunter2 and sk-live-42", "hunter2", "sk-live-42", None, "")
    assert out == "connect to db with *** and ***"


def test_redact_leaves_clean_text_alone() -> None:
    """Text without credentials comes back unchanged."""
    text = "POST /v1/events/ingest returned 503: Service Unavailable (polar.sh)"
    assert redact(text) == text


@pytest.mark.parametrize(
    "error",
    [
        BackendError(f"boom {TOKEN}"),
        BackendUnavailable(f"timeout using Bearer {TOKEN}"),
        RateLimited(f"429 for {TOKEN}", retry_after=30),
        AuthenticationError(f"401: token {TOKEN} rejected"),
        NotFound(f"GET with Authorization: Bearer {TOKEN}"),
        RemoteValidationError(f"422 {TOKEN}", detail=[{"loc": ["body"], "msg": "bad"}]),
    ],
    ids=lambda e: type(e).__name__,
)
def test_backend_error_messages_are_redacted(error: BackendError) -> None:
    """No backend error shows a token in str(), repr() or args."""
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)
    assert all(TOKEN not in str(arg) for arg in error.args)
    assert "***" in str(error)


# --- the tree -------------------------------------------------------------------------------------------


def documented_tree() -> dict[str, str | None]:
    """Parse the tree drawn in the module docstring into {class name: parent name}."""
    doc = exc_module.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*(?:[│ ]*[├└]──\s*)?)([A-Z]\w+)\b", line)
        if not match or not line.startswith("    "):
            continue
        depth = len(match.group(1))
        name = match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def test_docstring_tree_matches_the_classes() -> None:
    """Every class in the drawn tree exists and subclasses exactly the class drawn above it."""
    tree = documented_tree()
    assert tree["MeteringError"] is None
    exported = {
        name
        for name in exc_module.__all__
        if isinstance(getattr(exc_module, name), type) and issubclass(getattr(exc_module, name), Exception)
    }
    assert set(tree) == exported
    for name, parent in tree.items():
        cls = getattr(exc_module, name)
        if parent is None:
            assert cls.__bases__ == (Exception,)
            continue
        assert issubclass(cls, getattr(exc_module, parent)), (name, parent)
        library_bases = [b for b in cls.__bases__ if b.__module__ == exc_module.__name__]
        assert library_bases == [getattr(exc_module, parent)], name


def test_tree_relations_named_in_the_docs() -> None:
    """The relations other modules rely on."""
    assert issubclass(ConfigurationError, MeteringError)
    assert issubclass(BatchValidationError, ValidationError)
    assert issubclass(ValidationError, ValueError)
    for cls in (BackendUnavailable, RateLimited, AuthenticationError, NotFound, RemoteValidationError):
        assert issubclass(cls, BackendError)
        assert issubclass(cls, MeteringError)
    assert not issubclass(UsageLimitExceeded, BackendError)
    assert not issubclass(ValidationError, BackendError)


def test_retryable_flags() -> None:
    """Unavailable and rate-limited backends may recover; the rest may not, unless told otherwise."""
    assert BackendUnavailable("x").retryable is True
    assert RateLimited("x").retryable is True
    assert AuthenticationError("x").retryable is False
    assert NotFound("x").retryable is False
    assert RemoteValidationError("x").retryable is False
    assert BackendError("x").retryable is False
    assert BackendError("x", retryable=True).retryable is True
    assert BackendUnavailable("x", retryable=False).retryable is False


def test_error_attributes() -> None:
    """Status codes, retry_after and detail are kept for callers."""
    limited = RateLimited("slow down", retry_after=12.5)
    assert (limited.status_code, limited.retry_after) == (429, 12.5)
    assert RateLimited("slow down").retry_after is None
    remote = RemoteValidationError("bad", detail=[{"loc": ["body", "events", 0], "msg": "m", "type": "t"}])
    assert remote.status_code == 422
    assert remote.detail[0]["loc"] == ["body", "events", 0]
    assert RemoteValidationError("bad").detail == []
    assert BackendUnavailable("down", status_code=503).status_code == 503


def test_validation_error_names_field_and_rule() -> None:
    """str() reads "field: rule"; the attributes carry both and the value."""
    err = ValidationError("metadata.tokens", "must be finite", float("inf"))
    assert str(err) == "metadata.tokens: must be finite"
    assert (err.field, err.rule, err.value) == ("metadata.tokens", "must be finite", float("inf"))


def test_batch_validation_error_points_at_the_first_bad_event() -> None:
    """The batch error names the first failing index and counts the others."""
    errors = [
        (3, ValidationError("name", "must be at most 128 characters")),
        (7, ValidationError("timestamp", "x")),
    ]
    err = BatchValidationError(errors)
    assert err.field == "events[3].name"
    assert str(err) == "events[3].name: must be at most 128 characters (and 1 more)"
    assert err.errors == errors
    single = BatchValidationError(errors[:1])
    assert str(single) == "events[3].name: must be at most 128 characters"


# --- the usage-limit message ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "limit", "text"),
    [
        (10, 10, "Usage limit reached: 10/10 units used"),
        (10.0, 10.0, "Usage limit reached: 10/10 units used"),
        (2.5, 2, "Usage limit reached: 2.5/2 units used"),
        (1_234_567.5, 2_000_000, "Usage limit reached: 1234567.5/2000000 units used"),
        (0.1 + 0.2, 0.3, "Usage limit reached: 0.3/0.3 units used"),
        (15_000, 10_000, "Usage limit reached: 15000/10000 units used"),
    ],
)
def test_limit_reason_reads_like_a_person_wrote_it(current: float, limit: float, text: str) -> None:
    """Whole numbers without .0, fractions with their digits, never a rounded exponent."""
    assert limit_reason(current, limit) == text


def test_usage_limit_exceeded_carries_its_status() -> None:
    """The exception's message is the status reason; meter and customer ride along."""
    status = UsageStatus(allowed=False, current=10, limit=10, remaining=0, reason=limit_reason(10, 10))
    err = UsageLimitExceeded(status, meter="api_requests", customer="user_123")
    assert str(err) == "Usage limit reached: 10/10 units used"
    assert (err.status, err.meter, err.customer) == (status, "api_requests", "user_123")
    bare = UsageLimitExceeded(UsageStatus(allowed=False, current=1, limit=0, remaining=0))
    assert str(bare) == "Usage limit reached"
