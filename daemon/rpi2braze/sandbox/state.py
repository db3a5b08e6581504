"""Everything a running sandbox holds: profiles, the accepted key, faults, rate limit and the request log."""

from __future__ import annotations

import hmac
import threading
from dataclasses import asdict, dataclass

from rpi2braze.sandbox.custom_attributes import DEFAULT_ARRAY_MAX
from rpi2braze.sandbox.faults import FaultInjector, Faults
from rpi2braze.sandbox.profiles import ProfileStore
from rpi2braze.sandbox.ratelimit import RateLimiter

DEFAULT_API_KEY = "sandbox-key"
DEFAULT_MAX_OBJECTS = 75            # Braze: 75 objects combined across attributes, events, purchases
DEFAULT_MAX_BYTES = 4_000_000       # Braze: 4 MB payload


@dataclass(frozen=True)
class RequestRecord:
    """One request to a Braze endpoint, as the sandbox saw it. `status` is 0 for a dropped connection."""

    monotonic: float          # time.monotonic() when the request arrived
    wall_time: float          # time.time() when the request arrived
    method: str
    path: str
    status: int
    external_ids: tuple[str, ...] = ()   # every object's external_id, in request order, repeats kept
    object_count: int = 0
    fault: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


class SandboxState:
    """The sandbox's mutable state, shared by every request thread. All methods are thread-safe."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        faults: Faults | None = None,
        array_max: int = DEFAULT_ARRAY_MAX,
        rate_limiter: RateLimiter | None = None,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        self.store = ProfileStore(array_max=array_max)
        self.injector = FaultInjector(faults)
        self.rate_limiter = rate_limiter
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.stopping = threading.Event()    # set on shutdown, so delays end early
        self._lock = threading.Lock()
        self._api_key = api_key
        self._records: list[RequestRecord] = []

    def set_api_key(self, api_key: str) -> None:
        with self._lock:
            self._api_key = api_key

    def key_matches(self, presented: str) -> bool:
        """Compare in constant time: the sandbox's key check should not be the example of a timing leak."""
        with self._lock:
            expected = self._api_key
        return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))

    def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the sandbox is stopping."""
        if seconds > 0:
            self.stopping.wait(seconds)

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        """Forget profiles and the request log; the key, faults and rate limit stay."""
        self.store.reset()
        with self._lock:
            self._records.clear()
