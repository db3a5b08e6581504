"""The one rate limiter every sender of a Braze workspace shares, across all folders.

At most `requests` requests in any window of `per_seconds` as Braze counts them, on arrival (a
token bucket would allow twice that across a window boundary). Arrival lies somewhere between our
grant and the answer, so the sliding log keeps each request until `per_seconds` after its answer,
and a request still in flight counts as arriving now. Then no window at Braze can hold more than
`requests`, whatever the network or a busy CPU delays: if the last-granted of N+1 requests in one
window was granted at t, every other one was either in flight at t or answered after t - window,
so all N were counted when it was granted. Braze's own word tightens it further:

- a 429's retry delay pauses every sender, not only the one that got it (`pause`);
- X-RateLimit-Remaining / X-RateLimit-Reset on an answer become a budget (`release`): until the
  reset, no more requests than the lowest remaining count Braze reported, minus every request
  still outstanding (granted, not yet answered: Braze may not have counted it yet). Best effort:
  an answer without the headers (a 5xx) that Braze counted is not accounted for.

A config reload that keeps the workspace hands all of that to the new limiter (`successor`).

Every attempt, retries included, takes a grant, and gives it back with `release` when answered.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

# Resets this close are one window of Braze's: the headers have one-second resolution, rounded up.
SAME_RESET_SECONDS = 1.0
WAIT_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Grant:
    """Permission for one request: its place in the order of grants, and how long it waited."""

    sequence: int
    waited: float


class RateLimiter:
    """Thread-safe limiter; `acquire` blocks until a request may be sent."""

    def __init__(self, requests: int, per_seconds: float, clock: Callable[[], float] = time.monotonic):
        if requests < 1 or per_seconds <= 0:
            raise ValueError(f"rate limit needs requests >= 1 and per_seconds > 0, got {requests}, {per_seconds}")
        self.requests = requests
        self.window = per_seconds
        self._clock = clock
        self._answered: collections.deque[float] = collections.deque()  # answer times, oldest first
        self._sequence = 0
        self._paused_until = 0.0
        self._outstanding = 0
        self._budget: int | None = None      # requests Braze surely still allows, until _budget_until
        self._budget_until = 0.0
        self._lowest_remaining = 0
        self._lock = threading.Lock()
        # One waiter at a time sleeps until the next grant; the others queue on this lock, so a
        # grant wakes one thread instead of every waiting sender.
        self._turn = threading.Lock()

    def successor(self, requests: int, per_seconds: float) -> "RateLimiter":
        """A limiter for the same workspace under new limits (a config reload) that remembers
        what this one knows: its recent requests, a 429's pause and Braze's budget. A fresh one
        would allow a whole window of requests beside the last window's. Requests still
        outstanding here count as answered now. Raise ValueError if a limit is impossible."""
        successor = RateLimiter(requests, per_seconds, self._clock)
        with self._lock:
            now = self._clock()
            successor._answered.extend(self._answered)
            successor._answered.extend([now] * self._outstanding)
            successor._paused_until = self._paused_until
            successor._budget, successor._budget_until = self._budget, self._budget_until
            successor._lowest_remaining = self._lowest_remaining
        return successor

    def acquire(self, stop: threading.Event | None = None) -> Grant | None:
        """Block until a request may go; return its Grant, or None once `stop` is set."""
        stop = stop or threading.Event()
        started = self._clock()
        while not self._turn.acquire(timeout=WAIT_POLL_SECONDS):
            if stop.is_set():
                return None
        try:
            while not stop.is_set():
                with self._lock:
                    now = self._clock()
                    delay = self._delay(now)
                    if delay <= 0:
                        return self._grant(now, started)
                stop.wait(min(delay, WAIT_POLL_SECONDS))
            return None
        finally:
            self._turn.release()

    def _grant(self, now: float, started: float) -> Grant:
        self._sequence += 1
        self._outstanding += 1
        if self._budget is not None:
            self._budget -= 1
        return Grant(self._sequence, now - started)

    def _delay(self, now: float) -> float:
        """Seconds until the next grant may be made (<= 0: now)."""
        while self._answered and now - self._answered[0] >= self.window:
            self._answered.popleft()
        delay = self._paused_until - now
        if len(self._answered) + self._outstanding >= self.requests:
            # the oldest answer leaving the window frees a place; with none answered, wait for one
            delay = max(delay, self._answered[0] + self.window - now if self._answered else WAIT_POLL_SECONDS)
        if self._budget is not None:
            if now >= self._budget_until:
                self._budget = None
            elif self._budget <= 0:
                delay = max(delay, self._budget_until - now)
        return delay

    def pause(self, seconds: float) -> None:
        """Stop every sender for `seconds` (Braze said so in a 429)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def release(self, grant: Grant, remaining: int | None = None, reset_seconds: float | None = None) -> None:
        """The request of `grant` is over; learn from its answer's X-RateLimit-Remaining and
        X-RateLimit-Reset (seconds from now), if it had both."""
        with self._lock:
            now = self._clock()
            self._outstanding -= 1
            self._answered.append(now)
            if remaining is None or reset_seconds is None:
                return
            reset_at = now + reset_seconds
            self._delay(now)   # forget a budget whose reset has passed
            if self._budget is None or reset_at > self._budget_until + SAME_RESET_SECONDS:
                self._lowest_remaining, self._budget_until = remaining, reset_at
                self._budget = remaining - self._outstanding
            elif reset_at >= self._budget_until - SAME_RESET_SECONDS:
                # Braze rounds resets up, so the earliest is the truest.
                self._budget_until = min(self._budget_until, reset_at)
                if remaining < self._lowest_remaining:
                    # The lowest count so far came from the latest arrival; outstanding requests
                    # may arrive after it, so they are taken off. Both figures are lower bounds.
                    self._lowest_remaining = remaining
                    self._budget = max(self._budget, remaining - self._outstanding)
            # else: an answer from a window already over, delayed on its way here; nothing to learn

    @property
    def paused_for(self) -> float:
        """Seconds until a request may go regardless of the sliding window (pause or Braze's budget)."""
        with self._lock:
            now = self._clock()
            waits = [self._paused_until - now]
            if self._budget is not None and self._budget <= 0:
                waits.append(self._budget_until - now)
            return max(0.0, *waits)
