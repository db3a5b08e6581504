"""The parts every delivery needs, built once from Settings and torn down together."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rpi2braze.locks import WorkflowLocks
from rpi2braze.ratelimit import RateLimiter
from rpi2braze.sender import SenderPool
from rpi2braze.settings import Settings
from rpi2braze.state import StateStore
from rpi2braze.worker import DeliveryContext


@dataclass
class Pipeline:
    """A state store, one rate limiter per workspace, the sender pool that shares it, and the
    workflow locks that keep another rpi2braze process off the folders this one delivers."""

    context: DeliveryContext
    limiter: RateLimiter

    @classmethod
    def open(cls, settings: Settings, stop: threading.Event, hold_while_refused: bool = True,
             previous: "Pipeline | None" = None) -> "Pipeline":
        """`hold_while_refused`: the daemon waits for Braze to accept the key again; `process` gives up.
        `previous`: the pipeline a reload replaces; for the same Braze endpoint, its limiter's
        knowledge carries over (ratelimit.RateLimiter.successor)."""
        state = StateStore(settings.state.path)
        try:
            locks = WorkflowLocks(settings.state.directory)   # before any thread starts: it may refuse
        except Exception:
            state.close()
            raise
        braze = settings.braze
        # Same endpoint: most likely the same workspace, with its key rotated. Carrying over for
        # another workspace there costs at most a short wait; a fresh limiter for the same one
        # could exceed the limit.
        if previous is not None and previous.context.settings.braze.rest_endpoint == braze.rest_endpoint:
            limiter = previous.limiter.successor(braze.rate_limit.requests, braze.rate_limit.per_seconds)
        else:
            limiter = RateLimiter(braze.rate_limit.requests, braze.rate_limit.per_seconds)
        pool = SenderPool(braze, limiter, stop, hold_while_refused=hold_while_refused)
        return cls(DeliveryContext(settings, state, pool, stop, locks), limiter)

    def close(self, timeout: float = 10.0) -> None:
        self.context.pool.close(timeout)
        self.context.state.close()
        self.context.locks.close()
