"""`rpi2braze resend FILE`: deliver the rows of a dead-letter file once an operator has fixed them.

A dead-letter CSV (deadletter.py) holds `file`, `line` and `reason`, then the export's own
columns. Fed to `process` as it is, those three would become rpi_cdp_attributes keys on every
profile. resend finds the workflow the file belongs to by its name, writes its rows without the
three columns as an export of that workflow's channel and offer, in a folder below the state
directory (0700: the rows are personal data), delivers that folder as `process` does, and removes
it once delivered.

The resent rows are a workflow of their own, `<Workflow ID>.resend-<digest>` (of the file and
of the run it came from), of source "resend": the same file sent twice is sent once, and an
interrupted run resumes where it stopped; a file edited again is a new workflow, once the one
cut short is finished or forgotten. Rows rejected again go to that workflow's own dead-letter
file, which can be fixed and resent in turn.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import sys

from rpi2braze import deadletter, private
from rpi2braze.deadletter import CUT, EDITED, PREVIOUS
from rpi2braze.errors import SourceError
from rpi2braze.model import ExportFolder, WorkflowKey, WorkflowRecord, WorkflowStatus
from rpi2braze.process import process_folders
from rpi2braze.resend_rows import parse_deadletter
from rpi2braze.settings import RESEND_SOURCE, ReadingSettings, Settings, SourceSettings
from rpi2braze.sources.base import safe_join
from rpi2braze.sources.local import LocalSource
from rpi2braze.state import FINAL_STATUSES, StateStore

SOURCE = RESEND_SOURCE
DATA_FILE = "RPI_Export_resend.txt"
DIGEST_CHARS = 12
_RESENT_ID = re.compile(r"\.resend-[0-9a-f]{12}$")
_FIXED_MTIME = 0   # the prepared file's identity is its content: a rerun resumes, never restarts


def resend_file(settings: Settings, path: str) -> int:
    """Deliver the rows of the dead-letter file at `path`; return process_folders' exit code,
    or 1 after printing why if the file is not a dead-letter file of a workflow in the state file."""
    base = os.path.join(settings.state.directory, SOURCE)
    records = _all_records(settings.state.path)
    try:
        current, kind = _current_file(path)
        content = _read(path)
        header, rows = parse_deadletter(content, path, cut_short=kind == CUT)
        key = _resent_key(settings, path, current, content, records)
        folder = _prepare(base, key, header, rows)
    except SourceError as error:
        print(f"rpi2braze: {error}", file=sys.stderr)
        return 1
    source_settings = SourceSettings(name=SOURCE, type="local", path=base, settle_seconds=0, data_files=(DATA_FILE,),
                                     reading=ReadingSettings(delimiter=",", encoding="utf-8"))
    source = LocalSource(source_settings, watch=False)
    entries = tuple(entry for entry in source.list_dir(key.relpath) if entry.name == DATA_FILE)
    export = ExportFolder(key, settings.channels[key.channel], entries, folder)
    print(f"resending {len(rows)} rows of {path} as {SOURCE}: {key.relpath}")
    # The same file again after its resend failed or was quarantined is the operator's retry.
    again = any(record.key == key and record.status in (WorkflowStatus.FAILED, WorkflowStatus.QUARANTINED)
                for record in records)
    code = process_folders(settings, [folder], resolve=lambda _: (export, source, source_settings), force=again)
    if code == 0:   # delivered; otherwise a second run, or another process at it now, reads the same bytes
        shutil.rmtree(folder, ignore_errors=True)
    return code


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise SourceError(f"{path}: cannot read: {error.strerror}") from None


def _current_file(path: str) -> tuple[str, str | None]:
    """The name of the dead-letter file `path` is, and how it was set aside (deadletter.name_parts).
    Raise SourceError for a file set aside that must not be resent."""
    parts = deadletter.name_parts(os.path.basename(path))
    if parts is not None and parts[1] == EDITED:
        raise SourceError(f"{path}: an edit saved while the workflow was being delivered, set aside then: it "
                          "may lack rows written since; make the same fixes in the file `status` names")
    if parts is not None and parts[1] == PREVIOUS:
        raise SourceError(f"{path}: an earlier delivery run's file, set aside when the workflow was sent again: "
                          "its rows may be older than what that later run delivered; resend the current file")
    return parts or (os.path.basename(path), None)


def _resent_key(settings: Settings, path: str, current: str, content: bytes,
                records: list[WorkflowRecord]) -> WorkflowKey:
    """The key the rows of `path`, dead-letter file `current`, are resent under. Raise SourceError
    if no workflow of the state file has a dead-letter file of that name, or it is not finished."""
    record = next((record for record in records if os.path.basename(
        deadletter.workflow_deadletter_path(settings.state.directory, record.key)) == current), None)
    if not record:
        raise SourceError(f"{path}: no workflow in {settings.state.path} has a dead-letter file of that "
                          "name (resend takes the file `status` names, fixed, under its own name)")
    if record.status not in FINAL_STATUSES:   # its file may still grow; a resend now and one later would overlap
        raise SourceError(f"{path}: its workflow is {record.status}, still being delivered; resend its rows "
                          "once it is delivered")
    original = record.key
    if original.channel not in settings.channels:
        raise SourceError(f"{path}: its workflow's channel {original.channel!r} is no longer configured")
    workflow_id = _RESENT_ID.sub("", original.workflow_id)
    # The file and the run it came from: after retry --force, the same fixes resent are new rows.
    digest = hashlib.sha256(repr(record.started_at).encode() + b"\n" + content).hexdigest()[:DIGEST_CHARS]
    key = WorkflowKey(SOURCE, original.channel, original.offer, f"{workflow_id}.resend-{digest}")
    for other in records:   # an earlier version of the file, cut short: both would send its rows
        if (other.key.source == SOURCE and other.key != key and other.status not in FINAL_STATUSES
                and other.key.relpath.startswith(f"{original.channel}/{original.offer}/{workflow_id}.resend-")):
            raise SourceError(f"{path}: an earlier resend of this workflow's rows, {other.key.workflow_id}, did not "
                              "finish: run it again with the file it was given to finish it, or `rpi2braze forget "
                              f"{other.key.workflow_id}` to drop it (the rows it delivered are then sent again "
                              "if this file holds them), then run this again")
    return key


def _all_records(state_path: str) -> list[WorkflowRecord]:
    if not os.path.exists(state_path):
        return []
    with StateStore(state_path) as store:
        return store.records()


def _prepare(base: str, key: WorkflowKey, header: list[str], rows: list[list[str]]) -> str:
    """Write the rows as the folder's one export file (0600, a fixed mtime); return the folder.
    Raise SourceError if the workflow's names would lead out of `base`."""
    private.make_directories(base)
    folder = safe_join(base, key.relpath)
    private.make_directories(folder)
    target = os.path.join(folder, DATA_FILE)
    temporary = target + ".partial"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(descriptor, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    os.utime(temporary, (_FIXED_MTIME, _FIXED_MTIME))
    os.replace(temporary, target)
    return folder
