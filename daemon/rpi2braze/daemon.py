"""The long-running process: signals, systemd notifications, the HTTP listener, config reload.

Signal handlers only set flags. The main thread waits on `stop.wait(timeout)`, never an unbounded
join, and does the logging, health checks, reloads and draining. First SIGTERM/SIGINT: warm stop
(batches in flight finish and are recorded, nothing new starts, exit 0). Second: stop waiting.
SIGHUP: reload the config; an invalid new config is refused and the old one keeps running.
"""

from __future__ import annotations

import signal
import threading
import time

from rpi2braze import metrics
from rpi2braze.config import load_settings
from rpi2braze.engine import Engine
from rpi2braze.errors import ConfigError, SourceError
from rpi2braze.health import HEALTH
from rpi2braze.http_api import HttpApi
from rpi2braze.post_execution import PostExecution
from rpi2braze.log import get_logger
from rpi2braze.notify import Notifier
from rpi2braze.settings import Settings

log = get_logger(__name__)

SUPERVISE_SECONDS = 1.0
STATUS_EVERY_SECONDS = 5.0
DRAIN_GRACE_SECONDS = 5.0


class Daemon:
    """Owns the running Engine and everything around it; `run()` returns the exit code."""

    def __init__(self, settings: Settings, config_path: str | None = None, notifier: Notifier | None = None,
                 reload_requested: threading.Event | None = None):
        """`reload_requested`: set by a SIGHUP that came before `run` took over the signal."""
        self.settings = settings
        self.config_path = config_path
        self.stop = threading.Event()
        self._force = threading.Event()
        self._reload = reload_requested or threading.Event()
        self._notifier = notifier or Notifier()
        self._engine: Engine | None = None
        self._http: HttpApi | None = None
        self._next_status = 0.0
        self._exit_code = 0

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            self._engine, self._http = self._start_engine(self.settings)
            log.info("daemon_started", sources=[s.name for s in self.settings.sources], workers=self.settings.workers,
                     senders=self.settings.braze.concurrency, state=self.settings.state.path,
                     http=self._http.port if self._http else None)
            self._notifier.ready()
            while not self.stop.wait(SUPERVISE_SECONDS):
                try:
                    self._tick()
                except Exception:  # a busy state file or a failed reload must not end the daemon
                    log.exception("supervision_error")
            log.info("daemon_stopping", reason="signal")
            self._notifier.stopping()
            self._engine.drain(self._drain_deadline(), self._force, self._notifier.watchdog)
            return self._exit_code
        finally:
            self._teardown()

    def _tick(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            self._reload_config()
        self._engine.supervise()
        self._notifier.watchdog()
        if time.monotonic() >= self._next_status:
            self._next_status = time.monotonic() + STATUS_EVERY_SECONDS
            self._report_status()

    def _report_status(self) -> None:
        state = self._engine.pipeline.context.state
        pending = state.pending()
        oldest = min((record.first_seen for record in pending), default=None)
        metrics.OLDEST_PENDING_FOLDER_AGE_SECONDS.set(time.time() - oldest if oldest else 0)
        metrics.QUEUE_DEPTH.set(self._engine.queue_depth)
        self._notifier.status(f"{self._engine.queue_depth} queued, {self._engine.in_progress} delivering, "
                              f"{len(pending)} pending")

    def _reload_config(self) -> None:
        try:
            settings = load_settings(self.config_path)
        except ConfigError as error:
            log.error("reload_refused", problems=error.problems, hint="the running configuration stays in force")
            return
        self._notifier.reloading()
        log.info("reload_started")
        self._engine.drain(self._drain_deadline(), self._force, self._notifier.watchdog)
        self._engine.close(timeout=5.0)
        if self._http is not None:
            self._http.stop()
        try:
            self._engine, self._http = self._start_engine(settings)
            self.settings = settings
            log.info("reload_done", sources=[s.name for s in settings.sources])
        except Exception as error:
            # the new config validated but cannot start (port taken, state file busy): go back to the old one
            log.error("reload_failed", error=str(error), hint="the previous configuration runs again")
            self._restart_previous()
        if not self.stop.is_set():
            self._notifier.ready()

    def _restart_previous(self) -> None:
        """Start the previous configuration again; if that fails too, stop with exit code 1 (systemd
        restarts the service) rather than run on without an engine, delivering nothing."""
        try:
            self._engine, self._http = self._start_engine(self.settings)
        except Exception as error:
            log.critical("restart_failed", error=str(error), hint="exiting: systemd starts rpi2braze again")
            self._exit_code = 1
            self.stop.set()

    def _start_engine(self, settings: Settings) -> tuple[Engine, HttpApi | None]:
        engine = Engine(settings, previous=self._engine)
        try:
            http = self._start_http(settings, engine)
        except Exception:
            engine.close(timeout=0.0)
            raise
        return engine.start(), http

    def _start_http(self, settings: Settings, engine: Engine) -> HttpApi | None:
        if settings.http is None:
            return None
        http = settings.http
        return HttpApi(http.listen_host, http.listen_port, http.token,
                       lambda call: self._on_post_execution(engine, http.post_execution_source, call), self._health).start()

    def _on_post_execution(self, engine: Engine, source: str | None, call: PostExecution) -> str:
        if source is None:
            raise SourceError("no local or poll source to resolve RPI's call against; set http.post_execution_source")
        described = engine.queue_now(source, call.channelName, call.offerName, call.workflowAssociationInstanceID)
        log.info("post_execution_received", source=source, channel=call.channelName, offer=call.offerName,
                 workflow_id=call.workflowAssociationInstanceID, channel_execution_id=call.channelExecutionID,
                 folder=described)
        return described

    def _health(self) -> tuple[bool, dict]:
        healthy, details = HEALTH.report()
        details["queued"] = self._engine.queue_depth if self._engine else 0
        return healthy and not self.stop.is_set(), details

    def _drain_deadline(self) -> float:
        return time.monotonic() + self.settings.braze.timeout_seconds + DRAIN_GRACE_SECONDS

    def _teardown(self) -> None:
        self.stop.set()
        if self._http is not None:
            self._http.stop()
        if self._engine is not None:
            self._engine.close(timeout=0.0 if self._force.is_set() else 5.0)
        log.info("daemon_stopped")

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, lambda signum, frame: self._reload.set())

    def _on_stop_signal(self, signum, frame) -> None:
        if self.stop.is_set():
            self._force.set()
        self.stop.set()
