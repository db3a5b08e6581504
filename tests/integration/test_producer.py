"""A big folder is read, mapped and batched by a child process: the same batches, the same errors."""

import contextlib
import dataclasses
import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from daemon_helpers import environment, local_source, status, wait_for, write_config
from delivery_helpers import HEADER, UPSERT, export_rows, write_export
from rpi2braze.children import PIPE_BYTES, produce_in_children
from rpi2braze.errors import BadFileError, ProductionFailed, SourceError, SourceUnavailable
from rpi2braze.files import data_files
from rpi2braze.model import ExportFolder, FileEntry, WorkflowKey
from rpi2braze.producer import Job, produce, runs_in_child
from rpi2braze.sandbox import Faults, SandboxServer
from rpi2braze.settings import MappingSettings, SourceSettings
from rpi2braze.sources.local import LocalSource
from rpi2braze.wire import batch_message, write_message

OFFER = "Child Offer"


def job_for(base: Path, workflow_id: str, partitions: int = 4, acked: frozenset[int] = frozenset()) -> tuple[Job, LocalSource]:
    settings = SourceSettings(name="drop", type="local", path=str(base))
    source = LocalSource(settings, watch=False)
    key = WorkflowKey("drop", UPSERT, OFFER, workflow_id)
    files = data_files(source.list_dir(key.relpath), settings.data_files)
    folder = ExportFolder(key, "upsert", files, str(base / key.relpath))
    return Job(folder, settings, MappingSettings(), 75, 4_000_000, partitions, acked), source


def produced(production) -> tuple[tuple, list]:
    headers, batches = production
    return headers, [(batch.number, batch.partition, batch.rows, batch.encoded, batch.rejected, batch.size_bytes)
                    for batch in batches]


def write_mixed_export(base: Path, workflow_id: str) -> None:
    """Repeated users (merged objects) and two rows that are rejected before sending."""
    folder = write_export(base, OFFER, workflow_id, export_rows("c", 700, repeats=2))
    with open(folder / f"RPI_Export_{workflow_id}.txt", "a", encoding="utf-8") as export:
        export.write("c1,5719,,NoId,noid@example.com,Out,1\n")
        export.write("c2,5719,c-bad,Bad,not-an-email,Out,2\n")


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_the_children_produce_the_batches_this_process_would(tmp_path, processes):
    write_mixed_export(tmp_path, "7001")
    job, source = job_for(tmp_path, "7001")
    with produce(job, source) as production:
        header, here = produced(production)
    with produce_in_children(job, processes) as production:
        child_header, children = produced(production)
    assert child_header == header
    by_number = sorted(children, key=lambda batch: batch[0])   # several children: arrival order varies
    assert by_number == sorted(here, key=lambda batch: batch[0])
    if processes == 1:
        assert children == here
    assert len(here) > job.partitions                      # several batches per partition
    assert sum(len(batch[4]) for batch in here) >= 2      # the rejected rows travelled too


@pytest.mark.parametrize("shares", [2, 3, 4])
def test_shares_of_the_partitions_together_make_the_whole_folder(tmp_path, monkeypatch, shares):
    """What the reading processes rely on, in this process: each share's batches are exactly the
    whole run's batches of its partitions, rejections included, whatever kind of row they come from."""
    monkeypatch.setattr("rpi2braze.batcher.MAX_REJECTIONS_HELD", 3)
    folder = write_export(tmp_path, OFFER, "7010", export_rows("s", 300, repeats=2))
    with open(folder / "RPI_Export_7010.txt", "a", encoding="utf-8") as export:
        for number in range(40):
            export.write(f"r{number},5719,,NoId,noid@example.com,Out,1\n")             # no external_id
            export.write(f"b{number},5719,s-{number:06d},Bad,not-an-email,Out,2\n")     # names a user
            export.write(f"g{number},5719,ragged\n")                                     # fits no layout
    (folder / "RPI_Export_7010_2.txt").write_text(HEADER + "".join(row.line() for row in export_rows("t", 200)))
    job, source = job_for(tmp_path, "7010", partitions=6)
    with produce(job, source) as production:
        _, whole = produced(production)
    shared = []
    for index in range(shares):
        with produce(dataclasses.replace(job, shard=(index, shares)), source) as production:
            _, batches = produced(production)
        assert {batch[1] % shares for batch in batches} <= {index}
        shared += batches
    assert sorted(shared, key=lambda batch: batch[0]) == sorted(whole, key=lambda batch: batch[0])
    assert sum(len(batch[4]) for batch in whole) == 120      # every rejected row, in one batch each


@pytest.mark.parametrize("processes", [1, 2])
def test_acknowledged_batches_are_not_produced_again(tmp_path, processes):
    write_export(tmp_path, OFFER, "7002", export_rows("a", 1000))
    job, source = job_for(tmp_path, "7002", acked=frozenset({0, 2, 5}))
    with produce_in_children(job, processes) as (_, batches):
        numbers = sorted(batch.number for batch in batches)
    with produce(job, source) as (_, batches):
        assert sorted(batch.number for batch in batches) == numbers
    assert numbers and not {0, 2, 5} & set(numbers) and 1 in numbers


