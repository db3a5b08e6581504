"""The sandbox's request rate limit: a fixed window of `requests` per `per_seconds`.

Braze documents `X-RateLimit-Reset` both as UTC epoch seconds (API limits page) and as seconds remaining
(/users/track page, MAU section); `reset_style` picks which one the sandbox sends, so a client can be
tested against both. On 429 only `X-Ratelimit-Retry-After` is sent, as on Braze's MAU plans.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

RESET_STYLES = ("epoch", "delta")


@dataclass(frozen=True)
class Admission:
    """Whether one request is within the limit, and the response headers that say so."""

    allowed: bool
    headers: tuple[tuple[str, str], ...]


class RateLimiter:
    """Counts requests in fixed windows; the first window starts at the first request."""

    def __init__(
        self,
        requests: int,
        per_seconds: float,
        reset_style: str = "epoch",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        if requests < 1 or per_seconds <= 0 or reset_style not in RESET_STYLES:
            raise ValueError("rate limit: requests >= 1, per_seconds > 0, reset_style epoch or delta")
        self._requests, self._per_seconds, self._reset_style = requests, per_seconds, reset_style
        self._clock, self._wall_clock = clock, wall_clock
        self._lock = threading.Lock()
        self._window_start = -math.inf
        self._used = 0

    def admit(self) -> Admission:
        """Count one request and return whether it is allowed, with the headers for its response."""
        with self._lock:
            now = self._clock()
            if now >= self._window_start + self._per_seconds:
                self._window_start, self._used = now, 0
            seconds_left = self._window_start + self._per_seconds - now
            if self._used >= self._requests:
                return Admission(False, (("X-Ratelimit-Retry-After", str(max(1, math.ceil(seconds_left)))),))
            self._used += 1
            return Admission(True, self._headers(seconds_left))

    def _headers(self, seconds_left: float) -> tuple[tuple[str, str], ...]:
        if self._reset_style == "epoch":
            reset = math.ceil(self._wall_clock() + seconds_left)
        else:
            reset = math.ceil(seconds_left)
        return (
            ("X-RateLimit-Limit", str(self._requests)),
            ("X-RateLimit-Remaining", str(self._requests - self._used)),
            ("X-RateLimit-Reset", str(reset)),
        )
