"""Reading, mapping and batching one folder: in this process, or in a child process for a big one.

Python runs one thread at a time. For a big export, reading and mapping rows costs several times
what sending them does, and in one process the sender threads wait for the reading thread. So a
folder of at least `parse_process_min_bytes` is read, mapped and batched by a child process
(`python -m rpi2braze.producer`) with a core of its own, running the same `produce` as the
in-process path; this process only sends. A child costs ~0.3 s to start, which small folders
do not win back.

The child builds its own Source from the same SourceSettings (its own SFTP or FTP connection,
with the same host-key and TLS checks). It reads one pickled `Job` from stdin and answers on
stdout with the messages of wire.py: the header, every batch the state file has not
acknowledged (rows packed), then the end or an error. If this process dies, the child's next
write fails and it exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from rpi2braze import __version__, tuning
from rpi2braze import log as logging_setup
from rpi2braze.batcher import build_batches
from rpi2braze.errors import (
    BadFileError, ProductionFailed, RowRejected, Rpi2BrazeError, SourceError, SourceUnavailable,
)
from rpi2braze.log import get_logger
from rpi2braze.mapping import ColumnPlan, map_row, plan_columns
from rpi2braze.model import Batch, ExportFolder, Rejection, WorkflowKey
from rpi2braze.reader import Table, open_data_stream, read_table
from rpi2braze.settings import MappingSettings, SourceSettings
from rpi2braze.sources import build_source
from rpi2braze.sources.base import Source
from rpi2braze.wire import batch_message, batch_of, read_messages, write_message

log = get_logger(__name__)

# Errors the child reports by kind, so this process raises the same class the in-process path would.
_ERROR_KINDS: dict[str, type[Rpi2BrazeError]] = {
    "bad_file": BadFileError, "source_unavailable": SourceUnavailable, "source": SourceError}


@dataclass(frozen=True)
class Job:
    """What producing one folder's batches needs. `acked`: batch numbers not to produce again."""

    folder: ExportFolder
    source_settings: SourceSettings
    mapping: MappingSettings
    max_objects: int
    max_bytes: int
    partitions: int
    acked: frozenset[int] = frozenset()
    log_level: str = "info"
    log_format: str = "json"
    version: str = __version__   # the daemon's: batch numbers must come from the same code


Production = tuple[tuple[str, ...], Iterator[Batch]]   # the first file's header, the batches


@contextlib.contextmanager
def produce(job: Job, source: Source) -> Iterator[Production]:
    """Open every data file of the folder through `source` and plan its columns before anything
    is produced (a bad second file sends nothing); yield the first file's header and an iterator
    of the batches not in `job.acked`, numbered deterministically. Raise BadFileError if a file
    cannot be read, SourceError if the source fails."""
    with contextlib.ExitStack() as stack:
        tables = _open_tables(stack, job, source)
        batches = build_batches(_items(tables, job), job.folder.key, job.partitions, job.max_objects, job.max_bytes)
        yield tables[0][0].header, (batch for batch in batches if batch.number not in job.acked)


@contextlib.contextmanager
def produce_in_child(job: Job) -> Iterator[Production]:
    """`produce`, run by a child process; the same header, batches and exceptions.

    Raise ProductionFailed if the child dies or fails in a way the in-process path has no class for.
    Leaving the context stops the child, whether or not every batch was taken.
    """
    with subprocess.Popen([sys.executable, "-m", "rpi2braze.producer"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        try:
            try:
                child.stdin.write(pickle.dumps(job, pickle.HIGHEST_PROTOCOL))
                child.stdin.close()
            except BrokenPipeError:
                raise ProductionFailed("the reading process ended before it took its job") from None
            messages = read_messages(child.stdout)
            header = _expect(next(messages, None), "header")
            yield header, _child_batches(messages, job.folder.key)
        finally:
            child.kill()


def _child_batches(messages: Iterator[tuple], key: WorkflowKey) -> Iterator[Batch]:
    for message in messages:
        if message[0] == "end":
            return
        _expect(message, "batch")
        yield batch_of(key, message)
    raise ProductionFailed("the reading process ended without finishing the folder")


def _expect(message: tuple | None, kind: str):
    if message is None:
        raise ProductionFailed("the reading process ended before it answered")
    if message[0] == "error":
        _, error_kind, text = message
        raise _ERROR_KINDS.get(error_kind, ProductionFailed)(text)
    if message[0] != kind:
        raise ProductionFailed(f"the reading process answered {message[0]!r} where {kind!r} was due")
    return message[1]


def _open_tables(stack: contextlib.ExitStack, job: Job, source: Source) -> list[tuple[Table, ColumnPlan]]:
    tables = []
    for entry in job.folder.data_files:
        raw = stack.enter_context(source.open_file(f"{job.folder.key.relpath}/{entry.name}"))
        stream = stack.enter_context(open_data_stream(raw, entry.name))
        try:
            table = read_table(stream, job.source_settings.reading, entry.name)
            tables.append((table, plan_columns(table.header, job.mapping)))
        except BadFileError as error:
            raise BadFileError(f"{entry.name}: {error}" if entry.name not in str(error) else str(error)) from None
    if not tables:
        raise BadFileError(f"{job.folder.location}: no data file")
    return tables


def _items(tables: list[tuple[Table, ColumnPlan]], job: Job) -> Iterator:
    offer, mode, region = job.folder.key.offer, job.folder.mode, job.mapping.default_phone_region
    for table, plan in tables:
        for row in table.rows:
            try:
                yield row, map_row(plan, row, offer, mode, region)
            except RowRejected as rejected:
                yield Rejection(row, rejected.reason)


def _error_kind(error: Exception) -> str:
    for kind, error_class in _ERROR_KINDS.items():
        if isinstance(error, error_class):
            return kind
    return "crash"


def _serve(job: Job, output: BinaryIO) -> None:
    try:
        if job.version != __version__:
            raise SourceError(f"rpi2braze {__version__} is installed but {job.version} is running: "
                              "the folder waits for the daemon's restart")
        with contextlib.closing(build_source(_child_source_settings(job.source_settings))) as source:
            with produce(job, source) as (header, batches):
                write_message(output, ("header", header))
                for batch in batches:
                    write_message(output, batch_message(batch))
        write_message(output, ("end",))
    except BrokenPipeError:
        raise
    except Exception as error:   # reported to the parent, which decides what it means
        kind = _error_kind(error)
        if kind == "crash":
            log.exception("reading_process_failed", workflow_id=job.folder.key.workflow_id)
        write_message(output, ("error", kind, str(error) or type(error).__name__))


def runs_in_child(settings: SourceSettings) -> bool:
    """Whether a child can read this source as safely as the daemon: it opens its own connection,
    so it must check the host key the daemon accepted, which it can only find in a file."""
    return not (settings.type == "sftp" and settings.accept_new_host_keys and not settings.known_hosts_file)


def _child_source_settings(settings: SourceSettings) -> SourceSettings:
    """The child never accepts a host key itself: the daemon did, and wrote it to the file."""
    return dataclasses.replace(settings, accept_new_host_keys=False)


def main() -> int:
    # Ctrl-C and systemd's stop reach the whole group: the parent decides, and kills this child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job: Job = pickle.load(sys.stdin.buffer)
    logging_setup.configure(job.log_level, job.log_format, stream=sys.stderr)
    tuning.tune_garbage_collector()
    output = sys.stdout.buffer
    try:
        _serve(job, output)
        output.flush()
    except BrokenPipeError:   # the parent is gone or stopped listening: nothing is left to do
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
