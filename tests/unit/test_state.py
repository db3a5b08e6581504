"""StateStore against real SQLite files in tmp_path: durability, refusal of bad files, concurrency."""

import contextlib
import itertools
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest

from rpi2braze.errors import StateError
from rpi2braze.model import WorkflowKey, WorkflowStatus
from rpi2braze.state import SCHEMA_VERSION, StateStore

KEY = WorkflowKey("rpi", "Braze Onboarding and Upsert", "Spring Offer", "wf-100")
OTHER = WorkflowKey("rpi", "Braze Append", "Winter Offer", "wf-200")
SAME_ID_OTHER_SOURCE = WorkflowKey("rpi-sftp", "Braze Append", "Winter Offer", "wf-100")
FINAL = [WorkflowStatus.DELIVERED, WorkflowStatus.FAILED, WorkflowStatus.QUARANTINED]

# The child acks batches until it is killed; it prints a number only after ack_batch has returned.
KILLED_CHILD = """
import sys
from rpi2braze.model import WorkflowKey
from rpi2braze.state import StateStore
store = StateStore(sys.argv[1])
key = WorkflowKey("rpi", "Braze Append", "Offer", "wf-kill")
store.record_seen(key, "/exports/wf-kill")
store.begin(key, 4)
for number in range(1_000_000):
    store.ack_batch(key, number, 75, 1)
    print("acked", number, flush=True)
"""

# Eight threads ack at once, so most acks are committed in groups; each prints only after its own returned.
KILLED_THREADED_CHILD = """
import os, sys, threading
from rpi2braze.model import WorkflowKey
from rpi2braze.state import StateStore
store = StateStore(sys.argv[1])
key = WorkflowKey("rpi", "Braze Append", "Offer", "wf-kill")
store.record_seen(key, "/exports/wf-kill")
store.begin(key, 4)
def sender(offset):
    for number in range(offset, 1_000_000, 8):
        store.ack_batch(key, number, 75, 1)
        os.write(1, f"acked {number}\\n".encode())   # one write: lines of two threads never mix
for offset in range(8):
    threading.Thread(target=sender, args=(offset,)).start()
"""


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "state" / "state.db")


@pytest.fixture
def store(path):
    ticks = itertools.count(1000.0)
    with StateStore(path, clock=lambda: next(ticks)) as opened:
        yield opened


def filled_database(path: str) -> bytes:
    """Write a real state file whose rows span many pages (long locations); return its bytes."""
    with StateStore(path) as store:
        for index in range(40):
            key = WorkflowKey("rpi", "Braze Append", "Offer", f"wf-{index:04d}")
            store.record_seen(key, f"/exports/{index}/" + "x" * 1000)
        store.begin(key, 2)
        store.ack_batch(key, 0, 75, 0)
    with open(path, "rb") as file:
        return file.read()


def test_new_file_and_directory_are_private(tmp_path):
    path = tmp_path / "new" / "dir" / "state.db"
    with StateStore(str(path)) as store:
        store.record_seen(KEY, "/exports/wf-100")
        wal_mode = stat.S_IMODE(os.stat(f"{path}-wal").st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert wal_mode == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path.parent.parent).st_mode) == 0o700


def test_record_seen_inserts_pending_once(store):
    first = store.record_seen(KEY, "/exports/wf-100")
    again = store.record_seen(KEY, "/elsewhere/wf-100")
    assert first.status == WorkflowStatus.PENDING
    assert first.location == "/exports/wf-100"
    assert first.first_seen == first.updated_at == 1000.0
    assert again == first
    assert store.get(KEY) == first


def test_get_unknown_is_none(store):
    assert store.get(KEY) is None


def test_known_keys_are_per_source_and_any_status(store):
    for key in (KEY, OTHER, SAME_ID_OTHER_SOURCE):
        store.record_seen(key, "somewhere")
    store.begin(OTHER, 1)
    store.finish(OTHER, WorkflowStatus.FAILED, "bad")
    assert store.known_keys("rpi") == {KEY, OTHER}
    assert store.known_keys("rpi-sftp") == {SAME_ID_OTHER_SOURCE}
    assert store.known_keys("nowhere") == set()


