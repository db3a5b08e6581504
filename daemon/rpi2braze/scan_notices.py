"""What the scanner says about folders it does not deliver, or not again: each thing once.

Silence would leave an operator guessing: an export saved under a name the data globs do not
match, data files above the workflow folders (an RPI export path without [Workflow ID]), data
written into a delivered folder's place, a source renamed in the config. None of these stops a
scan; each is one warning per folder (or per start), naming what to do.
"""

from __future__ import annotations

from typing import Iterable

from rpi2braze.files import data_files, unrecognised
from rpi2braze.log import get_logger
from rpi2braze.model import FileEntry, WorkflowKey, WorkflowRecord
from rpi2braze.settings import AD_HOC_SOURCE, RESEND_SOURCE, SourceSettings

log = get_logger(__name__)


class FolderNotices:
    """The warnings of one scanner, each given once per (event, source, folder)."""

    def __init__(self) -> None:
        self._given: set[tuple[str, str, str]] = set()

    def once(self, event: str, source: str, folder: str, hint: str) -> None:
        if (event, source, folder) not in self._given:
            self._given.add((event, source, folder))
            log.warning(event, source=source, folder=folder, hint=hint)

    def misplaced(self, settings: SourceSettings, relpath: str, entries: Iterable[FileEntry]) -> None:
        """Data files listed at `relpath`, above the workflow folders: nothing there is delivered."""
        if misplaced := data_files(entries, settings.data_files):
            self.once("data_files_misplaced", settings.name, relpath or ".",
                      f"{', '.join(entry.name for entry in misplaced[:3])} lie above the workflow folders; "
                      "rpi2braze reads <Channel>/<Offer>/<Workflow ID>/ only: check the channel's "
                      "Export path format in RPI")

    def without_data(self, settings: SourceSettings, key: WorkflowKey, entries: Iterable[FileEntry]) -> None:
        """A settled folder holding files, none of them data (an export saved under another name)."""
        if others := unrecognised(entries, settings.data_files, settings.marker_file):
            self.once("folder_without_data_files", key.source, key.relpath,
                      f"it holds {', '.join(others[:3])} but no file named like "
                      f"{', '.join(settings.data_files)} (sources[].data_files): not delivered")

    def late_data(self, settings: SourceSettings, record: WorkflowRecord, entries: Iterable[FileEntry]) -> None:
        """Given a delivered workflow's record and its folder's entries, back in a source that
        archives delivered folders: data written after the workflow finished (a writer that paused
        longer than settle_seconds) is not delivered unless an operator says so."""
        late = [entry.name for entry in data_files(entries, settings.data_files) if entry.mtime > record.updated_at]
        if late:
            key = record.key
            self.once("data_after_delivery", key.source, key.relpath,
                      f"{', '.join(late)} arrived after the workflow was {record.status}; not delivered. "
                      f"To deliver the folder again: rpi2braze retry {key.workflow_id} --force")


def unconfigured_sources(recorded: dict[str, int], configured: Iterable[str]) -> None:
    """Given the workflows the state file holds per source and the configured source names, warn
    of sources no longer configured: renamed, their folders still in the tree are sent again."""
    missing = {name: count for name, count in recorded.items()
               if name not in set(configured) and name not in (RESEND_SOURCE, AD_HOC_SOURCE)}
    if missing:
        log.warning("sources_not_configured", workflows_by_source=missing,
                    hint="the state file holds workflows of these sources; if one was renamed, the "
                         "folders still in its tree are delivered again under the new name")