def test_a_bad_file_raises_the_same_error_in_the_child(tmp_path):
    folder = tmp_path / UPSERT / OFFER / "7003"
    folder.mkdir(parents=True)
    (folder / "RPI_Export_7003.txt").write_text("first_name,email\nAda,ada@example.com\n")
    job, source = job_for(tmp_path, "7003")
    with pytest.raises(BadFileError) as here:
        with produce(job, source):
            pass
    with pytest.raises(BadFileError) as child:
        with produce_in_children(job):
            pass
    assert str(child.value) == str(here.value)
    assert "external_id" in str(child.value)


def test_a_file_gone_before_reading_is_a_source_error_in_the_child(tmp_path):
    folder = write_export(tmp_path, OFFER, "7004", export_rows("g", 10))
    job, _ = job_for(tmp_path, "7004")
    (folder / "RPI_Export_7004.txt").unlink()
    with pytest.raises(SourceUnavailable, match="cannot open"):
        with produce_in_children(job):
            pass


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("processes", [1, 2])
def test_leaving_early_stops_every_child(tmp_path, processes):
    write_export(tmp_path, OFFER, "7005", export_rows("e", 20_000))
    job, _ = job_for(tmp_path, "7005")
    before = children_of(os.getpid())
    with produce_in_children(job, processes) as (_, batches):
        next(batches)
        started = children_of(os.getpid()) - before
    assert len(started) == processes
    assert not any(alive(pid) for pid in started)
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("reading-")]


def test_the_child_writes_many_batches_ahead_of_a_slow_reader(tmp_path):
    # The pipe holds a MiB: a child whose output fits writes it all and exits while this process
    # reads nothing more. In Linux's default 64 KiB pipe it would wait for a reader, and so sit
    # idle whenever the sending process is slow to read (bench/README.md: at 50 ms, ~1,000 waits).
    write_export(tmp_path, OFFER, "7010", export_rows("w", 1_500))
    job, source = job_for(tmp_path, "7010")
    with produce(job, source) as (headers, batches):
        output = io.BytesIO()
        write_message(output, ("header", headers))
        for batch in batches:
            write_message(output, batch_message(batch))
    assert 4 * 64 * 1024 < len(output.getvalue()) < PIPE_BYTES - 128 * 1024   # between the two pipes
    before = children_of(os.getpid())
    with produce_in_children(job) as (_, batches):
        (child,) = children_of(os.getpid()) - before
        wait_for(lambda: not alive(child), timeout=20, what="the child to write everything and exit")
        assert sum(batch.row_count for batch in batches) == 1_500


def test_the_children_exit_when_the_daemon_is_killed(tmp_path):
    drop = tmp_path / "drop"
    write_export(drop, OFFER, "7006", export_rows("k", 30_000))
    # Slow answers: the sender falls behind, so the child is blocked writing when its parent dies.
    with SandboxServer(api_key="integration-test-key", faults=Faults(latency_seconds=0.2)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(drop), settle=0),
                              extra="parse_process_min_bytes: 0\n", braze_extra="  concurrency: 2\n")
        process = subprocess.Popen([sys.executable, "-m", "rpi2braze", "-c", config, "process",
                                    str(drop / UPSERT / OFFER / "7006")], env=environment(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # the first acknowledgement, not the first request: a kill between the two left 0 rows
            wait_for(lambda: os.path.exists(tmp_path / "state" / "state.db")
                     and any(record["rows_delivered"] for record in status(config)),
                     timeout=30, what="the first acknowledged batch")
            children = children_of(process.pid)
            assert children      # one per core here, at most 4 (children.processes_for)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            wait_for(lambda: not any(alive(child) for child in children), timeout=15,
                     what="the reading processes to exit")
        finally:
            process.kill()
            process.wait(10)
    (record,) = status(config)
    assert record["status"] == "in_progress" and 0 < record["rows_delivered"] < 30_000


@pytest.mark.parametrize("processes", [1, 2])
def test_a_child_killed_midway_is_a_production_failure_not_an_end(tmp_path, processes):
    write_export(tmp_path, OFFER, "7007", export_rows("m", 30_000))
    job, _ = job_for(tmp_path, "7007")
    before = children_of(os.getpid())
    taken = 0
    # how it ended is said: a SIGKILL nobody sent is the kernel's OOM killer
    with pytest.raises(ProductionFailed, match=r"was killed by SIGKILL \(out of memory\?.*without finishing"):
        with produce_in_children(job, processes) as (_, batches):
            for _ in batches:
                if taken == 0:
                    os.kill(min(children_of(os.getpid()) - before), signal.SIGKILL)
                taken += 1
    assert 1 <= taken < 30_000 // 75


def test_the_child_ignores_sigterm_sent_to_its_group(tmp_path):
    write_export(tmp_path, OFFER, "7008", export_rows("t", 3_000))
    job, source = job_for(tmp_path, "7008")
    before = children_of(os.getpid())
    with produce_in_children(job) as (_, batches):
        (child,) = children_of(os.getpid()) - before
        os.kill(child, signal.SIGTERM)   # systemd's stop reaches every process of the service
        numbers = [batch.number for batch in batches]
    with produce(job, source) as (_, batches):
        assert numbers == [batch.number for batch in batches]


@contextlib.contextmanager
def stalling_export(tmp_path, rows: int, on_stall=lambda: None, max_objects: int = 10_000, stall_seconds: float = 30):
    """A job whose data file (a FIFO) gives `rows` rows, then nothing for `stall_seconds` (or until
    the test ends) before it ends, as a hung network share would; `on_stall()` runs once the
    writer stops writing. (8,000 rows
    are more than one 256 KiB read, which a FIFO only answers whole, so the child gets the rows it
    plans with.)"""
    folder = tmp_path / UPSERT / OFFER / "7012"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "RPI_Export_7012.txt")
    release = threading.Event()

    def write_then_stall():
        with open(folder / "RPI_Export_7012.txt", "w", encoding="utf-8") as fifo:   # waits for the child
            if rows:
                fifo.write(HEADER + "".join(row.line() for row in export_rows("f", rows)))
                fifo.flush()
            on_stall()
            release.wait(stall_seconds)

    writer = threading.Thread(target=write_then_stall, daemon=True)
    writer.start()
    settings = SourceSettings(name="drop", type="local", path=str(tmp_path))
    key = WorkflowKey("drop", UPSERT, OFFER, "7012")
    entry = FileEntry("RPI_Export_7012.txt", False, 0, 0.0)
    try:   # 10,000 objects a batch by default: no batch is due before the end
        yield Job(ExportFolder(key, "upsert", (entry,), str(folder)), settings, MappingSettings(), max_objects,
                  4_000_000, 4)
    finally:
        release.set()
        writer.join(10)


