"""When to try a request again, and how long to wait first.

Every request the client makes is safe to repeat: GET, PUT of a whole snapshot, DELETE, and
PATCH, which the contract makes idempotent (the same PATCH again leaves the same stored run).
So connection errors, timeouts and the answers that mean "not now" (408, 429, 502, 503, 504) are
retried with exponential backoff and jitter, bounded in attempts and in total time. Answers that
mean "no" (409 stale write, 412, 4xx in general) are never retried.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import httpx

__all__ = [
    "RETRYABLE_STATUSES",
    "RETRYABLE_TRANSPORT_ERRORS",
    "RetryPolicy",
    "RetrySchedule",
    "parse_retry_after",
    "retry_policy",
]

RETRYABLE_STATUSES: Final = frozenset({408, 429, 502, 503, 504})
# RemoteProtocolError: the server closed the connection without answering (a restart, or a
# keep-alive connection it had dropped). LocalProtocolError and UnsupportedProtocol are bugs or
# bad configuration and would fail the same way again.
RETRYABLE_TRANSPORT_ERRORS: Final = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before raising :class:`StoreUnavailable`.

    ``max_attempts`` counts the first try (1 means no retries). The wait before retry ``n``
    (from 1) is drawn between half and all of ``min(max_delay, first_delay * 2 ** (n - 1))``, or
    is the answer's ``Retry-After`` if that is longer. No new attempt starts once ``total``
    seconds have passed since the first, nor when the wait would end after that.
    """

    max_attempts: int = 10
    first_delay: float = 0.1
    max_delay: float = 2.0
    total: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.first_delay < 0 or self.max_delay < self.first_delay:
            raise ValueError("need 0 <= first_delay <= max_delay")
        if self.total < 0:
            raise ValueError("total must be >= 0")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt only."""
        return cls(max_attempts=1)

    def schedule(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> RetrySchedule:
        """A fresh schedule for one call."""
        return RetrySchedule(self, clock=clock, rng=rng)


def retry_policy(retries: RetryPolicy | int) -> RetryPolicy:
    """``retries`` as the clients take it: a policy, or a number of retries after the first try."""
    if isinstance(retries, RetryPolicy):
        return retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise TypeError("retries must be a RetryPolicy or a number of retries >= 0")
    return RetryPolicy(max_attempts=retries + 1)


class RetrySchedule:
    """The attempts of one call: counts them and says how long to wait before the next."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.attempts = 0
        self._clock = clock
        self._rng = rng
        self._started = clock()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Record a failed attempt; the seconds to wait before the next, or None to give up."""
        self.attempts += 1
        policy = self.policy
        if self.attempts >= policy.max_attempts:
            return None
        ceiling = min(policy.max_delay, policy.first_delay * 2.0 ** (self.attempts - 1))
        delay = ceiling / 2 + self._rng() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        if self.elapsed + delay > policy.total:
            return None
        return delay


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
