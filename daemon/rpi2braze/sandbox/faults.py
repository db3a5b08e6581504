"""Fault injection for the sandbox: dropped connections, 5xx answers, 429s, slow answers and latency.

Each /users/track request draws its fault from a generator seeded with `Faults.seed`, so a test with a rate
of 1.0 (always) or 0.0 (never), or a fixed seed, is deterministic. The draws are checked in this order and
the first that hits wins: drop, error, rate_limited. `slow` is drawn on its own: a slow request is applied
and answered `slow_seconds` late. `latency_seconds` is added to every request.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass
from enum import Enum
from typing import Any

DEFAULT_ERROR_STATUSES = (500, 502, 503, 504)
DEFAULT_RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class Faults:
    """Probabilities (0.0-1.0) of each fault per request, and the delays they add."""

    error_rate: float = 0.0           # answer one of `error_statuses`
    rate_limited_rate: float = 0.0    # answer 429 with X-Ratelimit-Retry-After: retry_after_seconds
    drop_rate: float = 0.0            # close the connection without answering
    slow_rate: float = 0.0            # apply, then answer slow_seconds late
    slow_seconds: float = 0.0
    latency_seconds: float = 0.0      # added to every request
    seed: int | None = None
    error_statuses: tuple[int, ...] = DEFAULT_ERROR_STATUSES
    retry_after_seconds: int = DEFAULT_RETRY_AFTER_SECONDS

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _problems(self) -> list[str]:
        rates = ("error_rate", "rate_limited_rate", "drop_rate", "slow_rate")
        delays = ("slow_seconds", "latency_seconds")
        problems = [f"{name}: must be a number from 0 to 1" for name in rates if not _is_rate(getattr(self, name))]
        problems += [f"{name}: must be a number >= 0" for name in delays if not _is_delay(getattr(self, name))]
        if not self.error_statuses or not all(_is_int(code) and 500 <= code <= 599 for code in self.error_statuses):
            problems.append("error_statuses: must be a non-empty list of 5xx codes")
        if not _is_int(self.retry_after_seconds) or self.retry_after_seconds < 0:
            problems.append("retry_after_seconds: must be an integer >= 0")
        if self.seed is not None and not _is_int(self.seed):
            problems.append("seed: must be an integer or null")
        return problems

    @classmethod
    def from_json(cls, data: Any) -> "Faults":
        """Given a decoded JSON object, return Faults. Raise ValueError naming every bad or unknown key."""
        if not isinstance(data, dict):
            raise ValueError("faults: must be a JSON object")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(unknown)}")
        if isinstance(data.get("error_statuses"), list):
            data = {**data, "error_statuses": tuple(data["error_statuses"])}
        return cls(**data)


class Fault(str, Enum):
    DROP = "drop"
    ERROR = "error"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Draw:
    """The faults one request gets: at most one of `Fault`, and whether it is slow."""

    fault: Fault | None
    slow: bool
    error_status: int


class FaultInjector:
    """Holds the current Faults and its seeded generator; `draw` is thread-safe."""

    def __init__(self, faults: Faults | None = None):
        self._lock = threading.Lock()
        self.replace(faults or Faults())

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def replace(self, faults: Faults) -> None:
        """Use `faults` from now on, with a generator freshly seeded from `faults.seed`."""
        with self._lock:
            self._faults = faults
            self._random = random.Random(faults.seed)

    def draw(self) -> Draw:
        """Return the faults of the next request."""
        with self._lock:
            faults, chance = self._faults, self._random.random
            fault = None
            for candidate, rate in (
                (Fault.DROP, faults.drop_rate),
                (Fault.ERROR, faults.error_rate),
                (Fault.RATE_LIMITED, faults.rate_limited_rate),
            ):
                if chance() < rate:
                    fault = candidate
                    break
            slow = chance() < faults.slow_rate
            return Draw(fault, slow, self._random.choice(faults.error_statuses))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _is_delay(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
