"""Retryability is a property of the error (``retryable``), not of its class; exit codes stay."""

from __future__ import annotations

from orgmove.db import is_transient
from orgmove.errors import (
    EXIT_BAD_INPUT,
    BadInput,
    CellUnreachable,
    CopyFailed,
    TopologyUnavailable,
    TransientError,
)
from orgmove.retry import RetryPolicy, retry_sync


def test_class_defaults() -> None:
    assert is_transient(TransientError("x")) and is_transient(TopologyUnavailable("x"))
    assert is_transient(CellUnreachable("x")) and CellUnreachable("x").exit_code == EXIT_BAD_INPUT
    assert not is_transient(BadInput("x")) and not is_transient(CopyFailed("x"))


def test_an_instance_overrides_its_class() -> None:
    assert not is_transient(CellUnreachable("down for good", retryable=False))
    assert is_transient(BadInput("a lock was busy", retryable=True))
    assert not is_transient(BaseExceptionGroup("g", [TransientError("a"), BadInput("b")]))


def test_the_retry_helper_asks_the_error() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise BadInput("busy", retryable=True)
        return "done"

    assert retry_sync(flaky, RetryPolicy(deadline_s=5), sleep=lambda _s: None) == "done"
    assert len(calls) == 3
    calls.clear()

    def refused() -> str:
        calls.append(1)
        raise CellUnreachable("gone", retryable=False)

    try:
        retry_sync(refused, RetryPolicy(deadline_s=5), sleep=lambda _s: None)
    except CellUnreachable:
        pass
    assert len(calls) == 1
