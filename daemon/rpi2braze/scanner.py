"""One Scanner serves every source: it lists <Channel>/<Offer>/<Workflow ID>/ and queues complete folders.

Events are hints; the scan is the truth. Watchdog events only wake the scanner early; each source
is listed every `scan_interval_seconds`, and sooner when a folder is due to settle. Folders the
state file records as finished are never listed again, so a large tree of delivered folders costs
one listing per offer folder per scan.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from rpi2braze import metrics
from rpi2braze.completion import Observation, is_complete, observe
from rpi2braze.errors import SourceError, SourceUnavailable, StateError
from rpi2braze.files import all_older_than, data_files
from rpi2braze.health import HEALTH
from rpi2braze.log import get_logger
from rpi2braze.model import ChannelMode, ExportFolder, WorkflowKey, WorkflowStatus
from rpi2braze.reader import decoded_cleanly
from rpi2braze.scan_notices import FolderNotices, unconfigured_sources
from rpi2braze.settings import SourceSettings
from rpi2braze.sources.base import Source
from rpi2braze.state import FINAL_STATUSES, StateStore

log = get_logger(__name__)

FINISHED = FINAL_STATUSES
RETRY_PENDING_SECONDS = 30.0   # a postponed folder (source hiccup, reading process killed) is first retried after at most this
WAKE_DEBOUNCE_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 300.0  # an unreachable source, a folder postponed again: tried at doubling intervals up to this
FULL_REFRESH_SECONDS = 300.0  # the finished set is re-read from the state file at least this often
SCAN_RETRY_SECONDS = 5.0     # after a scan failed in a way it did not expect

Submit = Callable[[ExportFolder, Source, SourceSettings], None]


@dataclass
class _Watched:
    settings: SourceSettings
    source: Source
    next_scan: float = 0.0
    up: bool = True
    failures: int = 0
    observations: dict[WorkflowKey, Observation] = field(default_factory=dict)


class Scanner:
    """Finds complete workflow folders and hands them to `submit`. Runs in its own thread."""

    def __init__(self, sources: list[tuple[SourceSettings, Source]], channels: dict[str, ChannelMode],
                 state: StateStore, submit: Submit, stop: threading.Event, clock: Callable[[], float] = time.monotonic):
        self._watched = {settings.name: _Watched(settings, source) for settings, source in sources}
        metrics.register_sources(set(self._watched))
        HEALTH.forget_except("source:", set(self._watched))
        self._channels = channels
        self._state = state
        self._submit = submit
        self._stop = stop
        self._clock = clock
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._busy: set[WorkflowKey] = set()           # queued or being delivered
        self._held: dict[WorkflowKey, float] = {}      # postponed until this time
        self._postponed: dict[WorkflowKey, int] = {}   # times in a row a worker postponed it
        self._finished: set[WorkflowKey] = set()
        self._before_cutover: dict[WorkflowKey, float] = {}  # older than ignore_folders_before: listed again after
        self._next_full_refresh = 0.0                  # when the finished set is re-read regardless
        self._notices = FolderNotices()
        self._unwatch: list[Callable[[], None]] = []
        unconfigured_sources(state.sources(), self._watched)

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        for watched in self._watched.values():
            try:
                stop_watching = watched.source.watch(self.wake)
            except OSError as error:   # out of inotify watches (ENOSPC): the periodic listing still decides
                log.warning("watch_unavailable", source=watched.settings.name, reason=str(error),
                            hint="folders are found by the periodic listing only")
                continue
            if stop_watching:
                self._unwatch.append(stop_watching)
        try:
            while not self._stop.is_set():
                next_due = self._scan_due_safely()
                self._wake.wait(max(0.05, next_due - self._clock()))
                if self._wake.is_set():
                    self._stop.wait(WAKE_DEBOUNCE_SECONDS)
                    self._wake.clear()
                    for watched in self._watched.values():
                        watched.next_scan = min(watched.next_scan, self._clock())
        finally:
            for stop_watching in self._unwatch:
                stop_watching()

    def _scan_due_safely(self) -> float:
        """scan_due; a state file that cannot be read is logged, and scanning goes on a little later."""
        try:
            return self.scan_due()
        except Exception:
            log.exception("scan_failed", hint=f"scanning again in {SCAN_RETRY_SECONDS:.0f} s")
            return self._clock() + SCAN_RETRY_SECONDS

    def scan_due(self) -> float:
        """Scan every source that is due; return when the next one is due (monotonic seconds)."""
        due = [watched for watched in self._watched.values() if self._clock() >= watched.next_scan]
        if due:
            self._refresh_finished()  # `retry` may have re-queued a workflow since the last scan
        for watched in due:
            if not self._stop.is_set():
                watched.next_scan = self._scan_source_safely(watched)
        return min(watched.next_scan for watched in self._watched.values())

    def _scan_source_safely(self, watched: _Watched) -> float:
        """_scan_source; what it did not expect (a bug) is logged, and that source is scanned again a
        little later, without holding up the sources after it."""
        try:
            return self._scan_source(watched)
        except Exception:
            log.exception("scan_failed", source=watched.settings.name,
                          hint=f"scanning it again in {SCAN_RETRY_SECONDS:.0f} s")
            return self._clock() + SCAN_RETRY_SECONDS

    def release(self, key: WorkflowKey, status: WorkflowStatus, failed: bool = True) -> None:
        """A worker is done with `key`: finished, or postponed and to be retried later; if it was
        not `failed` (another process holds it), after the first delay, and it does not count."""
        with self._lock:
            self._busy.discard(key)
            if status in FINISHED:
                self._finished.add(key)
            if status != WorkflowStatus.PENDING:
                self._postponed.pop(key, None)
                return self.wake()
            times = 1
            if failed:
                times = self._postponed[key] = self._postponed.get(key, 0) + 1
            delay = self._retry_delay(key, times)
            self._held[key] = self._clock() + delay
        log.info("workflow_retry_later", source=key.source, workflow_id=key.workflow_id, postponed_times=times,
                 retry_in_seconds=round(delay, 1))
        self.wake()

    def _retry_delay(self, key: WorkflowKey, times: int) -> float:
        """A postponed folder (its source dropped mid-download, its reading process was killed) is
        tried again after three scan intervals of its source, at most RETRY_PENDING_SECONDS; if it
        is postponed again and again, at doubling intervals up to MAX_BACKOFF_SECONDS, so a folder
        that kills its reading process (out of memory) is not read again every 30 s."""
        watched = self._watched.get(key.source)
        interval = watched.settings.scan_interval_seconds if watched else RETRY_PENDING_SECONDS
        return doubling(min(RETRY_PENDING_SECONDS, 3 * interval), times)

    def queue_now(self, source_name: str, channel: str, offer: str, workflow_id: str) -> ExportFolder | None:
        """RPI said this folder is complete: queue it without waiting to settle.

        Raise SourceError if the source or channel is unknown, SourceUnavailable if it cannot be
        listed. Return None if the folder is already finished or being delivered, or has no data
        file yet (not there, or not visible yet on a cached share: the regular scan will find it).
        """
        watched = self._watched.get(source_name)
        if watched is None:
            raise SourceError(f"unknown source {source_name!r}")
        if channel not in self._channels:
            raise SourceError(f"channel {channel!r} is not configured (channels: {', '.join(self._channels)})")
        key = WorkflowKey(source_name, channel, offer, workflow_id)
        return self._consider(watched, key, force=True)

    def _refresh_finished(self) -> None:
        """Re-read the finished workflows if the state file may disagree with what we know.

        Another process may have changed it: `retry` re-queues a workflow, `process` finishes one.
        Reading every record is the costliest part of scanning a large delivered tree (a fifth of a
        second for 10,000), so it is re-read only when the state file's number of finished
        workflows differs from ours, and at least every FULL_REFRESH_SECONDS, because a re-queue
        and a finish elsewhere within one scan interval would leave the number unchanged.
        """
        counts = self._state.counts()
        finished_count = sum(counts[str(status)] for status in FINISHED)
        with self._lock:
            agrees = finished_count == len(self._finished)
        if agrees and self._clock() < self._next_full_refresh:
            return
        self._next_full_refresh = self._clock() + FULL_REFRESH_SECONDS
        finished = {record.key for record in self._state.records(FINISHED)}
        with self._lock:
            self._finished = finished

    def _scan_source(self, watched: _Watched) -> float:
        """List the source's three levels and consider each workflow folder; return when to scan again.

        A source that cannot be listed is down: unreachable (SourceUnavailable), or refusing us (a
        SourceError: an unknown host key, a refused login), which an operator may fix while we run.
        Either way the daemon goes on and tries again later, at doubling intervals.
        """
        settings = watched.settings
        seen: set[WorkflowKey] = set()
        try:
            for channel in self._folders(watched, ""):
                if channel not in self._channels:
                    self._notices.once("unknown_channel_folder", settings.name, channel,
                                    "not one of the configured channels; left alone")
                    continue
                for offer in self._subfolders(watched, channel):
                    for workflow_id in self._subfolders(watched, f"{channel}/{offer}"):
                        seen.add(key := WorkflowKey(settings.name, channel, offer, workflow_id))
                        self._consider_safely(watched, key)
            self._set_up(watched, True, "")
            # list(): taken at once, while RPI's calls (the HTTP thread) may add observations
            watched.observations = {key: value for key, value in list(watched.observations.items()) if key in seen}
        except SourceError as error:
            self._set_up(watched, False, str(error))
        return self._clock() + self._next_delay(watched)

    def _subfolders(self, watched: _Watched, relpath: str) -> list[str]:
        """Return the folders below `relpath`; one that cannot be listed (permission denied) is
        warned about once and skipped: a folder below the base must not take the source down."""
        try:
            return self._folders(watched, relpath)
        except SourceUnavailable:
            raise
        except SourceError as error:
            self._notices.once("folder_unusable", watched.settings.name, relpath, str(error))
            return []

    def _consider_safely(self, watched: _Watched, key: WorkflowKey) -> None:
        """Consider one folder; a folder that cannot be used (a symlink out of the base) is skipped,
        and one the state file could not record (busy) is looked at again at the next scan."""
        try:
            self._consider(watched, key)
        except SourceUnavailable:
            raise
        except SourceError as error:
            self._notices.once("folder_unusable", key.source, key.relpath, str(error))
        except StateError as error:
            log.warning("folder_not_queued", source=key.source, folder=key.relpath, reason=str(error),
                        hint="looked at again at the next scan")

    def _folders(self, watched: _Watched, relpath: str) -> list[str]:
        entries = watched.source.list_dir(relpath)
        self._notices.misplaced(watched.settings, relpath, entries)
        names = sorted(entry.name for entry in entries if entry.is_dir and not entry.name.startswith("."))
        for name in names:
            if not decoded_cleanly(name):   # the state file, logs and Braze take UTF-8 only
                self._notices.once("folder_unusable", watched.settings.name, f"{relpath}/{name}".lstrip("/"),
                                "its name is not UTF-8 (undecodable bytes are shown escaped); rename it")
        return [name for name in names if decoded_cleanly(name)]

    def _consider(self, watched: _Watched, key: WorkflowKey, force: bool = False) -> ExportFolder | None:
        with self._lock:
            finished, busy = key in self._finished, key in self._busy
            held = not force and self._held.get(key, 0) > self._clock()
            old = self._before_cutover.get(key, 0.0) > self._clock()
        if finished and not busy and watched.settings.archive_path:   # back after it was archived?
            record = self._state.get(key)
            if record is not None and record.status == WorkflowStatus.DELIVERED:   # quarantined: retried by hand
                self._notices.late_data(watched.settings, record, watched.source.list_dir(key.relpath))
        if finished or busy or held or old:
            return None
        settings = watched.settings
        entries = watched.source.list_dir(key.relpath)
        if self._older_than_cutover(watched, key, entries):
            return None
        now = self._clock()
        if key not in watched.observations and entries:   # a call naming a folder not there sees nothing
            metrics.FOLDERS.labels(source=key.source, outcome="seen").inc()
        observation = observe(watched.observations.get(key), entries, now)
        watched.observations[key] = observation
        settle = 0.0 if force else settings.settle_seconds
        if not is_complete(observation, now, settle, settings.marker_file, settings.data_files):
            if now - observation.since >= settings.settle_seconds:
                self._notices.without_data(settings, key, entries)
            return None
        folder = ExportFolder(key, self._channels[key.channel], data_files(entries, settings.data_files),
                              watched.source.describe(key.relpath))
        with self._lock:  # the HTTP thread (RPI's call) and the scan may reach the same folder at once
            if key in self._finished or key in self._busy:
                return None
            self._busy.add(key)
            self._held.pop(key, None)
        try:
            self._state.record_seen(key, folder.location)  # `status` lists it as pending while it waits
            self._submit(folder, watched.source, settings)
        except BaseException:   # not queued after all: the next scan (or call) considers it again
            with self._lock:
                self._busy.discard(key)
            raise
        watched.observations.pop(key, None)
        log.info("folder_queued", source=key.source, channel=key.channel, offer=key.offer,
                 workflow_id=key.workflow_id, files=[entry.name for entry in folder.data_files], announced_by_rpi=force)
        metrics.FOLDERS.labels(source=key.source, outcome="queued").inc()
        return folder

    def _older_than_cutover(self, watched: _Watched, key: WorkflowKey, entries) -> bool:
        """True, after saying so once, if every data file of the folder is older than the source's
        `ignore_folders_before` and the state file does not know it: written before rpi2braze
        took over from another tool."""
        cutover = watched.settings.ignore_folders_before
        if cutover is None or not all_older_than(entries, watched.settings.data_files, cutover):
            return False
        if self._state.get(key) is not None:   # begun by rpi2braze: finished, whatever its age
            return False
        with self._lock:   # looked at again now and then: data written into it since is delivered
            self._before_cutover[key] = self._clock() + FULL_REFRESH_SECONDS
        self._notices.once("folder_ignored", key.source, key.relpath,
                           "its data files are older than the source's ignore_folders_before; not delivered")
        return True

    def _next_delay(self, watched: _Watched) -> float:
        """Scan again at the interval, sooner when an observed folder is due to settle, and at
        doubling intervals while the source is unreachable."""
        delay = watched.settings.scan_interval_seconds
        if watched.failures:
            return doubling(delay, watched.failures)
        now = self._clock()
        for observation in list(watched.observations.values()):
            due = observation.since + watched.settings.settle_seconds - now
            delay = min(delay, max(0.05, due + 0.05))
        return delay

    def _set_up(self, watched: _Watched, up: bool, reason: str) -> None:
        if watched.up != up:
            (log.info if up else log.error)("source_up" if up else "source_down", source=watched.settings.name, reason=reason)
        watched.up = up
        watched.failures = 0 if up else watched.failures + 1
        HEALTH.mark(f"source:{watched.settings.name}", up, reason)
        metrics.SOURCE_UP.labels(source=watched.settings.name).set(1 if up else 0)

    def sources_up(self) -> dict[str, bool]:
        return {name: watched.up for name, watched in self._watched.items()}


def doubling(delay: float, times: int) -> float:
    """`delay` the first time, twice that the second, and so on, up to MAX_BACKOFF_SECONDS."""
    return min(MAX_BACKOFF_SECONDS, delay * 2 ** min(times - 1, 16))
