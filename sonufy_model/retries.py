"""What the services' ``Retry-After`` says, for every client that retries (tenacity).

One parser for the header, used by the Spotify catalog client and the preview
downloader alike: RFC 9110 allows delay-seconds ("120") or an HTTP-date
("Wed, 21 Oct 2026 07:28:00 GMT"). Parsing is pure (the clock is a
parameter); the clients do the network I/O and decide what a wait is worth.
"""

from __future__ import annotations

import email.utils
import math
import time
from datetime import timezone

from tenacity import RetryCallState
from tenacity.wait import wait_base

# What a missing or unreadable Retry-After counts as: a short pause, not none.
DEFAULT_RETRY_AFTER_S = 1.0
# The longest Retry-After taken at its word: a day is longer than any run is
# willing to wait (callers refuse a wait over their own limit), and the cap
# keeps an absurd number or a far-off date from becoming inf or overflowing.
MAX_RETRY_AFTER_S = 24 * 3600.0


def retry_after_seconds(
    value: str | None,
    *,
    now: float | None = None,
    default: float = DEFAULT_RETRY_AFTER_S,
    cap: float = MAX_RETRY_AFTER_S,
) -> float:
    """Seconds to wait from a ``Retry-After`` header's value, between 0 and ``cap``.

    A number is seconds (negative ones count as 0); an HTTP-date is the time
    left until then from ``now`` (epoch seconds, ``time.time()`` when None),
    0 when it has passed; a date without a zone is GMT, as HTTP dates are.
    Missing or unreadable values count as ``default``.
    """
    if value is None or not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value, time.time() if now is None else now)
    if seconds is None or math.isnan(seconds):
        return default
    return min(cap, max(0.0, seconds))


def _seconds_until(value: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp() - now
    except (TypeError, ValueError, OverflowError):
        return None


class wait_at_least_retry_after(wait_base):
    """tenacity wait: ``backoff``'s, but never less than the failure's ``retry_after_s``.

    For errors that carry the server's Retry-After (in seconds) as an attribute;
    others wait ``backoff`` alone.
    """

    def __init__(self, backoff: wait_base, attribute: str = "retry_after_s"):
        self.backoff = backoff
        self.attribute = attribute

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = self.backoff(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        return max(backoff, getattr(error, self.attribute, 0.0) or 0.0)
