"""Deliver one complete workflow folder: read, map, batch, send, record, archive.

One `FolderDelivery` per folder. It streams every data file once, numbers its batches
deterministically, skips batches the state file says Braze already acknowledged (a restart after
a crash), and hands the rest to the shared SenderPool. The folder is DELIVERED only when every
batch is acknowledged; only then is it archived. While Braze refuses the key, the batches wait in
the senders and the state file shows the folder as pending, with Braze's answer as the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

from rpi2braze import __version__, archive, concurrency, metrics
from rpi2braze.children import processes_for, produce_in_children
from rpi2braze.config_schema import LOCAL_TYPES
from rpi2braze.deadletter import DeadLetterWriter, workflow_deadletter_path
from rpi2braze.errors import BadFileError, PermanentDeliveryError, ProductionFailed, SourceError, StateError
from rpi2braze.files import data_files
from rpi2braze.locks import WorkflowLocks
from rpi2braze.log import current_format, get_logger
from rpi2braze.model import Batch, DeliveryResult, ExportFolder, WorkflowStatus
from rpi2braze.producer import Job, Production, produce, runs_in_child
from rpi2braze.sender import SenderPool
from rpi2braze.settings import Settings, SourceSettings
from rpi2braze.sources.base import Source
from rpi2braze.state import FINAL_STATUSES, StateStore

log = get_logger(__name__)

# A partition is one stream of requests in flight. Each ends with one part-full batch, so below
# this much data per partition (a dozen or more full batches) fewer, fuller requests are better.
BYTES_PER_PARTITION = 256 * 1024
# Each partition holds an open batch in memory. 64 streams at 50 ms a request carry 1,280
# requests a second, more than the reading processes of a 2-core machine produce; at 128 a
# reading process needed ~40 MB and ~15% more CPU per row for no gain (bench/README.md).
MAX_PARTITIONS = 64
WAIT_POLL_SECONDS = 0.5
INTERRUPTED_REASON = ("interrupted: rpi2braze stopped while delivering it; acknowledged batches are kept, "
                      "and the rest goes out when it is delivered again")


@dataclass(frozen=True)
class DeliveryContext:
    """What every folder delivery shares."""

    settings: Settings
    state: StateStore
    pool: SenderPool
    stop: threading.Event
    locks: WorkflowLocks

    @property
    def state_dir(self) -> str:
        return self.settings.state.directory


def partitions_for(folder: ExportFolder, senders: int) -> int:
    """How many partitions (parallel request streams, at most `senders` and MAX_PARTITIONS) a
    folder of this size deserves."""
    return max(1, min(senders, MAX_PARTITIONS, folder.data_bytes // BYTES_PER_PARTITION + 1))


class FolderDelivery:
    """Delivers one folder; `run()` returns the workflow's status afterwards."""

    def __init__(self, folder: ExportFolder, source: Source, source_settings: SourceSettings, context: DeliveryContext):
        self.folder = folder
        self.key = folder.key
        self._source = source
        self._source_settings = source_settings
        self._context = context
        self._lock = threading.Condition()
        self._outstanding = 0
        self._failure: Exception | None = None
        self._interrupted = False
        self._deadletter: DeadLetterWriter | None = None
        self._partitions = 1
        self._shown_refused = False
        self._shown_outage = ""       # the outage text in the state file, and when it was written
        self._shown_outage_at = 0.0
        self._gone = False            # the folder was moved away once every row was read
        self.busy_elsewhere = False   # run() found another process delivering this workflow

    def run(self, watch: Callable[[], ContextManager] = contextlib.nullcontext) -> WorkflowStatus:
        """Deliver the folder unless another rpi2braze process is delivering it (then return
        PENDING and leave its state record alone: that process owns it). `watch()` is entered
        once this process owns the workflow, for the delivery (a progress display)."""
        with self._context.locks.hold(self.key) as held:
            if held:
                with watch():
                    return self._run()
        log.warning("workflow_busy_elsewhere", workflow_id=self.key.workflow_id, source=self.key.source,
                    reason="another rpi2braze process (the daemon, or `process`) is delivering it, "
                           "or a worker of this one that a reload has not yet stopped")
        self.busy_elsewhere = True
        return WorkflowStatus.PENDING

    def _run(self) -> WorkflowStatus:
        state = self._context.state
        record = state.record_seen(self.key, self.folder.location)
        if record.status in FINAL_STATUSES:   # another process finished it before this one got the lock
            return record.status
        try:
            self._check_listing("the folder changed after it settled; it will be looked at again")
            self._partitions, acked = state.begin(
                self.key, partitions_for(self.folder, self._context.pool.threads), self._fingerprint())
            with self._production(acked) as (headers, batches):
                path = workflow_deadletter_path(self._context.state_dir, self.key)
                # Batches stay acknowledged only while a run goes on (finish, requeue and a restart
                # forget them), and its rejections are in the file then. Without any, every batch is
                # sent: the file is begun anew, an earlier one set aside (deadletter.py).
                resuming = bool(acked)
                with DeadLetterWriter(path, headers, resuming=resuming) as self._deadletter:
                    try:
                        self._send_all(batches)
                    finally:  # batches in flight are recorded before the dead-letter file closes, whatever happened
                        self._wait_outstanding()
            if not self._interrupted and self._failure is None:
                # a writer that paused longer than settle_seconds and went on: not delivered
                self._check_listing(after_reading=True, problem="the folder changed while it was being read; "
                                    "it will be delivered again once it settles")
        except BadFileError as error:
            return self._quarantine(str(error))
        except SourceError as error:
            return self._postpone(f"source problem: {error}")
        except StateError as error:   # e.g. an earlier run's dead-letter file could not be set aside
            return self._postpone(str(error))
        except ProductionFailed as error:   # the reading process died: stopped with us, or killed
            if self._context.stop.is_set():
                self._interrupted = True
            else:
                return self._postpone(str(error))
        return self._conclude()

    def _production(self, acked: frozenset[int]) -> ContextManager[Production]:
        """The folder's batches, made in this process or, for a big folder, in child processes."""
        settings = self._context.settings
        job = Job(self.folder, self._source_settings, settings.mapping, settings.braze.max_objects_per_request,
                  settings.braze.max_request_bytes, self._partitions, acked, settings.log_level, current_format())
        big = self.folder.data_bytes >= settings.parse_process_min_bytes
        if big and runs_in_child(self._source_settings):
            # Each reading process opens its own connection and reads the whole file: a remote
            # share gets one, so it sees no more sessions or traffic than before.
            local = self._source_settings.type in LOCAL_TYPES
            return produce_in_children(job, processes_for(self._partitions) if local else 1, self._context.stop)
        return produce(job, self._source)

    def _fingerprint(self) -> str:
        """What batch numbers depend on: the files, the batching and mapping settings, this version."""
        braze = self._context.settings.braze
        parts = (__version__, self.folder.mode, braze.max_objects_per_request, braze.max_request_bytes,
                 repr(self._context.settings.mapping), repr(self._source_settings.reading),
                 sorted((entry.name, entry.size, entry.mtime) for entry in self.folder.data_files))
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]

    def _check_listing(self, problem: str, after_reading: bool = False) -> None:
        """Raise SourceError(problem) if the folder's data files are not those it settled with.
        After reading every file to its end, a folder that is gone (moved away meanwhile) is not
        a change: every row was read and acknowledged, and no later scan would find it again."""
        current = data_files(self._source.list_dir(self.key.relpath), self._source_settings.data_files)
        if after_reading and not current:
            log.warning("folder_gone_after_delivery", workflow_id=self.key.workflow_id, source=self.key.source,
                        location=self.folder.location, hint="every row was read and delivered; nothing to archive")
            self._gone = True
            return
        if {entry.name: entry for entry in current} != {entry.name: entry for entry in self.folder.data_files}:
            raise SourceError(problem)

    def _send_all(self, batches: Iterator[Batch]) -> None:
        for batch in batches:
            if self._context.stop.is_set() or self._failure is not None:
                self._interrupted = True
                break
            if not batch.rows:
                self._record(batch, DeliveryResult(self.key, batch.number, 0))
                continue
            with self._lock:
                self._outstanding += 1
            self._context.pool.submit(batch, self._on_done, waiting=self._show_waiting)

    def _on_done(self, batch: Batch, outcome: DeliveryResult | Exception) -> None:
        try:
            if isinstance(outcome, DeliveryResult):
                self._record(batch, outcome)
            elif isinstance(outcome, PermanentDeliveryError):
                self._failure = outcome
            else:
                self._interrupted = True
                if not self._context.stop.is_set():
                    self._failure = outcome
        except Exception as error:  # not recorded (the state file failed): the folder is not delivered
            log.exception("batch_not_recorded", workflow_id=self.key.workflow_id, batch=batch.number)
            self._failure = error
        finally:
            with self._lock:
                self._outstanding -= 1
                self._lock.notify_all()

    def _record(self, batch: Batch, result: DeliveryResult) -> None:
        """Dead-letter first, then acknowledge: a crash in between re-sends, never loses."""
        rejections = batch.rejected + result.rejections
        with self._lock:
            self._deadletter.write(rejections)
        if self._context.state.ack_batch(self.key, batch.number, result.rows_delivered, len(rejections)):
            metrics.ROWS.labels(outcome="delivered").inc(result.rows_delivered)
            metrics.ROWS.labels(outcome="rejected").inc(len(rejections))

    def _wait_outstanding(self) -> None:
        while True:
            with self._lock:
                if not self._outstanding:
                    return
                self._lock.wait(WAIT_POLL_SECONDS)
            self._show_waiting()

    def _show_waiting(self) -> None:
        """Show in the state file why batches wait: while Braze refuses the key, the folder is
        pending with the refusal; during an outage it stays in progress with the outage as its
        reason, rewritten when its latest failure changes, at most every OUTAGE_SHOWN_SECONDS.
        Only shown: a state file too busy to show it is tried again at the next call, and
        must not end the wait for batches still in flight (they would be sent again)."""
        gate = self._context.pool.gate
        refusal, outage = gate.refusal, gate.outage
        shown = outage if outage is not None and refusal is None else ""
        # an outage's start and end are shown at once; its changes, once per interval
        due = not (shown and self._shown_outage) or (
            time.monotonic() - self._shown_outage_at >= concurrency.OUTAGE_SHOWN_SECONDS)
        try:
            if shown != self._shown_outage and due:
                self._context.state.note(self.key, shown)
                self._shown_outage, self._shown_outage_at = shown, time.monotonic()
            if refusal is not None and not self._shown_refused:
                self._context.state.set_pending(self.key, refusal)
                self._shown_refused = True
                log.error("workflow_waiting_for_braze", workflow_id=self.key.workflow_id, source=self.key.source,
                          reason=refusal)
            elif refusal is None and self._shown_refused:
                self._context.state.begin(self.key, self._partitions)   # in progress again; partitions unchanged
                self._shown_refused = False
        except StateError as error:
            log.warning("workflow_status_not_shown", workflow_id=self.key.workflow_id, reason=str(error))

    def _conclude(self) -> WorkflowStatus:
        if self._failure is not None:
            return self._postpone(str(self._failure))
        if self._interrupted:   # status must not say in_progress while nothing delivers it
            log.info("workflow_interrupted", workflow_id=self.key.workflow_id, source=self.key.source)
            self._context.state.set_pending(self.key, INTERRUPTED_REASON)
            return WorkflowStatus.PENDING
        self._context.state.finish(self.key, WorkflowStatus.DELIVERED)
        record = self._context.state.get(self.key)
        log.info("workflow_delivered", source=self.key.source, channel=self.key.channel, offer=self.key.offer,
                 workflow_id=self.key.workflow_id, rows_delivered=record.rows_delivered,
                 rows_rejected=record.rows_rejected, location=self.folder.location)
        metrics.FOLDERS.labels(source=self.key.source, outcome="delivered").inc()
        if not self._gone:
            archive.after_delivery(self._source, self._source_settings, self.key)
        return WorkflowStatus.DELIVERED

    def _postpone(self, reason: str) -> WorkflowStatus:
        log.error("workflow_postponed", workflow_id=self.key.workflow_id, source=self.key.source, reason=reason)
        self._context.state.set_pending(self.key, reason)
        metrics.FOLDERS.labels(source=self.key.source, outcome="failed").inc()
        return WorkflowStatus.PENDING

    def _quarantine(self, reason: str) -> WorkflowStatus:
        log.error("workflow_quarantined", workflow_id=self.key.workflow_id, source=self.key.source, reason=reason)
        self._context.state.finish(self.key, WorkflowStatus.QUARANTINED, reason)
        metrics.FOLDERS.labels(source=self.key.source, outcome="quarantined").inc()
        archive.quarantine(self._source, self._source_settings, self.key, reason, self._context.state_dir)
        return WorkflowStatus.QUARANTINED
