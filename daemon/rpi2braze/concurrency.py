"""How many requests may be in flight to one Braze workspace, found by AIMD rather than configured.

Enough requests must be in flight to hide the network's latency (at 100 ms a request, 1,000
requests a second needs about 100 in flight), but no more than Braze handles comfortably. The
limit adapts as TCP's congestion window and Vector's adaptive request concurrency do, one
*window* (about one round trip) at a time:

- the window saw back-pressure (429, 5xx, 408, a timeout, a dropped connection), or its mean
  round trip is well above the moving average: halve the limit (floor 1), at most once per window;
- otherwise, if the senders used every slot and the round trip did not rise: one more slot;
- the limit never passes the ceiling, `braze.concurrency` (the number of sender threads).

A workspace that refuses the key (401/403/404) gets no requests at all, except one probe every
PROBE_INTERVAL_SECONDS; the first probe Braze accepts reopens the gate for every sender. Answers
to requests sent before the refusal neither reopen it nor count as Braze being back.

While no request has been accepted for OUTAGE_SHOWN_SECONDS (Braze down, or answering only 429),
`outage` says so, since when and the latest failure, for the folders waiting on it. A sender whose
request failed then and waits out its backoff is woken by the first request of the workspace
accepted after its failure (`wait_to_retry`): delivery resumes at Braze's first answer, not at each
sender's own jittered backoff, which reaches a minute. A failure among answers keeps its whole backoff.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Callable

from rpi2braze import metrics
from rpi2braze.health import HEALTH
from rpi2braze.log import get_logger

log = get_logger(__name__)

INITIAL_LIMIT = 4                 # or a quarter of the ceiling, whichever is more
DECREASE_RATIO = 0.5
RTT_EWMA_WEIGHT = 0.3             # weight of the newest window in the moving average
RTT_STEADY_RATIO = 1.1            # a window this close to the average may grow the limit
RTT_RISING_RATIO = 1.5            # a window this far above the average shrinks it
RTT_SLACK_SECONDS = 0.01          # so scheduling noise on a fast network is not read as a rise
MIN_WINDOW_SECONDS = 0.05
PROBE_INTERVAL_SECONDS = 5.0      # while Braze refuses the key, one request this often
WAIT_POLL_SECONDS = 0.25          # how soon a waiting sender notices `stop`
OUTAGE_SHOWN_SECONDS = 10.0       # nothing accepted for this long: an outage, shown on the folders waiting for it
HEALTH_COMPONENT = "braze"
# What a refusal means for an operator: the daemon waits for the key, `process` gives up.
WAITS_FOR_THE_KEY = ("every sender stopped; folders stay pending; delivery resumes by itself once Braze "
                     "accepts the key (fix braze.api_key and reload with SIGHUP)")
GIVES_UP = "nothing more is sent; fix braze.api_key and run the command again"


class Outcome(StrEnum):
    """What one request taught about the workspace."""

    ANSWERED = "answered"    # an answer Braze meant (2xx, 400, 413): its round trip counts
    OVERLOAD = "overload"    # 429, 425, 408: back off
    UNREACHABLE = "unreachable"  # 5xx, timeout, connection dropped, a proxy's answer: back off, and /healthz counts it
    REFUSED = "refused"      # 401, 403, 404: the key or endpoint is wrong; stop every sender
    UNKNOWN = "unknown"      # nothing learned (the request failed in our own code)


def initial_limit(ceiling: int) -> int:
    """Return where the limit starts for `ceiling`: small, so a struggling Braze is not flooded."""
    return max(1, min(ceiling, max(INITIAL_LIMIT, ceiling // 4)))


class AimdLimit:
    """The limit's arithmetic, without locks or sleeps: feed it outcomes and times, read `limit`.

    Not thread-safe; ConcurrencyGate serialises the calls.
    """

    def __init__(self, ceiling: int, now: float, initial: int | None = None):
        if ceiling < 1:
            raise ValueError(f"ceiling must be >= 1, got {ceiling}")
        self.ceiling = ceiling
        self.limit = min(ceiling, max(1, initial if initial is not None else initial_limit(ceiling)))
        self.average_rtt: float | None = None
        self._start_window(now)

    def _start_window(self, now: float) -> None:
        self._window_started = now
        self._rtt_total = 0.0
        self._rtt_count = 0
        self._overloaded = False
        self._full = False

    def note_full(self) -> None:
        """Every slot is in use: a window without trouble may then grow the limit."""
        self._full = True

    def observe(self, outcome: Outcome, rtt: float | None, now: float) -> None:
        """Count one finished request; close the window and adjust the limit if it has lasted long enough."""
        if outcome in (Outcome.OVERLOAD, Outcome.UNREACHABLE):
            self._overloaded = True
        elif outcome is Outcome.ANSWERED and rtt is not None:
            self._rtt_total += rtt
            self._rtt_count += 1
        if now - self._window_started >= self.window_seconds:
            self._close_window(now)

    @property
    def window_seconds(self) -> float:
        return max(MIN_WINDOW_SECONDS, self.average_rtt or 0.0)

    def _close_window(self, now: float) -> None:
        rtt = self._rtt_total / self._rtt_count if self._rtt_count else None
        if self._overloaded or self._is_rising(rtt):
            self.limit = max(1, int(self.limit * DECREASE_RATIO))
        elif self._full and rtt is not None and self._is_steady(rtt):
            self.limit = min(self.ceiling, self.limit + 1)
        if rtt is not None:
            self.average_rtt = rtt if self.average_rtt is None else (
                self.average_rtt + RTT_EWMA_WEIGHT * (rtt - self.average_rtt))
        self._start_window(now)

    def _is_rising(self, rtt: float | None) -> bool:
        return rtt is not None and self.average_rtt is not None and (
            rtt > self.average_rtt * RTT_RISING_RATIO + RTT_SLACK_SECONDS)

    def _is_steady(self, rtt: float) -> bool:
        return self.average_rtt is None or rtt <= self.average_rtt * RTT_STEADY_RATIO + RTT_SLACK_SECONDS


@dataclass
class Slot:
    """Permission for one request. `probe` is set when it tests a workspace that refused the key."""

    probe: bool = False
    sending: bool = False
    # Set when released during an outage: the count of answered requests then. A later answer
    # means Braze is back, and ends the wait before this request's retry (`wait_to_retry`).
    answers_in_outage: int | None = None


class ConcurrencyGate:
    """The slots every sender of one workspace acquires around each request. Thread-safe."""

    def __init__(self, ceiling: int, *, clock: Callable[[], float] = time.monotonic,
                 probe_interval: float = PROBE_INTERVAL_SECONDS, initial: int | None = None,
                 refusal_hint: str = WAITS_FOR_THE_KEY):
        self._clock = clock
        self._refusal_hint = refusal_hint
        self._aimd = AimdLimit(ceiling, clock(), initial)
        self._probe_interval = probe_interval
        lock = threading.RLock()
        self._condition = threading.Condition(lock)   # senders waiting for a slot
        self._answer = threading.Condition(lock)      # senders waiting out a backoff
        self._answers = 0
        self._in_flight = 0
        self._sending = 0
        self._refusal: str | None = None
        self._outage: tuple[float, float] | None = None   # no request accepted since (clock, wall)
        self._latest_failure = ""
        self._next_probe = 0.0
        self._probing = False
        self._shown_up = False   # HEALTH says Braze accepts us (an earlier gate may have said otherwise)
        metrics.CONCURRENCY_LIMIT.set(self._aimd.limit)

    @property
    def limit(self) -> int:
        with self._condition:
            return self._aimd.limit

    @property
    def in_flight(self) -> int:
        with self._condition:
            return self._in_flight

    @property
    def outage(self) -> str | None:
        """Since when Braze has accepted no request, if that has lasted OUTAGE_SHOWN_SECONDS or more
        (down, or answering 429 to all), and its latest failure; None while it accepts requests (a
        few failures among them are not an outage)."""
        with self._condition:
            if not self._in_outage():
                return None
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self._outage[1]))
            return f"waiting for Braze, retrying: no request accepted since {since} (latest: {self._latest_failure})"

    @property
    def refusal(self) -> str | None:
        """Why Braze refuses this workspace's requests, or None while it accepts them."""
        with self._condition:
            return self._refusal

    def acquire(self, stop: threading.Event) -> Slot | None:
        """Block until a request may be in flight; return its Slot, or None once `stop` is set."""
        with self._condition:
            while not stop.is_set():
                slot = self._try_acquire(self._clock())
                if slot is not None:
                    return slot
                self._condition.wait(self._wait_seconds())
            return None

    def try_acquire(self) -> Slot | None:
        """Return a Slot if a request may be in flight now, else None; never blocks."""
        with self._condition:
            return self._try_acquire(self._clock())

    def _try_acquire(self, now: float) -> Slot | None:
        if self._refusal is None:
            if self._in_flight >= self._aimd.limit:
                return None
            self._in_flight += 1
            return Slot()
        if self._probing or now < self._next_probe:
            return None
        self._probing = True
        self._in_flight += 1
        return Slot(probe=True)

    def _wait_seconds(self) -> float:
        if self._refusal is not None and not self._probing:
            return max(0.001, min(WAIT_POLL_SECONDS, self._next_probe - self._clock()))
        return WAIT_POLL_SECONDS

    def started(self, slot: Slot) -> None:
        """The request of `slot` is going out now (after any rate-limit wait)."""
        with self._condition:
            slot.sending = True
            self._sending += 1
            if self._sending >= self._aimd.limit:
                self._aimd.note_full()

    def release(self, slot: Slot, outcome: Outcome, rtt: float | None = None, reason: str = "") -> None:
        """Give `slot` back with what its request taught; `reason` says why Braze refused, if it did."""
        with self._condition:
            self._in_flight -= 1
            self._sending -= slot.sending
            self._probing = self._probing and not slot.probe
            now, limit = self._clock(), self._aimd.limit
            if outcome is Outcome.REFUSED:
                self._refuse(reason or "Braze refused the request", now, slot.probe)
            else:
                if outcome in (Outcome.UNREACHABLE, Outcome.OVERLOAD):
                    self._failed(outcome, reason)
                    slot.answers_in_outage = self._answers if self._in_outage() else None
                elif outcome is Outcome.ANSWERED and (self._refusal is None or slot.probe):
                    # while refused, only a probe speaks for the key: other answers left before the refusal
                    self._accepted()
                self._aimd.observe(outcome, rtt, now)
            metrics.CONCURRENCY_LIMIT.set(self._aimd.limit)
            # Wake only as many waiters as there are new slots: waking all of them on every answer
            # would have dozens of threads fight for the GIL hundreds of times a second.
            self._condition.notify(1 + max(0, self._aimd.limit - limit))

    def _in_outage(self) -> bool:
        return self._outage is not None and self._clock() - self._outage[0] >= OUTAGE_SHOWN_SECONDS

    def wait_to_retry(self, seconds: float, stop: threading.Event, slot: Slot) -> None:
        """Sleep up to `seconds` before retrying the failed request of `slot`, or until `stop` is
        set; if it failed during an outage, only until a request is answered after it."""
        deadline = time.monotonic() + seconds   # a real wait, whatever clock the limit runs on
        with self._answer:
            while not stop.is_set() and (slot.answers_in_outage is None or self._answers == slot.answers_in_outage):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._answer.wait(min(remaining, WAIT_POLL_SECONDS))

    def _refuse(self, reason: str, now: float, probe: bool) -> None:
        self._shown_up = False
        metrics.BRAZE_UP.set(0)
        if self._refusal is None:
            log.error("braze_refused", reason=reason, hint=self._refusal_hint)
            HEALTH.mark(HEALTH_COMPONENT, False, reason)
        elif probe:   # the others were sent before the refusal: nothing new to say
            log.warning("braze_still_refused", reason=reason)
        self._refusal = reason
        self._next_probe = now + self._probe_interval

    def _failed(self, outcome: Outcome, reason: str) -> None:
        """Not accepted. Unreachable (no usable answer): /healthz turns unhealthy once this lasts
        past its threshold; overload (429, 425, 408) is Braze there but busy, so health stands."""
        if outcome is Outcome.UNREACHABLE:
            HEALTH.mark(HEALTH_COMPONENT, False, reason)
            metrics.BRAZE_UP.set(0)
            self._shown_up = False
        if self._outage is None:
            self._outage = (self._clock(), time.time())
        self._latest_failure = reason or str(outcome)

    def _accepted(self) -> None:
        self._outage = None
        self._answers += 1
        self._answer.notify_all()
        if self._refusal is not None:
            log.info("braze_accepted", previously=self._refusal)
            self._refusal = None
            self._condition.notify_all()
        if not self._shown_up:
            HEALTH.mark(HEALTH_COMPONENT, True)
            metrics.BRAZE_UP.set(1)
            self._shown_up = True
