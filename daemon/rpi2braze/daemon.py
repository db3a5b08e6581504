"""The long-running daemon: scanner, folder workers and senders, supervised by the main thread.

Signal handlers only set flags. The main thread waits on `stop.wait(timeout)`, never an unbounded
join, and does the logging, health checks and draining. First SIGTERM/SIGINT: warm stop (batches
in flight finish, nothing new starts, state is flushed, exit 0). Second: stop waiting.
"""

from __future__ import annotations

import queue
import signal
import threading
import time

from rpi2braze.log import get_logger
from rpi2braze.model import ExportFolder, WorkflowStatus
from rpi2braze.pipeline import Pipeline
from rpi2braze.scanner import Scanner
from rpi2braze.settings import Settings, SourceSettings
from rpi2braze.sources import build_source
from rpi2braze.sources.base import Source
from rpi2braze.worker import FolderDelivery

log = get_logger(__name__)

SUPERVISE_SECONDS = 1.0
DRAIN_GRACE_SECONDS = 5.0
_SENTINEL = None


class Daemon:
    """Owns every thread of a running rpi2braze; `run()` returns the process exit code."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stop = threading.Event()
        self._force = threading.Event()
        self._folders: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._targets: dict[str, object] = {}
        self._pipeline: Pipeline | None = None
        self._scanner: Scanner | None = None
        self._sources: dict[str, Source] = {}

    def run(self) -> int:
        self._install_signal_handlers()
        try:
            self._start()
            log.info("daemon_started", sources=[s.name for s in self.settings.sources], workers=self.settings.workers,
                     senders=self.settings.braze.concurrency, state=self.settings.state.path)
            while not self.stop.wait(SUPERVISE_SECONDS):
                self._supervise()
            log.info("daemon_stopping", reason="signal")
            self._drain()
            return 0
        finally:
            self._teardown()

    def _start(self) -> None:
        self._pipeline = Pipeline.open(self.settings, self.stop)
        pairs = [(source_settings, build_source(source_settings)) for source_settings in self.settings.sources]
        self._sources = {settings.name: source for settings, source in pairs}
        self._scanner = Scanner(pairs, self.settings.channels, self._pipeline.context.state, self._enqueue, self.stop)
        self._spawn("scanner", self._scanner.run)
        for index in range(self.settings.workers):
            self._spawn(f"folder-worker-{index}", self._work)

    def _spawn(self, name: str, target) -> None:
        self._targets[name] = target
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _enqueue(self, folder: ExportFolder, source: Source, source_settings: SourceSettings) -> None:
        self._folders.put((folder, source, source_settings))

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                item = self._folders.get(timeout=SUPERVISE_SECONDS)
            except queue.Empty:
                continue
            if item is _SENTINEL:
                return
            folder, source, source_settings = item
            status = WorkflowStatus.IN_PROGRESS
            try:
                status = FolderDelivery(folder, source, source_settings, self._pipeline.context).run()
            except Exception:
                log.exception("folder_worker_error", workflow_id=folder.key.workflow_id, source=folder.key.source)
                status = WorkflowStatus.PENDING
            finally:
                self._scanner.release(folder.key, status)

    def _supervise(self) -> None:
        """Replace a dead thread (a bug must not silently stop delivery)."""
        for index, thread in enumerate(self._threads):
            if not thread.is_alive() and not self.stop.is_set():
                log.error("thread_died", thread=thread.name)
                replacement = threading.Thread(target=self._targets[thread.name], name=thread.name, daemon=True)
                replacement.start()
                self._threads[index] = replacement

    def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.braze.timeout_seconds + DRAIN_GRACE_SECONDS
        for _ in self._threads:
            self._folders.put(_SENTINEL)
        for thread in self._threads:
            while thread.is_alive() and not self._force.is_set() and time.monotonic() < deadline:
                thread.join(0.2)
        if any(thread.is_alive() for thread in self._threads):
            log.warning("daemon_stop_forced", waiting=[t.name for t in self._threads if t.is_alive()])

    def _teardown(self) -> None:
        self.stop.set()
        for source in self._sources.values():
            source.close()
        if self._pipeline is not None:
            self._pipeline.close(timeout=0.0 if self._force.is_set() else 5.0)
        log.info("daemon_stopped")

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)

    def _on_stop_signal(self, signum, frame) -> None:
        if self.stop.is_set():
            self._force.set()
        self.stop.set()