def test_begin_returns_stored_partitions_and_acked_batches_on_resume(path):
    with StateStore(path) as store:
        store.record_seen(KEY, "/exports/wf-100")
        assert store.begin(KEY, 4) == (4, frozenset())
        store.ack_batch(KEY, 0, 75, 0)
        store.ack_batch(KEY, 2, 70, 5)
        started_at = store.get(KEY).started_at
    with StateStore(path) as resumed:
        assert resumed.begin(KEY, 16) == (4, frozenset({0, 2}))
        record = resumed.get(KEY)
    assert record.status == WorkflowStatus.IN_PROGRESS
    assert record.started_at == started_at
    assert record.extra == {"partitions": 4}


@pytest.mark.parametrize("status", FINAL)
def test_begin_refuses_a_finished_workflow(store, status):
    store.record_seen(KEY, "x")
    store.finish(KEY, status)
    with pytest.raises(StateError, match="requeue it first"):
        store.begin(KEY, 2)
    assert store.get(KEY).status == status


def test_ack_batch_adds_to_totals_and_is_idempotent(store):
    store.record_seen(KEY, "x")
    store.begin(KEY, 2)
    assert store.ack_batch(KEY, 0, 70, 5) is True
    assert store.ack_batch(KEY, 1, 75, 0) is True
    before = store.get(KEY)
    assert store.ack_batch(KEY, 1, 999, 999) is False
    after = store.get(KEY)
    assert (after.rows_delivered, after.rows_rejected, after.batches_acked) == (145, 5, 2)
    assert after.updated_at == before.updated_at


def test_concurrent_acks_from_eight_threads_give_exact_totals(store):
    store.record_seen(KEY, "x")
    store.begin(KEY, 8)
    inserted = []

    def sender(offset):
        # Every number is acked by two threads, so half the calls must be refused as repeats.
        for number in range(offset * 25, offset * 25 + 50):
            inserted.append(store.ack_batch(KEY, number, 3, 1))

    threads = [threading.Thread(target=sender, args=(offset,)) for offset in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = store.get(KEY)
    distinct = 7 * 25 + 50
    assert inserted.count(True) == distinct
    assert (record.batches_acked, record.rows_delivered, record.rows_rejected) == (distinct, 3 * distinct, distinct)
    assert store.begin(KEY, 8)[1] == frozenset(range(distinct))


def test_bad_acks_committed_with_good_ones_fail_alone(store):
    store.record_seen(KEY, "x")
    store.begin(KEY, 2)
    results = {}

    def ack(name, key, number, delivered):
        try:
            results[name] = store.ack_batch(key, number, delivered, 0)
        except StateError as error:
            results[name] = error

    def started(name, *arguments):
        thread = threading.Thread(target=ack, args=(name, *arguments), daemon=True)
        thread.start()
        return thread

    def wait_for(condition):
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.001)

    # Hold the file while the first ack commits, so the next five queue up and share one transaction.
    with store._lock:
        threads = [started("first", KEY, 0, 10)]
        wait_for(lambda: store._acks._committing and not store._acks._queued)   # its group is taken
        threads += [started(*arguments) for arguments in (
            ("unknown", OTHER, 0, 1), ("good", KEY, 1, 20), ("negative", KEY, -1, 1), ("huge", KEY, 2, 2**63),
            ("repeat", KEY, 0, 99))]
        wait_for(lambda: len(store._acks._queued) == 5)
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert results["first"] is True and results["good"] is True and results["repeat"] is False
    assert "not in the state file" in str(results["unknown"])
    assert "must be between 0 and" in str(results["negative"]) and "must be between 0 and" in str(results["huge"])
    record = store.get(KEY)
    assert (record.batches_acked, record.rows_delivered) == (2, 30)
    assert store.begin(KEY, 2)[1] == frozenset({0, 1})
    assert store.get(OTHER) is None


