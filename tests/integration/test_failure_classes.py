"""How each class of Braze failure ends, through the real command and daemon over HTTP.

400/413 for a batch: halves are resent until the offending objects stand alone and are
dead-lettered. A 201 naming objects in errors[]: only those rows are rejected. 401: every sender
stops, the folder stays pending with the reason, one probe goes out every few seconds, and
delivery resumes by itself once Braze accepts the key, or once a reload brings the right one.
"""

import csv
import os
import signal
import sqlite3
import threading
import time

import pytest

from daemon_helpers import (
    API_KEY, DaemonProcess, cli, environment, local_source, status, wait_for, wait_status, write_config,
)
from delivery_helpers import (
    HEADER, MARKER, UPSERT, expected_profiles, export_rows, profile_mismatches, write_export,
)
from rpi2braze import concurrency
from rpi2braze.concurrency import PROBE_INTERVAL_SECONDS
from rpi2braze.config import load_settings
from rpi2braze.model import WorkflowStatus
from rpi2braze.pipeline import Pipeline
from rpi2braze.process import resolve_folder
from rpi2braze.sandbox import Faults, SandboxServer
from rpi2braze.worker import WAIT_POLL_SECONDS, FolderDelivery

pytestmark = pytest.mark.slow

NOTES = 7
LONG_NOTE = "\N{GRINNING FACE}" * 255   # 1,020 bytes: seven make an object no 6,000-byte request can carry


# Read and mapped in this process, or (every folder, however small) in the child process, whose
# batches reach the senders with their rows packed until a rejection needs them.
READING = pytest.mark.parametrize("reading", ["", "parse_process_min_bytes: 0\n"], ids=["in_process", "child"])


def deadlettered(state_dir) -> list[dict]:
    rows = []
    for root, _, names in os.walk(state_dir / "deadletter"):
        for name in names:
            with open(os.path.join(root, name), newline="", encoding="utf-8") as handle:
                rows += list(csv.DictReader(handle))
    return rows


@READING
def test_a_refused_batch_is_halved_until_the_oversized_objects_are_dead_lettered(tmp_path, reading):
    rows = export_rows("b", 200)
    oversized = {rows[17].external_id, rows[18].external_id, rows[150].external_id}
    folder = tmp_path / "exports" / UPSERT / "Offer" / "61"
    folder.mkdir(parents=True)
    with open(folder / "RPI_Export_61.txt", "w", encoding="utf-8") as export:
        export.write(HEADER.rstrip("\n") + "".join(f",Note{number}" for number in range(NOTES)) + "\n")
        for row in rows:
            notes = ("," + LONG_NOTE if row.external_id in oversized else ",") * NOTES
            export.write(row.line().rstrip("\n") + notes + "\n")
    # At most 10 objects and 6,000 bytes a request: a 75-object batch (~22 KB) is refused with 413
    # until its parts are small enough, then with 400 until they hold 10 objects or fewer.
    with SandboxServer(api_key=API_KEY, max_objects=10, max_bytes=6000) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")), extra=reading)
        result = cli(config, "process", str(folder))
        statuses = {record.status for record in sandbox.requests}
        profiles = sandbox.store.all()

    assert result.returncode == 0, result.stdout + result.stderr
    assert {400, 413, 201} <= statuses
    wanted = {external_id: profile for external_id, profile in expected_profiles(rows, "Offer").items()
              if external_id not in oversized}
    assert profile_mismatches(profiles, wanted) == [] and set(profiles) == set(wanted)
    rejected = deadlettered(tmp_path / "state")
    assert sorted(row["external_id"] for row in rejected) == sorted(oversized)
    assert all("413" in row["reason"] for row in rejected)
    (record,) = status(config)
    assert (record["status"], record["rows_delivered"], record["rows_rejected"]) == ("delivered", 197, 3)


@READING
def test_only_the_objects_braze_names_in_errors_are_rejected(tmp_path, reading):
    rows = export_rows("e", 120)
    # Addresses the daemon's check lets through and Braze (the sandbox) refuses: a 201 with errors[].
    refused = {5: "a@-example.com", 80: "a@exa_mple.com", 119: "é@example.com"}
    rows = [row if number not in refused else type(row)(**{**row.__dict__, "email": refused[number]})
            for number, row in enumerate(rows)]
    folder = write_export(tmp_path / "exports", "Offer", "62", rows, marker=False)
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "exports")), extra=reading)
        result = cli(config, "process", str(folder))
        profiles = sandbox.store.all()

    assert result.returncode == 0, result.stdout + result.stderr
    rejected = deadlettered(tmp_path / "state")
    assert sorted(row["email"] for row in rejected) == sorted(refused.values())
    assert all("EMAIL_BAD_FORMAT" in row["reason"] for row in rejected)
    accepted = [row for number, row in enumerate(rows) if number not in refused]
    assert profile_mismatches(profiles, expected_profiles(accepted, "Offer")) == []
    (record,) = status(config)
    assert (record["rows_delivered"], record["rows_rejected"]) == (117, 3)


def test_a_refused_key_stops_the_workspace_until_braze_accepts_it(tmp_path):
    drop = tmp_path / "drop"
    rows = export_rows("a", 4000)   # two partitions: two senders that must both stop
    with SandboxServer(api_key="a-key-the-daemon-does-not-have") as sandbox:
        config = write_config(str(tmp_path), sandbox.url,
                              local_source(str(drop), settle=30, extra=f"    marker_file: {MARKER}\n"))
        daemon = DaemonProcess(config, str(tmp_path / "daemon.log"))
        try:
            daemon.start()
            write_export(drop, "Offer", "63", rows)
            pending = wait_status(config, "63", "pending", timeout=20)
            assert "401" in pending["reason"]
            wait_for(lambda: len(sandbox.requests) >= 2, timeout=2 * PROBE_INTERVAL_SECONDS + 5,
                     what="a probe after the first refusal")
            held = wait_status(config, "63", "pending", timeout=1)
            assert held["rows_delivered"] == 0 and "401" in held["reason"]
            refused = sorted(record.monotonic for record in sandbox.requests)
            assert {record.status for record in sandbox.requests} == {401}
            assert sandbox.store.all() == {}

            sandbox.set_api_key(API_KEY)   # the operator fixes the key on Braze's side
            delivered = wait_status(config, "63", "delivered", timeout=PROBE_INTERVAL_SECONDS + 20)
            assert daemon.terminate() == 0
        finally:
            daemon.stop_quietly()
        profiles = sandbox.store.all()

    assert delivered["rows_delivered"] == 4000 and delivered["reason"] == ""
    assert profile_mismatches(profiles, expected_profiles(rows, "Offer")) == []
    # The first refusal may meet a few requests already on their way; after it, one probe per interval.
    probes = [arrived for arrived in refused if arrived - refused[0] > 1.0]
    gaps = [later - earlier for earlier, later in zip([refused[0], *probes], probes)]
    assert gaps and all(gap >= PROBE_INTERVAL_SECONDS - 0.6 for gap in gaps), gaps
    events = [event["event"] for event in daemon.events()]
    assert events.count("braze_refused") == 1 and events.count("braze_accepted") == 1


def test_a_key_fixed_in_the_config_takes_effect_at_reload(tmp_path):
    drop = tmp_path / "drop"
    key_file = tmp_path / "braze.key"
    key_file.write_text("a-key-braze-refuses\n")
    rows = export_rows("r", 300)
    with SandboxServer(api_key=API_KEY) as sandbox:
        config = write_config(str(tmp_path), sandbox.url,
                              local_source(str(drop), settle=30, extra=f"    marker_file: {MARKER}\n"))
        with open(config, encoding="utf-8") as text:
            keyed = text.read().replace("api_key: ${TEST_BRAZE_API_KEY}", f"api_key_file: {key_file}")
        with open(config, "w", encoding="utf-8") as text:
            text.write(keyed)
        daemon = DaemonProcess(config, str(tmp_path / "daemon.log"))
        try:
            daemon.start()
            write_export(drop, "Offer", "64", rows)
            assert "401" in wait_status(config, "64", "pending", timeout=20)["reason"]
            key_file.write_text(API_KEY + "\n")
            daemon.process.send_signal(signal.SIGHUP)
            wait_status(config, "64", "delivered", timeout=30)
            assert daemon.terminate() == 0
        finally:
            daemon.stop_quietly()
        profiles = sandbox.store.all()

    assert profile_mismatches(profiles, expected_profiles(rows, "Offer")) == []
    assert "reload_done" in [event["event"] for event in daemon.events()]


