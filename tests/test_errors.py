"""The failure taxonomy: stable kinds, honest stdlib bases, and what each error carries."""

from __future__ import annotations

import pytest
from imagegate import errors
from imagegate.errors import (
    AllBackendsFailed,
    BackendError,
    ConnectFailed,
    ImageGateError,
    error_class_for_kind,
)
from imagegate.models import Attempt

# The kind strings exactly as issue 2 lists them (they appear in JSON output and logs).
ISSUE_KINDS = {
    "HandshakeTimeout": "handshake_timeout",
    "ConnectFailed": "connect_failed",
    "GenerationTimeout": "generation_timeout",
    "RateLimited": "rate_limited",
    "Unavailable": "unavailable",
    "ServerError": "server_error",
    "BadResponse": "bad_response",
    "AuthFailed": "auth_failed",
    "QuotaExhausted": "quota_exhausted",
    "Rejected": "rejected",
    "ContentFiltered": "content_filtered",
    "InvalidRequest": "invalid_request",
    "AllBackendsFailed": "all_backends_failed",
}
BACKEND_KINDS = {k: v for k, v in ISSUE_KINDS.items() if k not in ("InvalidRequest", "AllBackendsFailed")}


@pytest.mark.parametrize(("name", "kind"), sorted(ISSUE_KINDS.items()))
def test_every_kind_of_the_taxonomy_exists_exactly(name: str, kind: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, ImageGateError)
    assert cls.kind == kind
    assert name in errors.__all__
    assert name in (errors.__doc__ or ""), "the tree in the module docstring names every class"
    assert cls.__doc__ and cls.__doc__.strip(), "every class has a one-line docstring"


def test_kinds_are_unique() -> None:
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    classes = [c for c in classes if c not in (ImageGateError, BackendError)]  # abstract bases
    kinds = [c.kind for c in classes]
    assert len(kinds) == len(set(kinds))


@pytest.mark.parametrize(("name", "kind"), sorted(BACKEND_KINDS.items()))
def test_backend_errors_carry_backend_status_and_retry_after(name: str, kind: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, BackendError)
    exc = cls("went wrong", backend="local", status=503, retry_after=2.5)
    assert (exc.backend, exc.status, exc.retry_after) == ("local", 503, 2.5)
    assert str(exc) == "HTTP 503: went wrong"
    assert error_class_for_kind(kind) is cls
    assert cls.health in ("trip", "count", "cooldown", "disable", "none")


def test_timeouts_are_builtin_timeout_errors() -> None:
    assert issubclass(errors.HandshakeTimeout, TimeoutError)
    assert issubclass(errors.GenerationTimeout, TimeoutError)
    assert not issubclass(errors.ConnectFailed, TimeoutError)


def test_connect_failed_is_a_connection_error_that_knows_if_it_was_refused() -> None:
    exc = ConnectFailed("connection refused", backend="local", refused=True)
    assert isinstance(exc, ConnectionError)
    assert exc.refused is True and exc.backend == "local"
    assert ConnectFailed("reset").refused is False


def test_invalid_request_is_a_value_error_naming_its_field() -> None:
    exc = errors.InvalidRequest("width: must be in 64..2048", field="width")
    assert isinstance(exc, ValueError) and exc.field == "width"
    assert not issubclass(errors.InvalidRequest, BackendError)


def test_health_effects_follow_the_design_table() -> None:
    assert errors.HandshakeTimeout.health == "trip"
    assert errors.RateLimited.health == "cooldown"
    assert errors.Unavailable.health == "cooldown"
    assert errors.AuthFailed.health == "disable"
    assert errors.QuotaExhausted.health == "disable"
    assert errors.Rejected.health == "none"
    assert errors.ContentFiltered.health == "none"


def test_all_backends_failed_carries_the_attempt_trail() -> None:
    attempts = [
        Attempt(backend="a", outcome="connect_failed", elapsed_s=0.01, error="connection refused"),
        Attempt(backend="b", outcome="handshake_timeout", elapsed_s=0.3),
    ]
    exc = AllBackendsFailed("no backend produced an image", attempts=attempts)
    assert exc.attempts == attempts and exc.deadline_exceeded is False
    assert exc.kind == "all_backends_failed"
    assert str(exc) == (
        "no backend produced an image [a: connect_failed (connection refused); b: handshake_timeout]"
    )


def test_unknown_kind_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        error_class_for_kind("no_such_kind")


def test_message_falls_back_to_the_kind() -> None:
    assert str(errors.BadResponse()) == "bad_response"


# What a polling loop may poll through (the provider did not say no) and what a retry on the
# same backend may follow at once: one notion each, on the classes, not in per-module lists.
TRANSIENT = {
    "HandshakeTimeout": True,
    "ConnectFailed": True,
    "GenerationTimeout": True,
    "RateLimited": True,
    "Unavailable": True,
    "ServerError": True,
    "BadResponse": False,
    "AuthFailed": False,
    "QuotaExhausted": False,
    "Rejected": False,
    "ContentFiltered": False,
}


@pytest.mark.parametrize(("name", "transient"), sorted(TRANSIENT.items()))
def test_transient_is_a_class_attribute_of_every_backend_error(name: str, transient: bool) -> None:
    assert getattr(errors, name).transient is transient


def test_retry_hint_only_for_a_refused_connection_and_a_429_that_said_when() -> None:
    assert errors.ConnectFailed("refused", refused=True).retry_hint == 0.0
    assert errors.ConnectFailed("reset").retry_hint is None
    assert errors.RateLimited("slow down", retry_after=1.5).retry_hint == 1.5
    assert errors.RateLimited("slow down").retry_hint is None
    for name in set(BACKEND_KINDS) - {"ConnectFailed", "RateLimited"}:
        assert getattr(errors, name)("x", retry_after=3.0).retry_hint is None, name


def test_error_kind_literal_lists_every_backend_error_kind() -> None:
    from typing import get_args

    assert set(get_args(errors.ErrorKind)) == set(BACKEND_KINDS.values())
