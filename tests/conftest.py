"""Shared fixtures. Every test fails if it leaves a thread running (watchdog's conftest idea),
daemon threads included: the daemon's senders, workers and scanner are daemon threads."""

import threading
import time

import pytest

LEAK_GRACE_SECONDS = 5.0


@pytest.fixture(autouse=True)
def no_thread_leak():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"
