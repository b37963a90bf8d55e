"""Retries for transient errors: exponential backoff with jitter, a deadline, an injectable sleep
(so tests never wait), built on tenacity."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from orgmove.db import is_transient

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    deadline_s: float = 300.0
    initial_s: float = 0.2
    max_wait_s: float = 10.0


def _before_sleep(on_retry: Callable[[BaseException, int], None] | None) -> Callable[[RetryCallState], None]:
    def hook(state: RetryCallState) -> None:
        if on_retry and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc, state.attempt_number)

    return hook


def retry_sync(
    fn: Callable[[], T],
    policy: RetryPolicy = RetryPolicy(),
    *,
    sleep: Callable[[float], None] | None = None,
    on_retry: Callable[[BaseException, int], None] | None = None,
    is_retryable: Callable[[BaseException], bool] = is_transient,
) -> T:
    kwargs = {"sleep": sleep} if sleep is not None else {}
    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_random_exponential(multiplier=policy.initial_s, max=policy.max_wait_s),
        stop=stop_after_delay(policy.deadline_s),
        reraise=True,
        before_sleep=_before_sleep(on_retry),
        **kwargs,  # type: ignore[arg-type]
    )
    return retrying(fn)


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy = RetryPolicy(),
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: Callable[[BaseException, int], None] | None = None,
    is_retryable: Callable[[BaseException], bool] = is_transient,
) -> T:
    retrying = AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_random_exponential(multiplier=policy.initial_s, max=policy.max_wait_s),
        stop=stop_after_delay(policy.deadline_s),
        reraise=True,
        before_sleep=_before_sleep(on_retry),
        sleep=sleep,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover
