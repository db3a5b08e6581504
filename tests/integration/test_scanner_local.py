"""The Scanner over a real local folder and a real state file, with a hand-driven clock."""

import os
import sqlite3
import threading
import time

import pytest

from rpi2braze import metrics
from rpi2braze.health import HEALTH
from rpi2braze.model import ChannelMode, WorkflowKey, WorkflowStatus
from rpi2braze.scanner import FULL_REFRESH_SECONDS, MAX_BACKOFF_SECONDS, RETRY_PENDING_SECONDS, Scanner
from rpi2braze.settings import DEFAULT_CHANNELS, SourceSettings
from rpi2braze.sources.local import LocalSource
from rpi2braze.state import StateStore
from clocks import FakeClock

UPSERT = "Braze Onboarding and Upsert"


class CountingSource(LocalSource):
    """A real LocalSource that counts which folders it was asked to list."""

    def __init__(self, settings):
        super().__init__(settings, watch=False)
        self.listed = []

    def list_dir(self, relpath):
        self.listed.append(relpath)
        return super().list_dir(relpath)


@pytest.fixture
def world(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    settings = SourceSettings(name="drop", type="local", path=str(base), settle_seconds=30, scan_interval_seconds=10,
                              marker_file="done.ok")
    source = CountingSource(settings)
    state = StateStore(str(tmp_path / "state.db"))
    queued = []
    clock = FakeClock()
    scanner = Scanner([(settings, source)], dict(DEFAULT_CHANNELS), state,
                      lambda folder, src, cfg: queued.append(folder), threading.Event(), clock)
    yield base, scanner, queued, clock, source, state
    state.close()


def drop(base, workflow_id, content="external_id\nu1\n", channel=UPSERT, name="RPI_Export_1.txt"):
    folder = base / channel / "Offer" / workflow_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(content)
    return folder


def test_folder_is_queued_only_after_it_settles(world):
    base, scanner, queued, clock, _, _ = world
    drop(base, "1")
    scanner.scan_due()
    assert queued == []
    clock.now += 29
    scanner.scan_due()
    assert queued == []
    clock.now += 1.5
    scanner.scan_due()
    assert [folder.key.workflow_id for folder in queued] == ["1"]
    assert queued[0].mode == ChannelMode.UPSERT
    assert [entry.name for entry in queued[0].data_files] == ["RPI_Export_1.txt"]


def test_a_growing_file_restarts_the_settle_time(world):
    base, scanner, queued, clock, _, _ = world
    folder = drop(base, "1")
    scanner.scan_due()
    clock.now += 25
    with open(folder / "RPI_Export_1.txt", "a") as export:
        export.write("u2\n")
    scanner.scan_due()
    clock.now += 25
    scanner.scan_due()
    assert queued == []
    clock.now += 6
    scanner.scan_due()
    assert len(queued) == 1


def test_marker_file_completes_at_once(world):
    base, scanner, queued, _, _, _ = world
    folder = drop(base, "1")
    (folder / "done.ok").write_text("")
    scanner.scan_due()
    assert len(queued) == 1


def test_unknown_channel_is_never_queued_nor_descended(world):
    base, scanner, queued, clock, source, _ = world
    drop(base, "1", channel="Email Channel")
    for _ in range(3):
        scanner.scan_due()
        clock.now += 100
    assert queued == []
    assert not any(path.startswith("Email Channel") for path in source.listed)


def test_finished_folders_are_not_listed_again(world):
    base, scanner, queued, clock, source, state = world
    drop(base, "1")
    key = WorkflowKey("drop", UPSERT, "Offer", "1")
    state.record_seen(key, "x")
    state.begin(key, 1)
    state.finish(key, WorkflowStatus.DELIVERED)
    source.listed.clear()
    scanner.scan_due()
    clock.now += 100
    scanner.scan_due()
    assert queued == []
    assert f"{UPSERT}/Offer/1" not in source.listed


def test_busy_and_postponed_folders_are_not_queued_twice(world):
    base, scanner, queued, clock, _, _ = world
    drop(base, "1", name="RPI_Export_1.txt")
    (base / UPSERT / "Offer" / "1" / "done.ok").write_text("")
    scanner.scan_due()
    clock.now += 100
    scanner.scan_due()
    assert len(queued) == 1                                  # busy: a worker has it
    scanner.release(queued[0].key, WorkflowStatus.PENDING)   # postponed (e.g. Braze refused the key)
    clock.now += RETRY_PENDING_SECONDS - 1
    scanner.scan_due()
    assert len(queued) == 1
    clock.now += 2 + 10
    scanner.scan_due()
    assert len(queued) == 2


def test_a_folder_postponed_again_and_again_waits_twice_as_long_each_time_and_afresh_once_it_ended(world):
    # e.g. its reading process is killed (out of memory) every time it is read
    base, scanner, queued, clock, _, state = world
    drop(base, "1")
    (base / UPSERT / "Offer" / "1" / "done.ok").write_text("")
    scanner.scan_due()

    def postponed_then_queued_again() -> float:
        scanner.release(queued[-1].key, WorkflowStatus.PENDING)
        released, count = clock.now, len(queued)
        while len(queued) == count:
            clock.now += 1
            scanner.scan_due()
        return clock.now - released

    waits = [postponed_then_queued_again() for _ in range(6)]
    assert [round(wait, -1) for wait in waits[:4]] == [30, 60, 120, 240]
    assert MAX_BACKOFF_SECONDS <= waits[4] <= MAX_BACKOFF_SECONDS + 10 and waits[5] == waits[4]
    key = queued[-1].key
    state.finish(key, WorkflowStatus.FAILED, "given up by hand")
    scanner.release(key, WorkflowStatus.FAILED)
    state.requeue(key)   # what `rpi2braze retry` does
    clock.now += 100
    scanner.scan_due()
    assert len(queued) == 8
    assert round(postponed_then_queued_again(), -1) == 30, "a new streak starts from the first delay"
    assert round(postponed_then_queued_again(), -1) == 60


def test_a_folder_another_process_holds_is_looked_at_again_after_the_first_delay_every_time(world):
    base, scanner, queued, clock, _, _ = world
    drop(base, "1")
    (base / UPSERT / "Offer" / "1" / "done.ok").write_text("")
    scanner.scan_due()
    waits = []
    for _ in range(4):   # `process` run by hand holds it: no failure of the folder's
        scanner.release(queued[-1].key, WorkflowStatus.PENDING, failed=False)
        released, count = clock.now, len(queued)
        while len(queued) == count:
            clock.now += 1
            scanner.scan_due()
        waits.append(round(clock.now - released, -1))
    assert waits == [30, 30, 30, 30]


def test_queue_now_skips_the_settle_time_but_not_the_rules(world):
    base, scanner, queued, _, _, _ = world
    drop(base, "1")
    assert scanner.queue_now("drop", UPSERT, "Offer", "1") is not None
    assert scanner.queue_now("drop", UPSERT, "Offer", "1") is None      # already busy
    seen = {"outcome": "seen", "source": "drop"}
    before = metrics.REGISTRY.get_sample_value("rpi2braze_folders_total", seen)
    assert scanner.queue_now("drop", UPSERT, "Offer", "missing") is None   # not there, or not visible yet
    assert metrics.REGISTRY.get_sample_value("rpi2braze_folders_total", seen) == before   # and not counted
    drop(base, "2", name="RPI_Export_2.txt.part")
    assert scanner.queue_now("drop", UPSERT, "Offer", "2") is None      # still being written
    with pytest.raises(Exception, match="not configured"):
        scanner.queue_now("drop", "Nope", "Offer", "1")
    assert len(queued) == 1


def test_unreachable_source_backs_off_and_reports_unhealthy(world):
    base, scanner, queued, clock, _, _ = world
    os.rename(base, str(base) + ".gone")
    delays = []
    for _ in range(12):
        clock.now = scanner.scan_due()
        delays.append(clock.now)
    gaps = [later - earlier for earlier, later in zip(delays, delays[1:])]
    assert gaps[0] < gaps[2] < gaps[4] and max(gaps) == MAX_BACKOFF_SECONDS
    healthy, details = HEALTH.report(threshold=-1)
    assert not healthy and "source:drop" in details["failing"]
    os.rename(str(base) + ".gone", base)
    scanner.scan_due()
    assert "source:drop" not in HEALTH.report(threshold=-1)[1]["failing"]


def test_a_queued_folder_is_pending_in_the_state_file_at_once(world):
    base, scanner, queued, _, _, state = world
    folder = drop(base, "1")
    (folder / "done.ok").write_text("")
    scanner.scan_due()
    [record] = state.records()
    assert (record.key, record.status) == (queued[0].key, WorkflowStatus.PENDING)


def test_a_folder_name_that_is_not_utf8_is_skipped_with_a_warning_and_its_siblings_go_on(world, capsys):
    base, scanner, queued, clock, _, state = world
    drop(base, "1").joinpath("done.ok").write_text("")
    offer = os.fsencode(base / UPSERT / "Offer")
    os.makedirs(os.path.join(offer, b"Caf\xe9"))       # Latin-1 "Café": not UTF-8
    with open(os.path.join(offer, b"Caf\xe9", b"RPI_Export_1.txt"), "w") as export:
        export.write("external_id\nu1\n")
    open(os.path.join(offer, b"Caf\xe9", b"done.ok"), "w").close()
    scanner.scan_due()
    assert [folder.key.workflow_id for folder in queued] == ["1"]
    assert [record.key.workflow_id for record in state.records()] == ["1"]
    assert "its name is not UTF-8" in capsys.readouterr().out


def test_a_folder_the_state_file_cannot_record_yet_is_queued_at_a_later_scan(world, tmp_path):
    base, scanner, queued, clock, _, state = world
    drop(base, "1").joinpath("done.ok").write_text("")
    state._connection.execute("PRAGMA busy_timeout = 0")   # the lock below fails at once, not in seconds
    other = sqlite3.connect(str(tmp_path / "state.db"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")                    # another process writing (retry, process)
        scanner.scan_due()
        assert queued == []
    finally:
        other.execute("ROLLBACK")
        other.close()
    clock.now += 10
    scanner.scan_due()
    assert [folder.key.workflow_id for folder in queued] == ["1"]


@pytest.mark.parametrize("status, warnings", [(WorkflowStatus.DELIVERED, 1), (WorkflowStatus.QUARANTINED, 0)])
def test_data_written_into_an_archived_folders_place_after_delivery_is_warned_about(tmp_path, capsys, status,
                                                                                    warnings):
    base = tmp_path / "base"
    settings = SourceSettings(name="drop", type="local", path=str(base), settle_seconds=0, scan_interval_seconds=10,
                              archive_path=str(tmp_path / "archive"))
    with StateStore(str(tmp_path / "state.db"), clock=lambda: 2_000_000_000.0) as state:
        key = WorkflowKey("drop", UPSERT, "Offer", "1")
        state.record_seen(key, "here")
        state.finish(key, status)      # a delivered folder was archived; a quarantined one may stay
        folder = drop(base, "1", name="RPI_Export_2.txt")
        os.utime(folder / "RPI_Export_2.txt", (1_999_999_000, 1_999_999_000))   # before it finished
        queued, clock = [], FakeClock()
        scanner = Scanner([(settings, LocalSource(settings, watch=False))], dict(DEFAULT_CHANNELS), state,
                          lambda folder, src, cfg: queued.append(folder), threading.Event(), clock)
        scanner.scan_due()
        assert "data_after_delivery" not in capsys.readouterr().out
        os.utime(folder / "RPI_Export_2.txt", (2_000_000_100, 2_000_000_100))   # written after it finished
        for _ in range(2):
            clock.now += 10
            scanner.scan_due()
        logged = capsys.readouterr().out
    assert queued == []
    assert logged.count("data_after_delivery") == warnings and ("retry 1 --force" in logged) == bool(warnings)


class BrokenSource(LocalSource):
    """A source whose listing fails in a way nothing expects (a bug)."""

    def list_dir(self, relpath):
        raise RuntimeError("a bug in a source")


def test_a_source_that_fails_unexpectedly_does_not_hold_up_the_others(tmp_path, capsys):
    sources = []
    for name in ("broken", "drop"):
        base = tmp_path / name
        base.mkdir()
        settings = SourceSettings(name=name, type="local", path=str(base), settle_seconds=0, marker_file="done.ok")
        sources.append((settings, (BrokenSource if name == "broken" else LocalSource)(settings, watch=False)))
    drop(tmp_path / "drop", "1").joinpath("done.ok").write_text("")
    with StateStore(str(tmp_path / "state.db")) as state:
        queued = []
        scanner = Scanner(sources, dict(DEFAULT_CHANNELS), state, lambda folder, src, cfg: queued.append(folder),
                          threading.Event(), FakeClock())
        scanner.scan_due()
    assert [folder.key.source for folder in queued] == ["drop"]
    assert "scan_failed" in capsys.readouterr().out


def test_a_source_a_reload_removed_leaves_health_and_metrics(tmp_path):
    def scanner_of(name):
        settings = SourceSettings(name=name, type="local", path=str(tmp_path / name))
        return Scanner([(settings, LocalSource(settings, watch=False))], dict(DEFAULT_CHANNELS), state,
                       lambda *queued: None, threading.Event(), FakeClock())

    with StateStore(str(tmp_path / "state.db")) as state:
        scanner_of("old-name").scan_due()                   # its base folder does not exist: down
        assert "source:old-name" in HEALTH.report()[1]["down"]
        scanner_of("new-name")                              # the engine a reload builds
    details = HEALTH.report()[1]
    assert "source:old-name" not in details["components"] and "source:old-name" not in details["down"]
    exposed = metrics.render()[0].decode()
    assert 'rpi2braze_source_up{source="new-name"}' in exposed
    assert 'rpi2braze_source_up{source="old-name"}' not in exposed


class OutOfWatches(LocalSource):
    def watch(self, wake):
        raise OSError(28, "inotify watch limit reached")


def test_a_source_that_cannot_be_watched_is_still_scanned(tmp_path, capsys):
    base = tmp_path / "base"
    drop(base, "1").joinpath("done.ok").write_text("")
    settings = SourceSettings(name="drop", type="local", path=str(base), settle_seconds=0, marker_file="done.ok",
                              scan_interval_seconds=0.1)
    queued, stop = [], threading.Event()
    with StateStore(str(tmp_path / "state.db")) as state:
        scanner = Scanner([(settings, OutOfWatches(settings))], dict(DEFAULT_CHANNELS), state,
                          lambda folder, src, cfg: queued.append(folder), stop)
        running = threading.Thread(target=scanner.run)
        running.start()
        try:
            wait_for_queued = time.monotonic() + 10
            while not queued and time.monotonic() < wait_for_queued:
                time.sleep(0.05)
        finally:
            stop.set()
            scanner.wake()
            running.join(10)
    assert [folder.key.workflow_id for folder in queued] == ["1"]
    assert "watch_unavailable" in capsys.readouterr().out


def test_folders_older_than_the_cutover_are_left_alone_and_not_listed_again(tmp_path):
    # Taking over a share from another tool: what it delivered before the cutover stays as it is.
    base = tmp_path / "base"
    cutover = time.time() - 3600
    settings = SourceSettings(name="drop", type="local", path=str(base), settle_seconds=0, scan_interval_seconds=10,
                              ignore_folders_before=cutover)
    source = CountingSource(settings)
    state = StateStore(str(tmp_path / "state.db"))
    queued, clock = [], FakeClock()
    scanner = Scanner([(settings, source)], dict(DEFAULT_CHANNELS), state,
                      lambda folder, src, cfg: queued.append(folder), threading.Event(), clock)
    try:
        old = drop(base, "old")
        os.utime(old / "RPI_Export_1.txt", (cutover - 86400, cutover - 86400))
        mixed = drop(base, "mixed")                                 # one file older, one newer: delivered
        os.utime(mixed / "RPI_Export_1.txt", (cutover - 86400, cutover - 86400))
        drop(base, "mixed", name="RPI_Export_2.txt")
        drop(base, "new")
        begun = drop(base, "begun")            # old, but rpi2braze began it (a restart mid-delivery)
        os.utime(begun / "RPI_Export_1.txt", (cutover - 86400, cutover - 86400))
        state.record_seen(WorkflowKey("drop", UPSERT, "Offer", "begun"), str(begun))
        scanner.scan_due()
        assert sorted(folder.key.workflow_id for folder in queued) == ["begun", "mixed", "new"]
        assert state.get(WorkflowKey("drop", UPSERT, "Offer", "old")) is None   # not even pending
        source.listed.clear()
        clock.now += 10
        scanner.scan_due()
        assert f"{UPSERT}/Offer" in source.listed and f"{UPSERT}/Offer/old" not in source.listed
        drop(base, "old", name="RPI_Export_2.txt")                  # written into it after the cutover
        clock.now += FULL_REFRESH_SECONDS
        scanner.scan_due()
        assert sorted(folder.key.workflow_id for folder in queued) == ["begun", "mixed", "new", "old"]
    finally:
        state.close()


def test_data_files_above_the_workflow_folders_are_warned_about_once(world, capsys):
    # RPI's Export path format without [Workflow ID] (or [Offer]): nothing there would ever be delivered.
    base, scanner, queued, clock, _, _ = world
    (base / UPSERT / "Offer").mkdir(parents=True)
    (base / UPSERT / "Offer" / "RPI_Export_9.txt").write_text("external_id\nu1\n")
    (base / UPSERT / "RPI_Export_8.txt").write_text("external_id\nu1\n")
    (base / UPSERT / "Offer" / "notes.txt").write_text("not data")
    for _ in range(2):
        scanner.scan_due()
        clock.now += 10
    logged = capsys.readouterr().out
    assert logged.count("data_files_misplaced") == 2 and queued == []
    assert "RPI_Export_9.txt lie above the workflow folders" in logged and "notes.txt" not in logged
    assert f"{UPSERT}/Offer" in logged and "check the channel's Export path format in RPI" in logged


def test_a_settled_folder_without_a_data_file_is_warned_about_once(world, capsys):
    # An export saved under another name would otherwise wait for good in silence.
    base, scanner, queued, clock, _, _ = world
    drop(base, "1", name="fixed_rows.csv")
    drop(base, "2", name="RPI_Export_2.txt_summary.xml")   # RPI's sibling alone: nothing to say yet
    scanner.scan_due()
    assert "folder_without_data_files" not in capsys.readouterr().out   # not settled yet
    for _ in range(2):
        clock.now += 31
        scanner.scan_due()
    logged = capsys.readouterr().out
    assert logged.count("folder_without_data_files") == 1 and queued == []
    assert "it holds fixed_rows.csv but no file named like RPI_Export_*.txt" in logged


def test_workflows_of_a_source_no_longer_configured_are_warned_about_at_start(tmp_path, capsys):
    # Renamed in the config, a source's folders still in its tree would be delivered again.
    state = StateStore(str(tmp_path / "state.db"))
    try:
        for source, workflow_id in (("old-name", "1"), ("old-name", "2"), ("resend", "3"), ("local", "4"), ("drop", "5")):
            state.record_seen(WorkflowKey(source, UPSERT, "Offer", workflow_id), "x")
        settings = SourceSettings(name="drop", type="local", path=str(tmp_path))
        capsys.readouterr()
        Scanner([(settings, CountingSource(settings))], dict(DEFAULT_CHANNELS), state, lambda *folder: None,
                threading.Event(), FakeClock())
        logged = capsys.readouterr().out
    finally:
        state.close()
    assert logged.count("sources_not_configured") == 1 and "old-name" in logged
    assert "resend" not in logged and "'local'" not in logged and "'drop'" not in logged
