"""The sandbox as a running thing: a real HTTP server on loopback, started and stopped by tests or the CLI.

    with SandboxServer(faults=Faults(error_rate=1.0, seed=1)) as sandbox:
        httpx.post(sandbox.url + "/users/track", ...)
        sandbox.store.get("u1")
"""

from __future__ import annotations

import signal
import sys
import threading

from rpi2braze.log import get_logger
from rpi2braze.sandbox.custom_attributes import DEFAULT_ARRAY_MAX
from rpi2braze.sandbox.faults import Faults
from rpi2braze.sandbox.handler import SandboxHTTPServer
from rpi2braze.sandbox.profiles import ProfileStore
from rpi2braze.sandbox.ratelimit import RateLimiter
from rpi2braze.sandbox.state import (
    DEFAULT_API_KEY, DEFAULT_MAX_BYTES, DEFAULT_MAX_OBJECTS, RequestRecord, SandboxState,
)

log = get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9292                # for the CLI; tests pass port=0 for an ephemeral port
POLL_INTERVAL_SECONDS = 0.02       # how quickly serve_forever notices stop()
HEALTH_CHECK_SECONDS = 0.5


class SandboxServer:
    """A Braze stand-in serving /users/track, /users/export/ids and /_sandbox/ from a background thread.

    `rate_limit=(requests, per_seconds)` turns on a fixed-window limit; `rate_limit_reset` ("epoch" or
    "delta") picks how X-RateLimit-Reset is written. Use as a context manager, or start() and stop().
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        faults: Faults | None = None,
        array_max: int = DEFAULT_ARRAY_MAX,
        rate_limit: tuple[int, float] | None = None,
        max_objects: int = DEFAULT_MAX_OBJECTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        rate_limit_reset: str = "epoch",
    ):
        limiter = RateLimiter(*rate_limit, reset_style=rate_limit_reset) if rate_limit else None
        self.state = SandboxState(api_key, faults, array_max, limiter, max_objects, max_bytes)
        self._address = (host, port)
        self._http: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> ProfileStore:
        return self.state.store

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log (every non-/_sandbox/ request), oldest first."""
        return self.state.requests()

    @property
    def faults(self) -> Faults:
        return self.state.injector.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self.state.injector.replace(faults)

    def set_api_key(self, api_key: str) -> None:
        self.state.set_api_key(api_key)

    def reset(self) -> None:
        """Forget profiles and the request log."""
        self.state.reset()

    @property
    def url(self) -> str:
        """The base URL, e.g. "http://127.0.0.1:54321". Raise RuntimeError before start()."""
        if self._http is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._http.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "SandboxServer":
        """Bind and serve in a background thread; return self. Raise OSError if the address is taken."""
        if self._http is not None:
            raise RuntimeError("the sandbox is already started")
        self.state.stopping.clear()
        self._http = SandboxHTTPServer(self._address, self.state)
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_SECONDS}, name="sandbox-http"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, and join the serving thread. Safe to call twice."""
        if self._http is None:
            return
        self.state.stopping.set()
        self._http.shutdown()
        self._http.cut_connections()
        self._thread.join()
        self._http.server_close()
        self._http, self._thread = None, None

    def __enter__(self) -> "SandboxServer":
        return self if self._http is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str = DEFAULT_API_KEY,
    faults: Faults | None = None,
    array_max: int = DEFAULT_ARRAY_MAX,
    rate_limit: tuple[int, float] | None = None,
    max_objects: int = DEFAULT_MAX_OBJECTS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> int:
    """Run a sandbox until SIGINT or SIGTERM (for `rpi2braze sandbox`); print its URL once it serves.

    Return 0 after a signal, 1 if the address cannot be bound or the server thread dies.
    """
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    sandbox = SandboxServer(host, port, api_key, faults, array_max, rate_limit, max_objects, max_bytes)
    try:
        try:
            sandbox.start()
        except OSError as error:
            print(f"rpi2braze sandbox: cannot listen on {host}:{port}: {error.strerror}", file=sys.stderr)
            return 1
        print(sandbox.url, flush=True)
        log.info("sandbox_started", url=sandbox.url)
        while not stop.wait(HEALTH_CHECK_SECONDS):
            if not sandbox.running:
                log.error("sandbox_thread_died")
                return 1
        log.info("sandbox_stopping")
        return 0
    finally:
        sandbox.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