def test_a_failed_transaction_fails_every_ack_of_its_group_with_its_own_error(store, path):
    store.record_seen(KEY, "x")
    store.begin(KEY, 2)
    errors = []
    # Another connection holds the write lock: BEGIN IMMEDIATE fails with "database is locked".
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    store._connection.execute("PRAGMA busy_timeout = 0")

    def ack(number):
        try:
            store.ack_batch(KEY, number, 1, 0)
        except StateError as error:
            errors.append(error)

    threads = [threading.Thread(target=ack, args=(number,), daemon=True) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    blocker.rollback()
    blocker.close()
    assert len(errors) == 4 and len({id(error) for error in errors}) == 4
    assert all("locked" in str(error) for error in errors)
    assert store.ack_batch(KEY, 0, 1, 0) is True   # the file is free again: the next ack commits
    assert store.get(KEY).batches_acked == 1


@pytest.mark.parametrize("status", FINAL)
def test_finish_sets_status_reason_and_time(store, status):
    store.record_seen(KEY, "x")
    store.begin(KEY, 1)
    store.finish(KEY, status, "why")
    record = store.get(KEY)
    assert (record.status, record.reason) == (status, "why")
    assert record.finished_at == record.updated_at > record.started_at


def test_finish_forgets_the_acknowledged_batches_and_keeps_the_totals(store, path):
    other = WorkflowKey("rpi", "Braze Append", "Offer", "wf-101")
    for key in (KEY, other):
        store.record_seen(key, "x")
        store.begin(key, 4)
        for number in range(3):
            store.ack_batch(key, number, 75, 1)
    store.finish(KEY, WorkflowStatus.DELIVERED)
    record = store.get(KEY)
    assert (record.batches_acked, record.rows_delivered, record.rows_rejected) == (3, 225, 3)
    with contextlib.closing(sqlite3.connect(path)) as reader:
        assert reader.execute("SELECT COUNT(*) FROM batches").fetchone() == (3,)   # the other workflow's


@pytest.mark.parametrize("status", [WorkflowStatus.PENDING, WorkflowStatus.IN_PROGRESS])
def test_finish_refuses_a_non_final_status(store, status):
    store.record_seen(KEY, "x")
    with pytest.raises(ValueError):
        store.finish(KEY, status)


def test_set_pending_keeps_acked_batches_and_begin_clears_the_reason(store):
    store.record_seen(KEY, "x")
    store.begin(KEY, 3)
    store.ack_batch(KEY, 1, 75, 0)
    store.set_pending(KEY, "Braze refused the API key")
    record = store.get(KEY)
    assert (record.status, record.reason) == (WorkflowStatus.PENDING, "Braze refused the API key")
    assert record.batches_acked == 1
    assert store.begin(KEY, 5) == (3, frozenset({1}))
    assert store.get(KEY).reason == ""


def test_a_note_gives_an_in_progress_workflow_a_reason_and_leaves_other_statuses_alone(store):
    store.record_seen(KEY, "x")
    store.note(KEY, "waiting for Braze")
    assert (store.get(KEY).status, store.get(KEY).reason) == (WorkflowStatus.PENDING, "")
    store.begin(KEY, 3)
    store.note(KEY, "waiting for Braze")
    assert (store.get(KEY).status, store.get(KEY).reason) == (WorkflowStatus.IN_PROGRESS, "waiting for Braze")
    store.note(KEY, "")
    assert store.get(KEY).reason == ""
    store.finish(KEY, WorkflowStatus.DELIVERED)
    store.note(KEY, "waiting for Braze")
    assert (store.get(KEY).status, store.get(KEY).reason) == (WorkflowStatus.DELIVERED, "")


@pytest.mark.parametrize("status", FINAL)
def test_requeue_clears_batches_counters_reason_and_partitions(store, status):
    store.record_seen(KEY, "x")
    store.begin(KEY, 3)
    store.ack_batch(KEY, 0, 75, 2)
    store.finish(KEY, status, "why")
    record = store.requeue(KEY)
    assert record == store.get(KEY)
    assert record.status == WorkflowStatus.PENDING
    assert (record.rows_delivered, record.rows_rejected, record.batches_acked, record.reason) == (0, 0, 0, "")
    assert (record.started_at, record.finished_at, record.extra) == (None, None, {})
    assert store.begin(KEY, 6) == (6, frozenset())


def test_requeue_leaves_pending_alone_and_refuses_in_progress_or_unknown(store):
    store.record_seen(KEY, "x")
    assert store.requeue(KEY) == store.get(KEY)
    store.begin(KEY, 1)
    store.ack_batch(KEY, 0, 1, 0)
    with pytest.raises(StateError, match="in progress"):
        store.requeue(KEY)
    assert store.get(KEY).batches_acked == 1
    with pytest.raises(StateError, match="not in the state file"):
        store.requeue(OTHER)


def test_forget_removes_an_undelivered_workflow_and_its_batches_and_keeps_a_delivered_one(store):
    store.record_seen(KEY, "x")
    store.begin(KEY, 1)
    store.ack_batch(KEY, 0, 1, 0)                  # in progress, its process gone: forgotten whole
    store.record_seen(OTHER, "y")
    store.begin(OTHER, 1)
    store.finish(OTHER, WorkflowStatus.DELIVERED)
    store.forget(KEY)
    assert store.get(KEY) is None and [record.key for record in store.records()] == [OTHER]
    store.record_seen(KEY, "x")                    # the folder back: a new workflow, from batch 0
    assert store.begin(KEY, 1) == (1, frozenset())
    with pytest.raises(StateError, match="was delivered; it is not forgotten"):
        store.forget(OTHER)
    with pytest.raises(StateError, match="not in the state file"):
        store.forget(WorkflowKey("rpi", "c", "o", "unknown"))


@pytest.mark.parametrize(
    "statuses, expected",
    [
        (None, [SAME_ID_OTHER_SOURCE, OTHER, KEY]),
        ([WorkflowStatus.DELIVERED], [OTHER]),
        ([WorkflowStatus.PENDING, WorkflowStatus.FAILED], [SAME_ID_OTHER_SOURCE, KEY]),
        ([WorkflowStatus.QUARANTINED], []),
        ([], []),
    ],
)
def test_records_filter_by_status_newest_first(store, statuses, expected):
    for key in (KEY, OTHER, SAME_ID_OTHER_SOURCE):
        store.record_seen(key, "x")
    store.finish(OTHER, WorkflowStatus.DELIVERED)
    store.finish(SAME_ID_OTHER_SOURCE, WorkflowStatus.FAILED, "bad")
    assert [record.key for record in store.records(statuses)] == expected


def test_find_returns_the_workflow_id_under_every_source(store):
    for key in (KEY, OTHER, SAME_ID_OTHER_SOURCE):
        store.record_seen(key, "x")
    assert {record.key for record in store.find("wf-100")} == {KEY, SAME_ID_OTHER_SOURCE}
    assert store.find("wf-999") == []


def test_pending_includes_in_progress_oldest_first_and_counts_cover_every_status(store):
    for key in (KEY, OTHER, SAME_ID_OTHER_SOURCE):
        store.record_seen(key, "x")
    store.begin(OTHER, 1)
    store.finish(SAME_ID_OTHER_SOURCE, WorkflowStatus.QUARANTINED, "no header")
    assert [record.key for record in store.pending()] == [KEY, OTHER]
    assert store.counts() == {"pending": 1, "in_progress": 1, "delivered": 0, "failed": 0, "quarantined": 1}


def test_a_second_store_on_the_same_file_sees_everything(path):
    with StateStore(path) as store:
        for key in (KEY, OTHER):
            store.record_seen(key, "x")
        store.begin(KEY, 2)
        store.ack_batch(KEY, 0, 75, 0)
        store.finish(OTHER, WorkflowStatus.FAILED, "bad")
        written = store.records()
    with StateStore(path) as reopened:
        assert reopened.records() == written
        assert reopened.begin(KEY, 2) == (2, frozenset({0}))


def acks_printed_until_killed(script: str, path: str, count: int) -> list[int]:
    """Run `script` on the state file at `path`, SIGKILL it once it printed `count` acks; return
    every ack number it printed."""
    child = subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    printed = []
    while len(printed) < count:
        line = child.stdout.readline()
        if not line:
            break
        if line.startswith("acked "):
            printed.append(int(line.split()[1]))
    os.kill(child.pid, signal.SIGKILL)
    remaining, errors = child.communicate()
    assert child.returncode == -signal.SIGKILL, errors
    return printed + [int(line.split()[1]) for line in remaining.splitlines() if line.startswith("acked ")]


@pytest.mark.parametrize("script, threads", [(KILLED_CHILD, 1), (KILLED_THREADED_CHILD, 8)],
                         ids=["one-thread", "eight-threads-grouped"])
def test_acks_printed_before_kill_9_are_all_committed(path, script, threads):
    printed = acks_printed_until_killed(script, path, 25 * threads)
    key = WorkflowKey("rpi", "Braze Append", "Offer", "wf-kill")
    with StateStore(path) as store:
        record = store.get(key)
        partitions, acked = store.begin(key, 9)
    assert len(printed) >= 25 * threads
    assert set(printed) <= acked
    for first in range(threads):   # thread `first` acks first, first + threads, ...: none skipped
        own = sorted(number for number in acked if number % threads == first)
        assert own == list(range(first, first + threads * len(own), threads))
    assert len(acked) - len(printed) <= threads   # at most one committed, unprinted ack per thread
    assert (partitions, record.status, record.batches_acked) == (4, WorkflowStatus.IN_PROGRESS, len(acked))
    assert (record.rows_delivered, record.rows_rejected) == (75 * len(acked), len(acked))


def damage_random(path, tmp_path):
    return os.urandom(8192)


def damage_truncate(path, tmp_path):
    data = filled_database(str(tmp_path / "source.db"))
    return data[: len(data) // 2]


def damage_page(path, tmp_path):
    data = filled_database(str(tmp_path / "source.db"))
    return data[:8192] + os.urandom(4096) + data[12288:]


@pytest.mark.parametrize("damage", [damage_random, damage_truncate, damage_page])
def test_a_corrupt_file_is_refused_and_left_unchanged(path, tmp_path, damage):
    os.makedirs(os.path.dirname(path))
    content = damage(path, tmp_path)
    with open(path, "wb") as file:
        file.write(content)
    with pytest.raises(StateError) as refused:
        StateStore(path)
    message = str(refused.value)
    assert path in message
    assert "SQLite says" in message
    assert "the file was not changed; move it aside to start fresh" in message
    with open(path, "rb") as file:
        assert file.read() == content
    assert sorted(os.listdir(os.path.dirname(path))) == ["state.db"]


def test_a_newer_schema_version_is_refused_and_left_unchanged(path):
    filled_database(path)
    connection = sqlite3.connect(path)
    # A rollback-journal file: switching it to WAL before refusing it would change its header.
    connection.executescript("PRAGMA journal_mode = DELETE; PRAGMA user_version = 99;")
    connection.close()
    with open(path, "rb") as file:
        content = file.read()
    with pytest.raises(StateError, match=r"schema version 99, newer .*upgrade rpi2braze or move it aside"):
        StateStore(path)
    with open(path, "rb") as file:
        assert file.read() == content


def test_an_empty_existing_file_is_migrated(path):
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()
    with StateStore(path) as store:
        store.record_seen(KEY, "x")
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    connection.close()


def test_a_path_that_cannot_be_created_is_a_state_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StateError, match="cannot be created or opened"):
        StateStore(str(tmp_path / "file" / "state.db"))


@pytest.mark.parametrize(
    "call",
    [
        lambda store: store.begin(OTHER, 1),
        lambda store: store.ack_batch(OTHER, 0, 1, 0),
        lambda store: store.finish(OTHER, WorkflowStatus.DELIVERED),
        lambda store: store.set_pending(OTHER, "why"),
        lambda store: store.begin(KEY, 0),
        lambda store: store.ack_batch(KEY, -1, 1, 0),
        lambda store: store.ack_batch(KEY, 0, -1, 0),
    ],
    ids=["begin-unknown", "ack-unknown", "finish-unknown", "pending-unknown", "zero-partitions", "negative-number",
         "negative-count"],
)
def test_bad_calls_raise_state_error_and_change_nothing(store, call):
    store.record_seen(KEY, "x")
    before = store.records()
    with pytest.raises(StateError):
        call(store)
    assert store.records() == before


def test_a_closed_store_refuses_calls(path):
    store = StateStore(path)
    store.close()
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.get(KEY)


@pytest.mark.parametrize("first, second, kept", [
    ("files-v1", "files-v1", True),     # a plain resume keeps what Braze acknowledged
    ("files-v1", "files-v2", False),    # the files or settings changed: batch numbers mean other rows now
    ("", "files-v2", False),            # begun by a version that stored none: its numbers are not trusted
    ("files-v1", "", True),
])
def test_begin_forgets_acknowledged_batches_when_the_fingerprint_changes(path, first, second, kept):
    with StateStore(path) as store:
        store.record_seen(KEY, "x")
        store.begin(KEY, 4, first)
        store.ack_batch(KEY, 0, 75, 1)
        partitions, acked = store.begin(KEY, 2, second)
        record = store.get(KEY)
    assert (acked == frozenset({0})) is kept
    assert (record.rows_delivered, record.rows_rejected, record.batches_acked) == ((75, 1, 1) if kept else (0, 0, 0))
    assert partitions == (4 if kept else 2)
    assert record.status == WorkflowStatus.IN_PROGRESS
