"""Reading, mapping and batching one folder: in this process, or in child processes for a big one.

Python runs one thread at a time. For a big export, reading and mapping rows costs several times
what sending them does, and in one process the sender threads wait for the reading thread. So a
folder of at least `parse_process_min_bytes` is read, mapped and batched by child processes
(`python -m rpi2braze.producer`, started by children.py), each with a core, each running the same
`produce` as the in-process path on its share of the partitions (`Job.shard`); this process only
sends. A child costs ~0.3 s to start, which small folders do not win back.

A child builds its own Source from the same SourceSettings (its own SFTP or FTP connection,
with the same host-key and TLS checks). It reads one pickled `Job` from stdin and answers on
stdout with the messages of wire.py: the header, every batch of its share the state file has
not acknowledged (rows packed), then the end or an error. If the daemon dies, the child's next
write fails and it exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from rpi2braze import __version__, tuning
from rpi2braze import log as logging_setup
from rpi2braze.batcher import build_batches, partition_of
from rpi2braze.errors import (
    BadFileError, RowRejected, Rpi2BrazeError, SourceError, SourceUnavailable,
)
from rpi2braze.log import get_logger
from rpi2braze.mapping import (ColumnPlan, every_problem, map_row, most_common_width, named_header, plan_columns,
                               row_external_id)
from rpi2braze.model import Batch, ExportFolder, FileEntry, RawRow, Rejection
from rpi2braze.reader import SAMPLE_ROWS, Table, open_data_stream, read_table
from rpi2braze.settings import MappingSettings, SourceSettings
from rpi2braze.sources import build_source
from rpi2braze.sources.base import Source
from rpi2braze.wire import batch_message, write_message

log = get_logger(__name__)

# Rows read ahead to learn a file's row width (RPI's prepended IDs: mapping.plan_columns). Every
# row of an RPI export has one width, so a few suffice; more outvote more ragged rows among them.
# The reader judges the file's encoding by the same rows: reading them raises if it is wrong.
WIDTH_SAMPLE_ROWS = SAMPLE_ROWS

# Errors the child reports by kind, so this process raises the same class the in-process path would.
ERROR_KINDS: dict[str, type[Rpi2BrazeError]] = {
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
    # (index, count): batch only partitions p with p % count == index (children.py)
    shard: tuple[int, int] = (0, 1)


Headers = tuple[tuple[str, tuple[str, ...]], ...]   # (file name, header) of each data file, in order
Production = tuple[Headers, Iterator[Batch]]


@contextlib.contextmanager
def produce(job: Job, source: Source) -> Iterator[Production]:
    """Open every data file of the folder through `source` and plan its columns before anything
    is produced (a bad second file sends nothing); yield every file's header, as
    ((file name, header), ...), and an iterator of the batches not in `job.acked`, numbered
    deterministically. Raise BadFileError if a file cannot be read, SourceError if the source
    fails. Where an open file holds a server session, each file is closed once planned and
    opened again when its rows are due, so that one is open at a time."""
    with contextlib.ExitStack() as stack:
        tables = _planned_tables(stack, job, source)
        if not tables:
            raise BadFileError(f"{job.folder.location}: no data file")
        batches = build_batches(_items(tables, job), job.folder.key, job.partitions, job.max_objects, job.max_bytes,
                                job.shard)
        headers = tuple((entry.name, named_header(table.header, plan))
                        for entry, (table, plan) in zip(job.folder.data_files, tables))
        yield headers, (batch for batch in batches if batch.number not in job.acked)


def _planned_tables(stack: contextlib.ExitStack, job: Job, source: Source) -> list[tuple[Table, ColumnPlan]]:
    """Every data file's table and plan; the files stay open on `stack`, or, where an open file
    holds a server session, each is closed once planned and opened again in its turn."""
    if not source.open_file_holds_a_session:
        return [_open_table(stack, job, source, entry) for entry in job.folder.data_files]
    planned = []
    for entry in job.folder.data_files:
        with contextlib.ExitStack() as probe:
            planned.append(_open_table(probe, job, source, entry))
    return _reopened(planned, job, source, stack)


def _open_table(stack: contextlib.ExitStack, job: Job, source: Source, entry: FileEntry) -> tuple[Table, ColumnPlan]:
    """One data file opened on `stack`, its first rows read ahead, and its plan."""
    table = _read(stack, job, source, entry)
    try:
        return _planned(table, job.mapping)
    except BadFileError as error:
        raise _naming(entry, error) from None


def _read(stack: contextlib.ExitStack, job: Job, source: Source, entry: FileEntry) -> Table:
    """One data file opened on `stack`, its header read. Raise BadFileError naming the file."""
    raw = stack.enter_context(source.open_file(f"{job.folder.key.relpath}/{entry.name}"))
    stream = stack.enter_context(open_data_stream(raw, entry.name))
    try:
        return read_table(stream, job.source_settings.reading, entry.name)
    except BadFileError as error:
        raise _naming(entry, error) from None


def _naming(entry: FileEntry, error: BadFileError) -> BadFileError:
    return BadFileError(f"{entry.name}: {error}" if entry.name not in str(error) else str(error))


def _reopened(tables: list[tuple[Table, ColumnPlan]], job: Job, source: Source,
              stack: contextlib.ExitStack) -> list[tuple[Table, ColumnPlan]]:
    """The planned tables, each with rows read from its file opened again once they are due (and
    closed when they end, or when `stack` closes)."""
    def rows(entry: FileEntry) -> Iterator[RawRow]:
        with contextlib.ExitStack() as file_stack:   # planned already: read, not sampled again
            yield from _read(file_stack, job, source, entry).rows

    reopened = []
    for entry, (table, plan) in zip(job.folder.data_files, tables):
        entry_rows = rows(entry)
        stack.callback(entry_rows.close)
        reopened.append((dataclasses.replace(table, rows=entry_rows), plan))
    return reopened


def _planned(table: Table, mapping: MappingSettings) -> tuple[Table, ColumnPlan]:
    """The table, its first rows read ahead, and its plan for the width most of those rows have.
    Raise BadFileError if reading those rows shows the file is in another encoding (reader.py)."""
    first_rows = list(itertools.islice(table.rows, WIDTH_SAMPLE_ROWS))
    plan = plan_columns(table.header, mapping, most_common_width(first_rows))
    return dataclasses.replace(table, rows=itertools.chain(first_rows, table.rows)), plan


def _items(tables: list[tuple[Table, ColumnPlan]], job: Job) -> Iterator:
    """Mapped rows and rejections in file order, of the rows in the job's share of partitions.
    A rejection carries the partition of the user its row names, as the batcher would place it."""
    offer, mode, region = job.folder.key.offer, job.folder.mode, job.mapping.default_phone_region
    index, count = job.shard
    for table, plan in tables:
        for row in table.rows:
            partition = None
            if count > 1 and (partition := _partition(plan, row, job.partitions)) % count != index:
                continue
            try:
                yield row, map_row(plan, row, offer, mode, region)
            except RowRejected as rejected:
                yield Rejection(row, every_problem(plan, row, offer, mode, region, rejected.reason),
                                partition if partition is not None else _partition(plan, row, job.partitions))


def _partition(plan: ColumnPlan, row, partitions: int) -> int:
    """The row's user's partition, or, for a row that names no user, its line modulo partitions."""
    external_id = row_external_id(plan, row)
    return row.line % partitions if external_id is None else partition_of(external_id, partitions)


def _error_kind(error: Exception) -> str:
    for kind, error_class in ERROR_KINDS.items():
        if isinstance(error, error_class):
            return kind
    return "crash"


def _serve(job: Job, output: BinaryIO) -> None:
    try:
        if job.version != __version__:
            raise SourceError(f"rpi2braze {__version__} is installed but {job.version} is running: "
                              "the folder waits for the daemon's restart")
        with contextlib.closing(build_source(_child_source_settings(job.source_settings))) as source:
            with produce(job, source) as (headers, batches):
                write_message(output, ("header", headers))
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
