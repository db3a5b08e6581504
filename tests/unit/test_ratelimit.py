"""The shared rate limiter: the sliding window, 429 pauses, and Braze's remaining-requests budget."""

import threading
import time

import pytest

from rpi2braze.ratelimit import RateLimiter
from clocks import FakeClock


def test_never_more_than_n_grants_in_any_window():
    limiter = RateLimiter(requests=5, per_seconds=0.3)
    grants = []
    lock = threading.Lock()

    def take(count):
        for _ in range(count):
            grant = limiter.acquire()
            with lock:
                grants.append(time.monotonic())
            limiter.release(grant)

    threads = [threading.Thread(target=take, args=(4,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    grants.sort()
    assert len(grants) == 12
    for index in range(len(grants) - 5):
        assert grants[index + 5] - grants[index] >= 0.3


def test_grants_are_numbered_in_order():
    limiter = RateLimiter(requests=10, per_seconds=1, clock=FakeClock(500.0))
    assert [limiter.acquire().sequence for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("requests, per_seconds", [(0, 1), (1, 0), (5, -1)])
def test_an_impossible_limit_is_refused(requests, per_seconds):
    with pytest.raises(ValueError):
        RateLimiter(requests, per_seconds)


def test_pause_holds_every_caller():
    limiter = RateLimiter(requests=100, per_seconds=1)
    limiter.pause(0.3)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started >= 0.29


def test_braze_budget_takes_off_every_request_still_outstanding():
    clock = FakeClock(500.0)
    limiter = RateLimiter(requests=100, per_seconds=1, clock=clock)
    answered, _, _ = limiter.acquire(), limiter.acquire(), limiter.acquire()
    limiter.release(answered, remaining=3, reset_seconds=2)
    assert limiter.paused_for == 0
    limiter.acquire()   # 3 remaining, minus the 2 requests still out: this is the last one
    assert limiter.paused_for == pytest.approx(2)
    clock.now += 2
    assert limiter.paused_for == 0, "the budget ends at Braze's reset"
    limiter.acquire()


@pytest.mark.parametrize("remaining, reset_seconds", [(None, 5), (0, None), (None, None)])
def test_without_both_headers_nothing_changes(remaining, reset_seconds):
    limiter = RateLimiter(requests=100, per_seconds=1, clock=FakeClock(500.0))
    limiter.release(limiter.acquire(), remaining, reset_seconds)
    assert limiter.paused_for == 0


def test_nothing_remaining_pauses_until_the_reset():
    limiter = RateLimiter(requests=100, per_seconds=1, clock=FakeClock(500.0))
    limiter.release(limiter.acquire(), remaining=0, reset_seconds=10)
    assert limiter.paused_for == pytest.approx(10)


def test_within_one_window_the_lowest_count_and_the_earliest_reset_hold():
    clock = FakeClock(500.0)
    limiter = RateLimiter(requests=100, per_seconds=1, clock=clock)
    first, second, third = limiter.acquire(), limiter.acquire(), limiter.acquire()
    limiter.release(second, remaining=4, reset_seconds=3)          # 4 - 2 outstanding = 2 left
    limiter.release(first, remaining=5, reset_seconds=2.6)         # arrived earlier: teaches only the reset
    limiter.acquire(), limiter.acquire()
    assert limiter.paused_for == pytest.approx(2.6)
    limiter.release(third, remaining=9, reset_seconds=2.6)
    assert limiter.paused_for == pytest.approx(2.6), "a higher count in the same window loosened the budget"


def test_a_newer_window_replaces_the_budget_and_an_older_one_is_ignored():
    clock = FakeClock(500.0)
    limiter = RateLimiter(requests=100, per_seconds=1, clock=clock)
    grants = [limiter.acquire() for _ in range(3)]
    limiter.release(grants[0], remaining=0, reset_seconds=3)
    limiter.release(grants[1], remaining=50, reset_seconds=0.2)    # a reset long before this window's
    assert limiter.paused_for == pytest.approx(3)
    limiter.release(grants[2], remaining=50, reset_seconds=7)      # Braze's next window
    assert limiter.paused_for == 0


def test_stop_event_releases_waiting_callers():
    limiter = RateLimiter(requests=1, per_seconds=60)
    limiter.acquire()
    stop = threading.Event()
    results = []
    waiters = [threading.Thread(target=lambda: results.append(limiter.acquire(stop))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    stop.set()
    for waiter in waiters:
        waiter.join(5)
    assert results == [None, None, None]


def test_a_request_counts_until_a_window_after_its_answer():
    clock = FakeClock(500.0)
    limiter = RateLimiter(requests=2, per_seconds=1.0, clock=clock)
    first, second = limiter.acquire(), limiter.acquire()
    clock.now += 5.0                       # still in flight: they may reach Braze at any moment
    assert limiter._delay(clock.now) > 0   # noqa: SLF001 - the rule itself, with a hand clock
    limiter.release(first)
    limiter.release(second)
    clock.now += 0.9
    assert limiter._delay(clock.now) > 0   # noqa: SLF001
    clock.now += 0.2
    assert limiter._delay(clock.now) <= 0  # noqa: SLF001


def test_a_successor_counts_the_requests_of_the_limiter_it_replaces():
    clock = FakeClock(500.0)
    limiter = RateLimiter(requests=3, per_seconds=1.0, clock=clock)
    answered, _ = limiter.acquire(), limiter.acquire()
    limiter.release(answered)
    successor = limiter.successor(4, 1.0)      # a reload raised the limit from 3 to 4
    successor.acquire(), successor.acquire()   # the old two (one still out) and two new: four
    assert successor._delay(clock.now) > 0     # noqa: SLF001 - not a fresh window of four more
    clock.now += 1.0
    assert successor._delay(clock.now) <= 0    # noqa: SLF001


@pytest.mark.parametrize("learn, paused_for", [
    (lambda limiter: limiter.pause(5), 5),                                          # a 429
    (lambda limiter: limiter.release(limiter.acquire(), remaining=0, reset_seconds=30), 30),   # Braze's budget
])
def test_a_successor_keeps_what_braze_said(learn, paused_for):
    limiter = RateLimiter(requests=100, per_seconds=1.0, clock=FakeClock(500.0))
    learn(limiter)
    assert limiter.successor(100, 1.0).paused_for == pytest.approx(paused_for)
