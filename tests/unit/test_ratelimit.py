import threading
import time

from rpi2braze.ratelimit import RateLimiter


def test_never_more_than_n_grants_in_any_window():
    limiter = RateLimiter(requests=5, per_seconds=0.3)
    grants = []
    lock = threading.Lock()

    def take(count):
        for _ in range(count):
            limiter.acquire()
            with lock:
                grants.append(time.monotonic())

    threads = [threading.Thread(target=take, args=(4,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    grants.sort()
    assert len(grants) == 12
    for index in range(len(grants) - 5):
        assert grants[index + 5] - grants[index] >= 0.3


def test_pause_holds_every_caller():
    limiter = RateLimiter(requests=100, per_seconds=1)
    limiter.pause(0.3)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started >= 0.29


def test_observe_pauses_when_nothing_remains():
    limiter = RateLimiter(requests=100, per_seconds=1)
    limiter.observe(remaining=5, reset_seconds=10)
    assert limiter.paused_for == 0
    limiter.observe(remaining=0, reset_seconds=10)
    assert 9 < limiter.paused_for <= 10


def test_stop_event_releases_a_waiting_caller():
    limiter = RateLimiter(requests=1, per_seconds=60)
    limiter.acquire()
    stop = threading.Event()
    result = []
    waiter = threading.Thread(target=lambda: result.append(limiter.acquire(stop)))
    waiter.start()
    stop.set()
    waiter.join(5)
    assert result == [None]
