"""`rpi2braze process FOLDER...`: deliver named workflow folders now, in the foreground."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from dataclasses import replace
from typing import Callable

from rpi2braze.deadletter import workflow_deadletter_path
from rpi2braze.errors import Rpi2BrazeError, SourceError
from rpi2braze.files import data_files
from rpi2braze.model import ExportFolder, WorkflowKey, WorkflowStatus
from rpi2braze.pipeline import Pipeline
from rpi2braze.progress import Progress
from rpi2braze.settings import AD_HOC_SOURCE, RESEND_SOURCE, Settings, SourceSettings
from rpi2braze.state import FINAL_STATUSES, StateStore
from rpi2braze.sources.local import LocalSource
from rpi2braze.worker import FolderDelivery


Resolve = Callable[[str], tuple[ExportFolder, LocalSource, SourceSettings]]


def source_for(settings: Settings, base: str) -> SourceSettings:
    """The configured local/poll source whose base is `base`, else an ad-hoc local source."""
    for source in settings.sources:
        if source.type in ("local", "poll") and os.path.realpath(source.path) == os.path.realpath(base):
            return source
    return SourceSettings(name=AD_HOC_SOURCE, type="local", path=base, settle_seconds=0)


def resolve_folder(settings: Settings, path: str) -> tuple[ExportFolder, LocalSource, SourceSettings]:
    """Given <base>/<Channel>/<Offer>/<Workflow ID>, return the folder to deliver and its source.

    Raise SourceError if it is not a folder, its channel is not configured, or it has no data file.
    """
    folder_path = os.path.abspath(path.rstrip("/\\") or path)
    if not os.path.isdir(folder_path):
        raise SourceError(f"{path}: not a folder")
    offer_path, workflow_id = os.path.split(folder_path)
    channel_path, offer = os.path.split(offer_path)
    base, channel = os.path.split(channel_path)
    if channel not in settings.channels:
        raise SourceError(f"{path}: channel folder {channel!r} is not a configured channel "
                          f"({', '.join(settings.channels)}); expected <base>/<Channel>/<Offer>/<Workflow ID>")
    source_settings = source_for(settings, base)
    source = LocalSource(replace(source_settings, path=base), watch=False)
    key = WorkflowKey(source_settings.name, channel, offer, workflow_id)
    files = data_files(source.list_dir(key.relpath), source_settings.data_files)
    if not files:
        raise SourceError(f"{path}: no data file matching {', '.join(source_settings.data_files)}")
    return ExportFolder(key, settings.channels[channel], files, folder_path), source, source_settings


def process_folders(settings: Settings, paths: list[str], resolve: Resolve | None = None,
                    force: bool = False) -> int:
    """Deliver each folder; return 0 if every one is delivered (now or before), 1 otherwise, and
    128 + the signal's number after SIGINT or SIGTERM: batches in flight finish and are recorded,
    the folder is left pending, and no further folder is started. A second signal ends it at once.
    A folder whose workflow was delivered is sent again only with `force`, and so is a folder below
    no configured source (an archived copy) whose channel, offer and ID a source delivered.
    `resolve` turns a path into (folder, source, source settings), raising Rpi2BrazeError if it
    cannot; by default resolve_folder, noting a folder outside every configured source."""
    resolve = resolve or (lambda path: _resolve_noting(settings, path))
    stop = threading.Event()
    received: list[int] = []
    previous = {signum: signal.signal(signum, _stopper(stop, received)) for signum in (signal.SIGINT, signal.SIGTERM)}
    pipeline = Pipeline.open(settings, stop, hold_while_refused=False)
    failures = 0
    try:
        for path in paths:
            if stop.is_set():
                break
            failures += not _process_one(pipeline, path, resolve, force)
    finally:
        pipeline.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        print(f"rpi2braze: stopped by {signal.Signals(received[0]).name}; run the same command again to "
              f"deliver the rest", file=sys.stderr)
        return 128 + received[0]
    return 1 if failures else 0


def _handled_before(state: StateStore, folder: ExportFolder, force: bool, ad_hoc: bool) -> bool | None:
    """None if `folder` is to be sent now; else, having said why not, whether that counts as delivered.
    `force` sends a workflow delivered, failed or quarantined before. `ad_hoc`: the folder is below
    no configured source (an archived copy, say), so the same channel, offer and ID delivered from
    a source is taken to be this workflow."""
    key = folder.key
    existing = state.get(key)
    if force:
        if existing is not None and existing.status in FINAL_STATUSES:
            state.requeue(key)
        return None
    again = "" if key.source == RESEND_SOURCE else " (--force sends it again)"
    if existing is not None and existing.status in (WorkflowStatus.FAILED, WorkflowStatus.QUARANTINED):
        daemon = "" if ad_hoc else (f", or `rpi2braze retry {shlex.quote(key.workflow_id)} --source "
                                    f"{shlex.quote(key.source)} --channel {shlex.quote(key.channel)}` to have "
                                    "the daemon deliver it")
        print(f"rpi2braze: {folder.location} is {existing.status}: {existing.reason}; after fixing it, "
              f"run this again with --force{daemon}", file=sys.stderr)
        return False
    if existing is not None and existing.status == WorkflowStatus.DELIVERED:
        print(f"already delivered: {folder.location} ({existing.rows_delivered} rows); not sent again{again}")
        return True
    for record in state.find(key.workflow_id) if ad_hoc else ():
        if ((record.key.channel, record.key.offer) == (key.channel, key.offer) and record.key != key
                and record.status == WorkflowStatus.DELIVERED):
            print(f"rpi2braze: {folder.location}: workflow {key.relpath} was delivered from source "
                  f"{record.key.source!r} ({record.location}); not sent again{again}", file=sys.stderr)
            return False
    return None


def _stopper(stop: threading.Event, received: list[int]):
    """A signal handler: the first signal asks for a stop, the second ends the process."""
    def handle(signum, frame):
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        received.append(signum)
        stop.set()
    return handle


def _resolve_noting(settings: Settings, path: str) -> tuple[ExportFolder, LocalSource, SourceSettings]:
    folder, source, source_settings = resolve_folder(settings, path)
    if source_settings not in settings.sources:
        print(f"note: {folder.location} is not below a configured local or poll source: read with the default "
              f"reading settings, recorded under source {source_settings.name!r}", file=sys.stderr)
    return folder, source, source_settings


def _process_one(pipeline: Pipeline, path: str, resolve: Resolve, force: bool) -> bool:
    try:
        folder, source, source_settings = resolve(path)
    except Rpi2BrazeError as error:
        print(f"rpi2braze: {error}", file=sys.stderr)
        return False
    state = pipeline.context.state
    ad_hoc = source_settings not in pipeline.context.settings.sources
    handled = _handled_before(state, folder, force, ad_hoc)
    if handled is not None:
        return handled
    delivery = FolderDelivery(folder, source, source_settings, pipeline.context)
    if sys.stderr.isatty():
        status = delivery.run(watch=lambda: Progress(state, folder.key, sys.stderr))
    else:
        status = delivery.run()
    if delivery.busy_elsewhere:
        print(f"rpi2braze: {folder.location} is being delivered by another rpi2braze process "
              f"(the daemon?); not sent from here", file=sys.stderr)
        return False
    record = state.get(folder.key)
    print(f"{status}: {folder.location}: {record.rows_delivered} rows delivered, {record.rows_rejected} rejected"
          + (f"; reason: {record.reason}" if record.reason else "")
          + (f"; rejected rows: {workflow_deadletter_path(pipeline.context.state_dir, folder.key)}"
             if record.rows_rejected else ""))
    return status == WorkflowStatus.DELIVERED
