"""The one rate limiter every sender of a Braze workspace shares.

A sliding log of grant times: at most `requests` grants in any window of `per_seconds` (a token
bucket would allow twice that across a window boundary). Braze's own word tightens it: a 429's
retry delay, or X-RateLimit-Remaining reaching zero, pauses every sender until the reset.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

# Requests are granted here but counted by Braze on arrival; a small margin absorbs the jitter.
WINDOW_MARGIN = 0.02


class RateLimiter:
    """Thread-safe limiter; `acquire` blocks until a request may be sent."""

    def __init__(self, requests: int, per_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.requests = requests
        self.window = per_seconds * (1 + WINDOW_MARGIN)
        self._clock = clock
        self._grants: collections.deque[float] = collections.deque()
        self._paused_until = 0.0
        self._condition = threading.Condition()

    def acquire(self, stop: threading.Event | None = None) -> float | None:
        """Block until a request may go; return the seconds waited, or None if `stop` was set."""
        started = self._clock()
        with self._condition:
            while True:
                if stop is not None and stop.is_set():
                    return None
                delay = self._delay(self._clock())
                if delay <= 0:
                    self._grants.append(self._clock())
                    return self._clock() - started
                self._condition.wait(min(delay, 0.25))

    def _delay(self, now: float) -> float:
        while self._grants and now - self._grants[0] >= self.window:
            self._grants.popleft()
        delay = self._paused_until - now
        if len(self._grants) >= self.requests:
            delay = max(delay, self._grants[0] + self.window - now)
        return delay

    def pause(self, seconds: float) -> None:
        """Stop every sender for `seconds` (Braze said so: a 429, or no requests remaining)."""
        with self._condition:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def observe(self, remaining: int | None, reset_seconds: float | None) -> None:
        """Tighten from Braze's X-RateLimit-Remaining / X-RateLimit-Reset on a successful answer."""
        if remaining is not None and remaining <= 0 and reset_seconds:
            self.pause(reset_seconds)

    @property
    def paused_for(self) -> float:
        with self._condition:
            return max(0.0, self._paused_until - self._clock())
