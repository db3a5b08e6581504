"""What happens to a folder once it is finished: archived after delivery, quarantined when unreadable.

A quarantined workflow always gets a reason file in the state directory (sources may be
read-only); when `quarantine_path` is set the folder is moved there too. A folder whose move
fails stays where it is: its state record already says what happened, so it is never re-sent.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import time

from rpi2braze import private
from rpi2braze.errors import SourceError
from rpi2braze.log import get_logger
from rpi2braze.model import WorkflowKey
from rpi2braze.settings import RESEND_SOURCE, SourceSettings
from rpi2braze.sources.base import Source

log = get_logger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def after_delivery(source: Source, settings: SourceSettings, key: WorkflowKey) -> str | None:
    """Move a delivered folder to `archive_path` if one is configured; return where it went."""
    return _move(source, settings.archive_path, key, "archived")


def quarantine(source: Source, settings: SourceSettings, key: WorkflowKey, reason: str, state_dir: str) -> str:
    """Write the reason file, move the folder to `quarantine_path` if configured; return the reason file."""
    moved = _move(source, settings.quarantine_path, key, "quarantined")
    path = reason_path(state_dir, key)
    private.make_directories(os.path.dirname(path))
    text = (f"workflow: {key.source}/{key.relpath}\nwhen: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
            f"reason: {reason}\nfolder now at: {moved or source.describe(key.relpath)}\n"
            f"to try again after fixing it: {_how_to_retry(key, moved, source)}\n")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as reason_file:
        reason_file.write(text)
    return path


def _how_to_retry(key: WorkflowKey, moved: str | None, source: Source) -> str:
    if key.source == RESEND_SOURCE:
        return "fix the rows of the dead-letter file, then run `rpi2braze resend FILE` again"
    retry = (f"rpi2braze retry {shlex.quote(key.workflow_id)} --source {shlex.quote(key.source)} "
             f"--channel {shlex.quote(key.channel)}")
    return f"move it back to {source.describe(key.relpath)}, then {retry}" if moved else retry


def reason_path(state_dir: str, key: WorkflowKey) -> str:
    """`<state_dir>/quarantine/<source>/<safe name>.reason.txt`; never outside state_dir."""
    digest = hashlib.sha256(repr((key.source, key.channel, key.offer, key.workflow_id)).encode()).hexdigest()[:10]
    name = _UNSAFE.sub("_", f"{key.channel}__{key.offer}__{key.workflow_id}")[:150].lstrip(".")
    return os.path.join(state_dir, "quarantine", _UNSAFE.sub("_", key.source)[:60].lstrip(".") or "_", f"{name}-{digest}.reason.txt")


def _move(source: Source, destination: str | None, key: WorkflowKey, event: str) -> str | None:
    if not destination:
        return None
    try:
        target = source.move_folder(key.relpath, destination)
    except SourceError as error:
        log.error(f"{event}_move_failed", workflow_id=key.workflow_id, source=key.source, error=str(error))
        return None
    log.info(f"workflow_{event}", workflow_id=key.workflow_id, source=key.source, to=target)
    return target
