"""Tell systemd how the daemon is doing (sd_notify), without linking libsystemd.

The protocol is one datagram of newline-separated `KEY=value` assignments sent to the AF_UNIX socket
named by $NOTIFY_SOCKET: a filesystem path, or an abstract name written with a leading "@".
Outside systemd (no $NOTIFY_SOCKET) every call does nothing, so the daemon runs the same either way.

Reload, as systemd (>= 253) expects it: `reloading()` first, then `ready()` once the new
configuration is in use. Older systemd ignores the extra MONOTONIC_USEC field.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Mapping

from rpi2braze.log import get_logger

log = get_logger(__name__)

# systemd halves WatchdogSec in its own helper (sd_watchdog_enabled users ping at half the
# period) so that one late ping does not kill a healthy service.
WATCHDOG_SAFETY_FACTOR = 0.5


class Notifier:
    """Sends state changes to systemd's notification socket; a no-op when there is none.

    Sending never raises: systemd being gone must not stop delivery. The first failure is logged
    as a warning, later ones are not, so a broken socket cannot flood the journal.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ):
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog_interval = _watchdog_interval(environ) if self._address else None
        self._failure_logged = False
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when systemd gave us a socket to report to."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog()` calls that keep systemd's watchdog satisfied (half of
        WatchdogSec), or None when no watchdog is armed for this process."""
        return self._watchdog_interval

    def ready(self) -> None:
        """Startup (or a reload) is finished; the service is up."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """Show `text` as the one-line status in `systemctl status`."""
        # A newline would start a new assignment, letting the text set arbitrary fields.
        single_line = " ".join(text.splitlines())
        self._send(f"STATUS={single_line}")

    def watchdog(self) -> None:
        """The main loop is alive; reset systemd's watchdog timer."""
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun (draining); systemd stops waiting for READY and starts its stop timeout."""
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """A reload has begun; call `ready()` when it is done."""
        # CLOCK_MONOTONIC, the clock systemd compares against; Python's monotonic() uses it on Linux.
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode("utf-8"))
        except OSError as exc:
            self._log_failure_once(exc)

    def _log_failure_once(self, exc: OSError) -> None:
        with self._lock:
            if self._failure_logged:
                return
            self._failure_logged = True
        log.warning("systemd_notify_failed", error=str(exc), errno=exc.errno)


def _socket_address(value: str) -> str | bytes | None:
    """Given $NOTIFY_SOCKET, return the address to connect to, or None if it is unusable.

    "@name" is an abstract socket: its address begins with a NUL byte instead of the "@".
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    # systemd also allows vsock: addresses (for VMs); rpi2braze does not run there.
    return None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Return half of $WATCHDOG_USEC in seconds, if the watchdog is meant for this process."""
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(os.getpid()):
        return None  # inherited from a parent; the watchdog belongs to someone else
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 * WATCHDOG_SAFETY_FACTOR