def test_a_state_file_too_busy_to_show_a_refusal_does_not_end_the_wait_for_held_batches(tmp_path):
    """The batches held at the gate are still this delivery's: giving up on them (and the lock on
    the workflow) would have them sent again by the next delivery of the folder."""
    folder = write_export(tmp_path / "drop", "Offer", "65", export_rows("w", 600))
    # Refused answers take a second, so the state file is locked before the refusal is shown.
    with SandboxServer(api_key="a-key-the-daemon-does-not-have", faults=Faults(latency_seconds=1.0)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "drop"), settle=0))
        settings = load_settings(config, environment())
        delivery_folder, source, source_settings = resolve_folder(settings, str(folder))
        pipeline = Pipeline.open(settings, threading.Event())
        pipeline.context.state._connection.execute("PRAGMA busy_timeout = 0")   # fail at once, not in 5 s
        delivery = FolderDelivery(delivery_folder, source, source_settings, pipeline.context)
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(status=delivery.run()))
        blocker = sqlite3.connect(settings.state.path, isolation_level=None)
        try:
            runner.start()
            wait_for(lambda: (record := pipeline.context.state.get(delivery_folder.key)) is not None
                     and record.status == "in_progress", timeout=10, interval=0.01, what="the delivery to begin")
            blocker.execute("BEGIN IMMEDIATE")                  # another process writing, for a while
            wait_for(lambda: any(record.status == 401 for record in sandbox.requests), timeout=10, what="a refusal")
            time.sleep(2 * WAIT_POLL_SECONDS)                  # the delivery tries to show it, and cannot
            blocker.execute("ROLLBACK")
            sandbox.set_api_key(API_KEY)
            runner.join(PROBE_INTERVAL_SECONDS + 30)
            record = pipeline.context.state.get(delivery_folder.key)
        finally:
            blocker.close()
            sandbox.set_api_key(API_KEY)
            runner.join(60)
            pipeline.close()
        sent = [external_id for request in sandbox.requests if request.status == 201 for external_id in request.external_ids]
    assert outcome == {"status": WorkflowStatus.DELIVERED}
    assert (record.status, record.rows_delivered) == (WorkflowStatus.DELIVERED, 600)
    assert len(sent) == len(set(sent)) == 600


def test_a_folder_moved_away_once_every_row_was_read_is_delivered_not_pending_for_ever(tmp_path):
    folder = write_export(tmp_path / "drop", "Offer", "66", export_rows("m", 150))
    # Braze answers after a second: the rows are read and on their way when the folder goes.
    with SandboxServer(api_key=API_KEY, faults=Faults(latency_seconds=1.0)) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(
            str(tmp_path / "drop"), settle=0, extra=f"    archive_path: {tmp_path / 'archive'}\n"))
        settings = load_settings(config, environment())
        delivery_folder, source, source_settings = resolve_folder(settings, str(folder))
        pipeline = Pipeline.open(settings, threading.Event())
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(status=FolderDelivery(
            delivery_folder, source, source_settings, pipeline.context).run()))
        try:
            runner.start()
            # two batches of 75, one after the other: the first is answered, the second on its way
            wait_for(lambda: sandbox.requests, timeout=10, interval=0.01, what="the first answer")
            os.rename(folder, tmp_path / "moved-away")   # an operator tidies up, a little early
            runner.join(30)
            record = pipeline.context.state.get(delivery_folder.key)
        finally:
            runner.join(30)
            pipeline.close()
        delivered = sandbox.store.all()
    assert outcome == {"status": WorkflowStatus.DELIVERED}
    assert (record.status, record.rows_delivered) == (WorkflowStatus.DELIVERED, 150) and len(delivered) == 150
    assert not (tmp_path / "archive").exists()


def test_during_an_outage_the_folder_says_it_waits_for_braze_and_why_and_the_reason_goes_once_braze_is_back(
        tmp_path, monkeypatch):
    monkeypatch.setattr(concurrency, "OUTAGE_SHOWN_SECONDS", 0.5)
    folder = write_export(tmp_path / "drop", "Offer", "67", export_rows("o", 300))
    with SandboxServer(api_key=API_KEY, faults=Faults(error_rate=1.0, error_statuses=(502,))) as sandbox:
        config = write_config(str(tmp_path), sandbox.url, local_source(str(tmp_path / "drop"), settle=0))
        settings = load_settings(config, environment())
        delivery_folder, source, source_settings = resolve_folder(settings, str(folder))
        pipeline = Pipeline.open(settings, threading.Event())
        state, key = pipeline.context.state, delivery_folder.key
        outcome = {}
        runner = threading.Thread(target=lambda: outcome.update(status=FolderDelivery(
            delivery_folder, source, source_settings, pipeline.context).run()))
        try:
            runner.start()
            waiting = wait_for(lambda: (record := state.get(key)) is not None and record.reason and record,
                               timeout=30, interval=0.05, what="the outage shown")
            sandbox.faults = Faults(rate_limited_rate=1.0, retry_after_seconds=1)   # a 429 storm: still nothing accepted
            storm = wait_for(lambda: "429" in (record := state.get(key)).reason and record,
                             timeout=30, interval=0.05, what="the latest failure shown")
            sandbox.faults = Faults()
            runner.join(60)
            delivered = state.get(key)
        finally:
            sandbox.faults = Faults()
            runner.join(60)
            pipeline.close()
    assert waiting.status == WorkflowStatus.IN_PROGRESS
    assert waiting.reason.startswith("waiting for Braze, retrying: no request accepted since ")
    assert "(latest: Braze answered 502" in waiting.reason
    assert storm.status == WorkflowStatus.IN_PROGRESS
    assert storm.reason.startswith(waiting.reason.split(" (latest:")[0]), "the same outage, since the same time"
    assert "(latest: Braze answered 429" in storm.reason
    assert outcome == {"status": WorkflowStatus.DELIVERED}
    assert (delivered.reason, delivered.rows_delivered) == ("", 300)
