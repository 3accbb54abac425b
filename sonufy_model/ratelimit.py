"""One rate limiter per service, shared by every concurrent request of a run.

The rate itself is aiolimiter's leaky bucket. On top of it, a 429 pauses the
limiter for everyone: when the service says "retry after N seconds", no
request of the run is let through before then, not only the one that was
told. Without that, the other concurrent requests keep hitting a service that
has just said stop, and each collects its own 429.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pause:
    """A window (time.monotonic seconds) in which the limiter let nothing through."""

    start: float
    end: float
    reason: str


class SharedLimiter:
    """``rate_per_s`` requests a second for one service, and pauses that hold back everyone.

    Use one instance per service per event loop (aiolimiter binds to the loop
    of its first use). ``granted`` counts requests let through, ``held_back``
    the acquisitions that found the limiter paused and waited, ``pauses`` the
    pause windows in order, and ``grant_times`` when each request was let
    through (monotonic seconds), so that a run can be checked afterwards.
    """

    def __init__(self, rate_per_s: float, name: str = "service"):
        if not rate_per_s > 0:
            raise ValueError(f"{name}: rate must be positive, got {rate_per_s!r}")
        self.name = name
        self.rate_per_s = float(rate_per_s)
        # A bucket of at least one request: below 1/s, one request per 1/rate seconds.
        if self.rate_per_s >= 1:
            self._limiter = AsyncLimiter(self.rate_per_s, 1.0)
        else:
            self._limiter = AsyncLimiter(1, 1.0 / self.rate_per_s)
        self._paused_until = 0.0
        self.granted = 0
        self.held_back = 0
        self.pauses: list[Pause] = []
        self.grant_times: list[float] = []

    def __repr__(self) -> str:
        return f"SharedLimiter({self.name!r}, {self.rate_per_s:g}/s)"

    @property
    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - time.monotonic())

    def pause(self, seconds: float, reason: str = "429") -> None:
        """Let nothing through for ``seconds`` from now (an ongoing longer pause stands)."""
        now = time.monotonic()
        until = now + max(0.0, seconds)
        if until <= self._paused_until:
            return
        if self._paused_until > now and self.pauses:
            # Extend the pause in force rather than record an overlapping one.
            self.pauses[-1] = Pause(self.pauses[-1].start, until, reason)
        else:
            self.pauses.append(Pause(now, until, reason))
        self._paused_until = until
        log.warning("%s: pausing every request for %.1f s (%s)", self.name, seconds, reason)

    async def acquire(self) -> None:
        """Wait for a pause in force to end and for the rate to allow one more request."""
        waited = False
        while True:
            remaining = self._paused_until - time.monotonic()
            if remaining > 0:
                waited = True
                await asyncio.sleep(remaining)
                continue
            await self._limiter.acquire()
            # A pause may have started while this request waited for the bucket.
            if self._paused_until <= time.monotonic():
                break
            waited = True
        if waited:
            self.held_back += 1
        self.granted += 1
        self.grant_times.append(time.monotonic())

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        return None
