"""Everything that delivers, built from one Settings: sources, scanner, folder workers, senders.

The daemon owns one Engine at a time; a config reload drains the old engine (batches in flight
finish and are recorded) and starts a new one, so changed sources and keys take effect without a
restart and without losing anything.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from rpi2braze.errors import SourceError, SourceUnavailable
from rpi2braze.folderqueue import Closed, FolderQueue, is_small
from rpi2braze.log import get_logger
from rpi2braze.model import ExportFolder, WorkflowStatus
from rpi2braze.pipeline import Pipeline
from rpi2braze.scanner import Scanner
from rpi2braze.settings import Settings, SourceSettings
from rpi2braze.sources import build_source
from rpi2braze.sources.base import Source
from rpi2braze.worker import FolderDelivery

log = get_logger(__name__)

POLL_SECONDS = 1.0


class Engine:
    """Owns the delivery threads of one configuration."""

    def __init__(self, settings: Settings, previous: "Engine | None" = None):
        """`previous`: the engine a reload replaces (drained and closed)."""
        self.settings = settings
        self.stop = threading.Event()
        self._folders: FolderQueue = FolderQueue()
        self._targets: dict[str, object] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._in_progress = 0
        self._count_lock = threading.Lock()
        self.pipeline = Pipeline.open(settings, self.stop, previous=previous.pipeline if previous else None)
        pairs = [(source_settings, build_source(source_settings)) for source_settings in settings.sources]
        self._sources = {source_settings.name: source for source_settings, source in pairs}
        self.scanner = Scanner(pairs, settings.channels, self.pipeline.context.state, self._enqueue, self.stop)

    def start(self) -> "Engine":
        self._spawn("scanner", self.scanner.run)
        for index in range(self.settings.workers):
            self._spawn(f"folder-worker-{index}", self._work)
        self._spawn("small-folder-worker", lambda: self._work(small_only=True))   # folderqueue.py
        return self

    @property
    def queue_depth(self) -> int:
        return len(self._folders)

    @property
    def in_progress(self) -> int:
        return self._in_progress

    def queue_now(self, source_name: str, channel: str, offer: str, workflow_id: str) -> str:
        """RPI's Post-Execution call: queue that folder now. Return what happened, for the caller."""
        for part in (channel, offer, workflow_id):
            if part in ("", ".", "..") or any(bad in part for bad in ("/", "\\", "\x00")):
                raise SourceError(f"not a usable folder name: {part!r}")
        if self.stop.is_set():   # nothing takes folders from the queue any more
            raise SourceUnavailable("rpi2braze is stopping or reloading; the folder is delivered once it "
                                    "settles, or when this call is made again")
        folder = self.scanner.queue_now(source_name, channel, offer, workflow_id)
        relpath = f"{channel}/{offer}/{workflow_id}"
        return folder.location if folder else f"{relpath} (not queued now: finished, busy, or no data file yet)"

    def supervise(self) -> None:
        """Replace a dead thread: a bug must not silently stop delivery."""
        for name, thread in list(self._threads.items()):
            if not thread.is_alive() and not self.stop.is_set():
                log.error("thread_died", thread=name)
                self._spawn(name, self._targets[name])

    def drain(self, deadline: float, force: threading.Event, alive: Callable[[], None] = lambda: None) -> None:
        """Stop taking work, let batches in flight finish until `deadline` (monotonic) or `force`.
        `alive()` is called while it waits (systemd's watchdog: a drain may outlast its period)."""
        self.stop.set()
        self.scanner.wake()   # it may be waiting out a long scan interval
        self._folders.close()
        for thread in self._threads.values():
            while thread.is_alive() and not force.is_set() and time.monotonic() < deadline:
                thread.join(0.2)
                alive()
        waiting = [name for name, thread in self._threads.items() if thread.is_alive()]
        if waiting:
            log.warning("drain_incomplete", waiting=waiting)

    def close(self, timeout: float) -> None:
        self.stop.set()
        for source in self._sources.values():
            source.close()
        self.pipeline.close(timeout)

    def _spawn(self, name: str, target) -> None:
        self._targets[name] = target
        self._threads[name] = threading.Thread(target=target, name=name, daemon=True)
        self._threads[name].start()

    def _enqueue(self, folder: ExportFolder, source: Source, source_settings: SourceSettings) -> None:
        small = is_small(folder)
        ahead, delivering = len(self._folders), self._in_progress
        if ahead or delivering >= self.settings.workers + small:   # no worker free for it: `status` says so
            # before it is queued: a worker's begin() must come after, not be overwritten
            self.pipeline.context.state.set_pending(folder.key, f"queued: waiting for a folder worker "
                                                                f"({delivering} delivering, {ahead} queued ahead)")
        self._folders.put((folder, source, source_settings), small)

    def _work(self, small_only: bool = False) -> None:
        while not self.stop.is_set():
            try:
                item = self._folders.get(small_only, POLL_SECONDS)
            except Closed:
                return
            if item is not None:
                self._deliver(*item)

    def _deliver(self, folder: ExportFolder, source: Source, source_settings: SourceSettings) -> None:
        status = WorkflowStatus.IN_PROGRESS
        delivery = FolderDelivery(folder, source, source_settings, self.pipeline.context)
        with self._count_lock:
            self._in_progress += 1
        try:
            status = delivery.run()
        except Exception:
            log.exception("folder_worker_error", workflow_id=folder.key.workflow_id, source=folder.key.source)
            status = WorkflowStatus.PENDING
        finally:
            with self._count_lock:
                self._in_progress -= 1
            # another process delivering it is no failure of the folder's: looked at again after the first delay
            self.scanner.release(folder.key, status, failed=not delivery.busy_elsewhere)
