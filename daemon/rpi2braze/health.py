"""What /healthz reports: each component's reachability, and since when it has been down.

Components mark themselves ("source:<name>", "braze"); the daemon is unhealthy once any of them
has been down for longer than the threshold, so a brief network blip does not page anyone.
"""

from __future__ import annotations

import threading
import time

DOWN_THRESHOLD_SECONDS = 300.0


class Health:
    """Thread-safe registry of component states."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: dict[str, float] = {}
        self._reasons: dict[str, str] = {}
        self._known: set[str] = set()

    def mark(self, component: str, up: bool, reason: str = "") -> None:
        with self._lock:
            self._known.add(component)
            if up:
                self._down_since.pop(component, None)
                self._reasons.pop(component, None)
            else:
                self._down_since.setdefault(component, self._clock())
                self._reasons[component] = reason

    def forget_except(self, prefix: str, keep: set[str]) -> None:
        """Forget the components named `prefix` + something not in `keep` (sources a reload removed),
        so one that was down does not keep /healthz failing for ever."""
        with self._lock:
            for component in [name for name in self._known if name.startswith(prefix)
                              and name[len(prefix):] not in keep]:
                self._known.discard(component)
                self._down_since.pop(component, None)
                self._reasons.pop(component, None)

    def report(self, threshold: float = DOWN_THRESHOLD_SECONDS) -> tuple[bool, dict]:
        """Return (healthy, details): unhealthy if a component is down for longer than `threshold`."""
        now = self._clock()
        with self._lock:
            down = {name: {"down_seconds": round(now - since, 1), "reason": self._reasons.get(name, "")}
                    for name, since in self._down_since.items()}
            known = sorted(self._known)
        failing = [name for name, detail in down.items() if detail["down_seconds"] > threshold]
        return not failing, {"healthy": not failing, "failing": failing, "down": down, "components": known}


HEALTH = Health()