@pytest.mark.parametrize("rows", [0, 8000], ids=["before-the-header", "mid-file"])
def test_a_stop_ends_the_wait_for_a_read_that_stalled(tmp_path, rows):
    """A data file that stops must not hold up a warm stop, whether the reading process has
    answered yet or not."""
    stop = threading.Event()
    on_stall = (lambda: threading.Timer(0.5, stop.set).start()) if not rows else (lambda: None)
    with stalling_export(tmp_path, rows, on_stall) as job:
        with pytest.raises(ProductionFailed, match="stopped while the reading processes were still reading"):
            with produce_in_children(job, 1, stop) as (headers, batches):
                assert rows and headers[0][0] == "RPI_Export_7012.txt" and headers[0][1][2] == "external_id"
                stop.set()
                next(batches)


def test_a_reading_process_that_stops_sending_batches_for_too_long_fails_the_production(tmp_path, monkeypatch):
    monkeypatch.setattr("rpi2braze.children.READING_STALL_SECONDS", 1.0)
    with stalling_export(tmp_path, 8000, max_objects=75) as job:
        with pytest.raises(ProductionFailed, match="sent nothing for 1 s"):
            with produce_in_children(job, 1) as (_, batches):
                for received, _ in enumerate(batches, 1):
                    assert received < 8000 // 75   # batches flowed, then the share hung
    assert received > 1


def test_no_limit_applies_before_the_first_batch(tmp_path, monkeypatch):
    # As for a resumed folder, whose child reads the rows of every batch Braze already has before
    # it sends one: here the share pauses for 2 s, then the file ends.
    monkeypatch.setattr("rpi2braze.children.READING_STALL_SECONDS", 1.0)
    with stalling_export(tmp_path, 8000, stall_seconds=2.0) as job:
        with produce_in_children(job, 1) as (_, batches):
            assert sum(batch.row_count for batch in batches) == 8000


def test_no_process_at_all_is_refused(tmp_path):
    job, _ = job_for(tmp_path, "7011")
    with pytest.raises(ValueError, match="processes must be >= 1"):
        with produce_in_children(job, 0):
            pass


def test_a_child_of_another_version_refuses_the_job(tmp_path):
    write_export(tmp_path, OFFER, "7009", export_rows("v", 10))
    job, _ = job_for(tmp_path, "7009")
    with pytest.raises(SourceError, match="0.0.0-older is running"):
        with produce_in_children(dataclasses.replace(job, version="0.0.0-older")):
            pass


@pytest.mark.parametrize("source_type, accept_new, known_hosts, expected", [
    ("local", False, None, True),
    ("sftp", False, "/etc/known", True),
    ("sftp", True, "/etc/known", True),    # keys the daemon accepts are written there for the child
    ("sftp", True, None, False),           # accepted keys live only in the daemon's memory
    ("ftp", False, None, True),
])
def test_only_sources_a_child_can_verify_the_same_way_run_in_a_child(source_type, accept_new, known_hosts, expected):
    settings = SourceSettings(name="s", type=source_type, path="/x", accept_new_host_keys=accept_new,
                              known_hosts_file=known_hosts)
    assert runs_in_child(settings) is expected
